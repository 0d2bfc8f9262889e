"""``train-image`` / ``train-text``: one encoder per fold (on the other folds) and one on every row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import distributed
from pipeline.data import encoder_inputs
from pipeline.matching.held_out import held_out_eval
from pipeline.runs.folder import StageError, log, modality_cfg, open_run, stage
from pipeline.training.checkpoint import RunStateError
from pipeline.training.loop import train_encoder


def train(
    run_dir: str | Path,
    modality: str,
    folds: Sequence[int | None] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one encoder per fold (on the other folds) and, when ``train.final`` is full, one on all rows.

    Under ``torchrun --nproc_per_node N`` every process runs this: all train, rank 0 writes.

    Args:
        folds: which to train: fold numbers, and None for the full model. Default: all of them.
        resume: continue each model from its last full-state checkpoint.
        overwrite: discard models the folder already holds and train them again.
    """
    run = open_run(run_dir)
    mcfg = modality_cfg(run.cfg, modality)
    df = run.train_df()
    fold_of = run.folds(df)
    labels = df["label_group"].to_numpy()
    items = np.asarray(encoder_inputs(modality, df, run.data.images_dir("train")), dtype=object)
    if folds is None:
        folds = list(range(run.cfg.folds.n_splits)) + ([None] if mcfg.train.final == "full" else [])
    run.check_folds(folds)
    distributed.init_if_launched()
    results = {}
    with stage(run, f"train-{modality}"):
        for i, fold in enumerate(folds):
            rows = _rows(fold_of, fold)
            name = "full" if fold is None else f"fold{fold}"
            log.info("[train-%s] %s: %d rows, %d groups", modality, name, rows.sum(), len(np.unique(labels[rows])))
            eval_fn = (
                None
                if fold is None
                else held_out_eval(
                    items[fold_of == fold].tolist(),
                    labels[fold_of == fold],
                    run.cfg.search.k,
                    mcfg.embed_batch_size,
                    mcfg.train,
                )
            )
            # For the time left over every model: the work of those after this one not yet trained.
            later = sum(
                _rows(fold_of, f).sum() * mcfg.train.epochs
                for f in folds[i + 1 :]
                if overwrite or not run.paths.model(modality, f).model.exists()
            )
            try:
                results[name] = train_encoder(
                    modality,
                    mcfg,
                    items[rows].tolist(),
                    labels[rows],
                    run.paths.model(modality, fold).root,
                    seed=run.cfg.seed + (0 if fold is None else fold + 1),
                    resume=resume,
                    overwrite=overwrite,
                    eval_fn=eval_fn,
                    progress=progress,
                    label=f"{modality} {name}",
                    later_row_epochs=float(later),
                )
            except RunStateError as e:
                raise StageError(f"{e} (from the command line: --resume or --overwrite)") from e
    return results


def _rows(fold_of: np.ndarray, fold: int | None) -> np.ndarray:
    """(N,) bool: the rows a fold's model trains on (every row for the full model)."""
    return np.ones(len(fold_of), bool) if fold is None else fold_of != fold
