"""Every artefact records what it was built from; a stage refuses stale
inputs and names the stage to rerun; rerunning upstream invalidates what was built downstream."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline import io
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.paths import RunPaths
from pipeline.runs import provenance

TP = ["--modalities", "tfidf,phash", "folds.n_splits=2", "decision.cv_estimate=false", "pair.enabled=false"]
DOWNSTREAM = ("thresholds.json", "tune.json", "report.json", "submission.csv")


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> tuple[Path, Path]:
    from pipeline.data.synth import make_synthetic

    out = []
    for seed in (1, 2):
        root = tmp_path_factory.mktemp(f"data{seed}")
        make_synthetic(root, n_groups=12, seed=seed, image_size=32, progress=False)
        out.append(root)
    return out[0], out[1]


@pytest.fixture()
def done_run(two_datasets, tmp_path) -> Path:
    run = tmp_path / "run"
    assert main(["run", "--data", str(two_datasets[0]), "--out", str(run), *TP]) == 0
    return run


def records(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["provenance"]


def error_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_every_artefact_records_config_data_inputs_and_digests(done_run):
    prov = records(done_run)
    assert set(prov) == {"prepare", "tune", "predict", "report"}
    assert prov["tune"]["inputs"] == {"prepare": prov["prepare"]["id"]}
    assert prov["predict"]["inputs"] == {"tune": prov["tune"]["id"]}
    assert prov["tune"]["config"]["search.k"] == 50 and prov["tune"]["data"] == prov["prepare"]["data"]
    # What predict reads; tune.json names the overrides, so a re-tune to the same settings keeps the submission.
    assert "thresholds.json" in prov["tune"]["files"] and "tune.json" not in prov["tune"]["files"]
    assert prov["predict"]["files"] == {"submission.csv": provenance._file_sha(done_run / "submission.csv")}


def test_a_failed_rerun_on_other_data_leaves_nothing_old_beside_the_new_data(
    two_datasets, done_run, monkeypatch, capsys
):
    import pipeline.stages.tuning as tuning

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    # The second run dies while tuning, after thresholds.json and tune.json were written.
    monkeypatch.setattr(tuning, "plot_threshold_f1", full_disk)
    capsys.readouterr()
    assert main(["run", "--data", str(two_datasets[1]), "--out", str(done_run), *TP]) == 2
    assert "No space left" in error_line(capsys)
    assert not [n for n in DOWNSTREAM if (done_run / n).exists()]
    assert set(records(done_run)) == {"prepare"}
    assert json.loads((done_run / "run.json").read_text())["data_dir"] == str(two_datasets[1])
    # predict refuses, naming the stage to rerun, instead of applying old thresholds to new data.
    assert main(["predict", "--run", str(done_run)]) == 2
    assert "tune" in error_line(capsys)


def test_a_stage_refuses_inputs_changed_since_they_were_recorded(done_run, capsys):
    capsys.readouterr()
    thresholds = done_run / "thresholds.json"
    thresholds.write_text(thresholds.read_text().replace('"settings"', '"settings" ', 1))
    assert main(["predict", "--run", str(done_run)]) == 2
    assert f"{thresholds} changed since tune wrote it: rerun `python -m pipeline tune" in error_line(capsys)


def test_data_changed_after_prepare_is_refused_naming_prepare(two_datasets, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(two_datasets[0], data)
    run = tmp_path / "run"
    assert main(["prepare", "--data", str(data), "--out", str(run), *TP]) == 0
    df = pd.read_csv(data / "test.csv", dtype=str, keep_default_na=False)
    df.iloc[:-1].to_csv(data / "test.csv", index=False)
    capsys.readouterr()
    assert main(["tune", "--run", str(run)]) == 2
    assert "changed since prepare: rerun `python -m pipeline prepare" in error_line(capsys)
    assert not (run / "thresholds.json").exists()


def test_prepare_with_another_config_removes_what_depends_on_it_and_nothing_else(two_datasets, done_run, capsys):
    before = records(done_run)
    # The same config again (as `run --resume` does): every record and file stays.
    assert main(["prepare", "--data", str(two_datasets[0]), "--out", str(done_run), *TP]) == 0
    assert records(done_run).keys() == before.keys()
    assert records(done_run)["tune"]["id"] == before["tune"]["id"]
    assert all((done_run / n).exists() for n in DOWNSTREAM)
    # A matching key changed: folds stay valid, tuned thresholds and what follows them go.
    assert main(["prepare", "--data", str(two_datasets[0]), "--out", str(done_run), *TP, "search.k=20"]) == 0
    assert set(records(done_run)) == {"prepare"}
    assert records(done_run)["prepare"]["id"] == before["prepare"]["id"]
    assert not [n for n in DOWNSTREAM if (done_run / n).exists()]
    capsys.readouterr()
    assert main(["predict", "--run", str(done_run)]) == 2
    assert "tune" in error_line(capsys)


def test_rerunning_an_upstream_stage_invalidates_downstream_records(done_run):
    paths = RunPaths(done_run)
    manifest = io.read_json(paths.manifest)
    prov = manifest["provenance"]
    cfg = load_config(paths.config)
    # tune rebuilt with another result: predict and report were built on the old one.
    prov["tune"] = {**prov["tune"], "id": "0123456789abcdef"}
    assert provenance.sweep(prov, paths, cfg) == ["predict", "report"]
    assert not paths.submission.exists() and not paths.report.exists() and paths.thresholds.exists()


def test_a_failed_stage_that_changed_nothing_keeps_its_record(done_run, monkeypatch, capsys):
    import pipeline.stages.tuning as tuning

    def broken(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tuning, "tune", broken)  # fails before writing anything
    before = records(done_run)
    assert main(["tune", "--run", str(done_run)]) == 2
    assert records(done_run) == before and all((done_run / n).exists() for n in DOWNSTREAM)


def test_folders_from_before_provenance_still_work_with_a_warning(done_run, caplog):
    paths = RunPaths(done_run)
    manifest = io.read_json(paths.manifest)
    del manifest["provenance"]
    io.write_json(manifest, paths.manifest)
    assert main(["predict", "--run", str(done_run)]) == 0
    assert "predates provenance" in caplog.text


def test_a_record_made_before_a_key_was_added_holds_while_the_key_keeps_the_old_behaviour(done_run):
    """Runs tuned before the pair trees' shape was a setting are not swept by the upgrade; setting
    another shape sweeps them as any changed key does."""
    paths = RunPaths(done_run)
    prov = io.read_json(paths.manifest)["provenance"]
    for name in ("tune", "predict"):
        prov[name]["config"] = {k: v for k, v in prov[name]["config"].items() if k not in provenance.ADDED_KEYS}
    assert provenance.sweep(prov, paths, load_config(paths.config)) == []
    smaller = load_config(paths.config, ["pair.num_leaves=7"])
    assert provenance.sweep(prov, paths, smaller) == ["tune", "predict", "report"]
    assert not paths.thresholds.exists()


def test_another_group_rule_in_the_config_makes_the_tuning_stale(two_datasets, done_run, capsys):
    """The group step is tuned, so its settings are matching keys like search.k: changed in the
    folder's config, they sweep the tuning and what follows it."""
    assert main(["prepare", "--data", str(two_datasets[0]), "--out", str(done_run), *TP, "group.cut=0.4"]) == 0
    assert set(records(done_run)) == {"prepare"}
    capsys.readouterr()
    assert main(["predict", "--run", str(done_run)]) == 2
    assert "tune" in error_line(capsys)
