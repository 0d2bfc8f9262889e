"""Search thresholds and fusion settings for the competition's F1 on out-of-fold candidates only.

The search is a sequence of cheap, explainable steps whose F1 is each recorded, so a report shows
what every step adds: each signal alone, the weight of the dense fusion, neighbourhood blending, the
union of per-signal thresholds (coordinate ascent), and the min-2 floor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.matching.candidates import Candidates
from pipeline.matching.decide import MatchSettings, Min2, decide, union_mask
from pipeline.matching.fusion import BLENDABLE_SIGNALS, FusionConfig
from pipeline.matching.group_tuning import held_out_groups, tune_groups
from pipeline.matching.groups import GroupConfig, GroupSettings
from pipeline.matching.pair_features import PairContext
from pipeline.matching.pair_model import DEFAULT_THREADS, PAIR_SIGNAL, PairModel, PairModelConfig, cross_fit
from pipeline.matching.scoring import Curve, Scorer, threshold_grid
from pipeline.metric import f1_by_group_size, f1_from_pairs, group_sizes
from pipeline.settings import require

BuildFn = Callable[[MatchSettings], Candidates]
# What the pair model reads about the candidates that BuildFn gives for the same settings.
ContextFn = Callable[[MatchSettings], PairContext]
# Image shares of the dense fusion tried when ``fusion.weights`` is empty.
WEIGHT_GRID = (0.3, 0.5, 0.7)


@dataclass
class DecisionConfig:
    """What the tuned decision may use, and what tuning estimates besides it."""

    n_thresholds: int = 81  # grid size per signal
    union: bool = True  # allow more than one signal in the final rule
    min2: bool = True  # tune the min-2 floor
    # Move every threshold with the size of the gallery matched, by a slope fitted on sub-galleries
    # of train (see pipeline.matching.size_calibration).
    size_calibration: bool = True
    cv_estimate: bool = True  # also tune on K-1 folds and score the held-out one, per fold

    def __post_init__(self) -> None:
        require(self.n_thresholds >= 2, "n_thresholds", ">= 2", self.n_thresholds)


@dataclass(frozen=True)
class TuneSetup:
    """Everything :func:`tune` reads besides the candidates, labels and folds; the stage and the
    benchmarks build it from a run's config with :meth:`from_config`."""

    decision: DecisionConfig = field(default_factory=DecisionConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    pair: PairModelConfig = field(default_factory=PairModelConfig)
    seed: int = 0  # the pair model's random state
    threads: int = DEFAULT_THREADS  # the pair model's threads
    group: GroupConfig = field(default_factory=GroupConfig)  # the group decision after the pairs

    @classmethod
    def from_config(cls, cfg: Any) -> TuneSetup:
        """The setup of a run's :class:`~pipeline.config.Config` (its ``decision``, ``fusion``,
        ``pair``, ``seed``, ``threads`` and ``group``)."""
        return cls(cfg.decision, cfg.fusion, cfg.pair, cfg.seed, cfg.threads, cfg.group)


@dataclass
class TuneResult:
    settings: MatchSettings
    steps: dict[str, dict[str, float]]  # step name -> f1/precision/recall (and threshold)
    curves: dict[str, Curve] = field(default_factory=dict)
    pair_model: PairModel | None = None  # fitted on every tuned pair, for later rows
    pair_fold_models: dict[int, PairModel] = field(default_factory=dict)  # fold -> model that never saw it
    candidates: Candidates | None = None  # the tuned candidates, with their out-of-fold pair scores
    rows: np.ndarray | None = None  # the postings tuned on (None: all)


def _pairs_learnable(c: Candidates, labels: np.ndarray, folds: np.ndarray) -> bool:
    """Whether every fold's cross-fitting sees matching and non-matching pairs (with singleton
    groups only, or one fold, the pair model has nothing to learn from)."""
    same = labels[c.query] == labels[c.match]
    fold_of = folds[c.query]
    if len(np.unique(fold_of)) < 2:
        return False
    return all(same[fold_of != f].any() and not same[fold_of != f].all() for f in np.unique(fold_of))


def tune(
    build: BuildFn,
    labels: np.ndarray,
    folds: np.ndarray | None = None,
    setup: TuneSetup = TuneSetup(),
    *,
    rows: np.ndarray | None = None,
    context: ContextFn | None = None,
    learn_rows: np.ndarray | None = None,
) -> TuneResult:
    """Tune every match setting on out-of-fold candidates.

    Args:
        build: returns the candidates of all out-of-fold galleries for given settings (fusion
            weights and blending; thresholds are not used). It should cache neighbour searches.
        labels: (N,) label of every posting, indexed like the candidates.
        folds: (N,) fold of every posting; needed by the pair model's cross-fitting.
        setup: the decision's search space, the fusion and the pair model (see :class:`TuneSetup`).
        rows: (N,) bool, tune on these postings' candidates only (default: all).
        context: the pair model's :class:`~pipeline.matching.pair_features.PairContext` for given
            settings; without one the pair model reads the similarities alone.
        learn_rows: (N,) bool, the postings whose labels the pair model learns from (default ``rows``):
            also unlabelled distractors given labels of their own, known to match no tuned posting.
    """
    if rows is not None:
        full_build = build

        def build(settings: MatchSettings) -> Candidates:
            return full_build(settings).subset(rows)

    decision, fusion = setup.decision, setup.fusion
    steps: dict[str, dict[str, float]] = {}
    curves: dict[str, Curve] = {}
    base = MatchSettings(fusion_weights=dict(fusion.weights))
    c = build(base)
    if "concat" in c.sims and not fusion.weights:
        base.fusion_weights, c = _tune_weights(build, base, c, labels, rows, decision.n_thresholds, steps)
    scorer = Scorer(c, labels, rows)
    for name in sorted(c.sims):
        curves[name] = scorer.curve(name, threshold_grid(c.sims[name], decision.n_thresholds))
        t, _ = curves[name].best
        steps[name] = {**scorer.score(c.sims[name] >= t), "threshold": t}

    blendable = [s for s in BLENDABLE_SIGNALS if s in c.sims]
    if fusion.blend_rounds > 0 and blendable:
        target = max(blendable, key=lambda s: curves[s].best[1])
        c, scorer = _tune_blend(
            build, base, labels, rows, target, fusion.blend_rounds, decision.n_thresholds, steps, curves
        )

    fitted, per_fold = None, {}
    if setup.pair.enabled and folds is not None and _pairs_learnable(c, labels, folds):
        fitted, per_fold = _fit_pair_model(
            c,
            labels,
            folds,
            setup,
            context(base) if context is not None else None,
            rows if learn_rows is None else learn_rows,
        )
        scorer = Scorer(c, labels, rows)
        curves[PAIR_SIGNAL] = scorer.curve(PAIR_SIGNAL, threshold_grid(c.sims[PAIR_SIGNAL], decision.n_thresholds))
        t, _ = curves[PAIR_SIGNAL].best
        steps[PAIR_SIGNAL] = {**scorer.score(c.sims[PAIR_SIGNAL] >= t), "threshold": t, "groups": list(fitted.groups)}

    settings, min2_rule = _tune_rule(scorer, base, curves, decision, steps)
    curves["fused"] = _shift_curve(scorer, settings, min2_rule)
    result = TuneResult(
        settings=settings,
        steps=steps,
        curves=curves,
        pair_model=fitted,
        pair_fold_models=per_fold,
        candidates=c,
        rows=rows,
    )
    return add_groups(result, labels, setup.group)


# How far the group step may lower the out-of-fold F1 and still be kept: its gain shows in bigger
# galleries, not at the tuning size (on 24 rotated dev splits it gained at 2x on every one while its
# out-of-fold difference ranged from -0.008 to +0.011; docs/groups.md).
GROUP_TOLERANCE = 0.01


def add_groups(result: TuneResult, labels: np.ndarray, group: GroupConfig) -> TuneResult:
    """``result`` with the group decision ``group`` tuned after its pairs (a new result sharing the
    candidates and models); its F1 becomes the final step's, the pairs' stays as ``pairs_final``.

    The group decision is left out when it lowers the out-of-fold F1 by more than
    :data:`GROUP_TOLERANCE` (recorded with ``kept: false``). Rule ``none`` gives ``result`` itself;
    without a pair score the skip is recorded in the steps."""
    if group.rule == "none":
        return result
    c = result.candidates
    if PAIR_SIGNAL not in c.sims:
        return dataclasses.replace(result, steps={**result.steps, "groups": {"skipped": "no pair model"}})
    accepted = decide(c, result.settings)
    grouped, record = tune_groups(c, labels, c.sims[PAIR_SIGNAL], accepted, group, result.rows)
    if record["f1"] < result.steps["final"]["f1"] - GROUP_TOLERANCE:
        return dataclasses.replace(result, steps={**result.steps, "groups": {**record, "kept": False}})
    settings = dataclasses.replace(result.settings, group=grouped.to_dict())
    steps = {**result.steps, "pairs_final": result.steps["final"], "groups": record, "final": record}
    return dataclasses.replace(result, settings=settings, steps=steps)


def _fit_pair_model(
    c: Candidates,
    labels: np.ndarray,
    folds: np.ndarray,
    setup: TuneSetup,
    context: PairContext | None,
    learn_rows: np.ndarray | None,
) -> tuple[PairModel, dict[int, PairModel]]:
    """Cross-fit the pair model on ``c`` and add its out-of-fold scores to ``c.sims``; without a
    context it reads the similarities alone."""
    groups = setup.pair.features if context is not None else ("sims",)
    c.sims[PAIR_SIGNAL], fitted, per_fold = cross_fit(
        c, labels, folds, sorted(c.sims), context, setup.seed, groups, setup.threads, learn_rows, setup.pair.trees
    )
    return fitted, per_fold


def _tune_rule(
    scorer: Scorer,
    base: MatchSettings,
    curves: dict[str, Curve],
    decision: DecisionConfig,
    steps: dict[str, dict[str, float]],
) -> tuple[MatchSettings, Min2]:
    """The decision on the candidates: the best signal alone, then the union of the signals'
    thresholds and the min-2 floor (each step's F1 recorded in ``steps``)."""
    c = scorer.c
    n_thresholds, union, min2 = decision.n_thresholds, decision.union, decision.min2
    solo = {name: curves[name].best for name in c.sims}
    best_signal = max(solo, key=lambda s: solo[s][1])
    settings = dataclasses.replace(base, thresholds={best_signal: solo[best_signal][0]})
    grids = {name: threshold_grid(c.sims[name], n_thresholds) for name in c.sims}
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


def _tune_weights(build, base, c, labels, rows, n_thresholds, steps):
    """Pick the image share of the dense fusion by the F1 of ``concat`` alone."""
    best = None
    for w_img in WEIGHT_GRID:
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
        **sb.score(cb.sims["blend"] >= t),
        "threshold": t,
        "signal": target,
        "rounds": rounds,
        "blend_threshold": t_blend,
    }
    return cb, sb


def _coordinate_ascent(
    scorer: Scorer, settings: MatchSettings, grids: dict[str, np.ndarray], min2: Min2, passes: int
) -> MatchSettings:
    """Per signal in turn, pick its threshold (or off) that maximises the F1 of the whole rule."""
    c = scorer.c
    best_f1 = scorer.f1(decide(c, settings, min2))
    for _ in range(passes):
        improved = False
        for name, grid in grids.items():
            others = dataclasses.replace(
                settings, thresholds={k: v for k, v in settings.thresholds.items() if k != name}
            )
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


def cross_validated(
    build: BuildFn,
    labels: np.ndarray,
    folds: np.ndarray,
    setup: TuneSetup = TuneSetup(),
    context: ContextFn | None = None,
) -> dict[str, float]:
    """An honest estimate of the tuned rule: tune on K-1 folds' queries, score the held-out fold.

    The plain tuned F1 is measured on the rows it was tuned on; this one never is.
    """
    totals = {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    per_fold = []
    per_posting = np.full(len(labels), np.nan)
    for fold in np.unique(folds):
        s = held_out_score(build, labels, folds, int(fold), setup, context, per_posting=per_posting)
        per_fold.append(round(s["f1"], 4))
        for key in totals:
            totals[key] += s[key] * s["rows"]
    n = len(labels)
    return {
        **{k: v / n for k, v in totals.items()},
        "rows": n,
        "per_fold_f1": per_fold,
        "by_group_size": f1_by_group_size(per_posting, group_sizes(labels)),
    }


def held_out_score(
    build: BuildFn,
    labels: np.ndarray,
    folds: np.ndarray,
    fold: int,
    setup: TuneSetup = TuneSetup(),
    context: ContextFn | None = None,
    per_posting: np.ndarray | None = None,
) -> dict[str, float]:
    """F1, precision and recall of fold ``fold``'s postings under the rule tuned on the other folds;
    each held-out posting's own F1 goes into ``per_posting`` when given."""
    held_out = folds == fold
    result = tune(build, labels, folds, setup, rows=~held_out, context=context)
    c = build(result.settings).subset(held_out)
    if result.pair_model is not None:
        c.sims[PAIR_SIGNAL] = result.pair_model.predict(c, context(result.settings) if context else None)
    scorer = Scorer(c, labels, held_out)
    mask = decide(c, result.settings)
    group = GroupSettings.from_dict(result.settings.group)
    if group.on:
        figures, f1 = held_out_groups(c, labels, c.sims[PAIR_SIGNAL], mask, group, held_out)
        if per_posting is not None:
            per_posting[held_out] = f1[held_out]
        return figures
    if per_posting is not None:
        per_posting[held_out] = f1_from_pairs(
            c.query[mask], scorer.same[mask], scorer.group_size, subset=held_out, per_posting=True
        )
    return scorer.score(mask)
