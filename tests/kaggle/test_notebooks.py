"""Both notebooks run top to bottom on tiny synthetic data; the inference one from a package folder
only, with every non-local network connection refused."""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from pipeline.kaggle.package import package_run
from pipeline.submission import validate_submission
from pipeline.data.synth import make_synthetic

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# Refuses every connection that is not to this machine or a Unix socket: proof the notebook needs
# no network. The kernel talks to its client over ZeroMQ's own sockets, which this leaves alone.
NETWORK_GUARD = textwrap.dedent('''
    import socket

    _connect = socket.socket.connect

    def _guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in ("127.0.0.1", "::1", "localhost"):
                raise ConnectionRefusedError(f"network access attempted: {address}")
        return _connect(self, address)

    socket.socket.connect = _guarded
''')


def run_notebook(path: Path, params: dict, cwd: Path, timeout: int = 900) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def outputs_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.parametrize("name", ["training", "inference"])
def test_paired_script_matches_notebook(name):
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    ipynb = jupytext.read(NOTEBOOKS / f"{name}.ipynb")
    assert [c.source for c in py.cells] == [c.source for c in ipynb.cells]
    assert ipynb.metadata["jupytext"]["formats"] == "ipynb,py:percent"


def test_training_package_and_offline_inference(tmp_path, tiny_bert_dir, monkeypatch):
    data = tmp_path / "data"
    make_synthetic(data, n_groups=16, seed=3, image_size=48, progress=False)
    run = tmp_path / "run"
    overrides = [
        "folds.n_splits=2", "match.cv_estimate=false", "match.k=20",
        "image.backbone=test_resnet", "image.image_size=48", "image.embed_dim=32", "image.train.epochs=1",
        f"text.model={tiny_bert_dir}", "text.embed_dim=32", "text.train.epochs=1",
    ]
    nb = run_notebook(NOTEBOOKS / "training.ipynb",
                      {"DATA_DIR": str(data), "RUN_DIR": str(run), "SYNTH_GROUPS": 0, "CONFIG": "demo",
                       "OVERRIDES": overrides}, cwd=tmp_path)
    assert "out-of-fold F1" in outputs_text(nb)
    assert "image fold0 epoch 1/1: loss" in outputs_text(nb)  # the stages' per-epoch lines show
    test_ids = pd.read_csv(data / "test.csv")["posting_id"]
    validate_submission(pd.read_csv(run / "submission.csv"), test_ids)
    for plot in ("threshold_f1.png", "training.png"):
        assert (run / "plots" / plot).stat().st_size > 10_000
    assert any((run / "plots" / f"{k}.png").exists() for k in ("false_positives", "false_negatives"))
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # explore plots, samples grid, curves, thresholds, errors

    package = package_run(run, tmp_path / "package")
    assert {p.name for p in package.iterdir()} >= {"wheels", "models", "config.yaml", "thresholds.json",
                                                   "dataset-metadata.json", "manifest.json"}
    wheel = next((package / "wheels").glob("shopee_pipeline-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/matching/predict.py" in names
    assert not [n for n in names if n.startswith("pipeline/data/synth/")]  # development tooling stays home
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    monkeypatch.setenv("PYTHONPATH", str(guard))
    work = tmp_path / "working"
    work.mkdir()
    nb = run_notebook(NOTEBOOKS / "inference.ipynb",
                      {"PACKAGE_DIR": str(package), "DATA_DIR": str(data), "OUT_CSV": "submission.csv"}, cwd=work)
    # The library came from the package's wheel, not from this checkout.
    assert f"loaded from {work / 'offline_site' / 'pipeline'}" in outputs_text(nb)
    sub = pd.read_csv(work / "submission.csv")
    validate_submission(sub, test_ids)
    # Same weights, thresholds and data: the offline submission equals the run's own.
    ours = pd.read_csv(run / "submission.csv")
    assert dict(zip(sub.posting_id, sub.matches.str.split().map(set))) == dict(
        zip(ours.posting_id, ours.matches.str.split().map(set)))
