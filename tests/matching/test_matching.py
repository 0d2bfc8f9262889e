import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.data.synth.postings import clustered_postings
from pipeline.matching.candidates import Candidates, Gallery, build_candidates
from pipeline.matching.decide import MatchSettings, decide, match_lists, prediction_floors
from pipeline.matching.fusion import (
    FusionConfig,
    NeighbourCache,
    blend,
    concat_embeddings,
    fused_neighbours,
    gallery_neighbours,
    graph_blend,
)
from pipeline.matching.neighbours import Neighbours, SearchConfig, dense_knn, sparse_knn
from pipeline.matching.scoring import Scorer
from pipeline.matching.tuning import DecisionConfig, TuneSetup, cross_validated, tune


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_concat_inner_product_is_weighted_mean_of_cosines():
    rng = np.random.default_rng(0)
    v = {"image": _unit(rng.standard_normal((6, 5))), "text": _unit(rng.standard_normal((6, 3)))}
    c = concat_embeddings(v, {"image": 0.25, "text": 0.75})
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-6)
    expected = 0.25 * v["image"] @ v["image"].T + 0.75 * v["text"] @ v["text"].T
    np.testing.assert_allclose(c @ c.T, expected, atol=1e-5)


def test_blend_dense_and_sparse_agree_with_hand_computation():
    x = _unit(np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32))
    nb = Neighbours(
        np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]]), np.array([[1, 0.8, 0], [1, 0.8, 0.6], [1, 0.6, 0]], np.float32)
    )
    out = blend(x, nb, threshold=0.7)
    # Row 0: x0 + 0.8 x1; row 1: x1 + 0.8 x0 (0.6 is below the threshold); row 2: alone.
    ref = _unit(np.stack([x[0] + 0.8 * x[1], x[1] + 0.8 * x[0], x[2]]))
    np.testing.assert_allclose(out, ref, atol=1e-6)
    out_sparse = blend(sp.csr_matrix(x), nb, threshold=0.7)
    np.testing.assert_allclose(out_sparse.toarray(), ref, atol=1e-6)


def _as_dict(nb):
    return {(i, int(j)): float(s) for i in range(len(nb)) for j, s in zip(nb.idx[i], nb.sim[i]) if j >= 0}


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_graph_blend_on_a_complete_graph_equals_blending_and_searching_again(kind):
    rng = np.random.default_rng(1)
    if kind == "dense":
        x = _unit(rng.standard_normal((14, 6)).astype(np.float32))
        knn = dense_knn
    else:
        x = sp.csr_matrix(rng.random((14, 30)).astype(np.float32) * (rng.random((14, 30)) < 0.3))
        x = sp.csr_matrix(sp.diags(1 / np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())) @ x)
        knn = sparse_knn
    nb = knn(x, k=14)  # every pair listed: S is exact
    for threshold in (0.2, 0.5):
        exact = _as_dict(knn(blend(x, nb, threshold), k=14))
        graph = _as_dict(graph_blend(nb, threshold, block=5))
        pairs = sorted(set(exact) | set(graph))
        np.testing.assert_allclose([graph.get(p, 0.0) for p in pairs], [exact.get(p, 0.0) for p in pairs], atol=1e-5)


def test_the_similarity_graph_is_symmetric_with_ones_on_its_diagonal():
    from pipeline.matching.fusion import _similarity_graph

    # Row 0 lists 1, row 1 lists 2 and itself, row 2 lists 0 weakly: neither 0 nor 2 lists itself.
    nb = Neighbours(
        np.array([[1, -1], [2, 1], [0, -1]]), np.array([[0.9, -np.inf], [0.5, 0.97], [0.2, -np.inf]], np.float32)
    )
    want = [[1.0, 0.9, 0.2], [0.9, 1.0, 0.5], [0.2, 0.5, 1.0]]
    np.testing.assert_allclose(_similarity_graph(nb).toarray(), want, atol=1e-6)


def test_graph_blend_ranks_each_posting_first_and_keeps_k():
    x, _ = clustered_postings(300, 16, seed=2)
    nb = dense_knn(x["image"], k=10)
    out = graph_blend(nb, 0.5, block=64)
    assert out.idx.shape == (300, 10) and (out.idx[:, 0] == np.arange(300)).all()
    np.testing.assert_allclose(out.sim[:, 0], 1.0, atol=1e-5)
    assert (np.diff(out.sim, axis=1) <= 1e-6).all()


def test_build_candidates_union_and_missing_sims():
    rows = np.array([10, 11, 12])
    g = Gallery(rows, np.array([0, 1]), {"x": np.zeros((3, 1)), "y": np.zeros((3, 1))})
    nbs = {
        "x": Neighbours(
            np.array([[0, 1, 2], [1, 0, -1], [2, 0, 1]]),
            np.array([[1, 0.9, 0.1], [1, 0.9, -np.inf], [1, 0.1, 0]], np.float32),
        ),
        "y": Neighbours(
            np.array([[0, 2, 1], [1, 2, 0], [2, 1, 0]]),
            np.array([[1, 0.7, 0.2], [1, 0.5, 0.4], [1, 0.5, 0.7]], np.float32),
        ),
    }
    c = build_candidates(g, nbs, n=20)
    pairs = {
        (int(q), int(m)): (float(c.sims["x"][i]), float(c.sims["y"][i]))
        for i, (q, m) in enumerate(zip(c.query, c.match))
    }
    # Only queries 10 and 11; never self pairs; -inf where a signal lacks the pair.
    assert set(pairs) == {(10, 11), (10, 12), (11, 10), (11, 12)}
    assert pairs[(10, 11)] == pytest.approx((0.9, 0.2))
    assert pairs[(11, 12)][0] == -np.inf and pairs[(11, 12)][1] == pytest.approx(0.5)


def _candidates():
    # Queries 0, 1, 2 over postings 0..4 with one signal "s" and one "t".
    q = np.array([0, 0, 1, 1, 2, 2])
    m = np.array([1, 2, 0, 3, 3, 4])
    s = np.array([0.9, 0.4, 0.9, 0.3, 0.35, 0.2], np.float32)
    t = np.array([-np.inf, 0.8, 0.1, 0.2, -np.inf, 0.1], np.float32)
    return Candidates(q, m, {"s": s, "t": t}, n=5)


def test_decide_union_and_min2():
    c = _candidates()
    union = decide(c, MatchSettings(thresholds={"s": 0.5, "t": 0.7}))
    assert union.tolist() == [True, True, True, False, False, False]
    # Query 2 has no match: min-2 adds its best pair by s (to 3, 0.35) when the floor allows.
    with_min2 = decide(c, MatchSettings(thresholds={"s": 0.5, "t": 0.7}, min2_signal="s", min2_floor=0.3))
    assert with_min2.tolist() == [True, True, True, False, True, False]
    too_high = decide(c, MatchSettings(thresholds={"s": 0.5, "t": 0.7}, min2_signal="s", min2_floor=0.5))
    assert too_high.tolist() == union.tolist()
    lists = match_lists(c, with_min2, 3, score="s")
    assert [x.tolist() for x in lists] == [[1, 2], [0], [3]]


def test_settings_json_roundtrip_keeps_infinity():
    s = MatchSettings(thresholds={"text": 0.6}, min2_signal=None)
    d = s.to_dict()
    assert d["min2_floor"] is None and d["blend_threshold"] is None
    assert MatchSettings.from_dict(d) == s
    with pytest.raises(ValueError, match="unknown match settings"):
        MatchSettings.from_dict({**d, "bogus": 1})


def _clustered_gallery(n=400, seed=0):
    vectors, labels = clustered_postings(n, dim=32, seed=seed)
    everything = np.arange(n)
    return Gallery(everything, everything, vectors), labels


def test_prediction_floors_give_the_same_decisions():
    g, labels = _clustered_gallery()
    settings = MatchSettings(
        thresholds={"concat": 0.5, "phash": 0.9},
        min2_signal="concat",
        min2_floor=0.2,
        blend_signal="concat",
        blend_rounds=1,
        blend_threshold=0.5,
    )
    nb = gallery_neighbours(g, settings, SearchConfig(index="flat", k=20))
    full = build_candidates(g, nb, len(labels))
    floored = build_candidates(g, nb, len(labels), floors=prediction_floors(settings))
    assert len(floored) < len(full)
    a = match_lists(full, decide(full, settings), len(labels))
    b = match_lists(floored, decide(floored, settings), len(labels))
    assert all(sorted(x.tolist()) == sorted(y.tolist()) for x, y in zip(a, b))


def test_tuning_fuses_better_than_any_single_signal_and_cv_is_honest():
    g, labels = _clustered_gallery(600, seed=3)
    folds = np.arange(len(labels)) % 3
    # Three folds share one gallery, as with unsupervised signals over all of train.
    cache = NeighbourCache()

    def build(settings):
        return build_candidates(
            g, gallery_neighbours(g, settings, SearchConfig(index="flat", k=20), cache=cache), len(labels)
        )

    result = tune(build, labels, setup=TuneSetup(DecisionConfig(n_thresholds=41), FusionConfig(blend_rounds=1)))
    solo = {k: result.steps[k]["f1"] for k in ("image", "text", "phash", "concat")}
    assert result.steps["final"]["f1"] >= max(solo.values())
    assert result.settings.thresholds  # at least one signal in the rule
    assert set(result.curves) >= {"image", "text", "phash", "concat", "blend", "fused"}
    # The reported final F1 is what the saved settings give when re-applied.
    c = build(result.settings)
    assert Scorer(c, labels).f1(decide(c, result.settings)) == pytest.approx(result.steps["final"]["f1"])
    cv = cross_validated(build, labels, folds, TuneSetup(DecisionConfig(n_thresholds=21), FusionConfig(blend_rounds=0)))
    assert len(cv["per_fold_f1"]) == 3 and 0 < cv["f1"] <= 1


def test_neighbour_cache_keys_follow_fusion_weights_and_blending():
    g, _ = _clustered_gallery(200)
    cache = NeighbourCache()
    settings = [
        MatchSettings(fusion_weights={"image": 0.9, "text": 0.1}),
        MatchSettings(fusion_weights={"image": 0.1, "text": 0.9}),
        MatchSettings(
            fusion_weights={"image": 0.1, "text": 0.9}, blend_signal="concat", blend_rounds=1, blend_threshold=0.4
        ),
    ]
    for s in settings:
        cached = gallery_neighbours(g, s, SearchConfig(index="flat", k=10), cache=cache)
        fresh = gallery_neighbours(g, s, SearchConfig(index="flat", k=10))
        for name in fresh:
            np.testing.assert_array_equal(cached[name].sim, fresh[name].sim)
    a = gallery_neighbours(g, settings[0], SearchConfig(index="flat", k=10), cache=cache)["concat"].sim
    b = gallery_neighbours(g, settings[1], SearchConfig(index="flat", k=10), cache=cache)["concat"].sim
    assert not np.allclose(a, b)


@pytest.mark.parametrize("weights", [{"image": 0.5, "text": 0.5}, {"image": 0.2, "text": 0.8}])
def test_fused_lists_equal_searching_the_concatenation(weights):
    x, _ = clustered_postings(120, 16, seed=4)
    dense = {m: x[m] for m in ("image", "text")}
    concat = dense_knn(concat_embeddings(dense, weights), k=15)
    # Complete per-modality lists: the fused top-k is the concatenation's, exactly.
    complete = {m: dense_knn(dense[m], k=120) for m in dense}
    fused = fused_neighbours(dense, complete, weights, k=15)
    np.testing.assert_allclose(fused.sim, concat.sim, atol=1e-5)
    # Top-k lists and a floor: a pair neither list holds has each cosine at most that list's k-th, so
    # every pair of the concatenation's top-k above the floor and that bound is found, exactly scored.
    lists = {m: dense_knn(dense[m], k=15) for m in dense}
    floored = fused_neighbours(dense, lists, weights, k=15, floor=0.4)
    w = {m: weights[m] / sum(weights.values()) for m in dense}
    bound = sum(w[m] * lists[m].sim[:, -1] for m in dense)
    want = {(i, int(j)): s for i in range(120) for j, s in zip(concat.idx[i], concat.sim[i]) if s >= max(0.4, bound[i])}
    got = {(i, int(j)): s for i in range(120) for j, s in zip(floored.idx[i], floored.sim[i]) if j >= 0}
    assert want and set(want) <= set(got)
    np.testing.assert_allclose([got[p] for p in want], list(want.values()), atol=1e-5)
    assert min(got.values()) >= 0.4 - 1e-6


def test_fusing_in_blocks_of_rows_gives_the_whole_pass():
    x, _ = clustered_postings(130, 16, seed=5)
    dense = {m: x[m] for m in ("image", "text")}
    lists = {m: dense_knn(dense[m], k=12) for m in dense}
    whole = fused_neighbours(dense, lists, {"image": 0.3, "text": 0.7}, k=12, floor=0.2, block=1000)
    blocked = fused_neighbours(dense, lists, {"image": 0.3, "text": 0.7}, k=12, floor=0.2, block=17)
    np.testing.assert_array_equal(blocked.idx, whole.idx)
    np.testing.assert_array_equal(blocked.sim, whole.sim)


def test_lists_not_kept_are_let_go_and_each_list_is_observed_as_it_is_made():
    x, _ = clustered_postings(200, 16, seed=6)
    everything = np.arange(200)
    g = Gallery(everything, everything, {m: x[m] for m in ("image", "text", "phash")})
    settings = MatchSettings(
        fusion_weights={"image": 0.4, "text": 0.6}, blend_signal="concat", blend_rounds=1, blend_threshold=0.5
    )
    every = gallery_neighbours(g, settings, SearchConfig(index="flat", k=12))
    seen = {}
    kept = gallery_neighbours(
        g, settings, SearchConfig(index="flat", k=12), keep={"blend", "phash"}, observe=seen.__setitem__
    )
    assert set(kept) == {"blend", "phash"} and set(seen) == set(every)
    for name, nb in every.items():
        np.testing.assert_array_equal(seen[name].idx, nb.idx)
        if name in kept:
            np.testing.assert_array_equal(kept[name].sim, nb.sim)


def test_search_floors_do_not_change_predictions():
    from pipeline.matching.predict import match_postings

    x, labels = clustered_postings(500, 16, seed=5)
    ids = np.array([f"p{i}" for i in range(500)], dtype=object)
    settings = MatchSettings(
        thresholds={"concat": 0.55, "phash": 0.85},
        min2_signal="concat",
        min2_floor=0.3,
        blend_signal="image",
        blend_rounds=1,
        blend_threshold=0.6,
        fusion_weights={"image": 0.5, "text": 0.5},
    )
    settings.thresholds["blend"] = 0.6
    subs = []
    for floors in (True, False):
        subs.append(match_postings(x, ids, settings, SearchConfig(k=20, floors=floors)))
    assert subs[0].equals(subs[1])


def test_graph_blend_of_some_rows_gives_those_rows_the_full_blends_lists_bit_for_bit():
    nb = dense_knn(clustered_postings(3000, 64, 1)[0]["image"], 20)
    full = graph_blend(nb, 0.4)
    rows = np.arange(0, 3000, 7)
    part = graph_blend(nb, 0.4, rows=rows)
    np.testing.assert_array_equal(part.idx[rows], full.idx[rows])
    np.testing.assert_array_equal(part.sim[rows], full.sim[rows])
    others = np.setdiff1d(np.arange(3000), rows)
    assert (part.idx[others] == -1).all()
