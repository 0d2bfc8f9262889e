"""Tuning against brute force on tiny cases: coordinate ascent, min-2, and the folds it relies on."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pipeline.data.folds import make_folds
from pipeline.matching.candidates import Candidates
from pipeline.matching.decide import MatchSettings, Min2, decide
from pipeline.matching.fusion import FusionConfig
from pipeline.matching.pair_model import PairModelConfig
from pipeline.matching.scoring import Scorer, threshold_grid
from pipeline.matching.size_calibration import calibrate_size
from pipeline.matching.tuning import DecisionConfig, TuneSetup, _coordinate_ascent, _tune_min2, tune
from pipeline.metric import f1_from_sets


def setup(n_thresholds: int, pair: bool = False) -> TuneSetup:
    """Tuning without blending (the candidates are fixed), with or without the pair model."""
    return TuneSetup(
        DecisionConfig(n_thresholds=n_thresholds),
        FusionConfig(blend_rounds=0),
        PairModelConfig(enabled=pair),
        threads=1,
    )


def tiny_candidates(seed: int, n: int = 24, signals=("a", "b")) -> tuple[Candidates, np.ndarray]:
    """Every ordered pair of n postings in groups of 1-3, with noisy similarities that lean towards
    true matches; each signal misses some pairs (-inf), as top-k lists do."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n), rng.integers(1, 4, size=n))[:n]
    q, m = np.array([(i, j) for i in range(n) for j in range(n) if i != j]).T
    same = labels[q] == labels[m]
    sims = {}
    for s in signals:
        x = np.round(np.clip(0.45 + 0.3 * same + 0.2 * rng.standard_normal(len(q)), 0, 1), 2).astype(np.float32)
        x[rng.random(len(q)) < 0.2] = -np.inf
        sims[s] = x
    return Candidates(q, m, sims, n), labels


def reference_f1(c: Candidates, labels: np.ndarray, mask: np.ndarray) -> float:
    """Kaggle's metric on Python sets, each posting's set holding itself."""
    pred = [{i} | set(c.match[mask & (c.query == i)].tolist()) for i in range(c.n)]
    true = [set(np.flatnonzero(labels == labels[i]).tolist()) for i in range(c.n)]
    return f1_from_sets(pred, true)["f1"]


def union_of(c: Candidates, thresholds: dict[str, float]) -> MatchSettings:
    return MatchSettings(thresholds={k: v for k, v in thresholds.items() if not math.isinf(v)})


@pytest.mark.parametrize("seed", range(4))
def test_coordinate_ascent_ends_where_no_single_threshold_change_helps(seed):
    c, labels = tiny_candidates(seed)
    grids = {s: threshold_grid(c.sims[s], 7) for s in c.sims}
    scorer = Scorer(c, labels)
    start = MatchSettings(thresholds={"a": float(grids["a"][3])})
    tuned = _coordinate_ascent(scorer, start, grids, Min2(c, "a"), passes=10)
    f1 = reference_f1(c, labels, decide(c, tuned))
    # Brute force over each coordinate in turn, the other held: nothing beats the tuned rule.
    for name, grid in grids.items():
        for t in [math.inf, *grid]:
            trial = {**tuned.thresholds, name: float(t)}
            if all(math.isinf(v) for v in trial.values()):
                continue
            assert reference_f1(c, labels, decide(c, union_of(c, trial))) <= f1 + 1e-9
    # And the union is at least as good as the best single signal at its best threshold.
    best_single = max(reference_f1(c, labels, c.sims[s] >= t) for s in grids for t in grids[s])
    assert f1 >= best_single - 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_min2_floor_is_the_brute_force_best(seed):
    c, labels = tiny_candidates(seed)
    scorer = Scorer(c, labels)
    grid = threshold_grid(c.sims["a"], 15)
    union = MatchSettings(thresholds={"a": 0.8, "b": 0.85})
    tuned = _tune_min2(scorer, union, Min2(c, "a"), grid)
    candidates = [union] + [
        MatchSettings(thresholds=union.thresholds, min2_signal="a", min2_floor=float(f)) for f in grid
    ]
    brute = max(reference_f1(c, labels, decide(c, s)) for s in candidates)
    assert reference_f1(c, labels, decide(c, tuned)) == pytest.approx(brute, abs=1e-9)


def test_min2_gives_each_lonely_posting_its_best_pair_above_the_floor():
    c, labels = tiny_candidates(7)
    settings = MatchSettings(thresholds={"a": 0.9}, min2_signal="b", min2_floor=0.3)
    mask = decide(c, settings)
    union = c.sims["a"] >= 0.9
    for i in range(c.n):
        added = mask & ~union & (c.query == i)
        mine = (c.query == i) & np.isfinite(c.sims["b"])
        if union[c.query == i].any() or not mine.any() or c.sims["b"][mine].max() < 0.3:
            assert not added.any()
        else:
            assert added.sum() == 1 and c.sims["b"][added][0] == c.sims["b"][mine].max()


def test_tuned_f1_is_what_decide_scores():
    c, labels = tiny_candidates(3, n=40)
    result = tune(lambda s: c, labels, setup=setup(11))
    assert result.steps["final"]["f1"] == pytest.approx(reference_f1(c, labels, decide(c, result.settings)))


@pytest.mark.parametrize(("n_splits", "seed"), list(itertools.product((2, 3, 5), range(3))))
def test_folds_never_split_a_group(n_splits, seed):
    labels = np.random.default_rng(seed).integers(0, 30, size=200)
    folds = make_folds(labels, n_splits, seed)
    for label in np.unique(labels):
        assert len(np.unique(folds[labels == label])) == 1
    assert sorted(np.unique(folds)) == list(range(n_splits))


def test_settings_move_with_the_gallery_size_and_survive_json():
    s = MatchSettings(
        thresholds={"a": 0.5, "b": 0.8},
        min2_signal="a",
        min2_floor=0.3,
        size_slopes={"a": 0.02, "min2_floor": -0.01},
        tuned_size=1000,
    )
    assert s.at_size(1000) is s
    big = s.at_size(4000)  # two doublings
    assert big.thresholds == pytest.approx({"a": 0.54, "b": 0.8}) and big.min2_floor == pytest.approx(0.28)
    assert s.at_size(500).thresholds["a"] == pytest.approx(0.48)
    assert s.at_size(10**9).thresholds["a"] == pytest.approx(0.5 + 0.02 * 3)  # the extrapolation stops
    assert MatchSettings.from_dict(s.to_dict()) == s
    old = {k: v for k, v in s.to_dict().items() if k not in ("size_slopes", "tuned_size")}
    assert MatchSettings.from_dict(old).at_size(4000).thresholds == s.thresholds  # files from before: no move


def test_weighted_distractors_match_a_gallery_with_copies_of_its_other_groups():
    """Scoring non-matches twice is exactly the metric on a gallery where every non-match a query
    predicts has a twin from a copied group."""
    c, labels = tiny_candidates(0, n=18)
    mask = c.sims["a"] >= 0.5
    weighted = Scorer(c, labels, distractors=2.0).score(mask)
    same = labels[c.query] == labels[c.match]
    twin = c.match + c.n  # each predicted non-match gets a second, copied one
    q = np.r_[c.query[mask], c.query[mask & ~same]]
    m = np.r_[c.match[mask], twin[mask & ~same]]
    all_labels = np.r_[labels, labels + labels.max() + 1]  # the copies are other groups
    pred = [{i} | set(m[q == i].tolist()) for i in range(c.n)]
    true = [set(np.flatnonzero(all_labels == labels[i]).tolist()) for i in range(c.n)]
    reference = f1_from_sets(pred, true)
    assert weighted["f1"] == pytest.approx(reference["f1"]) and weighted["precision"] == pytest.approx(
        reference["precision"]
    )


def test_size_calibration_raises_thresholds_for_larger_galleries():
    c, labels = tiny_candidates(3, n=60)
    result = tune(lambda s: c, labels, setup=setup(41))
    settings, fit = calibrate_size(result, labels, gallery_size=60, n_thresholds=41)
    assert settings.tuned_size == 60 and settings.thresholds == result.settings.thresholds
    assert set(settings.size_slopes) == set(settings.thresholds) | ({"min2_floor"} if settings.min2_on else set())
    assert sum(settings.size_slopes.values()) > 0  # more distractors: stricter
    for p in fit["points"]:  # each moved rule is at least as good as the tuned one at its size
        assert p["f1_moved"] >= p["f1_tuned"] - 1e-12


@pytest.mark.parametrize("learn_all", [False, True])
def test_the_pair_model_learns_from_learn_rows_and_is_scored_on_rows(monkeypatch, learn_all):
    """Unlabelled distractors (each its own group) may be learned from, never scored."""
    import pipeline.matching.tuning as tuning

    c, labels = tiny_candidates(6, n=60)
    folds = make_folds(labels, 3, 0)
    rows = np.arange(60) < 45
    seen = {}

    def spy(*args):
        seen["rows"] = args[8]
        return real(*args)

    real = tuning.cross_fit
    monkeypatch.setattr(tuning, "cross_fit", spy)
    learn = np.ones(60, bool) if learn_all else None
    result = tune(lambda s: c, labels, folds, setup(21, pair=True), rows=rows, learn_rows=learn)
    np.testing.assert_array_equal(seen["rows"], learn if learn_all else rows)
    assert result.steps["final"]["rows"] == 45
