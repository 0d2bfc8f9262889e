import dataclasses
import json
import pickle

import numpy as np
import pytest

from pipeline.data.synth import synthetic_titles
from pipeline.data.synth.postings import clustered_postings
from pipeline.matching import pair_model as pairs
from pipeline.matching.candidates import Candidates, Gallery, build_candidates
from pipeline.matching.decide import MatchSettings
from pipeline.matching.fusion import FusionConfig, NeighbourCache, gallery_neighbours
from pipeline.matching.groups import GroupConfig, GroupSettings
from pipeline.matching.neighbours import SearchConfig
from pipeline.matching.pair_features import COMMON_K, FEATURE_GROUPS, PairContext, feature_names, pair_features
from pipeline.matching.pair_model import PAIR_SIGNAL, PairModel, PairModelConfig, PairModelError, cross_fit
from pipeline.matching.predict import PredictError, load_pair_model, match_postings
from pipeline.matching.size_calibration import calibrate_size
from pipeline.matching.tuning import DecisionConfig, TuneSetup, cross_validated, tune


def with_pair_model(n_thresholds: int) -> TuneSetup:
    return TuneSetup(
        DecisionConfig(n_thresholds=n_thresholds),
        FusionConfig(blend_rounds=0),
        PairModelConfig(enabled=True),
        threads=1,
    )


def sims_only(c, signals):
    return pair_features(c, feature_names(signals, ["sims"], []))


def test_features_are_missing_where_a_signal_did_not_list_the_pair():
    c = Candidates(
        np.array([0, 0, 1]),
        np.array([1, 2, 0]),
        {"a": np.array([0.9, -np.inf, 0.5], np.float32), "b": np.array([0.1, 0.2, 0.3], np.float32)},
        n=3,
    )
    f = sims_only(c, ["a", "b", "absent"])
    assert f.shape == (3, 9)
    assert np.isnan(f[1, :3]).all() and not np.isnan(f[0, :3]).any()
    assert f[0, 0] == pytest.approx(0.9) and f[0, 1] == 0  # best of query 0 by "a"
    assert np.isnan(f[:, 6:]).all()


@pytest.fixture(autouse=True)
def few_rounds(monkeypatch):
    """Fewer boosting rounds: these tests check plumbing and invariants, not accuracy."""
    monkeypatch.setattr(pairs, "DEFAULT_ROUNDS", 40)


@pytest.fixture(scope="module")
def clustered():
    vectors, labels = clustered_postings(400, dim=32, seed=4)
    titles = np.array(synthetic_titles(labels, seed=4), dtype=object)
    everything = np.arange(len(labels))
    g = Gallery(everything, everything, vectors)
    cache = NeighbourCache()

    def build(settings):
        return build_candidates(
            g, gallery_neighbours(g, settings, SearchConfig(index="flat", k=20), cache=cache), len(labels)
        )

    def context(settings):
        return PairContext.single(
            g, gallery_neighbours(g, settings, SearchConfig(index="flat", k=20), cache=cache), len(labels), titles
        )

    return build, context, labels, everything % 3


def test_context_features_match_a_per_pair_loop(clustered):
    build, context, _, _ = clustered
    c = build(MatchSettings()).take(np.arange(0, 3000, 7))
    ctx = context(MatchSettings())
    names = feature_names(sorted(c.sims), FEATURE_GROUPS, ["image", "text", "phash"])
    f = pair_features(c, names, ctx)
    col = {name: f[:, j] for j, name in enumerate(names)}
    vec, nb = ctx.galleries[0].vectors, ctx.neighbours[0]
    for i, (q, m) in enumerate(zip(c.query, c.match)):
        assert col["text:raw"][i] == pytest.approx(float(vec["text"][q] @ vec["text"][m]), abs=1e-5)
        bits = np.unpackbits(vec["phash"][q] ^ vec["phash"][m]).sum()
        assert col["phash:hamming"][i] == bits
        back = list(nb["image"].idx[m])
        assert (col["image:rev_rank"][i] == back.index(q)) if q in back else np.isnan(col["image:rev_rank"][i])
        shared = set(nb["text"].idx[q, :COMMON_K]) & set(nb["text"].idx[m, :COMMON_K]) - {-1}
        assert col["text:common"][i] == len(shared)
        own = [s for j, s in zip(nb["text"].idx[q], nb["text"].sim[q]) if j != q][:5]
        assert col["text:dens_q"][i] == pytest.approx(np.mean(own), abs=1e-5)


@pytest.mark.parametrize("group", FEATURE_GROUPS)
def test_each_group_alone_fills_its_own_columns(clustered, group):
    build, context, _, _ = clustered
    c = build(MatchSettings()).take(np.arange(0, 2000, 11))
    names = feature_names(sorted(c.sims), ["sims", group], ["image", "text", "phash"])
    f = pair_features(c, names, context(MatchSettings()))
    assert f.shape == (len(c), len(names)) and not np.isnan(f).all(axis=0).any()


def test_quantities_in_titles_agree_or_conflict():
    titles = [
        "Gula Pasir 400gr",
        "gula pasir 200 gr",
        "Gula 1 kg",
        "gula 1000gr",
        "Tas model 815",
        "tas model 815 821",
        "lampu",
    ]
    q, m = np.array([0, 2, 4, 0]), np.array([1, 3, 5, 6])
    g = Gallery(np.arange(7), np.arange(7), {})
    c = Candidates(q, m, {}, n=7)
    names = feature_names([], ["numbers", "text"], [])
    f = pair_features(c, names, PairContext.single(g, {}, 7, titles))
    col = {name: f[:, j] for j, name in enumerate(names)}
    assert col["qty:conflict"].tolist() == [1, 0, 0, 0]  # 400 g against 200 g
    assert col["qty:agree"].tolist() == [0, 1, 0, 0]  # 1 kg is 1000 g
    assert col["qty:one_side"].tolist() == [0, 0, 0, 1]
    assert col["num:jaccard"][2] == pytest.approx(0.5) and np.isnan(col["num:jaccard"][0])
    assert col["title:jaccard"][0] == pytest.approx(2 / 5)  # gula, pasir of gula, pasir, 400gr, 200, gr


def test_cross_fitted_scores_never_see_their_own_fold(clustered):
    build, context, labels, folds = clustered
    c, ctx = build(MatchSettings()), context(MatchSettings())
    signals = sorted(c.sims)
    scores, full, per_fold = cross_fit(c, labels, folds, signals, ctx, seed=0, threads=1)
    held = folds == 1
    # Fitted without any pair that touches fold 1 at either end: not even the mirrors of its
    # queries' pairs, which are all non-matches.
    outside = c.take(~held[c.query] & ~held[c.match])
    alone = PairModel(signals, seed=0, threads=1).fit(outside, labels, ctx).predict(c.subset(held), ctx)
    np.testing.assert_allclose(scores[held[c.query]], alone, atol=1e-6)
    np.testing.assert_allclose(per_fold[1].predict(c.subset(held), ctx), alone, atol=1e-6)
    assert full.predict(c, ctx).shape == (len(c),)
    # Postings outside ``rows`` (a fold held out by cross_validated) are never learned from.
    rows = folds != 2
    _, kept, _ = cross_fit(c, labels, folds, signals, ctx, seed=0, threads=1, rows=rows)
    inside = PairModel(signals, seed=0, threads=1).fit(c.take(rows[c.query] & rows[c.match]), labels, ctx)
    np.testing.assert_allclose(kept.predict(c, ctx), inside.predict(c, ctx), atol=1e-6)


def test_the_trees_do_not_depend_on_the_thread_count(clustered):
    build, context, labels, _ = clustered
    c, ctx = build(MatchSettings()), context(MatchSettings())
    one = PairModel(sorted(c.sims), seed=0, threads=1, rounds=30).fit(c, labels, ctx).predict(c, ctx)
    two = PairModel(sorted(c.sims), seed=0, threads=2, rounds=30).fit(c, labels, ctx).predict(c, ctx)
    np.testing.assert_array_equal(one, two)


@pytest.mark.slow
def test_tuning_with_the_pair_model_and_its_round_trip(clustered, tmp_path):
    build, context, labels, folds = clustered
    result = tune(build, labels, folds, with_pair_model(31), context=context)
    assert PAIR_SIGNAL in result.steps and 0 < result.steps[PAIR_SIGNAL]["f1"] <= 1
    assert result.steps[PAIR_SIGNAL]["groups"] == list(pairs.DEFAULT_GROUPS)
    assert result.steps["final"]["f1"] >= max(result.steps[s]["f1"] for s in ("image", "text", "phash", "concat"))
    path = result.pair_model.save(tmp_path / "pair.json")
    c, ctx = build(result.settings), context(result.settings)
    loaded = PairModel.load(path, threads=1)
    assert loaded.features == result.pair_model.features
    np.testing.assert_array_equal(loaded.predict(c, ctx), result.pair_model.predict(c, ctx))
    # Scoring in small blocks of whole queries gives the same probabilities.
    np.testing.assert_allclose(
        result.pair_model.predict(c, ctx, chunk_pairs=97), result.pair_model.predict(c, ctx), atol=1e-6
    )
    cv = cross_validated(build, labels, folds, with_pair_model(21), context)
    assert 0 < cv["f1"] <= 1 and len(cv["per_fold_f1"]) == 3


def test_without_a_context_only_the_similarity_features_are_used(clustered):
    build, context, labels, _ = clustered
    c = build(MatchSettings())
    model = PairModel(sorted(c.sims), groups=["sims"], threads=1, rounds=20).fit(c, labels)
    assert not model.needs_context and model.predict(c).shape == (len(c),)
    with pytest.raises(ValueError, match="need a PairContext"):
        PairModel(sorted(c.sims), threads=1).fit(c, labels)


class _Boom:
    """Unpickling this writes a file: the proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["pair_model.json", "pair_model.pkl"])
def test_a_crafted_pickle_is_refused_and_never_run(tmp_path, name):
    marker = tmp_path / "ran"
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"signals": ["tfidf"], "model": _Boom(marker)}))
    with pytest.raises(PairModelError, match="pickle, which is never loaded"):
        PairModel.load(path)
    assert not marker.exists()
    with pytest.raises(PredictError, match="never loaded"):
        load_pair_model(path, MatchSettings(thresholds={"pair": 0.5}))
    assert not marker.exists()


def test_an_old_pickle_beside_a_missing_model_says_to_retune(tmp_path):
    (tmp_path / "pair_model.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(PredictError, match="pickle from an older version.*rerun the tune stage"):
        load_pair_model(tmp_path / "pair_model.json", MatchSettings(thresholds={"pair": 0.5}))


def test_tampered_or_foreign_files_are_refused(clustered, tmp_path):
    build, context, labels, _ = clustered
    c = build(MatchSettings())
    path = PairModel(sorted(c.sims), groups=["sims"], threads=1, rounds=5).fit(c, labels).save(tmp_path / "p.json")
    blob = json.loads(path.read_text())
    cases = {
        "not JSON": b"\x00\x01 garbage",
        "format is not": json.dumps({"format": "something else"}).encode(),
        "format version": json.dumps({**blob, "version": 99}).encode(),
        "features this code does not compute": json.dumps({**blob, "features": blob["features"][::-1]}).encode(),
        "LightGBM cannot read": json.dumps({**blob, "lightgbm_model": "not a tree"}).encode(),
        "field 'seed'": json.dumps({**blob, "seed": "os.system"}).encode(),
        "field 'trees'": json.dumps({**blob, "trees": {"num_leaves": "31"}}).encode(),
        "unknown tree parameters": json.dumps({**blob, "trees": {"max_depth": 3}}).encode(),
    }
    for message, raw in cases.items():
        path.write_bytes(raw)
        with pytest.raises(PairModelError, match=message):
            PairModel.load(path)


def test_the_trees_shape_is_configured_fitted_and_read_back(clustered, tmp_path):
    """The configured shape reaches LightGBM (no tree has more leaves), is saved with the model, and a
    model saved before the shape was recorded reads back as the shape it was fitted with."""
    build, context, labels, folds = clustered
    c = build(MatchSettings())
    cfg = PairModelConfig(num_leaves=3, min_data_in_leaf=5, lambda_l2=0.0, feature_fraction=1.0)
    assert cfg.trees == {"num_leaves": 3, "min_data_in_leaf": 5, "lambda_l2": 0.0, "feature_fraction": 1.0}
    model = PairModel(sorted(c.sims), groups=["sims"], threads=1, rounds=10, trees=cfg.trees).fit(c, labels)
    leaves = [t["num_leaves"] for t in model.booster.dump_model()["tree_info"]]
    assert max(leaves) == 3
    path = model.save(tmp_path / "p.json")
    assert PairModel.load(path).trees == cfg.trees
    blob = json.loads(path.read_text())
    del blob["trees"]
    path.write_text(json.dumps(blob))
    assert PairModel.load(path).trees == pairs.LEGACY_TREES
    _, full, per_fold = cross_fit(c, labels, folds, sorted(c.sims), None, 0, ["sims"], 1, trees=cfg.trees)
    assert full.trees == cfg.trees and all(m.trees == cfg.trees for m in per_fold.values())
    assert PairModel(sorted(c.sims), threads=1).trees == pairs.DEFAULT_TREES


@pytest.mark.parametrize(
    "key, value", [("num_leaves", 1), ("min_data_in_leaf", 0), ("lambda_l2", -1.0), ("feature_fraction", 0.0)]
)
def test_a_tree_shape_out_of_range_is_refused(key, value):
    with pytest.raises(ValueError, match=key):
        PairModelConfig(**{key: value})
    with pytest.raises(ValueError, match="unknown tree parameters"):
        PairModel(["tfidf"], trees={"max_depth": 3})


def test_a_group_rule_is_tuned_after_the_pairs_and_predict_gives_whole_groups(clustered):
    """The group rule is tuned after the pairs, survives thresholds.json, moves with the gallery, is
    cross-validated, and predict's lists are then whole groups: everyone in a posting's set has the
    same set."""
    build, context, labels, folds = clustered
    setup = dataclasses.replace(with_pair_model(21), group=GroupConfig("average", "accepted", cut=None))
    result = tune(build, labels, folds, setup, context=context)
    group = GroupSettings.from_dict(result.settings.group)
    assert group.rule == "average" and group.cal_x and result.steps["final"] is result.steps["groups"]
    assert result.steps["pairs_final"]["f1"] > 0 and result.steps["groups"]["ece_calibrated"] <= 0.01
    settings, fit = calibrate_size(result, labels, 400, n_thresholds=21)
    assert MatchSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert fit["groups"]["tuned_size"] == 400 and GroupSettings.from_dict(settings.group).tuned_size == 400
    cv = cross_validated(build, labels, folds, setup, context)
    assert 0 < cv["f1"] <= 1 and len(cv["per_fold_f1"]) == 3

    vectors, _ = clustered_postings(400, dim=32, seed=4)
    titles = np.array(synthetic_titles(labels, seed=4), dtype=object)
    ids = np.array([f"p{i}" for i in range(400)])
    sub = match_postings(vectors, ids, settings, SearchConfig(index="flat", k=20), result.pair_model, titles=titles)
    sets = {pid: frozenset(m.split()) for pid, m in zip(sub["posting_id"], sub["matches"])}
    grouped = [s for s in sets.values() if len(s) > 2]  # pairs may be a lone posting's min-2
    assert grouped and all(sets[other] == s for s in grouped for other in s)
    # Rule none: the pairs' own decision, as before the group step existed.
    pairs_only = dataclasses.replace(settings, group={})
    plain = match_postings(vectors, ids, pairs_only, SearchConfig(index="flat", k=20), result.pair_model, titles=titles)
    assert not plain.equals(sub)


def test_without_a_pair_model_the_group_rule_is_skipped_and_says_so(clustered):
    build, context, labels, folds = clustered
    setup = TuneSetup(
        DecisionConfig(n_thresholds=11),
        FusionConfig(blend_rounds=0),
        PairModelConfig(enabled=False),
        group=GroupConfig("average", "prob", cut=None),
    )
    result = tune(build, labels, folds, setup, context=context)
    assert result.steps["groups"] == {"skipped": "no pair model"} and not result.settings.group


@pytest.mark.parametrize("drop, kept", [(0.005, True), (0.02, False)])
def test_a_group_rule_that_lowers_the_out_of_fold_f1_too_much_is_left_out(clustered, monkeypatch, drop, kept):
    """The group step stays unless it lowers the out-of-fold F1 by more than GROUP_TOLERANCE."""
    from pipeline.matching import tuning

    build, context, labels, folds = clustered
    pairs = tune(
        build, labels, folds, dataclasses.replace(with_pair_model(21), group=GroupConfig("none")), context=context
    )
    real = tuning.tune_groups

    def worse(*args, **kwargs):
        settings, record = real(*args, **kwargs)
        return settings, {**record, "f1": pairs.steps["final"]["f1"] - drop}

    monkeypatch.setattr(tuning, "tune_groups", worse)
    assert tuning.GROUP_TOLERANCE == 0.01
    result = tuning.add_groups(pairs, labels, GroupConfig("average", "accepted", 0.3))
    if kept:
        assert result.settings.group and result.steps["final"]["f1"] == pytest.approx(pairs.steps["final"]["f1"] - drop)
    else:
        assert result.settings == pairs.settings and not result.settings.group
        assert result.steps["groups"]["kept"] is False and result.steps["final"] == pairs.steps["final"]
