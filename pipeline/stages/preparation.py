"""``prepare``: validate the data, assign GroupKFold folds, write the resolved config and manifest."""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

import pandas as pd

from pipeline import io
from pipeline.config import Config, dump_config
from pipeline.data import Dataset
from pipeline.data.folds import make_folds
from pipeline.paths import RunPaths
from pipeline.stages.context import Run, log, run_log


def prepare(data_dir: str | Path, run_dir: str | Path, cfg: Config) -> Run:
    """Validate the data, assign GroupKFold folds, and write the resolved config and manifest.

    Nothing is written when the data breaks the contract.
    """
    t0 = time.perf_counter()
    data = Dataset(Path(data_dir).resolve())
    train = data.read("train", check_images=cfg.needs_images)
    test = data.read("test", check_images=cfg.needs_images)
    folds = make_folds(train["label_group"].to_numpy(), cfg.folds.n_splits, cfg.folds.seed)

    paths = RunPaths(Path(run_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    io.write_text(dump_config(cfg), paths.config)
    io.write_csv(
        pd.DataFrame({"posting_id": train["posting_id"], "label_group": train["label_group"], "fold": folds}),
        paths.folds,
    )
    manifest = {
        "data_dir": str(data.root),
        "code_version": io.code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train_rows": len(train),
        "train_groups": int(train["label_group"].nunique()),
        "test_rows": len(test),
        "timings": {},
    }
    run = Run(paths, cfg, manifest)
    run.record_timing("prepare", time.perf_counter() - t0)
    with run_log(paths):
        log.info(
            "[prepare] %d train rows in %d groups, %d test rows, %d folds -> %s",
            len(train), manifest["train_groups"], len(test), cfg.folds.n_splits, paths.root,
        )
    return run
