"""Thresholds that move with the gallery's size.

Thresholds tuned on galleries of N postings lose precision on a gallery twice as large: it puts
more distractors above them. :func:`calibrate_size` fits, per threshold and for the min-2 floor, a
move per doubling of the gallery, which :meth:`~pipeline.matching.decide.MatchSettings.at_size`
applies at prediction time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pipeline.matching.decide import MatchSettings, Min2, decide, union_mask
from pipeline.matching.group_tuning import calibrate_group_size
from pipeline.matching.groups import GroupSettings
from pipeline.matching.pair_model import PAIR_SIGNAL
from pipeline.matching.scoring import Scorer, threshold_grid
from pipeline.matching.tuning import TuneResult

SIZE_FACTORS = (0.25, 0.5, 2.0, 4.0, 8.0)  # gallery sizes (times the tuned one) the slopes are fitted on


def calibrate_size(
    result: TuneResult,
    labels: np.ndarray,
    gallery_size: int,
    factors: Sequence[float] = SIZE_FACTORS,
    n_thresholds: int = 81,
) -> tuple[MatchSettings, dict]:
    """Fit how far each tuned threshold (and the min-2 floor) should move per doubling of the gallery.

    For a gallery r times as large, of other groups like the tuned ones, each query meets r times
    the non-matches above any threshold and the same matches. So the tuned rule's thresholds are
    tuned again, one at a time (the rule's signals fixed), with each predicted non-match counted r
    times (:class:`Scorer` ``distractors``), for every r in ``factors``; each threshold's slope is
    the least-squares line through its tuned value against log2(r).

    Args:
        result: a :func:`tune` result (its candidates carry the out-of-fold pair scores).
        gallery_size: postings each tuned query was searched among (the train set for ``folds.gallery=all``).

    A group rule's cut and floor get slopes of their own
    (:func:`~pipeline.matching.group_tuning.calibrate_group_size`).

    Returns:
        The settings with ``size_slopes`` and ``tuned_size``, and a record of the fit.
    """
    c, settings = result.candidates, result.settings
    grids = {name: threshold_grid(c.sims[name], n_thresholds) for name in settings.thresholds}
    min2 = Min2(c, settings.min2_signal) if settings.min2_on else None
    floor_grid = threshold_grid(c.sims[settings.min2_signal], n_thresholds) if min2 is not None else None
    points = []
    for r in factors:
        scorer = Scorer(c, labels, result.rows, distractors=r)
        moved = _retune_values(scorer, settings, grids, min2, floor_grid)
        points.append(
            {
                "factor": float(r),
                "thresholds": moved.thresholds,
                "min2_floor": moved.min2_floor,
                "f1_tuned": scorer.f1(decide(c, settings, min2)),
                "f1_moved": scorer.f1(decide(c, moved, min2)),
            }
        )
    x = np.log2([p["factor"] for p in points])
    slopes = {}
    for key in [*settings.thresholds, *(["min2_floor"] if min2 is not None else [])]:
        base = settings.min2_floor if key == "min2_floor" else settings.thresholds[key]
        d = np.array([(p["min2_floor"] if key == "min2_floor" else p["thresholds"][key]) - base for p in points])
        slopes[key] = float((x * d).sum() / (x * x).sum())
    calibrated = dataclasses.replace(settings, size_slopes=slopes, tuned_size=int(gallery_size))
    record = {"tuned_size": int(gallery_size), "slopes": slopes, "points": points}
    if GroupSettings.from_dict(settings.group).on:
        grouped, record["groups"] = calibrate_group_size(
            c, labels, c.sims[PAIR_SIGNAL], calibrated, result.rows, gallery_size
        )
        calibrated.group = grouped.to_dict()
    return calibrated, record


def _retune_values(
    scorer: Scorer,
    settings: MatchSettings,
    grids: dict[str, np.ndarray],
    min2: Min2 | None,
    floor_grid: np.ndarray | None,
    passes: int = 2,
) -> MatchSettings:
    """Coordinate ascent over the values of the rule's thresholds and floor, its signals kept."""
    c = scorer.c
    best = scorer.f1(decide(c, settings, min2))
    for _ in range(passes):
        improved = False
        for name, grid in grids.items():
            rest = union_mask(c, {k: v for k, v in settings.thresholds.items() if k != name})
            s = c.sims[name]
            for t in grid:
                mask = rest | (s >= t)
                if min2 is not None:
                    mask = mask | min2.pairs(mask, settings.min2_floor)
                f1 = scorer.f1(mask)
                if f1 > best + 1e-9:
                    best, improved = f1, True
                    settings = dataclasses.replace(settings, thresholds={**settings.thresholds, name: float(t)})
        if floor_grid is not None:
            union = union_mask(c, settings.thresholds)
            idx, sim = min2.lonely(union)
            for floor in floor_grid:
                mask = union.copy()
                mask[idx[sim >= floor]] = True
                f1 = scorer.f1(mask)
                if f1 > best + 1e-9:
                    best, improved = f1, True
                    settings = dataclasses.replace(settings, min2_floor=float(floor))
        if not improved:
            break
    return settings
