"""Deciding candidate pairs: the tuned settings, the union of per-signal thresholds, and min-2.

1. Union: a pair is a match when any signal in ``thresholds`` reaches its threshold.
2. Min-2: a posting left alone gets its nearest neighbour by ``min2_signal`` unless that one is
   below ``min2_floor`` (Kaggle's metric counts the posting itself, so an empty set costs a lot
   when the posting does have a match).

The thresholds were tuned on galleries of ``tuned_size`` postings. A larger gallery puts more
distractors above them, so :meth:`MatchSettings.at_size` moves each threshold (and the min-2 floor)
by its ``size_slopes`` entry per doubling of the gallery (fitted by
:func:`pipeline.matching.size_calibration.calibrate_size`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.matching.candidates import Candidates, best_pair_per_query, rank_within

MAX_DOUBLINGS = 3.0


@dataclass
class MatchSettings:
    """Everything that decides a pair; tuned on out-of-fold predictions and saved to thresholds.json."""

    thresholds: dict[str, float] = field(default_factory=dict)  # signals in the union; absent = off
    min2_signal: str | None = None
    min2_floor: float = math.inf  # inf = min-2 off
    blend_signal: str | None = None  # the vectors refined by neighbourhood blending
    blend_rounds: int = 0
    blend_threshold: float = math.inf
    fusion_weights: dict[str, float] = field(default_factory=dict)
    # Per threshold (signal name, or "min2_floor"): its move per doubling of the gallery.
    size_slopes: dict[str, float] = field(default_factory=dict)
    tuned_size: int = 0  # postings per gallery the thresholds were tuned on; 0 = no size calibration
    # The group decision after the pairs (pipeline.matching.groups.GroupSettings as a dict); empty
    # or rule "none": each posting's matches are its accepted pairs.
    group: dict[str, Any] = field(default_factory=dict)

    @property
    def min2_on(self) -> bool:
        return self.min2_signal is not None and not math.isinf(self.min2_floor)

    def doublings(self, n: int) -> float:
        """log2(n / tuned_size), clipped to +-MAX_DOUBLINGS; 0 without size calibration."""
        if self.tuned_size <= 0 or not self.size_slopes or n <= 0:
            return 0.0
        # Fitted for galleries up to 2**MAX_DOUBLINGS times the tuned one; beyond, a straight line
        # in log2(size) is a guess, so the move stops there.
        return float(np.clip(np.log2(n / self.tuned_size), -MAX_DOUBLINGS, MAX_DOUBLINGS))

    def at_size(self, n: int) -> MatchSettings:
        """The settings for a gallery of ``n`` postings: each threshold and the min-2 floor moved by
        its slope times :meth:`doublings`."""
        d = self.doublings(n)
        return self if d == 0.0 else self.moved(d)

    def moved(self, d: float) -> MatchSettings:
        """The settings with each threshold and the min-2 floor moved by its slope times ``d`` doublings."""
        slopes = self.size_slopes
        return dataclasses.replace(
            self,
            thresholds={k: v + slopes.get(k, 0.0) * d for k, v in self.thresholds.items()},
            min2_floor=self.min2_floor + slopes.get("min2_floor", 0.0) * d,
            size_slopes={},
            tuned_size=0,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # JSON has no infinity: "off" is written as null.
        for key in ("min2_floor", "blend_threshold"):
            d[key] = None if math.isinf(d[key]) else d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MatchSettings:
        d = dict(d)
        for key in ("min2_floor", "blend_threshold"):
            d[key] = math.inf if d.get(key) is None else float(d[key])
        # Files tuned before transductive calibration was removed hold its rate, 0 when it was off.
        if d.pop("match_rate", 0.0):
            raise ValueError(
                "these settings were tuned with transductive calibration, which no longer exists: tune again"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown match settings {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)


class Min2:
    """The min-2 rule on a fixed candidate set.

    Each query's best pair by ``signal`` does not depend on any threshold, so it is found once
    here; :meth:`pairs` then costs one bincount per union mask, which is what lets the tuner try
    every floor and every union threshold against it.
    """

    def __init__(self, c: Candidates, signal: str):
        self.signal = signal
        self.n = c.n
        self.size = len(c)
        self.query = c.query
        self.best = best_pair_per_query(c, signal)  # (Q',) pair index of each query's best pair
        self.best_query = c.query[self.best]
        self.best_sim = c.sims[signal][self.best]

    def lonely(self, union_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pair index, similarity) of the best pair of each query that ``union_mask`` leaves alone."""
        counts = np.bincount(self.query[union_mask], minlength=self.n)
        alone = counts[self.best_query] == 0
        return self.best[alone], self.best_sim[alone]

    def pairs(self, union_mask: np.ndarray, floor: float) -> np.ndarray:
        """(P,) bool: for each query with no match in ``union_mask``, its best pair if >= ``floor``."""
        idx, sim = self.lonely(union_mask)
        out = np.zeros(self.size, dtype=bool)
        out[idx[sim >= floor]] = True
        return out


def decide(c: Candidates, settings: MatchSettings, min2: Min2 | None = None) -> np.ndarray:
    """(P,) bool: which candidate pairs are matches under ``settings`` (union, then min-2).

    Args:
        min2: the min-2 rule already prepared on ``c`` for ``settings.min2_signal`` (saves its sort).
    """
    mask = union_mask(c, settings.thresholds)
    if settings.min2_on and settings.min2_signal in c.sims:
        if min2 is None or min2.signal != settings.min2_signal:
            min2 = Min2(c, settings.min2_signal)
        mask |= min2.pairs(mask, settings.min2_floor)
    return mask


def union_mask(c: Candidates, thresholds: Mapping[str, float]) -> np.ndarray:
    """(P,) bool: the pairs that reach the threshold of at least one signal."""
    mask = np.zeros(len(c), dtype=bool)
    for name, t in thresholds.items():
        if name in c.sims:
            mask |= c.sims[name] >= t
    return mask


def prediction_floors(settings: MatchSettings) -> dict[str, float]:
    """The lowest similarity per signal that can still produce a match under ``settings``."""
    floors = dict(settings.thresholds)
    if settings.min2_on:
        s = settings.min2_signal
        floors[s] = min(floors.get(s, math.inf), settings.min2_floor)
    return floors


def match_lists(c: Candidates, mask: np.ndarray, n_queries: int, score: str | None = None) -> list[np.ndarray]:
    """Per query (global index 0..n_queries-1), the matched global indices, best first by ``score``."""
    q, m = c.query[mask], c.match[mask]
    s = c.sims[score][mask] if score in c.sims else np.zeros(len(q), np.float32)
    ranked = rank_within(q, s)
    q, m = q[ranked.order], m[ranked.order]
    bounds = np.searchsorted(q, np.arange(n_queries + 1))
    return [m[bounds[i] : bounds[i + 1]] for i in range(n_queries)]
