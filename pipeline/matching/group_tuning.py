"""Tuning the group decision (:mod:`pipeline.matching.groups`) on out-of-fold candidates.

After the threshold rule is tuned, the pair model's cross-fitted scores are calibrated (isotonic,
:mod:`pipeline.matching.calibration`), then the linkage's cut and its min-2 floor are searched for
the competition's F1 over the postings' groups. :func:`calibrate_group_size` then searches cut and
floor again with each wrong member counted r times (a gallery r times as large, as
:func:`~pipeline.matching.size_calibration.calibrate_size` does for thresholds); their slope per
doubling is the least-squares line through log2(r).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from pipeline.matching.calibration import ece, fit_isotonic
from pipeline.matching.candidates import Candidates
from pipeline.matching.decide import MatchSettings, decide
from pipeline.matching.groups import (
    CUT_RANGE,
    Edges,
    GroupConfig,
    GroupSettings,
    agglomerate,
    decide_groups,
    group_f1,
    lone_best,
    weighted_edges,
)

THRESHOLDS = tuple(np.round(np.arange(CUT_RANGE[0], CUT_RANGE[1] + 1e-3, 0.025), 3).tolist())
FLOORS = (math.inf, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
SIZE_FACTORS = (0.5, 2.0, 4.0)


def tune_groups(
    c: Candidates,
    labels: np.ndarray,
    score: np.ndarray,
    accepted: np.ndarray,
    choice: GroupConfig,
    rows: np.ndarray | None = None,
) -> tuple[GroupSettings, dict]:
    """Calibrate the scores and tune one group rule's cut (unless ``choice.cut`` fixes it) and floor
    on out-of-fold candidates.

    Args:
        c: the tuned candidate pairs (their query's side scored out-of-fold).
        labels: (N,) label of every posting.
        score: (P,) the pair model's out-of-fold score of each pair.
        accepted: (P,) bool, the tuned threshold rule's decision.
        choice: the rule and what it links on.
        rows: (N,) bool, the postings the F1 runs over (default: all).

    Returns:
        The settings and a record: F1, precision and recall, the calibration's ECE before and after.
    """
    same = labels[c.query] == labels[c.match]
    iso = fit_isotonic(score, same)
    prob = iso(score)
    fixed = choice.cut is not None
    base = GroupSettings(
        choice.rule, choice.weights, threshold=choice.cut if fixed else 0.5, fixed_cut=fixed, cal_x=iso.x, cal_y=iso.y
    )
    edges = weighted_edges(c.query, c.match, prob, c.n, accepted, choice.weights)
    search = CutSearch(c, labels, prob, edges, base, rows, cuts(base))
    best, _ = search.best(1.0)
    record = {"ece_raw": ece(score, same), "ece_calibrated": ece(prob, same), "pairs": int(len(score))}
    cluster = agglomerate(edges, best.threshold, best.rule)
    record.update(group_f1(cluster, labels, lone_best(c.query, c.match, prob, cluster, best.min2_floor), rows))
    return best, record


def cuts(settings: GroupSettings) -> Sequence[float]:
    """The cuts tuning searches: the grid, or the fixed cut alone."""
    return [settings.threshold] if settings.fixed_cut else THRESHOLDS


class CutSearch:
    """The grid of one rule's cut and floor on fixed candidates: clusters once per cut, then every floor."""

    def __init__(
        self,
        c: Candidates,
        labels: np.ndarray,
        prob: np.ndarray,
        edges: Edges,
        base: GroupSettings,
        rows: np.ndarray | None,
        thresholds: Sequence[float] = THRESHOLDS,
    ):
        self.labels, self.rows = labels, rows
        self.grid = [dataclasses.replace(base, threshold=t) for t in thresholds]
        self.clusters = [agglomerate(edges, g.threshold, g.rule) for g in self.grid]
        self.lone = [[lone_best(c.query, c.match, prob, cl, fl) for fl in FLOORS] for cl in self.clusters]

    def f1(self, distractors: float = 1.0) -> np.ndarray:
        """(cuts, floors) F1 with each wrong member counted ``distractors`` times."""
        return np.array(
            [
                [group_f1(cl, self.labels, extra, self.rows, distractors)["f1"] for extra in lone]
                for cl, lone in zip(self.clusters, self.lone)
            ]
        )

    def best(self, distractors: float = 1.0) -> tuple[GroupSettings, float]:
        """The cut and floor of highest F1 (the first of equals, so the grid's order breaks ties)."""
        f1 = self.f1(distractors)
        i, j = np.unravel_index(int(np.argmax(f1 > f1.max() - 1e-9)), f1.shape)
        return dataclasses.replace(self.grid[i], min2_floor=FLOORS[j]), float(f1[i, j])


def held_out_groups(
    c: Candidates,
    labels: np.ndarray,
    score: np.ndarray,
    accepted: np.ndarray,
    settings: GroupSettings,
    rows: np.ndarray,
) -> tuple[dict[str, float], np.ndarray]:
    """F1, precision and recall over ``rows`` under the group decision on candidates ``c`` (a
    held-out fold's), and the (N,) F1 of every posting."""
    cluster, lone_q, lone_m = decide_groups(c.query, c.match, score, c.n, accepted, settings)
    return (
        group_f1(cluster, labels, (lone_q, lone_m), rows),
        group_f1(cluster, labels, (lone_q, lone_m), per_posting=True),
    )


def calibrate_group_size(
    c: Candidates,
    labels: np.ndarray,
    score: np.ndarray,
    settings: MatchSettings,
    rows: np.ndarray | None,
    gallery_size: int,
    factors: Sequence[float] = SIZE_FACTORS,
) -> tuple[GroupSettings, dict]:
    """The tuned group rule (``settings.group``) with slopes per doubling for its cut and floor.

    For each factor r, the threshold rule's accepted pairs are those of its own size-moved
    thresholds (``settings.moved(log2 r)``, after ``calibrate_size``), and cut and floor are
    searched again with wrong members counted r times (the floor alone when the cut is fixed).

    Args:
        settings: the match settings with their size slopes.
    """
    tuned = GroupSettings.from_dict(settings.group)
    prob = tuned.probability(score)
    points = [{"factor": 1.0, "threshold": tuned.threshold, "min2_floor": tuned.min2_floor}]
    for r in factors:
        accepted = decide(c, settings.moved(float(np.log2(r))))
        edges = weighted_edges(c.query, c.match, prob, c.n, accepted, tuned.weights)
        moved, f1 = CutSearch(c, labels, prob, edges, tuned, rows, cuts(tuned)).best(float(r))
        points.append({"factor": float(r), "threshold": moved.threshold, "min2_floor": moved.min2_floor, "f1": f1})
    x = np.log2([p["factor"] for p in points])

    def slope(key: str, base: float) -> float:
        y = np.array([p[key] for p in points])
        # A floor that is off (inf) at some size gives no line: it then stays where it was tuned.
        return float((x * (y - base)).sum() / (x * x).sum()) if np.isfinite(y).all() else 0.0

    fitted = dataclasses.replace(
        tuned,
        threshold_slope=slope("threshold", tuned.threshold),
        floor_slope=slope("min2_floor", tuned.min2_floor),
        tuned_size=int(gallery_size),
    )
    finite = [{k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in p.items()} for p in points]
    return fitted, {
        "tuned_size": int(gallery_size),
        "threshold_slope": fitted.threshold_slope,
        "floor_slope": fitted.floor_slope,
        "points": finite,
    }
