import numpy as np
import pytest

from pipeline.data.synth.postings import clustered_postings
from pipeline.matching.candidates import Candidates, Gallery, build_candidates
from pipeline.matching.decide import MatchSettings
from pipeline.matching.fusion import NeighbourCache, gallery_neighbours
from pipeline.matching.pairs import PAIR_SIGNAL, PairModel, _rank_and_gap, cross_fit, pair_features
from pipeline.matching.tuning import cross_validated, tune


def test_rank_and_gap_match_a_per_query_loop():
    rng = np.random.default_rng(0)
    query = rng.integers(0, 7, size=60)
    s = rng.random(60)
    rank, gap = _rank_and_gap(query, s)
    for q in np.unique(query):
        idx = np.flatnonzero(query == q)
        order = idx[np.argsort(-s[idx], kind="stable")]
        assert rank[order].tolist() == list(range(len(idx)))
        np.testing.assert_allclose(gap[idx], s[idx].max() - s[idx])


def test_features_are_missing_where_a_signal_did_not_list_the_pair():
    c = Candidates(np.array([0, 0, 1]), np.array([1, 2, 0]),
                   {"a": np.array([0.9, -np.inf, 0.5], np.float32), "b": np.array([0.1, 0.2, 0.3], np.float32)}, n=3)
    f = pair_features(c, ["a", "b", "absent"])
    assert f.shape == (3, 9)
    assert np.isnan(f[1, :3]).all() and not np.isnan(f[0, :3]).any()
    assert f[0, 0] == pytest.approx(0.9) and f[0, 1] == 0  # best of query 0 by "a"
    assert np.isnan(f[:, 6:]).all()


@pytest.fixture(scope="module")
def clustered():
    vectors, labels = clustered_postings(600, dim=32, seed=4)
    everything = np.arange(len(labels))
    g = Gallery(everything, everything, vectors)
    cache = NeighbourCache()

    def build(settings):
        return build_candidates(g, gallery_neighbours(g, settings, k=20, cache=cache), len(labels))

    return build, labels, everything % 3


def test_cross_fitted_scores_never_see_their_own_fold(clustered):
    build, labels, folds = clustered
    c = build(MatchSettings())
    signals = sorted(c.sims)
    scores, full = cross_fit(c, labels, folds, signals, seed=0)
    held = folds == 1
    alone = PairModel(signals, seed=0).fit(c.subset(~held), labels).predict(c.subset(held))
    np.testing.assert_allclose(scores[held[c.query]], alone, atol=1e-6)
    assert full.predict(c).shape == (len(c),)


def test_tuning_with_the_pair_model_and_its_round_trip(clustered, tmp_path):
    build, labels, folds = clustered
    result = tune(build, labels, n_thresholds=31, blend_rounds=0, folds=folds, pair_model=True)
    assert PAIR_SIGNAL in result.steps and 0 < result.steps[PAIR_SIGNAL]["f1"] <= 1
    assert result.steps["final"]["f1"] >= max(result.steps[s]["f1"] for s in ("image", "text", "phash", "concat"))
    path = result.pair_model.save(tmp_path / "pair.pkl")
    c = build(result.settings)
    np.testing.assert_array_equal(PairModel.load(path).predict(c), result.pair_model.predict(c))
    # Scoring in small blocks of whole queries gives the same probabilities.
    np.testing.assert_allclose(result.pair_model.predict(c, chunk_pairs=97), result.pair_model.predict(c), atol=1e-6)
    cv = cross_validated(build, labels, folds, n_thresholds=21, blend_rounds=0, pair_model=True)
    assert 0 < cv["f1"] <= 1 and len(cv["per_fold_f1"]) == 3


def test_loading_a_model_saved_by_another_sklearn_is_refused(clustered, tmp_path):
    import pickle

    build, labels, _ = clustered
    c = build(MatchSettings())
    path = PairModel(sorted(c.sims)).fit(c, labels).save(tmp_path / "pair.pkl")
    blob = pickle.loads(path.read_bytes())
    blob["sklearn"] = "0.0.1"
    path.write_bytes(pickle.dumps(blob))
    with pytest.raises(RuntimeError, match="saved with scikit-learn 0.0.1"):
        PairModel.load(path)
