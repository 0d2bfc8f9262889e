"""``prepare``: validate the data, assign GroupKFold folds, write the resolved config and manifest."""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import io
from pipeline.config import Config, check_local_files, dump_config
from pipeline.data import Dataset
from pipeline.data.folds import make_folds
from pipeline.device import bound_threads
from pipeline.runs import provenance
from pipeline.runs.folder import Run, log, run_log, writing
from pipeline.runs.preflight import check_image_weights, check_libraries, check_tfidf, data_warnings


def prepare(data_dir: str | Path, run_dir: str | Path, cfg: Config) -> Run:
    """Validate the data, assign GroupKFold folds, and write the resolved config and manifest.

    Nothing is written when the data, config or Python cannot make a run: a library some stage
    imports is missing, the CSVs break the contract, an image does not decode, the image weights
    cannot be had or do not fit the backbone, or TF-IDF would find no term. In a folder that holds
    an earlier run, whatever that run built from other data or config is removed (trained models
    excepted; see :mod:`pipeline.runs.provenance`).
    """
    t0 = time.perf_counter()
    bound_threads(cfg.threads)
    check_local_files(cfg)
    check_libraries()
    data = Dataset(Path(data_dir).resolve())
    train = data.read("train", check_images=cfg.needs_images, workers=cfg.threads)
    test = data.read("test", check_images=cfg.needs_images, workers=cfg.threads)
    folds = make_folds(train["label_group"].to_numpy(), cfg.folds.n_splits, cfg.folds.seed)
    if "tfidf" in cfg.modalities:
        check_tfidf(data, train, test, folds, cfg)
    # After the data's checks, which are cheaper than building a backbone or reaching the hub.
    weights = check_image_weights(cfg)
    warnings = data_warnings(data, train)
    folds_csv = (
        pd.DataFrame({"posting_id": train["posting_id"], "label_group": train["label_group"], "fold": folds})
        .to_csv(index=False)
        .encode("utf-8")
    )

    with writing(run_dir) as paths:
        old = _old_manifest(paths)
        prov = old.get("provenance") or {}
        prov["prepare"] = provenance.build_record(
            "prepare",
            cfg,
            provenance.data_fingerprint(data, cfg.needs_images),
            prov,
            paths,
            files={paths.folds.relative_to(paths.root).as_posix(): provenance.digest(folds_csv)},
        )
        removed = provenance.sweep(prov, paths, cfg) + provenance.forget_unrecorded(prov, paths)
        if removed:
            log.info(
                "[prepare] %s held outputs of another config or data (%s): removed", paths.root, ", ".join(removed)
            )
        manifest = {
            "data_dir": str(data.root),
            "code_version": io.code_version(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "train_rows": len(train),
            "train_groups": int(train["label_group"].nunique()),
            "test_rows": len(test),
            "warnings": warnings,
            **({"image_weights": weights.summary()} if weights is not None else {}),
            "timings": {k: v for k, v in (old.get("timings") or {}).items() if k in prov},
            "provenance": prov,
        }
        # Until config.yaml and folds.csv are in place, no stage may trust the folder.
        io.write_json({**manifest, "provenance": {k: v for k, v in prov.items() if k != "prepare"}}, paths.manifest)
        io.write_text(dump_config(cfg), paths.config)
        io.write_bytes(folds_csv, paths.folds)
        run = Run(paths, cfg, manifest)
        run.record_timing("prepare", time.perf_counter() - t0)
        with run_log(paths):
            if weights is not None:
                (log.warning if weights.missing else log.info)("[prepare] %s", weights.describe())
            log.info(
                "[prepare] %d train rows in %d groups, %d test rows, %d folds -> %s",
                len(train),
                manifest["train_groups"],
                len(test),
                cfg.folds.n_splits,
                paths.root,
            )
    return run


def _old_manifest(paths) -> dict[str, Any]:
    """The manifest of the run the folder holds, if any (an unreadable one counts as none)."""
    try:
        old = io.read_json(paths.manifest)
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}
