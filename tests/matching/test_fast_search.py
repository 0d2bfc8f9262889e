"""Oracle tests of the fast searches: bfloat16 exact search, the TF-IDF sketch and split searches
and the index chosen by timed probes, against the exact searches on tiny data."""

import numpy as np
import pytest

from pipeline.data.synth import synthetic_titles
from pipeline.matching.gemm_search import CHUNK, bf16_knn, shortlist
from pipeline.matching.index_choice import choose_index
from pipeline.matching.neighbours import SearchConfig, dense_knn, search, sparse_knn
from pipeline.matching.signals import TfidfConfig, tfidf_vectors
from pipeline.matching.tfidf_search import SplitSettings, sketch_knn, split_columns, split_knn, tfidf_knn

torch = pytest.importorskip("torch")


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n", [CHUNK * 40, CHUNK * 40 + 7])  # with and without a ragged last chunk
def test_shortlist_holds_each_rows_best_columns(n):
    scores = torch.from_numpy(np.random.default_rng(0).standard_normal((9, n)).astype(np.float32))
    got = shortlist(scores, 12)
    want = np.argsort(-scores.numpy(), axis=1)[:, :12]
    assert all(set(g) == set(w) for g, w in zip(got, want))


def test_bf16_search_lists_what_exact_search_lists_with_float32_cosines():
    x = _unit(np.random.default_rng(1).standard_normal((1500, 32)).astype(np.float32))
    exact = dense_knn(x, 20, SearchConfig(index="flat", threads=1))
    fast = bf16_knn(x, 20, threads=1, block=256)
    assert np.mean([set(a) == set(b) for a, b in zip(exact.idx, fast.idx)]) > 0.99
    np.testing.assert_allclose(fast.sim, exact.sim, atol=1e-5)
    assert (np.diff(fast.sim, axis=1) <= 1e-6).all()  # best first


@pytest.fixture(scope="module")
def titles_tfidf():
    labels = np.repeat(np.arange(400), 3)
    return tfidf_vectors(synthetic_titles(labels, 0), TfidfConfig())


@pytest.mark.parametrize("method", ["sketch", "split"])
def test_tfidf_searches_find_the_exact_pairs_above_a_floor(titles_tfidf, method):
    x = titles_tfidf
    exact = sparse_knn(x, 20)
    fast = (
        sketch_knn(x, 20, candidates=60)
        if method == "sketch"
        else split_knn(x, 20, settings=SplitSettings(dense_terms=64, candidates=60))
    )
    above = [(i, j) for i in range(len(exact.idx)) for j, s in zip(exact.idx[i], exact.sim[i]) if s >= 0.5]
    found = np.mean([j in set(fast.idx[i]) for i, j in above])
    assert found > 0.99
    # Listed cosines are the exact ones (sketch: bit for bit, as sparse_dot_topn sums them).
    rows, cols = np.nonzero(fast.idx >= 0)
    true = np.asarray(x[rows].multiply(x[fast.idx[rows, cols]]).sum(axis=1)).ravel()
    np.testing.assert_allclose(fast.sim[rows, cols], true, atol=1e-5)


def test_a_rare_floor_keeps_the_pairs_above_it_and_the_rows_it_leaves_short_are_searched_exactly(titles_tfidf):
    x = titles_tfidf
    exact = sparse_knn(x, 20)
    floored = split_knn(x, 20, settings=SplitSettings(dense_terms=64, candidates=60, rare_floor=0.2))
    above = [(i, j) for i in range(len(exact.idx)) for j, s in zip(exact.idx[i], exact.sim[i]) if s >= 0.5]
    assert np.mean([j in set(floored.idx[i]) for i, j in above]) > 0.99
    # Rows with fewer than k candidates above the floor have their exact lists, to the last place.
    rare = split_columns(x, 64).rare
    above_floor = np.asarray(((rare @ rare.T) > 0.2).sum(axis=1)).ravel()
    short = np.nonzero((above_floor < 20) & (x.getnnz(axis=1) > 0))[0]
    assert len(short) > 10
    np.testing.assert_allclose(floored.sim[short], exact.sim[short], atol=1e-5)


def test_tfidf_auto_searches_a_small_gallery_exactly(titles_tfidf):
    exact = sparse_knn(titles_tfidf, 10)
    auto = tfidf_knn(titles_tfidf, 10, 1, "auto")
    np.testing.assert_array_equal(auto.idx, exact.idx)
    np.testing.assert_array_equal(auto.sim, exact.sim)


def test_index_choice_is_exact_for_a_small_gallery_and_reports_its_figures():
    x = _unit(np.random.default_rng(3).standard_normal((800, 16)).astype(np.float32))
    choice = choose_index(x, 10, threads=1)
    assert choice.index == "flat"
    assert choice.predicted_s["flat"] > 0 and choice.figures["flat_s_per_pair"] > 0


@pytest.mark.parametrize("hnsw_recall", [0.5, 0.999])
def test_index_choice_takes_only_indexes_with_enough_measured_recall(monkeypatch, hnsw_recall):
    from pipeline.matching import index_choice

    # Pretend exact search is slow so that every index is considered.
    monkeypatch.setattr(index_choice, "EXACT_BELOW_S", -1.0)
    index_choice._CHOICES.clear()
    x = _unit(np.random.default_rng(4).standard_normal((3000, 16)).astype(np.float32))
    choice = choose_index(x, 10, threads=1, recall_table={("hnsw", 224): {10_000: hnsw_recall}})
    assert choice.recall["hnsw"] == hnsw_recall and {"flat", "bf16", "ivfpq"} <= set(choice.predicted_s)
    # HNSW is probed and predicted only where its measured recall would let it be taken.
    assert ("hnsw" in choice.predicted_s) == (hnsw_recall >= 0.99)
    eligible = {name: s for name, s in choice.predicted_s.items() if (choice.recall[name] or 0) >= 0.99}
    assert choice.index == min(eligible, key=eligible.get)


def test_search_dispatches_the_bf16_index():
    x = _unit(np.random.default_rng(5).standard_normal((300, 8)).astype(np.float32))
    nb = search("image", x, 5, SearchConfig(index="bf16", threads=1))
    ref = dense_knn(x, 5)
    np.testing.assert_allclose(nb.sim, ref.sim, atol=1e-5)


def _recall_above(exact, fast, floor):
    """Share of the exact lists' pairs at or above ``floor`` that ``fast`` lists."""
    pairs = [(i, j) for i in range(len(exact.idx)) for j, s in zip(exact.idx[i], exact.sim[i]) if s >= floor]
    return np.mean([j in set(fast.idx[i]) for i, j in pairs])


def test_reduced_dimension_shortlists_keep_the_pairs_above_a_floor():
    # Groups whose centres span 12 of 64 dimensions, as embeddings concentrate in few directions.
    rng = np.random.default_rng(6)
    centres = _unit(rng.standard_normal((150, 12)) @ rng.standard_normal((12, 64)))
    x = _unit(np.repeat(centres, 8, axis=0) + 0.04 * rng.standard_normal((1200, 64))).astype(np.float32)
    exact = dense_knn(x, 20, SearchConfig(index="flat", threads=1))
    fast = dense_knn(x, 20, SearchConfig(index="bf16", reduced_dims=16, reduced_shortlist=60, threads=1))
    assert _recall_above(exact, fast, 0.5) > 0.99
    rows, cols = np.nonzero(fast.idx >= 0)  # rescored with the full vectors
    np.testing.assert_allclose(fast.sim[rows, cols], (x[rows] * x[fast.idx[rows, cols]]).sum(1), atol=1e-5)


@pytest.mark.parametrize("method", ["sketch", "split"])
def test_search_runs_the_tfidf_search_its_settings_name(titles_tfidf, method):
    settings = SearchConfig(tfidf_search=method, tfidf_candidates=60, threads=1)
    nb = search("tfidf", titles_tfidf, 20, settings)
    assert _recall_above(sparse_knn(titles_tfidf, 20), nb, 0.5) > 0.99


def test_tfidf_auto_predicts_both_searches_and_logs_its_choice(titles_tfidf, monkeypatch, caplog):
    from pipeline.matching import tfidf_search

    monkeypatch.setattr(tfidf_search, "EXACT_BELOW_S", -1.0)  # probe the sketch too, on a tiny gallery
    with caplog.at_level("INFO", logger="pipeline"):
        out = tfidf_search.choose_tfidf_search(titles_tfidf, 10, 1)
    assert set(out["predicted_s"]) == {"exact", "split"} and out["method"] in out["predicted_s"]
    assert out["madds"]["split"] < out["madds"]["exact"]
    assert out["method"] == min(out["predicted_s"], key=out["predicted_s"].get)
    assert any("[search] TF-IDF N=1200" in r.getMessage() for r in caplog.records)


def test_auto_index_logs_its_choice_and_an_explicit_index_is_never_probed(monkeypatch, caplog):
    from pipeline.matching import index_choice

    x = _unit(np.random.default_rng(7).standard_normal((500, 8)).astype(np.float32))
    index_choice._CHOICES.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        dense_knn(x, 5, SearchConfig(index="auto", threads=1, gpu=False))
    assert any(r.getMessage().startswith("[search] N=500 D=8: index flat") for r in caplog.records)

    def refuse(*args, **kwargs):
        raise AssertionError("an explicit index was probed")

    monkeypatch.setattr(index_choice, "choose_index", refuse)
    dense_knn(x, 5, SearchConfig(index="hnsw", threads=1))


@pytest.mark.parametrize("key, value", [("tfidf_search", "fast"), ("required_recall", 1.5), ("reduced_dims", -1)])
def test_search_settings_refuse_values_outside_their_range(key, value):
    from pipeline.settings import ConfigError, build

    with pytest.raises(ConfigError, match=key):
        build(SearchConfig, {key: value}, prefix="search.")
