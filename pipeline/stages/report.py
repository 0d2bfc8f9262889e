"""``report.json``: the run's figures gathered in one place, and the training logs behind them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import io
from pipeline.matching.predict import ALL_SIGNALS
from pipeline.paths import ModelPaths
from pipeline.stages.context import Run, open_run, stage


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Gather the run's figures into report.json."""
    run = open_run(run_dir)
    run.tuned_settings()
    with stage(run, "report"):
        return _write_report(run)


def _write_report(run: Run) -> dict[str, Any]:
    tune_report = io.read_json(run.paths.tune_report)
    steps = tune_report["steps"]
    report = {
        "oof_f1": tune_report["final"]["f1"],
        "oof": tune_report["final"],
        "oof_cv": tune_report.get("final_cv"),
        "gallery": tune_report["gallery"],
        "per_modality": {k: v for k, v in steps.items() if k in ALL_SIGNALS},
        "steps": steps,
        "untrained": tune_report.get("untrained"),
        "training": _training_summary(run),
        "thresholds": io.read_json(run.paths.thresholds)["settings"],
        "timings": run.manifest.get("timings", {}),
        "data": {k: run.manifest[k] for k in ("data_dir", "train_rows", "train_groups", "test_rows")},
        "warnings": run.manifest.get("warnings", []),
        "submission": str(run.paths.submission) if run.paths.submission.exists() else None,
        "config": run.cfg.to_dict(),
        "code_version": io.code_version(),
    }
    io.write_json(report, run.paths.report)
    return report


def training_logs(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Per-epoch log of every trained model, keyed ``modality/fold0`` ... ``modality/full``."""
    run = open_run(run_dir)
    logs = {}
    for m in run.cfg.learned:
        for model_dir in sorted(run.paths.models(m).glob("*")):
            log_csv = ModelPaths(model_dir).log_csv
            if log_csv.exists():
                logs[f"{m}/{model_dir.name}"] = pd.read_csv(log_csv)
    return logs


def _training_summary(run: Run) -> dict[str, Any]:
    """Last epoch's metrics of each trained model."""
    return {
        name: {k: (round(v, 5) if isinstance(v, float) else v) for k, v in df.iloc[-1].to_dict().items()}
        for name, df in training_logs(run.paths.root).items()
    }
