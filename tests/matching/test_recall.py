import numpy as np

from pipeline.matching.neighbours import Neighbours, dense_knn, hamming_knn
from pipeline.matching.recall import recall_queries, search_recall


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_lists_have_full_recall_and_truncated_ones_less():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((300, 8)).astype(np.float32))
    codes = rng.integers(0, 256, size=(300, 8), dtype=np.uint8)
    exact = {"image": dense_knn(x, k=10), "phash": hamming_knn(codes, k=10)}
    vectors = {"image": x, "phash": codes}
    floors = {"image": 0.6, "phash": 0.6}
    out = search_recall(vectors, exact, floors, sample=50, chunk=7)
    assert out["image"]["recall_at_k"] == 1.0 and out["image"]["recall_above_floor"] == 1.0
    assert out["phash"]["recall_at_k"] == 1.0  # ties counted by value
    # Keep only each list's first 5 entries: half the top-10 is gone, and some pairs above the floor.
    nb = exact["image"]
    cut = Neighbours(np.where(np.arange(10) < 5, nb.idx, -1), np.where(np.arange(10) < 5, nb.sim, -np.inf))
    worse = search_recall(vectors, {"image": cut}, floors, sample=50)
    assert worse["image"]["recall_at_k"] == 0.5
    assert worse["image"]["recall_above_floor"] < 1.0
    assert worse["candidates"]["pairs_above_floor"] == worse["image"]["pairs_above_floor"]


def test_lists_kept_for_the_checked_rows_only_give_the_same_recall():
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((300, 8)).astype(np.float32))
    nb = dense_knn(x, k=10)
    nb = Neighbours(np.where(np.arange(10) < 6, nb.idx, -1), np.where(np.arange(10) < 6, nb.sim, -np.inf))
    whole = search_recall({"image": x}, {"image": nb}, {"image": 0.5}, sample=40, seed=3)
    q = recall_queries(300, 40, seed=3)
    rows = {"image": Neighbours(nb.idx[q], nb.sim[q])}
    assert search_recall({"image": x}, rows, {"image": 0.5}, queries=q, chunk=7) == whole
