"""One writer per run folder; the OS drops the lock of a dead writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.paths import RunPaths
from pipeline.runs.folder import StageError, writing

ROOT = Path(__file__).resolve().parents[2]
TP = ["--modalities", "tfidf,phash", "folds.n_splits=2", "decision.cv_estimate=false", "pair.enabled=false"]

HOLDER = """
import sys
from pipeline.runs.folder import writing
with writing(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def hold(run: Path) -> subprocess.Popen:
    """Another process writing ``run``, until its stdin closes (or it is killed)."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_with_the_holders_pid_and_start(tiny_synth, tmp_path, capsys):
    run = tmp_path / "run"
    holder = hold(run)
    try:
        code = main(["run", "--data", str(tiny_synth["root"]), "--out", str(run), *TP])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(lines) == 1
        assert f"pid {holder.pid}" in lines[0] and "started" in lines[0] and str(run) in lines[0]
        assert not RunPaths(run).config.exists() and not RunPaths(run).manifest.exists()
    finally:
        holder.kill()
        holder.wait()
    # The OS dropped the killed holder's lock: the folder is free again.
    assert main(["prepare", "--data", str(tiny_synth["root"]), "--out", str(run), *TP]) == 0


def test_every_writing_stage_is_refused_while_another_process_writes(tiny_synth, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["prepare", "--data", str(tiny_synth["root"]), "--out", str(run), *TP]) == 0
    holder = hold(run)
    try:
        for argv in (
            ["tune", "--run", str(run)],
            ["train-text", "--run", str(run)],
            ["prepare", "--data", str(tiny_synth["root"]), "--out", str(run), *TP],
        ):
            capsys.readouterr()
            assert main(argv) == 2
            assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.stdin.close()
        holder.wait()
    assert not RunPaths(run).thresholds.exists()


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    run = tmp_path / "run"
    with writing(run):
        with writing(run):  # run_all holds the folder while each stage takes it again
            pass
        # Still held by the outer block: another process is refused.
        p = subprocess.run(
            [sys.executable, "-c", HOLDER, str(run)],
            input="",
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert p.returncode != 0 and f"pid {os.getpid()}" in p.stderr
    holder = hold(run)  # released: another process takes it
    holder.stdin.close()
    holder.wait()


def test_a_refused_writer_never_removes_the_holders_folder(tmp_path):
    run = tmp_path / "fresh"
    holder = hold(run)
    try:
        with pytest.raises(StageError, match="being written by"):
            with writing(run):
                pass
        assert run.is_dir()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
