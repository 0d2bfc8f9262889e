import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import build_parser, main
from pipeline.submission import read_matches


def stage_names() -> list[str]:
    """Every subcommand, as the parser itself registers them."""
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


STAGES = stage_names()


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help_and_a_handler(stage, capsys):
    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m pipeline " + stage in out
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert callable(sub.choices[stage].get_default("func"))


def test_the_readme_documents_every_stage_the_parser_has():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert not [stage for stage in STAGES if f"python -m pipeline {stage}" not in readme]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--out", str(out), "--groups", "40", "--seed", "1", "--image-size", "64"]) == 0
    return out


def test_run_tfidf_phash_end_to_end(synth_data, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(
        [
            "run",
            "--data",
            str(synth_data),
            "--out",
            str(run),
            "--modalities",
            "tfidf,phash",
            "folds.n_splits=3",
            "decision.cv_estimate=false",
        ]
    )
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
    assert (
        main(["score", "--submission", str(run / "submission.csv"), "--truth", str(synth_data / "test_truth.csv")]) == 0
    )
    score = json.loads(capsys.readouterr().out)
    assert set(score) == {"f1", "precision", "recall", "rows"} and score["rows"] == len(test_ids)
    # Better than predicting every posting alone.
    truth = pd.read_csv(synth_data / "test_truth.csv")
    sizes = truth.groupby("label_group")["posting_id"].transform("size")
    assert score["f1"] > (2 / (1 + sizes)).mean()


def test_stages_one_by_one_give_the_submission_of_run(synth_data, tmp_path):
    args = ["--modalities", "tfidf,phash", "folds.n_splits=2", "decision.cv_estimate=false", "threads=1"]
    assert main(["run", "--data", str(synth_data), "--out", str(tmp_path / "whole"), *args]) == 0
    staged = tmp_path / "staged"
    assert main(["prepare", "--data", str(synth_data), "--out", str(staged), *args]) == 0
    assert main(["tune", "--run", str(staged)]) == 0
    assert main(["predict", "--run", str(staged), "--out", str(tmp_path / "sub.csv")]) == 0
    whole = (tmp_path / "whole" / "submission.csv").read_bytes()
    assert (tmp_path / "sub.csv").read_bytes() == whole and whole.count(b"\n") > 1


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
