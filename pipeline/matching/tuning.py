"""Search thresholds and fusion settings for the competition's F1 on out-of-fold candidates only.

The search is a sequence of cheap, explainable steps whose F1 is each recorded, so a report shows
what every step adds: each signal alone, the weight of the dense fusion, neighbourhood blending, the
union of per-signal thresholds (coordinate ascent), and the min-2 floor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from pipeline.matching.candidates import Candidates
from pipeline.matching.decide import MatchSettings, Min2, decide, union_mask
from pipeline.matching.fusion import BLENDABLE_SIGNALS
from pipeline.matching.evidence import PairContext
from pipeline.matching.pairs import DEFAULT_GROUPS, DEFAULT_THREADS, PAIR_SIGNAL, PairModel, cross_fit
from pipeline.metric import f1_by_group_size, f1_from_pairs, group_sizes

BuildFn = Callable[[MatchSettings], Candidates]
# What the pair model reads about the candidates that BuildFn gives for the same settings.
ContextFn = Callable[[MatchSettings], PairContext]


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


@dataclass
class TuneResult:
    settings: MatchSettings
    steps: dict[str, dict[str, float]]  # step name -> f1/precision/recall (and threshold)
    curves: dict[str, Curve] = field(default_factory=dict)
    pair_model: PairModel | None = None  # fitted on every tuned pair, for later rows
    pair_fold_models: dict[int, PairModel] = field(default_factory=dict)  # fold -> model that never saw it
    candidates: Candidates | None = None  # the tuned candidates, with their out-of-fold pair scores
    rows: np.ndarray | None = None  # the postings tuned on (None: all)


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
        return {"f1": float((2.0 * hits / (n_pred + g)).mean()), "precision": float((hits / n_pred).mean()),
                "recall": float((hits / g).mean()), "rows": int(len(g))}

    def f1(self, mask: np.ndarray) -> float:
        return self.score(mask)["f1"]

    def curve(self, signal: str, grid: np.ndarray, base: np.ndarray | None = None) -> Curve:
        s = self.c.sims[signal]
        rows = [self.score((s >= t) if base is None else (base | (s >= t))) for t in grid]
        return Curve(grid, *(np.array([r[k] for r in rows]) for k in ("f1", "precision", "recall")))


def _pairs_learnable(c: Candidates, labels: np.ndarray, folds: np.ndarray) -> bool:
    """Whether every fold's cross-fitting sees matching and non-matching pairs (with singleton
    groups only, or one fold, the pair model has nothing to learn from)."""
    same = labels[c.query] == labels[c.match]
    fold_of = folds[c.query]
    if len(np.unique(fold_of)) < 2:
        return False
    return all(same[fold_of != f].any() and not same[fold_of != f].all() for f in np.unique(fold_of))


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


def tune(build: BuildFn, labels: np.ndarray, n_thresholds: int = 81, blend_rounds: int = 1,
         union: bool = True, min2: bool = True, fusion_weights: dict[str, float] | None = None,
         weight_grid: tuple[float, ...] = (0.3, 0.5, 0.7), rows: np.ndarray | None = None,
         folds: np.ndarray | None = None, pair_model: bool = False, seed: int = 0,
         context: ContextFn | None = None, pair_groups: Sequence[str] | None = None,
         threads: int = DEFAULT_THREADS, rule_signals: Sequence[str] | None = None,
         learn_rows: np.ndarray | None = None) -> TuneResult:
    """Tune every match setting on out-of-fold candidates.

    Args:
        build: returns the candidates of all out-of-fold galleries for given settings (fusion
            weights and blending; thresholds are not used). It should cache neighbour searches.
        labels: (N,) label of every posting, indexed like the candidates.
        n_thresholds: grid size per signal.
        blend_rounds: largest number of blending rounds tried (0 = no blending).
        union: allow more than one signal in the final rule.
        min2: tune the min-2 floor.
        fusion_weights: fixed image/text weights for ``concat``; empty or None tunes the image share
            over ``weight_grid``.
        rows: (N,) bool, tune on these postings' candidates only (default: all).
        folds: (N,) fold of every posting; needed by the pair model's cross-fitting.
        pair_model: learn the ``pair`` signal (see :mod:`pipeline.matching.pairs`) from the other signals.
        seed: the pair model's random state.
        context: the pair model's :class:`~pipeline.matching.evidence.PairContext` for given settings.
        pair_groups: the pair model's feature groups; default every group with a ``context``, and
            ``sims`` (the one that needs none) without.
        threads: the pair model's threads.
        rule_signals: the signals the decision (union and min-2) may use; None or empty: every signal.
            Those absent from the candidates are ignored, and with none present every signal is used.
        learn_rows: (N,) bool, the postings whose labels the pair model learns from (default ``rows``):
            also unlabelled distractors given labels of their own, known to match no tuned posting.
    """
    if rows is not None:
        full_build = build

        def build(settings: MatchSettings) -> Candidates:
            return full_build(settings).subset(rows)

    steps: dict[str, dict[str, float]] = {}
    curves: dict[str, Curve] = {}
    base = MatchSettings(fusion_weights=dict(fusion_weights or {}))

    c = build(base)
    if "concat" in c.sims and not fusion_weights:
        base.fusion_weights, c = _tune_weights(build, base, c, labels, rows, weight_grid, n_thresholds, steps)
    scorer = Scorer(c, labels, rows)
    for name in sorted(c.sims):
        curves[name] = scorer.curve(name, threshold_grid(c.sims[name], n_thresholds))
        t, _ = curves[name].best
        steps[name] = {**scorer.score(c.sims[name] >= t), "threshold": t}

    blendable = [s for s in BLENDABLE_SIGNALS if s in c.sims]
    if blend_rounds > 0 and blendable:
        target = max(blendable, key=lambda s: curves[s].best[1])
        c, scorer = _tune_blend(build, base, labels, rows, target, blend_rounds, n_thresholds, steps, curves)

    fitted, per_fold = None, {}
    if pair_model and folds is not None and _pairs_learnable(c, labels, folds):
        ctx = context(base) if context is not None else None
        groups = pair_groups if pair_groups is not None else (DEFAULT_GROUPS if ctx is not None else ("sims",))
        c.sims[PAIR_SIGNAL], fitted, per_fold = cross_fit(c, labels, folds, sorted(c.sims), ctx, seed, groups, threads,
                                                          rows if learn_rows is None else learn_rows)
        scorer = Scorer(c, labels, rows)
        curves[PAIR_SIGNAL] = scorer.curve(PAIR_SIGNAL, threshold_grid(c.sims[PAIR_SIGNAL], n_thresholds))
        t, _ = curves[PAIR_SIGNAL].best
        steps[PAIR_SIGNAL] = {**scorer.score(c.sims[PAIR_SIGNAL] >= t), "threshold": t, "groups": list(fitted.groups)}

    allowed = [s for s in (rule_signals or ()) if s in c.sims] or list(c.sims)
    settings, min2_rule = _tune_rule(scorer, base, curves, allowed, n_thresholds, union, min2, steps)
    curves["fused"] = _shift_curve(scorer, settings, min2_rule)
    return TuneResult(settings=settings, steps=steps, curves=curves, pair_model=fitted, pair_fold_models=per_fold,
                      candidates=c, rows=rows)


def _tune_rule(scorer: Scorer, base: MatchSettings, curves: dict[str, Curve], allowed: Sequence[str],
               n_thresholds: int, union: bool, min2: bool, steps: dict[str, dict[str, float]]
               ) -> tuple[MatchSettings, Min2]:
    """The decision on the candidates: the best ``allowed`` signal alone, then the union of their
    thresholds and the min-2 floor (each step's F1 recorded in ``steps``)."""
    c = scorer.c
    solo = {name: curves[name].best for name in allowed}
    best_signal = max(solo, key=lambda s: solo[s][1])
    settings = dataclasses.replace(base, thresholds={best_signal: solo[best_signal][0]})
    grids = {name: threshold_grid(c.sims[name], n_thresholds) for name in allowed}
    min2_rule = Min2(c, best_signal)  # the threshold-free sort of min-2, once per tune
    if union and len(grids) > 1:
        settings = _coordinate_ascent(scorer, settings, grids, min2_rule, passes=2)
        steps["union"] = {**scorer.score(decide(c, settings, min2_rule)), "signals": len(settings.thresholds)}
    if min2:
        settings = _tune_min2(scorer, settings, min2_rule, grids[best_signal])
        if union and len(grids) > 1:
            settings = _coordinate_ascent(scorer, settings, grids, min2_rule, passes=1)
        steps["min2"] = {**scorer.score(decide(c, settings, min2_rule)), "floor": settings.min2_floor}
    steps["final"] = scorer.score(decide(c, settings, min2_rule))
    return settings, min2_rule


def _tune_weights(build, base, c, labels, rows, grid, n_thresholds, steps):
    """Pick the image share of the dense fusion by the F1 of ``concat`` alone."""
    best = None
    for w_img in grid:
        weights = {"image": float(w_img), "text": float(1.0 - w_img)}
        cw = build(dataclasses.replace(base, fusion_weights=weights))
        scorer = Scorer(cw, labels, rows)
        _, f1 = scorer.curve("concat", threshold_grid(cw.sims["concat"], n_thresholds)).best
        steps[f"concat_w{w_img:.2f}"] = {"f1": f1}
        if best is None or f1 > best[0]:
            best = (f1, weights, cw)
    return best[1], best[2]


def _tune_blend(build, base, labels, rows, target, max_rounds, n_thresholds, steps, curves):
    """Try blending thresholds around the target signal's own best threshold, for 1..max_rounds rounds."""
    t0, _ = curves[target].best
    base.blend_signal = target
    best = None
    for rounds in range(1, max_rounds + 1):
        for dt in (-0.15, -0.1, -0.05, 0.0, 0.05):
            t_blend = float(t0 + dt)
            cb = build(dataclasses.replace(base, blend_rounds=rounds, blend_threshold=t_blend))
            sb = Scorer(cb, labels, rows)
            curve = sb.curve("blend", threshold_grid(cb.sims["blend"], n_thresholds))
            if best is None or curve.best[1] > best[0]:
                best = (curve.best[1], rounds, t_blend, cb, sb, curve)
    f1, rounds, t_blend, cb, sb, curve = best
    base.blend_rounds, base.blend_threshold = rounds, t_blend
    curves["blend"] = curve
    t, _ = curve.best
    steps["blend"] = {
        **sb.score(cb.sims["blend"] >= t), "threshold": t, "signal": target, "rounds": rounds, "blend_threshold": t_blend
    }
    return cb, sb


def _coordinate_ascent(scorer: Scorer, settings: MatchSettings, grids: dict[str, np.ndarray], min2: Min2,
                       passes: int) -> MatchSettings:
    """Per signal in turn, pick its threshold (or off) that maximises the F1 of the whole rule."""
    c = scorer.c
    best_f1 = scorer.f1(decide(c, settings, min2))
    for _ in range(passes):
        improved = False
        for name, grid in grids.items():
            others = dataclasses.replace(settings, thresholds={k: v for k, v in settings.thresholds.items() if k != name})
            rest = union_mask(c, others.thresholds)
            s = c.sims[name]
            for t in [math.inf, *grid]:
                mask = rest | (s >= t) if not math.isinf(t) else rest
                if not mask.any() and math.isinf(t):
                    continue
                if others.min2_on:
                    mask = mask | min2.pairs(mask, others.min2_floor)
                f1 = scorer.f1(mask)
                if f1 > best_f1 + 1e-9:
                    best_f1, improved = f1, True
                    thresholds = dict(others.thresholds)
                    if not math.isinf(t):
                        thresholds[name] = float(t)
                    settings = dataclasses.replace(settings, thresholds=thresholds)
        if not improved:
            break
    return settings


def _tune_min2(scorer: Scorer, settings: MatchSettings, min2: Min2, grid: np.ndarray) -> MatchSettings:
    """The floor of min-2 on ``min2.signal`` (or min-2 off) that maximises F1 over the union."""
    union = decide(scorer.c, settings, min2)
    best = (scorer.f1(union), math.inf)
    lonely, lonely_sim = min2.lonely(union)
    for floor in grid:
        mask = union.copy()
        mask[lonely[lonely_sim >= floor]] = True
        f1 = scorer.f1(mask)
        if f1 > best[0] + 1e-9:
            best = (f1, float(floor))
    if math.isinf(best[1]):
        return settings
    return dataclasses.replace(settings, min2_signal=min2.signal, min2_floor=best[1])


def _shift_curve(scorer: Scorer, settings: MatchSettings, min2: Min2, span: float = 0.2, n: int = 41) -> Curve:
    """F1 of the fused rule with every union threshold moved by the same shift."""
    shifts = np.linspace(-span, span, n)
    rows = []
    for d in shifts:
        shifted = dataclasses.replace(settings, thresholds={k: v + d for k, v in settings.thresholds.items()})
        rows.append(scorer.score(decide(scorer.c, shifted, min2)))
    return Curve(shifts, *(np.array([r[k] for r in rows]) for k in ("f1", "precision", "recall")))


SIZE_FACTORS = (0.25, 0.5, 2.0, 4.0, 8.0)  # gallery sizes (times the tuned one) the slopes are fitted on


def calibrate_size(result: TuneResult, labels: np.ndarray, gallery_size: int,
                   factors: Sequence[float] = SIZE_FACTORS, n_thresholds: int = 81) -> tuple[MatchSettings, dict]:
    """Fit how far each tuned threshold (and the min-2 floor) should move per doubling of the gallery.

    For a gallery r times as large, of other groups like the tuned ones, each query meets r times
    the non-matches above any threshold and the same matches. So the tuned rule's thresholds are
    tuned again, one at a time (the rule's signals fixed), with each predicted non-match counted r
    times (:class:`Scorer` ``distractors``), for every r in ``factors``; each threshold's slope is
    the least-squares line through its tuned value against log2(r).

    Args:
        result: a :func:`tune` result (its candidates carry the out-of-fold pair scores).
        gallery_size: postings each tuned query was searched among (the train set for ``folds.gallery=all``).

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
        points.append({"factor": float(r), "thresholds": moved.thresholds, "min2_floor": moved.min2_floor,
                       "f1_tuned": scorer.f1(decide(c, settings, min2)), "f1_moved": scorer.f1(decide(c, moved, min2))})
    x = np.log2([p["factor"] for p in points])
    slopes = {}
    for key in [*settings.thresholds, *(["min2_floor"] if min2 is not None else [])]:
        base = settings.min2_floor if key == "min2_floor" else settings.thresholds[key]
        d = np.array([(p["min2_floor"] if key == "min2_floor" else p["thresholds"][key]) - base for p in points])
        slopes[key] = float((x * d).sum() / (x * x).sum())
    calibrated = dataclasses.replace(settings, size_slopes=slopes, tuned_size=int(gallery_size))
    return calibrated, {"tuned_size": int(gallery_size), "slopes": slopes, "points": points}


def tuned_match_rate(result: TuneResult) -> float:
    """Mean predicted matches per tuned posting (itself excluded) under ``result.settings``: the
    :attr:`~pipeline.matching.decide.MatchSettings.match_rate` of transductive calibration."""
    c = result.candidates
    n_queries = c.n if result.rows is None else int(np.sum(result.rows))
    return float(decide(c, result.settings).sum()) / max(n_queries, 1)


def _retune_values(scorer: Scorer, settings: MatchSettings, grids: dict[str, np.ndarray], min2: Min2 | None,
                   floor_grid: np.ndarray | None, passes: int = 2) -> MatchSettings:
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


def cross_validated(build: BuildFn, labels: np.ndarray, folds: np.ndarray, **tune_kwargs) -> dict[str, float]:
    """An honest estimate of the tuned rule: tune on K-1 folds' queries, score the held-out fold.

    The plain tuned F1 is measured on the rows it was tuned on; this one never is.
    """
    totals = {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    per_fold = []
    per_posting = np.full(len(labels), np.nan)
    for fold in np.unique(folds):
        s = held_out_score(build, labels, folds, int(fold), per_posting=per_posting, **tune_kwargs)
        per_fold.append(round(s["f1"], 4))
        for key in totals:
            totals[key] += s[key] * s["rows"]
    n = len(labels)
    return {**{k: v / n for k, v in totals.items()}, "rows": n, "per_fold_f1": per_fold,
            "by_group_size": f1_by_group_size(per_posting, group_sizes(labels))}


def held_out_score(build: BuildFn, labels: np.ndarray, folds: np.ndarray, fold: int,
                   per_posting: np.ndarray | None = None, **tune_kwargs) -> dict[str, float]:
    """F1, precision and recall of fold ``fold``'s postings under the rule tuned on the other folds;
    each held-out posting's own F1 goes into ``per_posting`` when given."""
    held_out = folds == fold
    result = tune(build, labels, rows=~held_out, folds=folds, **tune_kwargs)
    c = build(result.settings).subset(held_out)
    if result.pair_model is not None:
        context = tune_kwargs.get("context")
        c.sims[PAIR_SIGNAL] = result.pair_model.predict(c, context(result.settings) if context else None)
    scorer = Scorer(c, labels, held_out)
    mask = decide(c, result.settings)
    if per_posting is not None:
        per_posting[held_out] = f1_from_pairs(c.query[mask], scorer.same[mask], scorer.group_size, subset=held_out,
                                              per_posting=True)
    return scorer.score(mask)
