"""Hostile input through the command line: each bad input ends with exit 2, one
``error:`` line naming the file, row, column or key, and no run folder; valid but useless data
ends with a clear warning."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pipeline.cli import main

TP = ["--modalities", "tfidf,phash", "folds.n_splits=2", "decision.cv_estimate=false"]


def fails_cleanly(capsys, argv: list[str], *expected: str) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in errors[0]
    return errors[0]


@pytest.fixture()
def data(tiny_synth, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(tiny_synth["root"], out)
    return out


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["image.train.epochs=0"], "image.train.epochs must be >= 1"),
        (["text.train.batch_size=0"], "text.train.batch_size must be >= 2"),
        (["decision.n_thresholds=0"], "decision.n_thresholds must be >= 2"),
        (["search.k=[3"], "override search.k"),
        (["fusion.weights={image: 1.0}"], "fusion.weights names ['image']"),
        (["tfidf.ngram_min=3", "tfidf.ngram_max=1"], "tfidf.ngram_max"),
        (["text.train.lr=-0.001"], "text.train.lr must be > 0"),
        (["tfidf.min_df=1000"], "tfidf.min_df=1000"),
    ],
)
def test_config_that_cannot_run_stops_before_any_work(data, tmp_path, capsys, overrides, expected):
    run = tmp_path / "run"
    fails_cleanly(capsys, ["run", "--data", str(data), "--out", str(run), *TP, *overrides], expected)
    assert not run.exists()


def test_tfidf_with_every_train_title_empty_names_the_column(data, tmp_path, capsys):
    df = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    df.assign(title="").to_csv(data / "train.csv", index=False)
    run = tmp_path / "run"
    fails_cleanly(
        capsys, ["run", "--data", str(data), "--out", str(run), *TP], "train.csv, column 'title'", "no vocabulary"
    )
    assert not run.exists()


@pytest.mark.parametrize("stage", ["run", "train-text"])
def test_resume_and_overwrite_together_are_refused_on_one_line(data, tmp_path, capsys, stage):
    argv = ["--data", str(data), "--out", str(tmp_path / "run")] if stage == "run" else ["--run", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main([stage, *argv, "--resume", "--overwrite"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "not allowed with argument --resume" in err


def test_a_fold_the_run_does_not_have_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["prepare", "--data", str(data), "--out", str(run), "--config", "demo", "--modalities", "image"]) == 0
    fails_cleanly(capsys, ["train-image", "--run", str(run), "--fold", "7"], "--fold 7", "folds 0 to 1")
    assert not (run / "models").exists()


def test_all_singleton_groups_warn_clearly_and_still_run(data, tmp_path, caplog):
    df = pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)
    df.assign(label_group=[str(1000 + i) for i in range(len(df))]).to_csv(data / "train.csv", index=False)
    run = tmp_path / "run"
    assert (
        main(["run", "--data", str(data), "--out", str(run), *TP]) == 0
    )  # the pair model, with nothing to learn, is left out
    assert "warning: " in caplog.text and "every label_group holds a single posting" in caplog.text
    assert "single posting" in json.loads((run / "report.json").read_text())["warnings"][0]


def test_error_messages_stay_on_one_line(capsys):
    from pipeline.cli import _fail

    assert _fail("a\nb") == 2
    assert capsys.readouterr().err == "error: a b\n"
