"""The competition metric: mean over postings of F1(predicted set, true set), self included.

Two implementations that must agree: :func:`f1_from_sets`, a plain reference over Python sets as
Kaggle computes it, and :func:`f1_from_pairs`, a vectorised form over predicted pairs that the
threshold search calls thousands of times.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def f1_from_sets(pred: Sequence[Iterable], true: Sequence[Iterable]) -> dict[str, float]:
    """Mean per-posting F1, precision and recall from predicted and true match sets.

    Both sets must already hold the posting itself, as in the competition.
    """
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predictions for {len(true)} postings")
    f1 = prec = rec = 0.0
    for p, t in zip(pred, true):
        p, t = set(p), set(t)
        hit = len(p & t)
        f1 += 2 * hit / (len(p) + len(t)) if (p or t) else 1.0
        prec += hit / len(p) if p else 0.0
        rec += hit / len(t) if t else 0.0
    n = max(len(pred), 1)
    return {"f1": f1 / n, "precision": prec / n, "recall": rec / n, "rows": len(pred)}


def true_sets_from_labels(ids: Sequence[str], labels: Sequence) -> dict[str, set[str]]:
    """posting_id -> set of posting_ids that share its label (itself included)."""
    groups: dict = {}
    for pid, lab in zip(ids, labels):
        groups.setdefault(lab, set()).add(pid)
    return {pid: groups[lab] for pid, lab in zip(ids, labels)}


def score_matches(matches: Mapping[str, Iterable[str]], truth: Mapping[str, Iterable[str]]) -> dict[str, float]:
    """Score a submission given as posting_id -> matched ids against posting_id -> true ids."""
    missing = sorted(set(truth) - set(matches))
    if missing:
        raise ValueError(f"{len(missing)} posting(s) of the truth have no prediction, e.g. {missing[:3]}")
    extra = sorted(set(matches) - set(truth))
    if extra:
        raise ValueError(f"{len(extra)} prediction(s) for postings the truth does not hold, e.g. {extra[:3]}")
    ids = list(truth)
    return f1_from_sets([matches[i] for i in ids], [truth[i] for i in ids])


def f1_from_pairs(
    rows: np.ndarray,
    same: np.ndarray,
    group_size: np.ndarray,
    subset: np.ndarray | None = None,
    per_posting: bool = False,
) -> dict[str, float] | np.ndarray:
    """Vectorised metric from predicted pairs that exclude self-pairs.

    Args:
        rows: (P,) query index of each predicted pair (i, j), i != j, no duplicates.
        same: (P,) whether the pair shares a label.
        group_size: (N,) size of each posting's true group, itself included.
        subset: (N,) bool, average over these postings only (default: all).
        per_posting: return the F1 array instead of the means.
    """
    n = len(group_size)
    # +1: each predicted set holds the posting itself, which is always a true match.
    hits = np.bincount(rows, weights=same, minlength=n) + 1.0
    n_pred = np.bincount(rows, minlength=n) + 1.0
    g = group_size
    if subset is not None:
        hits, n_pred, g = hits[subset], n_pred[subset], g[subset]
    f1 = 2.0 * hits / (n_pred + g)
    if per_posting:
        return f1
    return {
        "f1": float(f1.mean()),
        "precision": float((hits / n_pred).mean()),
        "recall": float((hits / g).mean()),
        "rows": int(len(f1)),
    }


def group_sizes(labels: np.ndarray) -> np.ndarray:
    """(N,) number of postings sharing each posting's label."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse].astype(np.float64)


# Group-size buckets for reports: Shopee's groups hold 2 to about 50 postings, most of them 2.
GROUP_SIZE_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 10**9))


def f1_by_group_size(per_posting_f1: np.ndarray, group_size: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean F1 per bucket of true group size: ``{"2": {"f1": .., "postings": ..}, "4-5": ...}``.

    Args:
        per_posting_f1: (N,) F1 of each posting; NaN rows (not scored) are left out.
        group_size: (N,) size of each posting's true group, itself included.
    """
    out = {}
    scored = ~np.isnan(per_posting_f1)
    for lo, hi in GROUP_SIZE_BUCKETS:
        rows = scored & (group_size >= lo) & (group_size <= hi)
        if rows.any():
            name = str(lo) if lo == hi else (f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}")
            out[name] = {"f1": float(per_posting_f1[rows].mean()), "postings": int(rows.sum())}
    return out
