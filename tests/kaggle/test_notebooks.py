"""Both notebooks run top to bottom on tiny synthetic data; the inference one from a package folder
only, with every non-local network connection refused."""

from __future__ import annotations

import json
import re
import textwrap
import zipfile
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from pipeline.data.synth import make_synthetic
from pipeline.kaggle.package import PackageError, package_run
from pipeline.submission import validate_submission

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# Refuses every connection that is not to this machine or a Unix socket: proof the notebook needs
# no network. The kernel talks to its client over ZeroMQ's own sockets, which this leaves alone.
NETWORK_GUARD = textwrap.dedent("""
    import socket

    _connect = socket.socket.connect

    def _guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in ("127.0.0.1", "::1", "localhost"):
                raise ConnectionRefusedError(f"network access attempted: {address}")
        return _connect(self, address)

    socket.socket.connect = _guarded
""")


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


# A cell that shows a figure: a library Figure or a PNG the stages wrote.
PLOT_MARKERS = ("plots.plot_", "Image(filename")

# Makes `import faiss` fail as it does where faiss-cpu is not installed.
FAISS_BLOCKER = textwrap.dedent("""
    import sys

    class _NoFaiss:
        def find_spec(self, name, path=None, target=None):
            if name == "faiss" or name.startswith("faiss."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoFaiss())
""")


def images_of(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.slow
def test_training_package_and_offline_inference(tmp_path, tiny_bert_dir, monkeypatch):
    data = tmp_path / "data"
    make_synthetic(data, n_groups=16, seed=3, image_size=48, progress=False)
    run = tmp_path / "run"
    overrides = [
        "folds.n_splits=2",
        "decision.cv_estimate=true",
        "search.k=20",
        "image.backbone=test_resnet",
        "image.weights=null",  # the demo's ImageNet weights are EfficientNet-Lite0's, not test_resnet's
        "image.image_size=48",
        "image.embed_dim=32",
        "image.train.epochs=1",
        f"text.model={tiny_bert_dir}",
        "text.embed_dim=32",
        "text.train.epochs=1",
    ]
    nb = run_notebook(
        NOTEBOOKS / "training.ipynb",
        {
            "DATA_DIR": str(data),
            "RUN_DIR": str(run),
            "SYNTH_GROUPS": 0,
            "CONFIG": "demo",
            "OVERRIDES": overrides,
            "CODE_DIR": str(tmp_path / "no_code_dataset"),
            "PACKAGE_DIR": None,
        },
        cwd=tmp_path,
    )
    text = outputs_text(nb)
    assert "cross-validated F1" in text and "config: demo" in text
    assert "[train-image] fold0" in text and "[train-text] fold1" in text  # the stages' log lines show
    assert "image fold0 epoch 1/1: loss" in text  # the stages' per-epoch lines show
    assert "[embed] image oof_fold1: " in text and "[embed] text test: done in" in text  # and embed's
    assert "not packaged" in text  # no code dataset here: the last cell says how to package instead
    test_ids = pd.read_csv(data / "test.csv")["posting_id"]
    validate_submission(pd.read_csv(run / "submission.csv"), test_ids)
    # Every cell that plots shows its figure.
    plotting = [c for c in nb.cells if c.cell_type == "code" and any(m in c.source for m in PLOT_MARKERS)]
    assert len(plotting) >= 6
    assert all(images_of(c) >= 1 for c in plotting), [c.source.splitlines()[0] for c in plotting if not images_of(c)]
    for plot in ("threshold_f1", "training", "f1_by_group_size"):
        assert (run / "plots" / f"{plot}.png").stat().st_size > 10_000
    log_text = (run / "run.log").read_text()
    for stage in (
        "[prepare]",
        "[train-image] started",
        "[train-text] started",
        "[embed] done",
        "[tune] done",
        "[predict] done",
    ):
        assert stage in log_text
    # The words say "rerun this cell to resume", and the cell resumes.
    train_cell = next(c for c in nb.cells if "stages.train(" in c.source)
    assert "resume=True" in train_cell.source
    assert "Rerun this cell to resume" in nb.cells[nb.cells.index(train_cell) - 1].source

    # Without wheels for what Kaggle lacks, package refuses and says what to download.
    with pytest.raises(PackageError, match=r"pip download faiss-cpu==[\d.]+ .*--no-deps"):
        package_run(run, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    package = package_run(
        run,
        tmp_path / "output" / "package",  # as in a dataset made from the training notebook's output
        assume_installed=["faiss-cpu", "imagehash", "scikit-learn", "sparse-dot-topn", "rapidfuzz", "lightgbm"],
    )
    assert {p.name for p in package.iterdir()} >= {
        "wheels",
        "models",
        "config.yaml",
        "thresholds.json",
        "encoders.json",
        "dataset-metadata.json",
        "manifest.json",
    }
    manifest = json.loads((package / "manifest.json").read_text())
    assert {r["dist"]: r["source"] for r in manifest["requires"]}["faiss-cpu"] == "assumed-installed"
    assert all(r["version"] for r in manifest["requires"])
    wheel = next((package / "wheels").glob("shopee_pipeline-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/matching/predict.py" in names
    assert not [n for n in names if n.startswith("pipeline/data/synth/")]  # development tooling stays home

    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    monkeypatch.setenv("PYTHONPATH", str(guard))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))  # where the kernel installs the code
    work = tmp_path / "working"
    work.mkdir()
    nb = run_notebook(
        NOTEBOOKS / "inference.ipynb",
        # The dataset's folder, one level above package/: the notebook finds the manifest below it.
        {"PACKAGE_DIR": str(package.parent), "DATA_DIR": str(data), "OUT_CSV": "submission.csv"},
        cwd=work,
    )
    text = outputs_text(nb)
    assert f"package: {package}" in text
    assert "[inference] loaded the settings" in text and "postings; embedding them" in text  # progress shows
    assert not list(temp.glob("pipeline_site_*"))  # the installed code is gone
    # The library came from the package's wheel, installed outside the working folder.
    loaded = re.search(r"loaded from (\S+)", text).group(1)
    assert Path(loaded).parent.name == "pipeline" and work not in Path(loaded).parents
    assert str(Path(__file__).resolve().parents[2]) not in loaded
    assert sorted(p.name for p in work.iterdir()) == ["submission.csv"]  # nothing else left behind
    sub = pd.read_csv(work / "submission.csv")
    validate_submission(sub, test_ids)
    # Same weights, thresholds and data: the offline submission equals the run's own.
    ours = pd.read_csv(run / "submission.csv")
    assert dict(zip(sub.posting_id, sub.matches.str.split().map(set))) == dict(
        zip(ours.posting_id, ours.matches.str.split().map(set))
    )

    # Without faiss, the inference stops at the dependency check, before loading or embedding anything.
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD + FAISS_BLOCKER)
    work2 = tmp_path / "working2"
    work2.mkdir()
    with pytest.raises(CellExecutionError) as e:
        run_notebook(
            NOTEBOOKS / "inference.ipynb",
            {"PACKAGE_DIR": str(package), "DATA_DIR": str(data), "OUT_CSV": "submission.csv"},
            cwd=work2,
        )
    assert "DependencyError" in str(e.value) and "faiss-cpu" in str(e.value) and "nothing was embedded" in str(e.value)
    assert "check_dependencies(PACKAGE_DIR)" in str(e.value)  # the failing cell is the check, not the inference
    assert not (work2 / "submission.csv").exists()


def test_installed_as_a_wheel_the_notebooks_outputs_go_to_the_working_folder(tmp_path, monkeypatch):
    from pipeline import paths

    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert paths.working_dir() == paths.PROJECT_ROOT  # a source checkout: the project
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path / "site-packages")  # a wheel: no pyproject.toml
    monkeypatch.chdir(tmp_path)
    assert paths.working_dir() == tmp_path
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert paths.working_dir() == paths.KAGGLE_WORKING
