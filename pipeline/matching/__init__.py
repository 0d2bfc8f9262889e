"""Matching: from per-signal vectors to match sets.

neighbours  top-k search of every signal (FAISS dense and binary, sparse TF-IDF), on CPU or GPUs
signals     the unsupervised signals: TF-IDF on titles, phash
candidates  galleries, candidate pairs and the per-query ranking
fusion      the fused image+text cosine, neighbourhood blending and the neighbour cache
decide      match settings, the union of thresholds, min-2
pairs       the learned pair score (gradient-boosted trees), cross-fitted by fold
tuning      thresholds and fusion tuned for the competition's F1 on out-of-fold candidates
oof         the out-of-fold galleries that tuning searches
predict     the one predict path
recall      recall of the neighbour lists against exact search (pipeline bench)
"""
