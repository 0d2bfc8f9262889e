"""``kaggle-code``: one command writes the code dataset, with the wheels that package and prepare need.

pip's download is replaced by a fake that writes empty wheels and records its command (the tests
run offline); the project's own wheel is built for real.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.kaggle import code_dataset
from pipeline.kaggle.requirements import kaggle_wheels, requirements

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture()
def fake_pip(monkeypatch):
    """``pip download`` writes an empty wheel per pin; every other command runs for real."""
    calls = []
    real = subprocess.run

    def run(cmd, *args, **kwargs):
        if cmd[1:4] != ["-m", "pip", "download"]:
            return real(cmd, *args, **kwargs)
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        for pin in (c for c in cmd if "==" in c):
            dist, version = pin.split("==")
            (dest / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(code_dataset.subprocess, "run", run)
    return calls


@pytest.mark.slow
def test_one_command_writes_the_code_dataset_that_package_accepts(tmp_path, fake_pip, capsys):
    out = tmp_path / "kaggle_code"
    assert main(["kaggle-code", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    (cmd,) = fake_pip
    # Wheels for Kaggle's Python and platform, each at the version installed here, without dependencies
    # (those Kaggle lacks are in the list themselves).
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd)
    assert cmd[cmd.index("--python-version") + 1] == "3.11"
    assert cmd[cmd.index("--platform") + 1] == "manylinux_2_28_x86_64"
    needed = kaggle_wheels()
    assert sorted(c for c in cmd if "==" in c) == sorted(f"{r.dist}=={r.version}" for r in needed)
    names = sorted(p.name for p in out.glob("*.whl"))
    assert any(n.startswith("shopee_pipeline-") for n in names) and len(names) == len(needed) + 1
    assert printed["folder"] == str(out) and len(printed["wheels"]) == len(names)
    record = json.loads((out / "kaggle-code.json").read_text())
    assert {w["dist"] for w in record["wheels"]} == {r.dist for r in needed}
    assert all(w["why"] for w in record["wheels"])
    assert json.loads((out / "dataset-metadata.json").read_text())["id"].endswith("/shopee-pipeline-code")
    # What package checks for the inference is all there, the pair model's exact version included.
    for pair in (True, False):
        assert requirements(uses_pair_model=pair, wheels=names)[1] == []
    # A second time into the same folder: refused, nothing changed.
    assert main(["kaggle-code", "--out", str(out)]) == 2
    assert sorted(p.name for p in out.glob("*.whl")) == names


def test_a_failed_download_leaves_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(code_dataset, "build_wheel", lambda dest: dest / "shopee_pipeline-0-py3-none-any.whl")

    def refuse(cmd, *args, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for faiss-cpu")

    monkeypatch.setattr(code_dataset.subprocess, "run", refuse)
    out = tmp_path / "kaggle_code"
    assert main(["kaggle-code", "--out", str(out), "--python-version", "3.12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pip could not download the wheels for Python 3.12") and err.count("\n") == 1
    assert "No matching distribution" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_the_readme_collects_the_code_dataset_with_that_command():
    section = README.read_text().split("## On Kaggle")[1].split("\n## ")[0]
    assert "python -m pipeline kaggle-code --out" in section
    assert not re.search(r"pip download \w", section)  # no hand-kept list of wheels beside it
    assert "--assume-installed scikit-learn" not in section
    assert "/package" in section  # a dataset made from the notebook's output holds package/
