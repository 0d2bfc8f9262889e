import json
import subprocess
import sys

import pandas as pd
import pytest

from pipeline.cli import build_parser, main
from pipeline.submission import read_matches

STAGES = ["synth", "run", "prepare", "train-image", "train-text", "embed", "tune", "predict", "score", "demo",
          "bench", "package"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m pipeline " + stage in out


def test_parser_lists_every_stage():
    help_text = build_parser().format_help()
    for stage in STAGES:
        assert stage in help_text


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--groups", "40", "--seed", "1", "--image-size", "64"]) == 0
    return out


def test_run_tfidf_phash_end_to_end(synth_data, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["run", "--data", str(synth_data), "--out", str(run), "--modalities", "tfidf,phash",
                 "folds.n_splits=3", "match.cv_estimate=false"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((run / "report.json").read_text())
    assert printed["oof_f1"] == pytest.approx(report["oof_f1"], abs=1e-4)
    assert set(report["per_modality"]) >= {"tfidf", "phash"}
    assert report["config"]["modalities"] == ["tfidf", "phash"]
    assert report["code_version"] and report["timings"]["tune"] > 0
    assert (run / "plots" / "threshold_f1.png").stat().st_size > 0
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert thresholds["settings"]["thresholds"]
    # The submission covers test.csv, and score reads it back.
    test_ids = pd.read_csv(synth_data / "test.csv")["posting_id"]
    matches = read_matches(run / "submission.csv")
    assert set(matches) == set(test_ids) and all(pid in m for pid, m in matches.items())
    assert main(["score", "--submission", str(run / "submission.csv"), "--truth", str(synth_data / "test_truth.csv")]) == 0
    score = json.loads(capsys.readouterr().out)
    assert set(score) == {"f1", "precision", "recall", "rows"} and score["rows"] == len(test_ids)
    # Better than predicting every posting alone.
    truth = pd.read_csv(synth_data / "test_truth.csv")
    sizes = truth.groupby("label_group")["posting_id"].transform("size")
    assert score["f1"] > (2 / (1 + sizes)).mean()


def test_stages_one_by_one_match_run(synth_data, tmp_path):
    run = tmp_path / "staged"
    args = ["--modalities", "tfidf", "folds.n_splits=2", "match.cv_estimate=false", "match.blend_rounds=0"]
    assert main(["prepare", "--data", str(synth_data), "--out", str(run), *args]) == 0
    assert main(["tune", "--run", str(run)]) == 0
    assert main(["predict", "--run", str(run), "--out", str(tmp_path / "sub.csv")]) == 0
    assert (tmp_path / "sub.csv").exists()


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["predict", "--run", str(tmp_path / "nothing")]) == 2
    assert "not a prepared run folder" in capsys.readouterr().err
    assert main(["prepare", "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "train.csv: file not found" in capsys.readouterr().err
    assert main(["run", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "match.kk=3"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, check=True)
    assert "train-text" in out.stdout
