"""Ensembles of runs, fold averaging, re-tuning with overrides, the report and compare, on tiny text runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import stages
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.ensemble.members import EnsembleError
from pipeline.kaggle.inference import predict_from_package
from pipeline.kaggle.package import package_run
from pipeline.paths import RunPaths
from pipeline.reporting.compare import compare_runs

COMMON = [
    "folds.n_splits=2",
    "decision.cv_estimate=true",
    "search.k=20",
    "text.embed_dim=16",
    "text.train.epochs=1",
    "text.train.num_workers=0",
    "text.train.batch_size=8",
    "baseline_untrained=false",
]
ASSUMED = ["faiss-cpu", "imagehash", "scikit-learn", "sparse-dot-topn", "rapidfuzz", "lightgbm"]


def matches(path) -> dict:
    sub = pd.read_csv(path)
    return dict(zip(sub.posting_id, sub.matches.str.split().map(set)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir):
    from pipeline.data.synth import make_synthetic

    data = tmp_path_factory.mktemp("data")
    make_synthetic(data, n_groups=18, seed=5, image_size=32, progress=False)
    root = tmp_path_factory.mktemp("runs")
    a = load_config(None, ["modalities=[text,tfidf]", f"text.model={tiny_bert_dir}", *COMMON])
    # The second member: another seed, and its test set embedded by both fold models, averaged.
    b = load_config(
        None, ["modalities=[text]", f"text.model={tiny_bert_dir}", "seed=7", "text.train.final=folds", *COMMON]
    )
    stages.run_all(data, root / "a", a, progress=False)
    stages.run_all(data, root / "b", b, progress=False)
    ensemble = stages.make_ensemble([root / "a", root / "b"], root / "e", weights=[1.0, 2.0])
    stages.tune_stage(ensemble.paths.root, progress=False)
    stages.predict(ensemble.paths.root, progress=False)
    return data, root


@pytest.mark.slow
def test_ensemble_embeddings_combine_the_members_fold_by_fold(runs):
    _, root = runs
    e = RunPaths(root / "e")
    x = np.load(e.embeddings("text", "oof_fold0")[0])
    xa, xb = (np.load(RunPaths(root / r).embeddings("text", "oof_fold0")[0]) for r in ("a", "b"))
    np.testing.assert_allclose(x @ x.T, (xa @ xa.T + 2 * xb @ xb.T) / 3, atol=1e-5)
    assert json.loads(e.members.read_text())["members"][1]["weight"] == 2.0
    report = json.loads(e.report.read_text())
    assert report["ensemble"] and report["f1_cross_validated"] > 0
    assert load_config(e.config).modalities == ["text", "tfidf"]


@pytest.mark.slow
def test_fold_averaged_test_embeddings_are_the_mean_of_the_fold_models(runs):
    data, root = runs
    from pipeline.inference.embedding import embed_items
    from pipeline.models.encoders import load_encoder

    b = RunPaths(root / "b")
    assert not b.model("text", None).model.exists()  # final=folds: no full model was trained
    titles = pd.read_csv(data / "test.csv")["title"].tolist()
    folds = [embed_items(load_encoder(b.model("text", f).model), titles, batch_size=8, progress=False) for f in (0, 1)]
    mean = folds[0] + folds[1]
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(b.embeddings("text", "test")[0]), mean, atol=1e-5)


@pytest.mark.slow
def test_ensemble_predicts_the_same_from_saved_embeddings_on_the_fly_and_from_its_package(runs, tmp_path):
    data, root = runs
    e = root / "e"
    saved = matches(RunPaths(e).submission)
    on_the_fly = stages.predict(e, out=tmp_path / "fly.csv", data_dir=data, progress=False)
    assert matches(on_the_fly) == saved
    package = package_run(e, tmp_path / "package", assume_installed=ASSUMED)
    recipe = json.loads((package / "encoders.json").read_text())["text"]
    assert [len(m["models"]) for m in recipe] == [1, 2] and [m["weight"] for m in recipe] == [1.0, 2.0]
    predict_from_package(package, data, tmp_path / "offline.csv", progress=False)
    assert matches(tmp_path / "offline.csv") == saved


@pytest.mark.slow
def test_fp16_package_is_half_the_weights_and_loads_as_float32(runs, tmp_path):
    data, root = runs
    full = package_run(root / "a", tmp_path / "full", assume_installed=ASSUMED)
    half = package_run(root / "a", tmp_path / "half", fp16=True, assume_installed=ASSUMED)
    f32, f16 = (p / "models" / "text" / "member0" / "model.pt" for p in (full, half))
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    from pipeline.models.encoders import load_encoder

    model = load_encoder(f16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for a, b in zip(load_encoder(f32).state_dict().values(), model.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)
    assert json.loads((half / "manifest.json").read_text())["fp16"] is True
    summary = predict_from_package(half, data, tmp_path / "sub.csv", progress=False)
    assert summary["rows"] == len(pd.read_csv(data / "test.csv"))


@pytest.mark.slow
def test_members_with_other_folds_are_refused(runs, tmp_path):
    data, root = runs
    other = load_config(None, ["modalities=[tfidf]", "folds.n_splits=3"])
    stages.prepare(data, tmp_path / "other", other)
    with pytest.raises(EnsembleError, match="same folds"):
        stages.make_ensemble([root / "a", tmp_path / "other"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_retune_with_overrides_updates_the_config_and_retires_the_submission(runs, tmp_path, capsys):
    import shutil

    _, root = runs
    run = tmp_path / "a"
    shutil.copytree(root / "a", run)
    assert (run / "submission.csv").exists()
    assert main(["tune", "--run", str(run), "pair.enabled=false", "search.k=10"]) == 0
    cfg = load_config(run / "config.yaml")
    assert cfg.pair.enabled is False and cfg.search.k == 10
    assert "pair" not in json.loads((run / "thresholds.json").read_text())["settings"]["thresholds"]
    assert not (run / "submission.csv").exists()  # made with the earlier settings
    report = json.loads((run / "report.json").read_text())
    assert report["submission"] is None and report["submission_status"].startswith("none")
    assert report["tune_overrides"] == ["pair.enabled=false", "search.k=10"]
    capsys.readouterr()
    # Keys that need new models are refused, and nothing changes.
    assert main(["tune", "--run", str(run), "text.train.epochs=3"]) == 2
    assert "search.*, fusion.*, decision.*, pair.*, group.*, tfidf.*, phash.*" in capsys.readouterr().err
    assert load_config(run / "config.yaml").text.train.epochs == 1
    # The same settings again: a new submission stays current.
    assert main(["predict", "--run", str(run)]) == 0
    assert main(["tune", "--run", str(run)]) == 0
    assert (run / "submission.csv").exists()
    assert json.loads((run / "report.json").read_text())["submission_status"].startswith("current")


@pytest.mark.slow
def test_report_explains_the_rule_and_leads_with_the_cross_validated_f1(runs):
    _, root = runs
    paths = RunPaths(root / "a")
    report = json.loads(paths.report.read_text())
    assert next(iter(report)) == "f1_cross_validated" and report["f1_cross_validated"] == report["oof_cv"]["f1"]
    rule = report["rule"]
    assert rule["union"]["count"] == len(rule["applied_thresholds"]) == report["steps"]["union"]["signals"]
    assert set(rule["solo_best_thresholds"]) >= {"text", "tfidf"} and "jointly" in rule["why_they_differ"]
    assert rule["min2"]["in_words"]
    assert (
        sum(v["postings"] for v in report["by_group_size"]["cross_validated"].values()) == report["data"]["train_rows"]
    )
    log = pd.read_csv(paths.model("text", 0).log_csv)
    assert report["training"]["text/fold0"]["seconds"] == pytest.approx(log["seconds"].sum(), abs=0.01)
    md = paths.report_md.read_text()
    for words in ("Cross-validated F1", "## Signals", "Min-2", "What each part adds", "## F1 by group size"):
        assert words in md
    for plot in ("training", "f1_by_group_size", "threshold_f1"):
        assert paths.plot(plot).exists()
    assert paths.plot("false_positives").exists() or paths.plot("false_negatives").exists()
    log_lines = paths.run_log.read_text()
    assert "[prepare]" in log_lines and "[train-text] done" in log_lines and "[tune] done" in log_lines


@pytest.mark.slow
def test_compare_prints_one_table_with_the_leaderboard_column(runs, capsys):
    _, root = runs
    assert main(["compare", str(root / "a"), str(root / "b"), str(root / "e"), "--lb", f"{root / 'a'}=0.731"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    for column in ("F1 (cross-validated)", "text alone (same rows)", "time s", "leaderboard", "config keys"):
        assert column in header
    assert "0.731" in out and "seed=7" in out and "text.train.final=folds" in out and "ensemble=a*1+b*2" in out
    assert json.loads((root / "a" / "leaderboard.json").read_text())["latest"] == 0.731
    table = compare_runs([root / "a", root / "b"])
    assert list(table["run"]) == [str(root / "a"), str(root / "b")] and table["f1_cv"].notna().all()
    assert main(["compare", "--lb", f"{root / 'a'}=abc"]) == 2
