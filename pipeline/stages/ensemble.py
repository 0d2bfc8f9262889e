"""``ensemble``: a run folder that combines trained runs with the same folds, to tune, predict and package.

Per learned modality, the ensemble's embeddings are the members' L2-normalised embeddings,
concatenated with weights (:func:`pipeline.ensemble.combine.weighted_concat`): a pair's cosine is
the weighted mean of its cosines under each member. The out-of-fold embeddings combine fold by
fold, so each held-out fold is still embedded only by models that never saw it. TF-IDF and phash
are computed from the data as in any run. The members' models stay in their folders; predict with
another data folder and ``package`` embed with each member (see ``members.json``).
"""

from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import MODALITIES, dump_config, load_config
from pipeline.data.folds import gallery_rows
from pipeline.ensemble.combine import weighted_concat
from pipeline.ensemble.members import EnsembleError, same_folds
from pipeline.paths import RunPaths
from pipeline.runs.folder import Run, log, open_run, run_log


def make_ensemble(
    runs: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None, overrides: Sequence[str] = ()
) -> Run:
    """Write an ensemble run folder from trained and embedded member runs; then ``tune`` it.

    Args:
        runs: member run folders; they must share the data folder and folds.csv.
        out: the ensemble's run folder (new or empty); it appears complete or not at all.
        weights: one per member (default: equal).
        overrides: ``key=value`` applied over the first member's config (e.g. ``search.k=30``).
    """
    members = [open_run(r) for r in runs]
    weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    _check_members(members, weights)
    first = members[0]
    modalities = [m for m in MODALITIES if any(m in r.cfg.modalities for r in members)]
    cfg = load_config(
        first.paths.config, [f"modalities=[{','.join(modalities)}]", "baseline_untrained=false", *overrides]
    )
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise EnsembleError(f"{out} exists and is not empty; choose a new folder for the ensemble")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = RunPaths(Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)))
    try:
        df, test = first.train_df(), first.test_df()
        fold_of = first.folds(df)
        for m in cfg.learned:
            having = [(r, w) for r, w in zip(members, weights) if m in r.cfg.learned]
            _combine(staging, m, having, df, test, fold_of, cfg.folds.gallery)
        io.write_text(dump_config(cfg), staging.config)
        shutil.copy2(first.paths.folds, staging.folds)
        io.write_json(
            {"members": [{"run": str(r.paths.root.resolve()), "weight": w} for r, w in zip(members, weights)]},
            staging.members,
        )
        manifest = {k: first.manifest[k] for k in ("data_dir", "train_rows", "train_groups", "test_rows")}
        manifest.update(
            code_version=io.code_version(),
            timings={},
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        io.write_json(manifest, staging.manifest)
        if out.exists():
            out.rmdir()
        staging.root.rename(out)
    finally:
        if staging.root.exists():
            shutil.rmtree(staging.root)
    run = open_run(out)
    with run_log(run.paths):
        log.info(
            "[ensemble] %s from %s; next: python -m pipeline tune --run %s",
            out,
            ", ".join(f"{r.paths.root} (weight {w:g})" for r, w in zip(members, weights)),
            out,
        )
    return run


def _check_members(members: list[Run], weights: list[float]) -> None:
    if len(members) < 2:
        raise EnsembleError("an ensemble needs at least two runs")
    if len(weights) != len(members) or any(w <= 0 for w in weights):
        raise EnsembleError(f"--weights needs one positive weight per run, got {weights} for {len(members)} runs")
    first = members[0]
    for r in members[1:]:
        if r.manifest["data_dir"] != first.manifest["data_dir"]:
            raise EnsembleError(
                f"{r.paths.root} was prepared on {r.manifest['data_dir']}, "
                f"{first.paths.root} on {first.manifest['data_dir']}: members need the same data"
            )
        if not same_folds(first.paths.root, r.paths.root) or r.cfg.folds.gallery != first.cfg.folds.gallery:
            raise EnsembleError(
                f"{r.paths.folds} differs from {first.paths.folds} (or folds.gallery does): members "
                "need the same folds, so that no model embeds a fold it was trained on; prepare "
                "them with the same folds.n_splits and folds.seed"
            )
    if not any(r.cfg.learned for r in members):
        raise EnsembleError("none of the runs has a learned modality (image or text): nothing to combine")


def _combine(
    out: RunPaths,
    modality: str,
    having: list[tuple[Run, float]],
    df: pd.DataFrame,
    test: pd.DataFrame,
    fold_of: np.ndarray,
    gallery: str,
) -> None:
    """The weighted concatenation of the members' embeddings, fold by fold, and of their test embeddings."""
    ids = df["posting_id"].to_numpy()
    w = [weight for _, weight in having]
    for fold in np.unique(fold_of):
        rows_ids = ids[gallery_rows(gallery, fold_of, int(fold))]
        parts = [np.asarray(r.embeddings(modality, f"oof_fold{fold}", rows_ids)) for r, _ in having]
        _save(out, modality, f"oof_fold{fold}", weighted_concat(parts, w), rows_ids)
    test_ids = test["posting_id"].to_numpy()
    if all(r.paths.embeddings(modality, "test")[0].exists() for r, _ in having):
        parts = [np.asarray(r.embeddings(modality, "test", test_ids)) for r, _ in having]
        _save(out, modality, "test", weighted_concat(parts, w), test_ids)
    else:
        log.info(
            "[ensemble] %s: a member has no test embeddings; predict will need `--data` or `embed` on it", modality
        )


def _save(out: RunPaths, modality: str, name: str, x: np.ndarray, ids: np.ndarray) -> None:
    vec_path, ids_path = out.embeddings(modality, name)
    vec_path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(vec_path, suffix=".npy") as tmp:
        np.save(tmp, x)
    io.write_csv(pd.DataFrame({"posting_id": ids}), ids_path)
