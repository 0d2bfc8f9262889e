import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.matching.neighbours import SearchSettings, dense_knn, hamming_knn, sparse_knn


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _assert_same_topk(nb, full_sim, k):
    # Compare similarity values (ties may order indices differently) and that indices carry them.
    ref = -np.sort(-full_sim, axis=1)[:, :k]
    np.testing.assert_allclose(nb.sim, ref, atol=1e-5)
    got = np.take_along_axis(full_sim, nb.idx, axis=1)
    np.testing.assert_allclose(got, nb.sim, atol=1e-5)


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_dense_knn_matches_brute_force(batch_size):
    x = _unit(np.random.default_rng(0).standard_normal((120, 16)).astype(np.float32))
    nb = dense_knn(x, k=10, settings=SearchSettings(batch_size=batch_size))
    assert nb.idx.shape == (120, 10)
    _assert_same_topk(nb, x @ x.T, 10)
    assert (nb.idx[:, 0] == np.arange(120)).all()  # itself first


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_indexes_find_most_neighbours(index):
    x = _unit(np.random.default_rng(1).standard_normal((2000, 16)).astype(np.float32))
    exact = dense_knn(x, k=10)
    approx = dense_knn(x, k=10, settings=SearchSettings(index=index))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.idx, approx.idx)])
    assert recall > 0.8


def test_k_is_capped_at_n():
    x = _unit(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    assert dense_knn(x, k=50).k == 5


@pytest.mark.parametrize("block", [3, 64])
def test_sparse_knn_matches_brute_force(block):
    x = sp.random(50, 30, density=0.2, random_state=1, format="csr", dtype=np.float32)
    x = sp.csr_matrix(x.multiply(1.0 / np.sqrt(x.multiply(x).sum(axis=1) + 1e-12)))
    nb = sparse_knn(x, k=8, block=block)
    _assert_same_topk(nb, (x @ x.T).toarray(), 8)


def test_hamming_knn_matches_brute_force():
    codes = np.random.default_rng(0).integers(0, 256, size=(40, 8), dtype=np.uint8)
    nb = hamming_knn(codes, k=6)
    bits = np.unpackbits(codes, axis=1).astype(int)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    _assert_same_topk(nb, 1.0 - dist / 64.0, 6)
    assert (nb.sim[:, 0] == 1.0).all()


def test_sparse_rows_sharing_no_term_are_not_neighbours():
    x = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32))
    nb = sparse_knn(x, k=4)
    assert set(nb.idx[0][nb.idx[0] >= 0]) == {0, 1}
    assert set(nb.idx[2][nb.idx[2] >= 0]) == {2}
    assert (nb.idx[3] == -1).all() and np.isneginf(nb.sim[3]).all()  # an empty title matches nothing
