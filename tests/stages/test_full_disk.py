"""A fault test: the disk fills up during a run. The run stops with one line naming the
file it could not write, and leaves no partial file and no stale output.

A full disk is simulated portably: a child process with a small RLIMIT_FSIZE and SIGXFSZ ignored,
so that a write past the limit fails with EFBIG, which the writers treat like ENOSPC.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.paths import RunPaths

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 20_000  # bytes: config.yaml, folds.csv and run.json fit, the tuning's plot does not


def run_with_small_disk(*args: str) -> subprocess.CompletedProcess:
    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=small_disk,
        cwd=ROOT,
        timeout=600,
    )


def test_a_run_that_fills_the_disk_stops_cleanly(tiny_synth, tmp_path):
    run = tmp_path / "run"
    p = run_with_small_disk(
        "run",
        "--data",
        str(tiny_synth["root"]),
        "--out",
        str(run),
        "--modalities",
        "tfidf,phash",
        "folds.n_splits=2",
        "decision.cv_estimate=false",
    )
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(errors) == 1 and f"cannot write {run}/" in errors[0] and "disk full" in errors[0]
    paths = RunPaths(run)
    # No temporary file, and none of the stage's outputs beside the others: the stage is undone.
    assert not [q for q in run.rglob(".*") if q != paths.lock]
    assert not [
        q
        for q in (
            paths.thresholds,
            paths.tune_report,
            paths.pair_model,
            paths.threshold_plot,
            paths.submission,
            paths.report,
        )
        if q.exists()
    ]
    assert paths.config.exists() and paths.folds.exists()  # prepare's outputs are whole


def test_prepare_that_cannot_write_its_config_leaves_no_folder(tiny_synth, tmp_path):
    run = tmp_path / "run"
    # A limit of 200 bytes stops prepare's first file; the folder it created goes with it.
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
from pipeline.cli import main
sys.exit(main(["prepare", "--data", {str(tiny_synth["root"])!r}, "--out", {str(run)!r}, "--modalities", "tfidf"]))
""",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "disk full" in p.stderr and str(run) in p.stderr
    assert not run.exists()
