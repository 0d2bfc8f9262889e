import numpy as np
import pytest

from pipeline.data.synth.postings import clustered_postings
from pipeline.matching.candidates import Gallery
from pipeline.matching.decide import MatchSettings
from pipeline.matching.expansion import expand_lists
from pipeline.matching.fusion import gallery_neighbours
from pipeline.matching.neighbours import Neighbours, SearchConfig, dense_knn, hamming_knn
from pipeline.matching.recall import search_recall

N = 3000


@pytest.fixture(scope="module")
def postings():
    return clustered_postings(N, 256, seed=3)[0]  # 256 dimensions: few unrelated pairs reach 0.3


def _copy(nb: Neighbours) -> Neighbours:
    return Neighbours(nb.idx.copy(), nb.sim.copy(), nb.approximate)


def _hidden(nb: Neighbours, drop: float, seed: int) -> Neighbours:
    """``nb`` with a share ``drop`` of each list's entries beyond the first removed: lists as an
    approximate index leaves them, missing pairs."""
    idx, sim = nb.idx.copy(), nb.sim.copy()
    lost = np.random.default_rng(seed).random(idx.shape) < drop
    lost[:, 0] = False
    idx[lost], sim[lost] = -1, -np.inf
    order = np.argsort(-sim, axis=1, kind="stable")
    return Neighbours(np.take_along_axis(idx, order, 1), np.take_along_axis(sim, order, 1), approximate=True)


def _recall(vectors, lists, floors):
    r = search_recall(vectors, lists, floors, sample=N)
    return {name: r[name]["recall_above_floor"] for name in lists}


def test_exact_lists_come_out_unchanged(postings):
    exact = {m: dense_knn(postings[m], 20) for m in ("image", "text")}
    lists = {m: _copy(nb) for m, nb in exact.items()}
    expand_lists(postings, lists, rounds=2, sources=4, block=700)
    for m in lists:
        np.testing.assert_allclose(lists[m].sim, exact[m].sim, atol=1e-5)


def test_pooling_and_neighbours_of_neighbours_recover_the_pairs_an_index_missed(postings):
    floors = {"image": 0.3, "text": 0.3, "phash": 0.85}
    exact = {m: dense_knn(postings[m], 20) for m in ("image", "text")}
    exact["phash"] = hamming_knn(postings["phash"], 20)
    lists = {m: _hidden(nb, 0.5, seed) for seed, (m, nb) in enumerate(exact.items())}
    before = _recall(postings, lists, floors)
    expand_lists(postings, {m: lists[m] for m in ("image", "text")}, rounds=2, sources=4, block=1000)
    expand_lists(postings, {"phash": lists["phash"]}, rounds=2, sources=4, block=1000)
    after = _recall(postings, lists, floors)
    assert max(before.values()) < 0.75  # the row itself is never dropped
    assert min(after.values()) > 0.97, after
    for m, nb in lists.items():
        # every listed similarity is the exact one, best first, each posting once
        assert (np.diff(nb.sim, axis=1) <= 1e-6).all()
        listed = np.where(nb.idx >= 0, nb.idx, -np.arange(1, nb.k + 1))
        assert all(len(set(row)) == nb.k for row in listed)
        if m == "phash":
            codes = postings["phash"].view(np.uint64).ravel()
            truth = 1 - np.bitwise_count(codes[:, None] ^ codes[np.maximum(nb.idx, 0)]) / 64
        else:
            x = postings[m]
            truth = np.einsum("nd,nkd->nk", x, x[np.maximum(nb.idx, 0)])
        np.testing.assert_allclose(np.where(nb.idx >= 0, nb.sim, 0), np.where(nb.idx >= 0, truth, 0), atol=1e-5)


def test_a_gallery_expands_the_lists_of_a_hand_set_approximate_index_and_times_it(postings):
    gallery = Gallery(rows=np.arange(N), queries=np.arange(N), vectors=dict(postings))
    settings = MatchSettings(thresholds={"concat": 0.55}, fusion_weights={"image": 0.5, "text": 0.5})
    timings, seen = {}, {}
    search = SearchConfig(index="ivf", nprobe=1, nlist=64, k=20, threads=1)

    def observe(name, nb):
        seen[name] = _copy(nb)

    out = gallery_neighbours(gallery, settings, search, timings=timings, observe=observe)
    assert "expand_image_text" in timings
    plain = {m: dense_knn(postings[m], 20, search) for m in ("image", "text")}
    floors = {"image": 0.3, "text": 0.3}
    before, after = _recall(postings, plain, floors), _recall(postings, {m: out[m] for m in plain}, floors)
    assert all(after[m] > before[m] + 0.05 for m in plain), (before, after)
    for m in plain:  # the observer saw the lists as expanded
        np.testing.assert_array_equal(seen[m].idx, out[m].idx)
    again = gallery_neighbours(gallery, settings, SearchConfig(index="ivf", nprobe=1, nlist=64, k=20, expand_rounds=0))
    assert all(_recall(postings, {m: again[m]}, floors)[m] == before[m] for m in plain)


def test_the_reverse_lists_name_every_row_listing_a_row_in_row_order():
    from pipeline.matching.expansion import _Fresh, _Reverse

    rng = np.random.default_rng(0)
    idx = np.stack([rng.choice(40, 6, replace=False) for _ in range(40)])
    idx[rng.random(idx.shape) < 0.2] = -1
    nb = Neighbours(idx, np.zeros(idx.shape, np.float32))
    reverse = _Reverse(nb, _Fresh(np.zeros(idx.shape, np.uint8), round_=1))
    got = reverse.block(slice(0, 40))
    for row in range(40):
        listing = [r for r in range(40) if row in idx[r]][: nb.k]
        assert got[row][got[row] >= 0].tolist() == listing


def test_a_second_round_scores_only_pairs_the_first_did_not_and_width_bounds_the_offers(postings, monkeypatch):
    import pipeline.matching.expansion as expansion

    floors = {"image": 0.3, "text": 0.3}
    exact = {m: dense_knn(postings[m], 20) for m in ("image", "text")}
    scored = []
    rescore = expansion.rescore

    def counting(x, cand, k, start):
        scored.append(int((cand >= 0).sum()))
        return rescore(x, cand, k, start)

    monkeypatch.setattr(expansion, "rescore", counting)
    runs = {}
    for width in (20, 5):
        lists = {m: _hidden(nb, 0.5, seed) for seed, (m, nb) in enumerate(exact.items())}
        scored.clear()
        expand_lists(postings, lists, rounds=2, sources=4, block=N, width=width)
        runs[width] = (list(scored), _recall(postings, lists, floors))
    (first, second, third, fourth), recall = runs[20]
    assert third < first and fourth < second  # (image, text) in round 1, then round 2
    assert min(recall.values()) > 0.97, recall
    assert sum(runs[5][0]) < sum(runs[20][0]) * 0.75
    # exact lists: the first round changes nothing, so the second has nothing left to offer
    scored.clear()
    expand_lists(postings, {"image": _copy(exact["image"])}, rounds=2, sources=4, block=N)
    assert scored[0] > 0 and scored[1] == 0
