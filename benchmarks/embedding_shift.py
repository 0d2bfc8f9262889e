"""Does the cosine scale move between the fold models (tuning) and the model that embeds the test?

Thresholds are tuned on out-of-fold embeddings (each fold's postings embedded by the model that
never saw them, among train postings that model did see), while the test is embedded by the
``full`` model, among postings none of which it saw. For a run trained on the tuning part of a
``gallery_size split`` (its test.csv holds other groups, with labels in test_truth.csv), this
prints, per embedding: the mean cosine of true pairs, of each posting's nearest other-group
posting, and the share of other-group nearest neighbours above the tuned text threshold.

    python -m benchmarks.embedding_shift --run runs/gs/text_s0 --truth runs/gs/split_s0/test_truth.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.matching.neighbours import dense_knn


def cosine_stats(x: np.ndarray, labels: np.ndarray, queries: np.ndarray, threshold: float, k: int = 50) -> dict:
    """Cosine statistics of ``queries`` (row indices) searched among every row of ``x``."""
    nb = dense_knn(x, k=min(k, len(x)))
    pos, neg_top, neg_above = [], [], []
    for q in queries:
        idx, sim = nb.idx[q], nb.sim[q]
        other = idx != q
        same = labels[idx] == labels[q]
        pos += sim[other & same].tolist()
        negs = sim[other & ~same]
        if len(negs):
            neg_top.append(negs[0])
            neg_above.append(float((negs >= threshold).sum()))
    return {
        "true_pair_cos": round(float(np.mean(pos)), 4),
        "nearest_other_group_cos": round(float(np.mean(neg_top)), 4),
        "other_group_above_threshold": round(float(np.mean(neg_above)), 3),
        "rows": int(len(x)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--truth", type=Path, required=True, help="test_truth.csv of the split")
    args = parser.parse_args(argv)

    from benchmarks.gallery_size import _fold_embeddings
    from pipeline import io
    from pipeline.runs.folder import open_run

    run = open_run(args.run)
    train, test = run.train_df(), run.test_df()
    fold_of = run.folds(train)
    threshold = float(io.read_json(run.paths.tune_report)["steps"]["text"]["threshold"])
    train_labels = train["label_group"].to_numpy()
    truth = pd.read_csv(args.truth, dtype={"posting_id": str}).set_index("posting_id")["label_group"]
    test_labels = truth.loc[test["posting_id"]].to_numpy()
    rows = {}
    oof = [
        cosine_stats(
            np.asarray(run.embeddings("text", f"oof_fold{f}", train["posting_id"].to_numpy())),
            train_labels,
            np.flatnonzero(fold_of == f),
            threshold,
        )
        for f in np.unique(fold_of)
    ]
    rows["tuning: out-of-fold (fold models)"] = {k: round(float(np.mean([o[k] for o in oof])), 4) for k in oof[0]}
    full = np.asarray(run.embeddings("text", "test", test["posting_id"].to_numpy()))
    everything = np.arange(len(test))
    rows["test: full model"] = cosine_stats(full, test_labels, everything, threshold)
    per_fold = _fold_embeddings(run, test, np.unique(fold_of), args.run / "fold_test")
    fold_stats = [cosine_stats(x, test_labels, everything, threshold) for x in per_fold]
    rows["test: each fold model (mean)"] = {
        k: round(float(np.mean([o[k] for o in fold_stats])), 4) for k in fold_stats[0]
    }
    mean = sum(per_fold)
    mean = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    rows["test: mean of fold models"] = cosine_stats(mean, test_labels, everything, threshold)
    print(f"tuned text threshold {threshold:.4f}")
    for name, r in rows.items():
        print(json.dumps({"embedding": name, **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
