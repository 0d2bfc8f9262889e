"""Stages with a learned modality, on tiny synthetic data and a tiny local BERT."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import stages
from pipeline.config import load_config
from pipeline.paths import RunPaths
from pipeline.reporting.report import write_report
from pipeline.runs.folder import StageError


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert_dir):
    data = tmp_path_factory.mktemp("data")
    from pipeline.data.synth import make_synthetic

    make_synthetic(data, n_groups=18, seed=5, image_size=32, progress=False)
    cfg = load_config(
        None,
        [
            "modalities=[text,tfidf]",
            "folds.n_splits=2",
            "decision.cv_estimate=false",
            "search.k=20",
            f"text.model={tiny_bert_dir}",
            "text.embed_dim=16",
            "text.train.epochs=2",
            "text.train.num_workers=0",
            "text.train.batch_size=8",
        ],
    )
    run = tmp_path_factory.mktemp("run")
    report = stages.run_all(data, run, cfg, progress=False)
    return data, run, report


def test_report_has_trained_and_untrained_figures(text_run):
    _, run, report = text_run
    assert set(report["per_modality"]) >= {"text", "tfidf"}
    assert 0 < report["untrained"]["text"]["f1"] <= 1
    assert set(report["training"]) == {"text/fold0", "text/fold1", "text/full"}
    assert "val_f1" in report["training"]["text/fold0"]
    assert report["timings"]["train-text"] > 0 and report["timings"]["embed"] > 0
    assert json.loads((run / "report.json").read_text())["oof_f1"] == report["oof_f1"]


def test_embeddings_are_unit_norm_and_aligned(text_run):
    data, run, _ = text_run
    paths = RunPaths(run)
    train_ids = pd.read_csv(data / "train.csv")["posting_id"].to_numpy()
    for name in ("oof_fold0", "oof_fold1", "untrained"):
        vec, ids = paths.embeddings("text", name)
        x = np.load(vec)
        assert x.dtype == np.float32 and x.shape == (len(train_ids), 16)  # gallery "all": every train row
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
        assert (pd.read_csv(ids)["posting_id"].to_numpy() == train_ids).all()
    vec, _ = paths.embeddings("text", "test")
    assert np.load(vec).shape[0] == len(pd.read_csv(data / "test.csv"))


def test_rerunning_a_stage_reuses_finished_models(text_run):
    _, run, _ = text_run
    before = (run / "models" / "text" / "fold0" / "model.pt").stat().st_mtime_ns
    results = stages.train(run, "text", folds=[0], resume=True, progress=False)
    assert results["fold0"]["skipped"] is True
    assert (run / "models" / "text" / "fold0" / "model.pt").stat().st_mtime_ns == before


def test_stages_out_of_order_say_what_to_run(tmp_path, text_run):
    data, _, _ = text_run
    cfg = load_config(None, ["modalities=[text]", "folds.n_splits=2"])
    stages.prepare(data, tmp_path / "r", cfg)
    with pytest.raises(StageError, match="run `python -m pipeline train-text"):
        stages.embed(tmp_path / "r", progress=False)
    with pytest.raises(StageError, match="run `python -m pipeline tune"):
        stages.predict(tmp_path / "r", progress=False)
    with pytest.raises(StageError, match="thresholds.json missing: run `python -m pipeline tune"):
        write_report(tmp_path / "r")


def test_predict_on_another_data_folder_embeds_it_and_keeps_the_run(text_run, tmp_path):
    data, run, _ = text_run
    other = tmp_path / "other"
    other.mkdir()
    test = pd.read_csv(data / "test.csv").iloc[:7]
    test.to_csv(other / "test.csv", index=False)
    out = stages.predict(run, out=tmp_path / "sub.csv", data_dir=other, progress=False)
    sub = pd.read_csv(out)
    assert sorted(sub["posting_id"]) == sorted(test["posting_id"])
    # The run still points at its own data.
    assert json.loads((run / "run.json").read_text())["data_dir"] == str(data.resolve())


def test_retuning_a_run_rewrites_its_report(text_run):
    _, run, _ = text_run
    report = run / "report.json"
    report.write_text("{}")
    stages.tune_stage(run, progress=False)
    assert json.loads(report.read_text())["oof_f1"] > 0
