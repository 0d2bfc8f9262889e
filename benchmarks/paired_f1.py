"""Two submissions on the same postings, compared posting by posting: is the F1 difference more
than the test set's own noise?

The mean F1 of a small test set moves by a point when one group's matches change. This prints each
submission's F1, their paired difference, and its standard error and 95% interval from a bootstrap
that resamples whole label groups (a group's postings share their errors):

    python -m benchmarks.paired_f1 --truth data/synthetic/test_truth.csv \\
        --a RUN_A/submission.csv --b RUN_B/submission.csv
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from pipeline.metric import true_sets_from_labels


def per_posting_f1(submission: pd.DataFrame, truth: dict[str, set[str]]) -> pd.Series:
    """Each posting's F1 of its predicted set against its true set, indexed by posting_id."""
    pred = {pid: set(str(m).split()) for pid, m in zip(submission["posting_id"], submission["matches"])}
    missing = sorted(set(truth) - set(pred))
    if missing:
        raise ValueError(f"{len(missing)} posting(s) of the truth have no prediction, e.g. {missing[:3]}")
    return pd.Series({pid: 2 * len(pred[pid] & t) / (len(pred[pid]) + len(t)) for pid, t in truth.items()})


def group_bootstrap(diff: np.ndarray, groups: np.ndarray, draws: int = 4000, seed: int = 0) -> np.ndarray:
    """Means of ``diff`` over ``draws`` resamples of whole groups (drawn with replacement)."""
    rng = np.random.default_rng(seed)
    codes, first = np.unique(groups, return_inverse=True)
    sums = np.bincount(first, weights=diff, minlength=len(codes))
    sizes = np.bincount(first, minlength=len(codes))
    picks = rng.integers(0, len(codes), size=(draws, len(codes)))
    return sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)


def compare(truth_csv: str, a_csv: str, b_csv: str, draws: int = 4000) -> dict[str, float]:
    truth_frame = pd.read_csv(truth_csv)
    truth = true_sets_from_labels(truth_frame["posting_id"].tolist(), truth_frame["label_group"].tolist())
    a = per_posting_f1(pd.read_csv(a_csv), truth)
    b = per_posting_f1(pd.read_csv(b_csv), truth)
    diff = (b - a).reindex(truth_frame["posting_id"]).to_numpy()
    means = group_bootstrap(diff, truth_frame["label_group"].to_numpy(), draws)
    return {
        "postings": len(diff),
        "groups": int(truth_frame["label_group"].nunique()),
        "f1_a": float(a.mean()),
        "f1_b": float(b.mean()),
        "b_minus_a": float(diff.mean()),
        "standard_error": float(means.std()),
        "low_95": float(np.percentile(means, 2.5)),
        "high_95": float(np.percentile(means, 97.5)),
        "postings_changed": int((diff != 0).sum()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True, help="CSV with posting_id,label_group")
    parser.add_argument("--a", required=True, help="the reference submission")
    parser.add_argument("--b", required=True, help="the submission compared with it")
    parser.add_argument("--draws", type=int, default=4000)
    args = parser.parse_args(argv)
    r = compare(args.truth, args.a, args.b, args.draws)
    print(
        f"{r['postings']} postings in {r['groups']} groups: F1 a {r['f1_a']:.4f}, b {r['f1_b']:.4f}; "
        f"b - a {r['b_minus_a']:+.4f} (group-bootstrap SE {r['standard_error']:.4f}, "
        f"95% [{r['low_95']:+.4f}, {r['high_95']:+.4f}]); {r['postings_changed']} postings changed"
    )


if __name__ == "__main__":
    main()
