import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.matching.neighbours import SearchConfig, dense_knn, hamming_knn, sparse_knn
from pipeline.matching.ranking import best_k


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
    nb = dense_knn(x, k=10, settings=SearchConfig(index="flat", batch_size=batch_size))
    assert nb.idx.shape == (120, 10)
    _assert_same_topk(nb, x @ x.T, 10)
    assert (nb.idx[:, 0] == np.arange(120)).all()  # itself first


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_indexes_find_most_neighbours(index):
    x = _unit(np.random.default_rng(1).standard_normal((2000, 16)).astype(np.float32))
    exact = dense_knn(x, k=10)
    approx = dense_knn(x, k=10, settings=SearchConfig(index=index))
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.idx, approx.idx)])
    assert recall > 0.8


def test_hnsw_in_float16_lists_exact_cosines_best_first_and_finds_what_float32_storage_finds():
    x = _unit(np.random.default_rng(2).standard_normal((1500, 16)).astype(np.float32))
    fp16 = dense_knn(x, k=10, settings=SearchConfig(index="hnsw", hnsw_fp16=True))
    fp32 = dense_knn(x, k=10, settings=SearchConfig(index="hnsw", hnsw_fp16=False))
    listed = np.einsum("nd,nkd->nk", x, x[fp16.idx])
    np.testing.assert_allclose(fp16.sim, listed, atol=1e-6)  # rescored with the float32 vectors
    assert (np.diff(fp16.sim, axis=1) <= 0).all()
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(fp16.idx, fp32.idx)])
    assert overlap > 0.98


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


@pytest.mark.parametrize("batch_size", [4096, 333])
def test_ivfpq_rescores_its_shortlist_exactly(batch_size):
    from pipeline.data.synth.postings import clustered_postings

    x = clustered_postings(1500, 32, seed=2)[0]["text"]
    settings = SearchConfig(index="ivfpq", nprobe=16, pq_m=16, refine=4, batch_size=batch_size)
    nb = dense_knn(x, k=10, settings=settings)  # each batch's shortlist rescored as it is searched
    got = np.einsum("nd,nkd->nk", x, x[nb.idx])
    np.testing.assert_allclose(nb.sim, got, atol=1e-5)  # exact cosines, not PQ estimates
    assert (np.diff(nb.sim, axis=1) <= 1e-6).all()
    exact = dense_knn(x, k=10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.idx, nb.idx)]) > 0.8


def test_search_settings_are_the_config_section_and_checked():
    from pipeline.config import ConfigError, load_config

    s = load_config(None, ["search.index=ivf", "search.nprobe=4", "search.threads=1"]).search
    assert (s.index, s.nprobe, s.threads, s.n_threads, s.ef_search) == ("ivf", 4, 1, 1, SearchConfig().ef_search)
    with pytest.raises(ConfigError, match=r"index must be one of \['auto', 'flat'"):
        SearchConfig(index="lsh")


def test_faiss_threads_are_bounded_then_restored():
    import faiss

    from pipeline.matching.neighbours import faiss_threads

    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before


def test_without_gpus_indexes_stay_on_the_cpu():
    import faiss

    from pipeline.matching.neighbours import build_index, faiss_gpus, to_gpus

    if faiss_gpus() > 0:
        pytest.skip("a GPU is present: the CPU fallback is not what runs")
    index = faiss.IndexFlatIP(4)
    assert to_gpus(index) is index and to_gpus(index, shard=True, gpus=0) is index
    x = _unit(np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32))
    built = build_index(x, SearchConfig(index="flat", gpu=True))
    assert isinstance(built, faiss.IndexFlatIP) and built.ntotal == 50


def test_pair_dots_match_numpy():
    from pipeline.matching.neighbours import pair_dots

    x = np.random.default_rng(3).standard_normal((30, 5)).astype(np.float32)
    rows, cols = np.array([0, 4, 29, 7]), np.array([3, 4, 0, 12])
    np.testing.assert_allclose(pair_dots(x, rows, cols, chunk=3), (x[rows] * x[cols]).sum(1), rtol=1e-5)


def test_the_tfidf_path_never_loads_torch():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, pandas as pd\n"
        "from pipeline.config import load_config\n"
        "from pipeline.matching.decide import MatchSettings\n"
        "from pipeline.matching.predict import match_postings, posting_vectors\n"
        "cfg = load_config(None, ['modalities=[tfidf,phash]'])\n"
        "df = pd.DataFrame({'title': ['red shoe', 'red shoes', 'blue hat'], 'image_phash': ['a' * 16] * 3})\n"
        "v = posting_vectors(cfg, df, None)\n"
        "s = MatchSettings(thresholds={'tfidf': 0.5}, blend_signal='tfidf', blend_rounds=1, blend_threshold=0.3)\n"
        "match_postings(v, np.array(['a', 'b', 'c']), s, cfg.search)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_binary_inverted_lists_find_the_near_duplicate_hashes():
    from pipeline.data.synth.postings import clustered_postings

    codes = clustered_postings(3000, 4, seed=1)[0]["phash"]
    exact = hamming_knn(codes, k=10)
    approx = hamming_knn(codes, k=10, nprobe=32)
    near = exact.sim >= 0.85  # the pairs a phash threshold accepts
    found = [set(a[m]) <= set(b) for a, b, m in zip(exact.idx, approx.idx, near)]
    assert np.mean(found) > 0.99


def test_best_k_ranks_by_score_then_index_as_a_lexsort_does():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, m = rng.integers(1, 20), rng.integers(1, 30)
        k = int(rng.integers(1, m + 5))  # k past the candidates: padded
        cand = rng.integers(-1, 40, (n, m))
        score = np.round(rng.standard_normal((n, m)), 1).astype(np.float32)  # many ties
        score[rng.random((n, m)) < 0.2] = -np.inf
        score[rng.random((n, m)) < 0.05] = -0.0
        idx, sim = best_k(cand, score, k)

        listed = np.where(cand >= 0, score, -np.inf)
        order = np.lexsort((np.where(cand < 0, np.iinfo(np.int64).max, cand), -listed), axis=1)[:, :k]
        want_idx = np.take_along_axis(cand, order, 1)
        want_sim = np.take_along_axis(listed, order, 1)
        want_idx[~np.isfinite(want_sim)] = -1
        assert idx.shape == sim.shape == (n, k)
        assert np.array_equal(idx[:, : order.shape[1]], want_idx)
        assert np.array_equal(sim[:, : order.shape[1]], np.where(want_idx >= 0, want_sim, -np.inf))
        assert (idx[:, order.shape[1] :] == -1).all() and (sim[:, order.shape[1] :] == -np.inf).all()
