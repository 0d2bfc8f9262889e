"""Deciding groups, not pairs: a posting's matches are the other members of its group.

A threshold rule decides each candidate pair on its own. A product's postings must agree with
each other, though, and a distractor that passes one pair's threshold usually fails against the
rest of the group; a bigger gallery adds exactly such distractors. The rules here read the pair
model's calibrated probabilities over the sparse candidate graph and return a partition of the
postings: agglomerative clustering (``average``, ``complete`` or ``single`` linkage), cut where
the link between two clusters falls below ``threshold``. A pair that is not a candidate has
probability 0, so ``average`` merges two clusters when the mean probability over *all* their cross
pairs reaches the cut, and ``complete`` only when every cross pair does.

Each posting's matches are then its group; a posting left alone gets its most probable candidate
when that reaches ``min2_floor`` (min-2, as the threshold rule has it).

Nothing here builds an N x N array: the clustering runs in rounds of reciprocal best merges (exact
for these reducible linkages, as the sequential algorithm), each round a sort of the edges between
clusters, so its cost is O(E log E) per round for E candidate edges.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.matching.calibration import Isotonic
from pipeline.settings import require

LINKAGES = ("average", "complete", "single")
RULES = ("none", *LINKAGES)
# What a clustering links on: every candidate pair's probability; only the pairs the threshold rule
# accepted, at their probability; or those pairs at 1 (so ``average`` cuts at a density of accepted pairs).
WEIGHTS = ("prob", "accepted", "density")
# Pairs below this probability never link two clusters (kept sparse; a cut below it is never tuned).
EDGE_FLOOR = 0.02
# The cuts tuning searches, and where a cut moved with the gallery's size stops: below, every
# candidate pair would link.
CUT_RANGE = (0.05, 0.95)
# A group this large is not a product (Shopee's largest hold about 50 postings): its members keep
# the threshold rule's matches, so a runaway merge cannot produce N x N match lists.
MAX_GROUP = 200
MAX_DOUBLINGS = 3.0  # as MatchSettings.doublings: moves stop at 8 times the tuned gallery (or an eighth)


@dataclass
class GroupConfig:
    """The group decision after the pairs (needs the pair model): which linkage tuning cuts, and
    what it links on. ``rule: none`` leaves each posting its accepted pairs."""

    # The default (average linkage of the accepted pairs, cut at 0.3) won on rotated gallery-size
    # splits that did not choose it (docs/groups.md).
    rule: str = "average"  # none | average | complete | single
    weights: str = "accepted"  # see WEIGHTS
    # The linkage's cut on the calibrated probability; null: tuned out-of-fold (with the min-2 floor,
    # which is always tuned) and moved with the gallery's size like the thresholds.
    cut: float | None = 0.3

    def __post_init__(self) -> None:
        require(self.rule in RULES, "rule", f"one of {list(RULES)}", self.rule)
        require(self.weights in WEIGHTS, "weights", f"one of {list(WEIGHTS)}", self.weights)
        lo, hi = CUT_RANGE
        require(self.cut is None or lo <= self.cut <= hi, "cut", f"null or in [{lo}, {hi}]", self.cut)


@dataclass
class GroupSettings:
    """The tuned group decision, saved in the match settings' ``group`` entry (``rule="none"``:
    the threshold rule's pairs, unchanged).

    The pair model's scores are first mapped to probabilities through the isotonic knots
    (``cal_x``, ``cal_y``; none: the scores as they are).
    """

    rule: str = "none"
    weights: str = "prob"
    threshold: float = 0.5  # linkage cut, on the calibrated probability
    min2_floor: float = math.inf  # a lone posting's best candidate joins it above this probability
    # Per doubling of the gallery, the moves of the cut and the floor (fitted with distractors
    # counted r times, as calibrate_size does for thresholds), from ``tuned_size`` postings.
    threshold_slope: float = 0.0
    floor_slope: float = 0.0
    tuned_size: int = 0
    fixed_cut: bool = False  # the cut is the config's (group.cut), held at every gallery size
    cal_x: list[float] = field(default_factory=list)
    cal_y: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        GroupConfig(self.rule, self.weights, self.threshold if self.fixed_cut else None)

    @property
    def on(self) -> bool:
        return self.rule != "none"

    def probability(self, score: np.ndarray) -> np.ndarray:
        """The pair model's scores as calibrated probabilities."""
        return Isotonic(list(self.cal_x), list(self.cal_y))(score)

    def at_size(self, n: int) -> GroupSettings:
        """The settings for a gallery of ``n`` postings: cut and floor moved by their slopes (the cut
        kept within :data:`CUT_RANGE`)."""
        if self.tuned_size <= 0 or n <= 0:
            return self
        d = float(np.clip(np.log2(n / self.tuned_size), -MAX_DOUBLINGS, MAX_DOUBLINGS))
        return dataclasses.replace(
            self,
            threshold=float(np.clip(self.threshold + self.threshold_slope * d, *CUT_RANGE)),
            min2_floor=self.min2_floor + self.floor_slope * d,
            threshold_slope=0.0,
            floor_slope=0.0,
            tuned_size=0,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["min2_floor"] = None if math.isinf(self.min2_floor) else self.min2_floor  # JSON has no infinity
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> GroupSettings:
        d = dict(d or {})
        d["min2_floor"] = math.inf if d.get("min2_floor") is None else float(d["min2_floor"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown group settings {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)


@dataclass
class Edges:
    """Undirected edges between postings, each once (``a < b``), with the probability of the pair.

    The two directions of a candidate pair are scored apart (each by its query's side); an edge
    holds their mean, or the one there is. ``accepted``: how many of the two directions the
    threshold rule accepted (0, 1 or 2).
    """

    a: np.ndarray
    b: np.ndarray
    prob: np.ndarray
    accepted: np.ndarray
    n: int

    @classmethod
    def of(
        cls, query: np.ndarray, match: np.ndarray, prob: np.ndarray, n: int, accepted: np.ndarray | None = None
    ) -> Edges:
        """From directed candidate pairs (query, match) and their probabilities (P,)."""
        lo, hi = np.minimum(query, match).astype(np.int64), np.maximum(query, match).astype(np.int64)
        keep = lo != hi
        uniq, inv = np.unique(lo[keep] * n + hi[keep], return_inverse=True)
        p = np.nan_to_num(np.asarray(prob, np.float64)[keep], neginf=0.0, posinf=1.0)
        total = np.bincount(inv, weights=p, minlength=len(uniq))
        count = np.bincount(inv, minlength=len(uniq))
        acc = np.zeros(len(query), np.int64) if accepted is None else np.asarray(accepted, np.int64)
        accepted_ends = np.bincount(inv, weights=acc[keep], minlength=len(uniq)).astype(np.int64)
        return cls(uniq // n, uniq % n, total / count, accepted_ends, int(n))


def weighted_edges(
    query: np.ndarray, match: np.ndarray, prob: np.ndarray, n: int, accepted: np.ndarray, weights: str
) -> Edges:
    """The undirected edges a rule links on (see :data:`WEIGHTS`)."""
    edges = Edges.of(query, match, prob, n, accepted)
    if weights == "accepted":
        edges.prob = np.where(edges.accepted > 0, edges.prob, 0.0)
    elif weights == "density":
        edges.prob = (edges.accepted > 0).astype(np.float64)
    return edges


def agglomerate(edges: Edges, threshold: float, linkage: str = "average") -> np.ndarray:
    """(n,) cluster of each posting: agglomerative clustering of the edge probabilities, cut at ``threshold``.

    A pair with no edge has similarity 0. Each round merges every pair of clusters that are each
    other's best link (at or above ``threshold``): for reducible linkages (average, complete,
    single) that gives the partition of the sequential algorithm stopped at the same cut, and each
    round is a sort of the edges between clusters.
    """
    if linkage not in LINKAGES:
        raise ValueError(f"linkage {linkage!r}; valid: {list(LINKAGES)}")
    n = edges.n
    keep = edges.prob >= (min(threshold, EDGE_FLOOR) if linkage == "average" else max(threshold, 0.0))
    a, b, w = edges.a[keep], edges.b[keep], edges.prob[keep]
    # Per edge between two clusters: the sum, count, min and max of the pair probabilities it joins.
    stats = (w.copy(), np.ones(len(w)), w.copy(), w.copy())
    cluster, size = np.arange(n), np.ones(n)
    while len(a):
        merge = _reciprocal_best(a, b, _link(linkage, *stats, size[a] * size[b]), threshold, n)
        if not len(merge):
            break
        # Each merged pair (x, y), x < y, becomes x.
        new = np.arange(n)
        new[b[merge]] = a[merge]
        size[a[merge]] += size[b[merge]]
        cluster = new[cluster]
        a, b = new[a], new[b]
        between = a != b
        a, b, stats = a[between], b[between], tuple(s[between] for s in stats)
        a, b, stats = _collapse(np.minimum(a, b), np.maximum(a, b), stats, n)
    return np.unique(cluster, return_inverse=True)[1]


def _link(linkage: str, total, count, low, high, pairs) -> np.ndarray:
    """The link between two clusters from their edges' sum, count, min and max, and the number of
    their cross pairs (absent ones at similarity 0)."""
    if linkage == "average":
        return total / pairs
    if linkage == "complete":
        return np.where(count >= pairs, low, 0.0)
    return high


def _reciprocal_best(a: np.ndarray, b: np.ndarray, link: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Indices of the edges (a, b) that are each end's best link and reach ``threshold`` (ties go to
    the smaller cluster index, so the best link overall is always reciprocal)."""
    ok = np.flatnonzero(link >= threshold)
    if not len(ok):
        return ok
    src, dst = np.r_[a[ok], b[ok]], np.r_[b[ok], a[ok]]
    val, edge = np.r_[link[ok], link[ok]], np.r_[ok, ok]
    order = np.lexsort((dst, -val, src))
    first = order[np.r_[True, src[order][1:] != src[order][:-1]]]
    best = np.full(n, -1)
    best[src[first]] = dst[first]
    return np.unique(edge[first][best[dst[first]] == src[first]])


def _collapse(a: np.ndarray, b: np.ndarray, stats: tuple[np.ndarray, ...], n: int):
    """Edges between the same two clusters, joined: sums and counts added, min and max kept."""
    if not len(a):
        return a, b, stats
    order = np.argsort(a * n + b, kind="stable")
    key = (a * n + b)[order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    total, count, low, high = (s[order] for s in stats)
    joined = (
        np.add.reduceat(total, start),
        np.add.reduceat(count, start),
        np.minimum.reduceat(low, start),
        np.maximum.reduceat(high, start),
    )
    return a[order][start], b[order][start], joined


def lone_best(
    query: np.ndarray, match: np.ndarray, prob: np.ndarray, cluster: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Min-2 for groups: (query, match) of each posting alone in its cluster whose most probable
    candidate reaches ``floor``."""
    if math.isinf(floor) or not len(query):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    alone = np.bincount(cluster)[cluster] == 1
    idx = np.flatnonzero(alone[query] & (prob >= floor))
    order = idx[np.lexsort((-prob[idx], query[idx]))]
    first = order[np.r_[True, query[order][1:] != query[order][:-1]]] if len(order) else order
    return query[first].astype(np.int64), match[first].astype(np.int64)


def group_f1(
    cluster: np.ndarray,
    labels: np.ndarray,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    rows: np.ndarray | None = None,
    distractors: float = 1.0,
    per_posting: bool = False,
) -> dict[str, float] | np.ndarray:
    """The competition's F1 when each posting's matches are its cluster (plus ``extra`` (query,
    match) pairs, each query's only one), with no N x N: per posting, its cluster's members of its label.

    Args:
        rows: (n,) bool, the postings the means run over (default: all).
        distractors: how many times each wrong member counts (see :class:`~pipeline.matching.scoring.Scorer`).
        per_posting: return the (n,) F1 of every posting instead of the means.
    """
    labels = np.unique(labels, return_inverse=True)[1]
    key = cluster.astype(np.int64) * (labels.max() + 1) + labels
    _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    hits = counts[inv].astype(np.float64)
    n_pred = np.bincount(cluster)[cluster].astype(np.float64)
    if extra is not None and len(extra[0]):
        eq, em = extra
        hits[eq] += labels[eq] == labels[em]
        n_pred[eq] += 1
    g = np.bincount(labels)[labels].astype(np.float64)
    n_pred = hits + distractors * (n_pred - hits)
    if per_posting:
        return 2 * hits / (n_pred + g)
    if rows is not None:
        hits, n_pred, g = hits[rows], n_pred[rows], g[rows]
    return {
        "f1": float((2 * hits / (n_pred + g)).mean()),
        "precision": float((hits / n_pred).mean()),
        "recall": float((hits / g).mean()),
        "rows": int(len(g)),
    }


def decide_groups(
    query: np.ndarray, match: np.ndarray, score: np.ndarray, n: int, accepted: np.ndarray, settings: GroupSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The group decision on candidate pairs.

    Args:
        query, match: (P,) candidate pairs (global indices below ``n``).
        score: (P,) the pair model's score of each (calibrated here).
        accepted: (P,) bool, the threshold rule's decision (read by the weights ``accepted`` and ``density``).
        settings: already moved to the gallery's size (:meth:`GroupSettings.at_size`).

    Returns:
        (n,) cluster of each posting, and the (query, match) pairs min-2 adds to lone postings.
    """
    prob = settings.probability(score)
    cluster = agglomerate(
        weighted_edges(query, match, prob, n, accepted, settings.weights), settings.threshold, settings.rule
    )
    lone_q, lone_m = lone_best(query, match, prob, cluster, settings.min2_floor)
    return cluster, lone_q, lone_m


def group_lists(
    query: np.ndarray,
    match: np.ndarray,
    score: np.ndarray,
    accepted: np.ndarray,
    settings: GroupSettings,
    pair_lists: list[np.ndarray],
) -> list[np.ndarray]:
    """Per posting, its matches under the group decision: the other members of its cluster (those
    with the highest score to anyone first); a lone posting's min-2 match; a member of a cluster of more than
    :data:`MAX_GROUP` postings keeps its threshold-rule matches (``pair_lists``)."""
    n = len(pair_lists)
    cluster, lone_q, lone_m = decide_groups(query, match, score, n, accepted, settings)
    size = np.bincount(cluster)
    # Members ordered by cluster, then by their best score to anyone (a rough "most central first").
    strength = np.zeros(n)
    np.maximum.at(strength, query, np.nan_to_num(np.asarray(score, np.float64), neginf=0.0))
    order = np.lexsort((-strength, cluster))
    bounds = np.searchsorted(cluster[order], np.arange(len(size) + 1))
    out = []
    for i in range(n):
        c = cluster[i]
        if size[c] > MAX_GROUP:
            out.append(pair_lists[i])
        else:
            members = order[bounds[c] : bounds[c + 1]]
            out.append(members[members != i])
    for q, m in zip(lone_q.tolist(), lone_m.tolist()):
        out[q] = np.array([m], np.int64)
    return out
