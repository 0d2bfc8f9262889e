"""The pair model's score as a probability: isotonic calibration and the gallery-size prior shift.

LightGBM's cross-fitted out-of-fold scores are overconfident in the middle, and a score means less
in a bigger gallery: the same evidence, but r times as many distractors per posting. So:

1. :func:`fit_isotonic` maps out-of-fold scores to the share of matches among pairs scored alike
   (monotone, so every threshold rule decides as before; the group rules average probabilities,
   which needs them on one scale).
2. :func:`size_shift` moves a probability to a gallery ``r`` times the tuned one: the likelihood of
   the evidence stays, the prior odds of a match fall by r, so ``p / (p + r (1 - p))``. This is what
   ``Scorer(distractors=r)`` assumes for thresholds, as a probability.

:func:`reliability` and :func:`ece` check both (``benchmarks/calibration.py`` draws the diagram).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-4  # calibrated probabilities stay inside (EPS, 1 - EPS), so a shift can always move them


@dataclass
class Isotonic:
    """A monotone map from score to probability: ``np.interp`` through its knots (JSON-able).
    Without knots it is the identity."""

    x: list[float]
    y: list[float]

    def __call__(self, score: np.ndarray) -> np.ndarray:
        s = np.nan_to_num(np.asarray(score, np.float64), neginf=0.0, posinf=1.0)
        return np.interp(s, self.x, self.y) if self.x else s


def fit_isotonic(score: np.ndarray, same: np.ndarray, max_knots: int = 256) -> Isotonic:
    """Isotonic regression of ``same`` (P,) bool on ``score`` (P,): pool-adjacent-violators on the
    sorted scores (ties pooled first), kept to at most ``max_knots`` knots."""
    s = np.nan_to_num(np.asarray(score, np.float64), neginf=0.0, posinf=1.0)
    y = np.asarray(same, np.float64)
    if not len(s):
        return Isotonic([], [])
    xs, inv = np.unique(s, return_inverse=True)
    w = np.bincount(inv).astype(np.float64)
    v = np.bincount(inv, weights=y) / w
    level, start = _pava(v, w)
    fitted = np.clip(np.repeat(level, np.diff(np.r_[start, len(xs)])), EPS, 1 - EPS)
    # Knots at each block's ends: interpolation between blocks, flat inside them.
    ends = np.unique(np.r_[start, np.r_[start[1:], len(xs)] - 1])
    if len(ends) > max_knots:
        ends = np.unique(np.linspace(0, len(xs) - 1, max_knots).round().astype(int))
    return Isotonic(xs[ends].tolist(), fitted[ends].tolist())


def _pava(v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool adjacent violators: (level, first index) of each block of the non-decreasing fit of
    values ``v`` with weights ``w``."""
    level: list[float] = []
    weight: list[float] = []
    start: list[int] = []
    for i, (vi, wi) in enumerate(zip(v.tolist(), w.tolist())):
        level.append(vi)
        weight.append(wi)
        start.append(i)
        while len(level) > 1 and level[-2] >= level[-1]:
            wt = weight[-2] + weight[-1]
            lv = (level[-2] * weight[-2] + level[-1] * weight[-1]) / wt
            level[-2:], weight[-2:], start[-2:] = [lv], [wt], [start[-2]]
    return np.array(level), np.array(start)


def size_shift(prob: np.ndarray, r: float) -> np.ndarray:
    """Probabilities moved to a gallery ``r`` times as large (prior odds divided by ``r``)."""
    p = np.asarray(prob, np.float64)
    return p / (p + r * (1.0 - p)) if r != 1.0 else p


def reliability(prob: np.ndarray, same: np.ndarray, edges: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per probability bin: pairs, mean probability and share of matches (bins of 0.1 by default)."""
    edges = np.linspace(0, 1, 11) if edges is None else np.asarray(edges)
    p, y = np.asarray(prob, np.float64), np.asarray(same, np.float64)
    b = np.clip(np.digitize(p, edges[1:-1]), 0, len(edges) - 2)
    count = np.bincount(b, minlength=len(edges) - 1)
    safe = np.maximum(count, 1)
    return {
        "edges": edges,
        "count": count,
        "mean_prob": np.bincount(b, weights=p, minlength=len(count)) / safe,
        "match_share": np.bincount(b, weights=y, minlength=len(count)) / safe,
    }


def ece(prob: np.ndarray, same: np.ndarray, edges: np.ndarray | None = None) -> float:
    """Expected calibration error: the gap between mean probability and match share per bin,
    weighted by the bin's share of the pairs."""
    r = reliability(prob, same, edges)
    return float((r["count"] * np.abs(r["mean_prob"] - r["match_share"])).sum() / max(r["count"].sum(), 1))
