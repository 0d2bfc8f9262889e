"""The one training loop shared by the image and title encoders.

:func:`train_encoder` trains an encoder with a margin head over ``label_group`` and leaves in its
output folder (see :class:`pipeline.paths.ModelPaths`) ``log.csv`` and ``log.json`` (one row per
epoch), ``model.pt`` (weights only) and, after each epoch until the model is finished, ``last.pt``:
the full state (model, head, optimiser, scheduler, scaler, RNGs, step and the run's identity), from
which a killed run resumes to the same weights as an uninterrupted one (bitwise on CPU).

Under ``torchrun`` the same function trains with DistributedDataParallel; what is kept equal for
any number of processes, so that a checkpoint of N processes resumes under M, is in
docs/training.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipeline import distributed
from pipeline.data.datasets import label_index
from pipeline.inference.embedding import autocast, forward, inputs_device, make_loader, to_device, to_device_model
from pipeline.io import code_version, save_torch
from pipeline.models.encoders import MODALITIES as ENCODER_MODALITIES
from pipeline.models.encoders import save_encoder
from pipeline.models.heads import MarginHead, sample_classes
from pipeline.paths import ModelPaths
from pipeline.training.checkpoint import (
    data_fingerprint,
    derive_seed,
    existing_run,
    get_rng_state,
    run_summary,
    seed_everything,
    set_rng_state,
    write_logs,
)
from pipeline.training.progress import EpochLog, log
from pipeline.training.session import BranchConfig, Session, set_backbone_mode, setup

EvalFn = Callable[[nn.Module], Mapping[str, float]]

# Progress-bar refresh period in steps; reading the loss syncs the GPU, so not every step.
_POSTFIX_EVERY = 10
# The held-out metric that train.early_stopping_patience watches (see pipeline.matching.held_out).
STOP_METRIC = "val_f1"


def train_encoder(
    modality: str,
    cfg: BranchConfig,
    items: Sequence,
    labels: Sequence | np.ndarray,
    out_dir: str | os.PathLike,
    *,
    seed: int = 42,
    resume: bool = False,
    overwrite: bool = False,
    eval_fn: EvalFn | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    label: str | None = None,
    later_row_epochs: float = 0.0,
) -> dict[str, Any]:
    """Train an encoder and its margin head; write ``log.csv``, ``log.json``, ``model.pt`` (and
    ``last.pt`` after each epoch, deleted at the end unless ``train.keep_last``).

    An existing ``out_dir`` holding a finished run of the same config, seed and data is not
    retrained (its summary comes back with ``skipped=True``); an unfinished one continues with
    ``resume=True`` (which on an empty folder starts afresh, so a preemptible job can always pass
    it); ``overwrite=True`` starts over. Anything else raises
    :class:`~pipeline.training.checkpoint.RunStateError`, saying what to do.

    Under torchrun every rank calls this with the same arguments (see the module's docstring).
    Each finished epoch logs one line (see :class:`~pipeline.training.progress.EpochLog`).

    Args:
        modality: "image" (``items`` are image paths) or "text" (``items`` are titles).
        cfg: that modality's config; ``cfg.train`` and ``cfg.head`` drive the loop.
        items: one per row.
        labels: ``label_group`` per row (any hashable values); classes are their distinct values.
        out_dir: the model folder (created).
        seed: seeds the weights' init, data order, augmentations and dropout.
        eval_fn: called after each epoch with the encoder in eval mode; its metrics (e.g. held-out
            F1) join the epoch's log row. Under torchrun it runs on every rank (embedding is
            sharded) and must return the same metrics on each.
        device: default :func:`pipeline.device.pick_device`; under torchrun, the rank's own.
        label: names the model in the per-epoch line (default: the modality).
        later_row_epochs: rows times epochs of the models still to train after this one, for the
            line's time left over all of them.

    Returns:
        ``model_path``, ``out_dir``, ``skipped``, ``epochs``, ``steps``, ``history`` (the log rows)
        and ``final`` (the last row).
    """
    world, main, label = distributed.init_if_launched(), distributed.is_main(), label or modality
    items, labels = _check_inputs(modality, items, labels, resume, overwrite)
    files = ModelPaths(Path(out_dir))
    y, classes = label_index(labels)
    identity = _identity(modality, cfg, items, y, classes, seed)
    finished, ckpt = existing_run(files, identity, resume=resume, overwrite=overwrite, clear=main)
    if finished is not None:
        if main:
            log.info("%s: finished earlier in %s, skipped", label, files.root)
        return run_summary(files, finished["history"], skipped=True)

    seed_everything(seed)
    s = setup(modality, cfg, items, y, len(classes), device, load_weights=ckpt is None, world=world)
    start_epoch, step, history = _restore(s, ckpt) if ckpt is not None else (0, 0, [])
    del ckpt
    context = _log_context(identity, s, len(items), len(classes))
    epoch_log = EpochLog(label, cfg.train.epochs, len(items), later_row_epochs, enabled=main)

    def save(epoch: int, step: int) -> None:
        _save_epoch(files, s, context, history, epoch, step, identity, classes)

    _train_epochs(s, history, start_epoch, step, seed, label, eval_fn, epoch_log, save if main else None, progress)
    _keep_best(s, context, label, main)
    if main:
        _finish(files, s, modality, cfg, context, history)
    distributed.barrier()  # no rank goes on (e.g. to embed with model.pt) before the files exist
    return run_summary(files, history, skipped=False)


def _train_epochs(
    s: Session,
    history: list[dict],
    start_epoch: int,
    step: int,
    seed: int,
    label: str,
    eval_fn: EvalFn | None,
    epoch_log: EpochLog,
    save: Callable[[int, int], None] | None,
    progress: bool,
) -> None:
    """Train the epochs left, appending each one's log row to ``history`` and checkpointing it with
    ``save`` (None on the ranks that write nothing); with ``train.early_stopping_patience``, stop
    once the held-out metric has not improved for that many epochs."""
    epochs = s.train.epochs
    # Early stopping needs the held-out metric, which only fold models have.
    patience = s.train.early_stopping_patience if eval_fn is not None else 0
    for epoch in range(start_epoch, epochs):
        if _patience_ran_out(history, patience):
            if save is not None:
                log.info("%s: no better %s for %d epochs, stopped after epoch %d", label, STOP_METRIC, patience, epoch)
            return
        started = time.perf_counter()
        desc = f"train {label} {epoch + 1}/{epochs}"
        row, step = _run_epoch(s, seed, epoch, step, desc=desc, progress=progress and save is not None)
        if eval_fn is not None:
            row.update(_evaluate(eval_fn, s.model, s.device))
        history.append(row)
        if patience and _best_index(history) == len(history) - 1:
            s.best = {"epoch": epoch + 1, STOP_METRIC: row[STOP_METRIC], "model": _cpu_state(s.model)}
        if save is not None:
            save(epoch, step)
        epoch_log(row, time.perf_counter() - started)


def _best_index(history: list[dict]) -> int:
    """The earliest epoch (index) with the highest held-out metric."""
    return int(np.argmax([row.get(STOP_METRIC, float("-inf")) for row in history]))


def _patience_ran_out(history: list[dict], patience: int) -> bool:
    return bool(patience) and bool(history) and len(history) - 1 - _best_index(history) >= patience


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _keep_best(s: Session, context: dict, label: str, main: bool) -> None:
    """With early stopping, the model ends as its best held-out epoch left it."""
    if s.best is None:
        return
    s.model.load_state_dict(s.best["model"])
    context["best_epoch"] = s.best["epoch"]
    if main:
        log.info("%s: kept epoch %d (%s %.4f)", label, s.best["epoch"], STOP_METRIC, s.best[STOP_METRIC])


def _identity(
    modality: str, cfg: BranchConfig, items: list, y: np.ndarray, classes: np.ndarray, seed: int
) -> dict[str, Any]:
    """What makes two runs the same run: a checkpoint of another identity is never resumed."""
    return {
        "modality": modality,
        "cfg": dataclasses.asdict(cfg),
        "seed": seed,
        "data": data_fingerprint(modality, items, y, classes),
    }


def _log_context(identity: dict[str, Any], s: Session, n_items: int, n_classes: int) -> dict[str, Any]:
    """What the logs record about the run besides its epochs."""
    return {
        "run": identity,
        "device": str(s.device),
        "n_items": n_items,
        "n_classes": n_classes,
        "batch_size": s.batch_size,
        "steps_per_epoch": s.steps_per_epoch,
        "epochs": s.train.epochs,
        "code_version": code_version(),
        **({"world_size": s.world} if s.world > 1 else {}),
    }


def _finish(
    files: ModelPaths, s: Session, modality: str, cfg: BranchConfig, context: dict, history: list[dict]
) -> None:
    save_encoder(s.model, files.model, modality, cfg)
    write_logs(files, context, history, done=True)
    if not cfg.train.keep_last:
        files.last.unlink(missing_ok=True)  # model.pt and log.json mark the run finished


def _restore(s: Session, ckpt: dict[str, Any]) -> tuple[int, int, list[dict]]:
    """Load a checkpoint's full state into the session; (epochs done, step, log rows)."""
    for name, part in s.parts.items():
        part.load_state_dict(ckpt[name])
    set_rng_state(ckpt["rng"])
    s.best = ckpt.get("best")
    return ckpt["epoch"], ckpt["step"], list(ckpt["history"])


def _save_epoch(
    files: ModelPaths,
    s: Session,
    context: dict,
    history: list[dict],
    epoch: int,
    step: int,
    identity: dict,
    classes: np.ndarray,
) -> None:
    write_logs(files, context, history, done=False)
    # RNG states are taken after the eval, so a resumed run continues from the same states.
    save_torch(
        {
            **{name: part.state_dict() for name, part in s.parts.items()},
            "epoch": epoch + 1,
            "step": step,
            "history": history,
            "rng": get_rng_state(),
            "run": identity,
            "classes": classes.tolist(),
            "code_version": context["code_version"],
            "best": s.best,
        },
        files.last,
    )


def _check_inputs(
    modality: str, items: Sequence, labels: Sequence | np.ndarray, resume: bool, overwrite: bool
) -> tuple[list, np.ndarray]:
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; pick one")
    if modality not in ENCODER_MODALITIES:
        raise ValueError(f"unknown encoder modality {modality!r}; valid: {', '.join(ENCODER_MODALITIES)}")
    items, labels = list(items), np.asarray(labels)
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} items but {len(labels)} labels")
    if len(items) < 2:
        raise ValueError(f"training needs at least 2 rows (the BatchNorm neck needs batches of 2+), got {len(items)}")
    return items, labels


def _run_epoch(s: Session, seed: int, epoch: int, step: int, desc: str, progress: bool) -> tuple[dict, int]:
    """One epoch over a freshly seeded data order; its log row (without eval metrics) and the step."""
    loader = make_loader(
        s.dataset,
        s.collate,
        s.batch_size,
        device=s.device,
        num_workers=s.train.num_workers,
        shuffle_seed=derive_seed(seed, epoch),
        drop_last=True,
        rank=distributed.rank(),
        world=s.world,
    )
    if hasattr(s.dataset, "set_epoch_seed"):
        s.dataset.set_epoch_seed(derive_seed(seed, epoch, 1))
    if s.world > 1:
        # Each rank its own dropout masks; reseeded per epoch, so a resume at any epoch draws the same.
        seed_everything(derive_seed(seed, epoch, 2, distributed.rank()))
    row, step = _train_epoch(s, loader, seed, step, desc=desc, progress=progress, epoch=epoch)
    return {"epoch": epoch + 1, **row}, step


def train_step(
    model: nn.Module,
    head: MarginHead,
    inputs: torch.Tensor | Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
    grad_clip: float,
    *,
    classes: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """One optimiser step of cross-entropy over the head's margin logits; returns the detached loss.

    ``inputs`` and ``labels`` must already be on the model's device. The learning-rate scheduler
    and the margin are the caller's business. ``model`` and ``head`` may be their DDP wrappers.

    Args:
        classes: (S,) sorted class ids the softmax runs over (see
            :func:`~pipeline.models.heads.sample_classes`); None for all classes.
        class_weights: (C,) weight of each class's rows in the loss, the mean of the rows'
            weighted cross-entropies; None weighs every row 1.
    """
    with autocast(inputs_device(inputs), amp_dtype):
        embeddings = forward(model, inputs)  # (B, D) float32
        if classes is None:
            logits, targets = head(embeddings, labels), labels  # (B, C) float32, outside autocast
        else:
            logits, targets = head(embeddings, labels, classes=classes), torch.searchsorted(classes, labels)  # (B, S)
        if class_weights is None:
            loss = F.cross_entropy(logits, targets)
        else:
            loss = (F.cross_entropy(logits, targets, reduction="none") * class_weights[labels]).mean()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip and grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        params = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def _step_classes(s: Session, labels: torch.Tensor, seed: int, step: int) -> torch.Tensor | None:
    """The classes this step's softmax runs over: those of the whole global batch (every rank's
    rows) and random others, drawn from (seed, step), so every rank and any world size agree."""
    if s.sample_rate >= 1.0:
        return None
    generator = torch.Generator().manual_seed(derive_seed(seed, step, 3))
    return sample_classes(distributed.all_gather_rows(labels), s.head.n_classes, s.sample_rate, generator)


def _train_epoch(
    s: Session, loader, seed: int, step: int, desc: str, progress: bool, epoch: int = 0
) -> tuple[dict[str, float], int]:
    s.model.train()
    s.head.train()
    set_backbone_mode(s.model, s.train, epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=s.device)
    n_items = n_steps = 0
    lr = head_lr = backbone_lr = margin = float("nan")
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for inputs, labels in bar:
        inputs, labels = to_device(inputs, s.device), labels.to(s.device, non_blocking=s.device.type == "cuda")
        margin = s.margin.apply(s.head, step)
        lr, head_lr = _group_lr(s.optimizer, "encoder"), _group_lr(s.optimizer, "head")
        backbone_lr = _group_lr(s.optimizer, "backbone", default=lr)
        scale = s.scaler.get_scale() if s.scaler.is_enabled() else None
        loss = train_step(
            s.step_model,
            s.step_head,
            inputs,
            labels,
            s.optimizer,
            s.scaler,
            s.amp_dtype,
            s.train.grad_clip,
            classes=_step_classes(s, labels, seed, step),
            class_weights=s.class_weights,
        )
        # The fp16 scaler skips the update when gradients overflowed (and lowers its scale); the
        # schedule then waits for the first real update.
        if scale is None or s.scaler.get_scale() >= scale:
            s.scheduler.step()
        step += 1
        n_steps += 1
        n_items += len(labels)
        loss_sum += loss
        if n_steps % _POSTFIX_EVERY == 0:
            mean = _check_finite(loss_sum.item() / n_steps, step)  # this rank's rows
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", margin=f"{margin:.3f}", refresh=False)
    bar.close()
    # Every rank's steps weigh alike (equal slices), so the global mean is the mean of the ranks' means.
    mean_loss = _check_finite(distributed.all_sum(loss_sum.item()) / (s.world * max(n_steps, 1)), step)
    seconds = time.perf_counter() - start
    return {
        "steps": step,
        "loss": mean_loss,
        "lr": lr,
        "head_lr": head_lr,
        "backbone_lr": backbone_lr,
        "margin": margin,
        "seconds": round(seconds, 3),
        "items_per_s": round(n_items * s.world / max(seconds, 1e-9), 2),
    }, step


def _group_lr(optimizer: torch.optim.Optimizer, name: str, default: float = float("nan")) -> float:
    return next((g["lr"] for g in optimizer.param_groups if g["name"] in (name, f"{name}_no_decay")), default)


def _check_finite(loss: float, step: int) -> float:
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"training loss became {loss} by step {step}; lower train.lr / train.head_lr, or try train.amp=off"
        )
    return loss


def _evaluate(eval_fn: EvalFn, model: nn.Module, device: torch.device) -> dict[str, Any]:
    model.eval()
    try:
        with torch.no_grad():
            metrics = eval_fn(model)
    finally:
        model.train()
        to_device_model(model, device)  # eval_fn may have embedded elsewhere
    return {str(k): _plain(v) for k, v in dict(metrics or {}).items()}


def _plain(value: Any) -> Any:
    """NumPy and torch scalars as Python numbers, so logs and checkpoints hold plain types."""
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    return value
