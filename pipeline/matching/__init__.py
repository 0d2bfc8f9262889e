"""Matching: from per-signal vectors to match sets.

neighbours        top-k search of every signal (FAISS dense and binary, sparse TF-IDF); SearchConfig
signals           the unsupervised signals: TF-IDF on titles, phash; TfidfConfig, PhashConfig
candidates        galleries, candidate pairs and the per-query ranking
fusion            the fused image+text cosine, neighbourhood blending and the neighbour cache; FusionConfig
decide            the tuned settings (MatchSettings), the union of thresholds, min-2
scoring           the competition's F1 of a decision, vectorised, and F1 against a threshold
pair_features     what the pair model reads about a pair besides its similarities
pair_model        the learned pair score (gradient-boosted trees), cross-fitted by fold; PairModelConfig
tuning            thresholds and fusion tuned for F1 on out-of-fold candidates; DecisionConfig, TuneSetup
size_calibration  thresholds that move with the gallery's size
oof               the out-of-fold galleries that tuning searches
held_out          the per-epoch held-out F1 of one encoder's signal
predict           the one predict path
recall            recall of the neighbour lists against exact search (pipeline bench)
"""
