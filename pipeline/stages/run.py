"""``run``: every stage in order, then ``report.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.reporting.report import write_report
from pipeline.runs.folder import StageError, log, modality_cfg, writing
from pipeline.stages.embedding import embed
from pipeline.stages.prediction import predict
from pipeline.stages.preparation import prepare
from pipeline.stages.training import train
from pipeline.stages.tuning import tune_stage


def run_all(
    data_dir: str | Path,
    run_dir: str | Path,
    cfg: Config,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Every stage in order, holding the run folder from the first to the last; returns and writes
    report.json."""
    if resume and overwrite:
        raise StageError("resume and overwrite contradict each other: pick one")
    with writing(run_dir):
        run = prepare(data_dir, run_dir, cfg)
        for m in cfg.learned:
            train(run.paths.root, m, resume=resume, overwrite=overwrite, progress=progress)
        if cfg.learned:
            embed(run.paths.root, progress=progress)
        tune_stage(run.paths.root, progress=progress)
        if all(modality_cfg(cfg, m).train.final != "none" for m in cfg.learned):
            predict(run.paths.root, progress=progress)
        else:
            log.info("[predict] skipped: train.final is none, so no model embeds test.csv")
        return write_report(run.paths.root)
