"""``demo``: synthetic data, then a full run with every modality at a size that suits 2 CPU cores."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.config import load_config
from pipeline.data.synth import make_synthetic
from pipeline.metric import score_matches
from pipeline.paths import PROJECT_ROOT, RunPaths
from pipeline.runs.folder import log
from pipeline.stages.run import run_all
from pipeline.submission import read_matches, read_truth


def demo(
    out: str | Path = "runs/demo",
    data: str | Path | None = None,
    groups: int = 160,
    seed: int = 0,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Synthetic data, then a full run with every modality at a size that suits 2 CPU cores.

    Args:
        out: the run folder.
        data: where the synthetic dataset is written (default ``data/synthetic``).
        overrides: ``key=value`` pairs applied over the ``demo`` preset.
    """
    t0 = time.perf_counter()
    out = Path(out)
    data_dir = Path(data) if data is not None else PROJECT_ROOT / "data" / "synthetic"
    log.info("[synth] %d groups -> %s", groups, data_dir)
    t_synth = time.perf_counter()
    make_synthetic(data_dir, n_groups=groups, seed=seed, progress=progress)
    t_synth = time.perf_counter() - t_synth
    cfg = load_config("demo", overrides)
    if RunPaths(out).manifest.exists():
        log.info("[demo] starting over in %s", out)
    report = run_all(data_dir, out, cfg, overwrite=True, progress=progress)
    sub_path = PROJECT_ROOT / "submissions" / "submission.csv"
    sub_path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(sub_path) as tmp:
        shutil.copyfile(RunPaths(out).submission, tmp)
    report["test_score"] = score_matches(read_matches(sub_path), read_truth(data_dir / "test_truth.csv"))
    report["timings"]["synth"] = round(t_synth, 2)
    report["demo_seconds"] = round(time.perf_counter() - t0, 1)
    report["submission_copy"] = str(sub_path)
    io.write_json(report, RunPaths(out).report)
    return report
