"""Scoring decisions against the labels: the competition's F1 of a pair mask, vectorised, and F1
against a threshold."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.matching.candidates import Candidates
from pipeline.metric import f1_from_pairs, group_sizes


@dataclass
class Curve:
    """F1, precision and recall of one decision rule against its threshold."""

    thresholds: np.ndarray
    f1: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    @property
    def best(self) -> tuple[float, float]:
        i = int(np.argmax(self.f1))
        return float(self.thresholds[i]), float(self.f1[i])


class Scorer:
    """Scores decisions on a fixed candidate set against the labels, vectorised.

    Args:
        c: candidate pairs.
        labels: (N,) label of every posting.
        rows: (N,) bool, the postings the means run over (default: all).
        distractors: how many times each predicted non-match counts. A gallery r times as large,
            of other groups like these, holds in expectation r times the non-matches above any
            threshold and the same matches: scoring with ``distractors=r`` estimates the F1 there.
    """

    def __init__(self, c: Candidates, labels: np.ndarray, rows: np.ndarray | None = None, distractors: float = 1.0):
        self.c = c
        self.same = (labels[c.query] == labels[c.match]).astype(np.float64)
        self.group_size = group_sizes(labels)
        self.rows = rows
        self.distractors = float(distractors)

    def score(self, mask: np.ndarray) -> dict[str, float]:
        if self.distractors == 1.0:
            return f1_from_pairs(self.c.query[mask], self.same[mask], self.group_size, subset=self.rows)
        q, same = self.c.query[mask], self.same[mask]
        n = len(self.group_size)
        hits = np.bincount(q, weights=same, minlength=n) + 1.0  # +1: the posting itself
        n_pred = np.bincount(q, weights=same + self.distractors * (1.0 - same), minlength=n) + 1.0
        g = self.group_size
        if self.rows is not None:
            hits, n_pred, g = hits[self.rows], n_pred[self.rows], g[self.rows]
        return {
            "f1": float((2.0 * hits / (n_pred + g)).mean()),
            "precision": float((hits / n_pred).mean()),
            "recall": float((hits / g).mean()),
            "rows": int(len(g)),
        }

    def f1(self, mask: np.ndarray) -> float:
        return self.score(mask)["f1"]

    def curve(self, signal: str, grid: np.ndarray, base: np.ndarray | None = None) -> Curve:
        s = self.c.sims[signal]
        rows = [self.score((s >= t) if base is None else (base | (s >= t))) for t in grid]
        return Curve(grid, *(np.array([r[k] for r in rows]) for k in ("f1", "precision", "recall")))


def threshold_grid(sims: np.ndarray, n: int) -> np.ndarray:
    """Candidate thresholds for one signal: its distinct values when few (phash), else a linear grid
    from its 1st percentile to its maximum."""
    finite = sims[np.isfinite(sims)]
    if finite.size == 0:
        return np.array([math.inf])
    uniq = np.unique(finite)
    if len(uniq) <= n:
        return uniq
    lo, hi = np.quantile(finite, 0.01), float(finite.max())
    return np.linspace(lo, hi, n)
