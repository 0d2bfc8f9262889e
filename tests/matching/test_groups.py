"""The group decision: clustering against scipy's dense reference, the chain and clique cases, the
metric over clusters against Kaggle's, the cut search against brute force, and no N x N anywhere."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from pipeline.config import ConfigError, load_config
from pipeline.matching.candidates import Candidates
from pipeline.matching.decide import MatchSettings
from pipeline.matching.group_tuning import FLOORS, THRESHOLDS, calibrate_group_size, held_out_groups, tune_groups
from pipeline.matching.groups import (
    EDGE_FLOOR,
    Edges,
    GroupConfig,
    GroupSettings,
    agglomerate,
    decide_groups,
    group_f1,
    group_lists,
)
from pipeline.metric import f1_from_sets


def edges_of(n: int, pairs: dict[tuple[int, int], float]) -> Edges:
    """Undirected edges from {(a, b): probability}, listed in both directions as candidates are."""
    q = np.array([a for a, b in pairs] + [b for a, b in pairs])
    m = np.array([b for a, b in pairs] + [a for a, b in pairs])
    return Edges.of(q, m, np.array(list(pairs.values()) * 2), n)


def same_partition(x: np.ndarray, y: np.ndarray) -> bool:
    return len(set(zip(x.tolist(), y.tolist()))) == len(set(x.tolist())) == len(set(y.tolist()))


@pytest.mark.parametrize("method", ["average", "complete", "single"])
@pytest.mark.parametrize("seed", range(25))
def test_agglomerate_matches_scipy_on_the_dense_matrix(method, seed):
    """Reciprocal best merges give the sequential algorithm's partition at the same cut (absent pairs
    at similarity 0, and below EDGE_FLOOR for average linkage, which drops them)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 30))
    labels = rng.integers(0, n // 2 + 1, n)
    s = np.clip(0.3 + 0.5 * (labels[:, None] == labels[None]) + 0.25 * rng.standard_normal((n, n)), 0, 1)
    s = (s + s.T) / 2
    drop = rng.random((n, n)) < 0.4
    s[drop | drop.T] = 0
    np.fill_diagonal(s, 0)
    if method == "average":
        s[s < EDGE_FLOOR] = 0
    a, b = np.nonzero(np.triu(s, 1))
    t = float(rng.uniform(0.1, 0.8))
    d = 1 - s
    np.fill_diagonal(d, 0)
    reference = fcluster(linkage(squareform(d, checks=False), method=method), 1 - t + 1e-12, criterion="distance")
    assert same_partition(agglomerate(Edges.of(a, b, s[a, b], n), t, method), reference)


def test_a_distractor_chained_to_a_pair_is_cut():
    """A-B agree; C passes against B only. Single linkage (one pair at a time) chains C in; average
    and complete linkage leave it out."""
    e = edges_of(3, {(0, 1): 0.95, (1, 2): 0.7, (0, 2): 0.05})
    assert len(set(agglomerate(e, 0.5, "single").tolist())) == 1
    for method in ("average", "complete"):
        c = agglomerate(e, 0.5, method)
        assert c[0] == c[1] != c[2]


@pytest.mark.parametrize("method", ["average", "complete", "single"])
def test_a_clique_stays_one_group(method):
    e = edges_of(6, {(a, b): 0.9 for a in range(5) for b in range(a + 1, 5)})  # a sixth posting has no edge
    assert same_partition(agglomerate(e, 0.5, method), np.array([0, 0, 0, 0, 0, 1]))


@pytest.mark.parametrize("seed", range(5))
def test_a_higher_cut_refines_the_partition(seed):
    rng = np.random.default_rng(seed)
    n = 60
    a, b = rng.integers(0, n, (2, 400))
    e = Edges.of(a, b, rng.random(400), n)
    for method in ("average", "complete", "single"):
        coarse, fine = agglomerate(e, 0.3, method), agglomerate(e, 0.6, method)
        assert all(len(set(coarse[fine == f].tolist())) == 1 for f in np.unique(fine))


def test_the_weights_link_on_what_they_say():
    q, m = np.array([0, 1, 1, 2]), np.array([1, 0, 2, 1])
    prob, accepted = np.array([0.9, 0.7, 0.6, 0.6]), np.array([True, False, False, False])
    # 0-1 at 0.8 (the mean of its two directions); then {0, 1} to 2 at 0.6 / 2 cross pairs.
    settings = GroupSettings("average", "prob", threshold=0.25)
    assert len(set(decide_groups(q, m, prob, 3, accepted, settings)[0].tolist())) == 1
    for weights in ("accepted", "density"):
        cluster = decide_groups(q, m, prob, 3, accepted, GroupSettings("average", weights, threshold=0.25))[0]
        assert cluster[0] == cluster[1] != cluster[2]  # 1-2 was not accepted either way


@pytest.mark.parametrize("seed", range(5))
def test_group_f1_is_kaggles_metric_on_the_clusters(seed):
    rng = np.random.default_rng(seed)
    n = 40
    labels, cluster = rng.integers(0, 12, n), rng.integers(0, 15, n)
    lone = np.flatnonzero(np.bincount(cluster)[cluster] == 1)
    extra = (lone, (lone + 1) % n)
    pred = [set(np.flatnonzero(cluster == cluster[i]).tolist()) for i in range(n)]
    for q, m in zip(*extra):
        pred[q].add(int(m))
    true = [set(np.flatnonzero(labels == labels[i]).tolist()) for i in range(n)]
    got, want = group_f1(cluster, labels, extra), f1_from_sets(pred, true)
    assert got["f1"] == pytest.approx(want["f1"]) and got["precision"] == pytest.approx(want["precision"])


def test_group_lists_are_each_postings_cluster_and_min2_for_the_lone():
    pairs = {(0, 1): 0.95, (1, 2): 0.9, (0, 2): 0.9, (3, 4): 0.3}
    q = np.array([a for a, b in pairs] + [b for a, b in pairs])
    m = np.array([b for a, b in pairs] + [a for a, b in pairs])
    p = np.array(list(pairs.values()) * 2)
    settings = GroupSettings("average", threshold=0.5, min2_floor=0.2)
    lists = group_lists(q, m, p, np.zeros(len(q), bool), settings, [np.empty(0, np.int64)] * 6)
    assert [sorted(x.tolist()) for x in lists] == [[1, 2], [0, 2], [0, 1], [4], [3], []]


def test_settings_round_trip_and_move_with_the_gallery():
    s = GroupSettings(
        "average",
        threshold=0.4,
        threshold_slope=0.05,
        floor_slope=0.1,
        min2_floor=0.3,
        tuned_size=500,
        cal_x=[0.0, 1.0],
        cal_y=[0.1, 0.9],
    )
    assert GroupSettings.from_dict(s.to_dict()) == s
    assert GroupSettings.from_dict(GroupSettings().to_dict()).min2_floor == math.inf
    moved = s.at_size(2000)  # two doublings
    assert moved.threshold == pytest.approx(0.5) and moved.min2_floor == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown group settings"):
        GroupSettings.from_dict({"rule": "average", "bogus": 1})


def test_the_config_section_checks_its_values():
    assert load_config(None, ["group.rule=complete", "group.weights=density"]).group == GroupConfig(
        "complete", "density", 0.3
    )
    assert load_config(None, []).group == GroupConfig("average", "accepted", 0.3)  # the default rule
    with pytest.raises(ConfigError, match=r"group\.rule must be one of"):
        load_config(None, ["group.rule=kmeans"])
    with pytest.raises(ConfigError, match=r"group\.weights must be one of"):
        load_config(None, ["group.weights=all"])
    with pytest.raises(ConfigError, match=r"group\.cut must be null or in \[0\.05, 0\.95\]"):
        load_config(None, ["group.cut=0"])


def tiny_scored(seed: int, n: int = 60) -> tuple[Candidates, np.ndarray]:
    """Every ordered pair of n postings in groups of 1-4, with a noisy pair score."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n), rng.integers(1, 5, size=n))[:n]
    q, m = np.array([(i, j) for i in range(n) for j in range(n) if i != j]).T
    same = labels[q] == labels[m]
    score = np.clip(0.15 + 0.6 * same + 0.2 * rng.standard_normal(len(q)), 0, 1)
    return Candidates(q, m, {"pair": score.astype(np.float32)}, n), labels


@pytest.mark.parametrize("seed", range(3))
def test_the_tuned_cut_and_floor_are_the_best_of_their_grid(seed):
    c, labels = tiny_scored(seed)
    score = c.sims["pair"]
    accepted = score >= 0.5
    tuned, record = tune_groups(c, labels, score, accepted, GroupConfig("average", "prob", cut=None))
    everyone = np.ones(c.n, bool)
    # Brute force over the grid, through the decision predict uses.
    best = max(
        held_out_groups(c, labels, score, accepted, with_cut(tuned, t, f), everyone)[0]["f1"]
        for t in THRESHOLDS
        for f in FLOORS
    )
    assert record["f1"] == pytest.approx(best)
    assert record["ece_calibrated"] <= record["ece_raw"] + 1e-9


def test_a_fixed_cut_is_kept_and_only_the_floor_is_tuned_and_moved():
    c, labels = tiny_scored(0)
    score = c.sims["pair"]
    accepted = score >= 0.5
    tuned, _ = tune_groups(c, labels, score, accepted, GroupConfig("average", "prob", cut=0.3))
    assert tuned.threshold == 0.3 and tuned.fixed_cut
    best = max(
        held_out_groups(c, labels, score, accepted, with_cut(tuned, 0.3, f), np.ones(c.n, bool))[0]["f1"]
        for f in FLOORS
    )
    assert group_f1_of(c, labels, score, accepted, tuned) == pytest.approx(best)
    settings = MatchSettings(thresholds={"pair": 0.5}, group=tuned.to_dict())
    moved, fit = calibrate_group_size(c, labels, score, settings, None, gallery_size=c.n)
    assert moved.threshold_slope == 0.0 and all(p["threshold"] == 0.3 for p in fit["points"])
    assert moved.at_size(8 * c.n).threshold == 0.3


def group_f1_of(c, labels, score, accepted, settings: GroupSettings) -> float:
    return held_out_groups(c, labels, score, accepted, settings, np.ones(c.n, bool))[0]["f1"]


def with_cut(s: GroupSettings, threshold: float, floor: float) -> GroupSettings:
    return GroupSettings.from_dict({**s.to_dict(), "threshold": threshold, "min2_floor": floor})


def test_no_n_by_n_at_200000_postings():
    """200,000 postings with 10 candidates each: clustering and the metric stay within a few dozen
    times the candidates' own memory (an N x N array of bools would be 40 GB)."""
    rng = np.random.default_rng(0)
    n, k = 200_000, 10
    labels = np.arange(n) // 4
    q = np.repeat(np.arange(n), k)
    m = np.where(rng.random(n * k) < 0.15, (q // 4) * 4 + rng.integers(0, 4, n * k), rng.integers(0, n, n * k))
    keep = q != m
    q, m = q[keep], m[keep]
    score = np.where(labels[q] == labels[m], rng.uniform(0.5, 1.0, len(q)), rng.uniform(0.0, 0.6, len(q)))
    tracemalloc.start()
    cluster, lone_q, lone_m = decide_groups(q, m, score, n, score > 0.5, GroupSettings("average", threshold=0.5))
    f1 = group_f1(cluster, labels, (lone_q, lone_m))["f1"]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 40 * len(q) * 8  # bytes: a few dozen arrays of the candidates' length at most
    assert f1 > 0.5
