"""``embed``: the L2-normalised embeddings that the tune and predict stages search."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import distributed, io
from pipeline.data import encoder_inputs
from pipeline.data.folds import gallery_rows
from pipeline.ensemble.combine import embed_members
from pipeline.ensemble.members import load_members, test_members
from pipeline.inference.embedding import embed_items
from pipeline.inference.tta import with_tta
from pipeline.models.encoders import build_encoder, load_encoder
from pipeline.runs.folder import Run, log, modality_cfg, open_run, stage
from pipeline.training.checkpoint import seed_everything


def embed(run_dir: str | Path, modalities: Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the L2-normalised embeddings the tune and predict stages search.

    For fold f, the fold's model embeds its gallery (every train row, or the fold's own rows when
    ``folds.gallery`` is ``fold``); the model that ``train.final`` names embeds test.csv (with
    ``folds``, every fold model, averaged). ``image.tta_flip`` applies to every embedding. With
    ``baseline_untrained``, the encoder as built before training embeds every train row too, for
    the report.

    Under ``torchrun --nproc_per_node N`` every process runs this: each embeds a share of the
    rows and rank 0 writes the files. Each embedding logs a line when it starts and when it ends
    (and, without a progress bar, one a minute while it runs).
    """
    distributed.init_if_launched()
    run = open_run(run_dir)
    df, test = run.train_df(), run.test_df()
    fold_of = run.folds(df)
    ids = df["posting_id"].to_numpy()
    written = {}
    with stage(run, "embed"):
        for m in modalities or run.cfg.learned:
            mcfg = modality_cfg(run.cfg, m)
            items = np.asarray(encoder_inputs(m, df, run.data.images_dir("train")), dtype=object)
            for fold in range(run.cfg.folds.n_splits):
                rows = gallery_rows(run.cfg.folds.gallery, fold_of, fold)
                model = with_tta(load_encoder(run.model_file(m, fold)), m == "image" and run.cfg.image.tta_flip)
                written[f"{m}/oof_fold{fold}"] = _embed_to(
                    run, m, f"oof_fold{fold}", model, items[rows].tolist(), ids[rows], progress
                )
            if run.cfg.baseline_untrained:
                seed_everything(run.cfg.seed)
                model = build_encoder(m, mcfg).eval()
                written[f"{m}/untrained"] = _embed_to(run, m, "untrained", model, items.tolist(), ids, progress)
            if mcfg.train.final != "none":
                written[f"{m}/test"] = _embed_test(run, m, test, progress)
    return written


def _embed_test(run: Run, modality: str, test: pd.DataFrame, progress: bool) -> str:
    """test.csv embedded by the model(s) ``train.final`` names; several fold models are averaged."""
    run.test_model_file(modality)  # says which stage to run when a model is missing
    (member,) = load_members(test_members(run.paths.root, run.cfg)[modality])
    items, ids = encoder_inputs(modality, test, run.data.images_dir("test")), test["posting_id"].to_numpy()
    if len(member.encoders) == 1:
        return _embed_to(run, modality, "test", member.encoders[0], items, ids, progress)
    t0 = _started(modality, "test", len(items) * len(member.encoders), f"{len(member.encoders)} fold models, averaged")
    batch_size = modality_cfg(run.cfg, modality).embed_batch_size
    train = modality_cfg(run.cfg, modality).train
    x = embed_members(
        [member],
        lambda enc: embed_items(
            enc, items, batch_size=batch_size, progress=progress, num_workers=train.num_workers, amp=train.amp
        ),
    )
    vec_path, ids_path = run.paths.embeddings(modality, "test")
    with io.atomic_path(vec_path, suffix=".npy") as tmp:
        np.save(tmp, x)
    io.write_csv(pd.DataFrame({"posting_id": ids}), ids_path)
    _finished(modality, "test", len(items) * len(member.encoders), t0)
    return str(vec_path)


def _started(modality: str, name: str, n: int, how: str = "") -> float:
    log.info("[embed] %s %s: %s items%s", modality, name, f"{n:,}", f" ({how})" if how else "")
    return time.perf_counter()


def _finished(modality: str, name: str, n: int, t0: float) -> None:
    seconds = time.perf_counter() - t0
    log.info("[embed] %s %s: done in %.0fs (%.1f items/s)", modality, name, seconds, n / max(seconds, 1e-9))


def _embed_to(run: Run, modality: str, name: str, model, items: list, ids: np.ndarray, progress: bool) -> str:
    vec_path, ids_path = run.paths.embeddings(modality, name)
    mcfg = modality_cfg(run.cfg, modality)
    t0 = _started(modality, name, len(items))
    embed_items(
        model,
        items,
        batch_size=mcfg.embed_batch_size,
        num_workers=mcfg.train.num_workers,
        amp=mcfg.train.amp,
        out_path=vec_path,
        progress=progress,
    )
    if distributed.is_main():
        io.write_csv(pd.DataFrame({"posting_id": ids}), ids_path)
    _finished(modality, name, len(items), t0)
    return str(vec_path)
