"""The one training loop shared by the image and title encoders.

:func:`train_encoder` trains an encoder with a margin head over ``label_group`` and leaves in its
output folder (see :class:`pipeline.paths.ModelPaths`)::

    last.pt    full state after each epoch (model, head, optimiser, scheduler, scaler, RNGs, step,
               and the run's identity: config, seed and data fingerprint, checked on resume)
    log.csv    one row per epoch: epoch, steps, loss, lr, head_lr, margin, seconds, items_per_s, eval...
    log.json   the same rows plus the run's identity, code version and ``done``
    model.pt   the trained encoder, weights only (see :func:`pipeline.models.encoders.save_encoder`)

Reproducibility: seeds are set once, each epoch's data order comes from a generator seeded by
(seed, epoch) and each item's augmentation from (seed, epoch, index), and the RNG states go into
``last.pt``. A run killed after any epoch and resumed therefore ends with the same weights as an
uninterrupted one (bitwise on CPU; on CUDA up to the non-determinism of its kernels, since
``torch.use_deterministic_algorithms`` is left off for speed).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipeline.config import HeadConfig, ImageConfig, TextConfig, TrainConfig
from pipeline.data.datasets import label_index, make_dataset
from pipeline.device import autocast_dtype, pick_device
from pipeline.io import code_version, save_torch
from pipeline.models.encoders import MODALITIES as ENCODER_MODALITIES, build_encoder, save_encoder
from pipeline.models.heads import ArcFace, CosFace, MarginHead, MarginWarmup, build_head
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
from pipeline.training.embedding import autocast, forward, inputs_device, make_loader, to_device, to_device_model

EvalFn = Callable[[nn.Module], Mapping[str, float]]

# Progress-bar refresh period in steps; reading the loss syncs the GPU, so not every step.
_POSTFIX_EVERY = 10


@dataclasses.dataclass
class _Session:
    """Everything one training run updates, built in a fixed order so a seed gives the same run."""

    model: nn.Module
    head: MarginHead
    dataset: Any
    collate: Callable | None
    batch_size: int
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    margin: MarginWarmup
    device: torch.device

    @property
    def parts(self) -> dict[str, Any]:
        """The objects whose state the checkpoint holds."""
        return {"model": self.model, "head": self.head, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "scaler": self.scaler}


def train_encoder(
    modality: str,
    cfg: ImageConfig | TextConfig,
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
) -> dict[str, Any]:
    """Train an encoder and its margin head; write ``last.pt``, ``log.csv``, ``log.json``, ``model.pt``.

    An existing ``out_dir`` holding a finished run of the same config, seed and data is not
    retrained (its summary comes back with ``skipped=True``); an unfinished one continues with
    ``resume=True`` (which on an empty folder starts afresh, so a preemptible job can always pass
    it); ``overwrite=True`` starts over. Anything else raises
    :class:`~pipeline.training.checkpoint.RunStateError`, saying what to do.

    Args:
        modality: "image" (``items`` are image paths) or "text" (``items`` are titles).
        cfg: that modality's config; ``cfg.train`` and ``cfg.head`` drive the loop.
        items: one per row.
        labels: ``label_group`` per row (any hashable values); classes are their distinct values.
        out_dir: the model folder (created).
        seed: seeds the weights' init, data order, augmentations and dropout.
        eval_fn: called after each epoch with the encoder in eval mode; its metrics (e.g. held-out
            F1) join the epoch's log row.
        device: default :func:`pipeline.device.pick_device`.

    Returns:
        ``model_path``, ``out_dir``, ``skipped``, ``epochs``, ``steps``, ``history`` (the log rows)
        and ``final`` (the last row).
    """
    items, labels = _check_inputs(modality, items, labels, resume, overwrite)
    files = ModelPaths(Path(out_dir))
    y, classes = label_index(labels)
    identity = {"modality": modality, "cfg": dataclasses.asdict(cfg), "seed": seed,
                "data": data_fingerprint(modality, items, y, classes)}
    finished, ckpt = existing_run(files, identity, resume=resume, overwrite=overwrite)
    if finished is not None:
        return run_summary(files, finished["history"], skipped=True)

    seed_everything(seed)
    s = _setup(modality, cfg, items, y, len(classes), device, load_weights=ckpt is None)
    start_epoch, step, history = 0, 0, []
    if ckpt is not None:
        for name, part in s.parts.items():
            part.load_state_dict(ckpt[name])
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
        set_rng_state(ckpt["rng"])
        del ckpt

    context = {"run": identity, "device": str(s.device), "n_items": len(items), "n_classes": len(classes),
               "batch_size": s.batch_size, "steps_per_epoch": s.steps_per_epoch, "epochs": cfg.train.epochs,
               "code_version": code_version()}
    for epoch in range(start_epoch, cfg.train.epochs):
        row, step = _run_epoch(s, seed, epoch, step, desc=f"train {modality} {epoch + 1}/{cfg.train.epochs}",
                               progress=progress)
        if eval_fn is not None:
            row.update(_evaluate(eval_fn, s.model, s.device))
        history.append(row)
        write_logs(files, context, history, done=False)
        # RNG states are taken after the eval, so a resumed run continues from the same states.
        save_torch({
            **{name: part.state_dict() for name, part in s.parts.items()},
            "epoch": epoch + 1, "step": step, "history": history, "rng": get_rng_state(), "run": identity,
            "classes": classes.tolist(), "code_version": context["code_version"],
        }, files.last)

    save_encoder(s.model, files.model, modality, cfg)
    write_logs(files, context, history, done=True)
    return run_summary(files, history, skipped=False)


def _check_inputs(modality: str, items: Sequence, labels: Sequence | np.ndarray, resume: bool,
                  overwrite: bool) -> tuple[list, np.ndarray]:
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


def _setup(modality: str, cfg: ImageConfig | TextConfig, items: list, y: np.ndarray, n_classes: int,
           device: str | torch.device | None, load_weights: bool) -> _Session:
    """Model, head, data and optimiser of a run; a resumed run (``load_weights=False``) overwrites
    every weight next, so it needs neither the hub nor a weights file."""
    device = torch.device(device) if device is not None else pick_device()
    tc = cfg.train
    model = build_encoder(modality, cfg, load_weights=load_weights)
    head = _build_head(cfg.head, model.embed_dim, n_classes)
    model, head = to_device_model(model, device), head.to(device)
    dataset, collate = make_dataset(model, items, y, train=True)
    batch_size = min(tc.batch_size, len(dataset))
    steps_per_epoch = len(dataset) // batch_size  # drop_last: a batch of 1 would break BatchNorm
    total_steps = steps_per_epoch * tc.epochs
    optimizer = build_optimizer(model, head, tc)
    scheduler = build_scheduler(optimizer, total_steps, round(tc.warmup_frac * total_steps))
    amp_dtype = autocast_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    margin = MarginWarmup(cfg.head.margin_start_rad, cfg.head.margin_rad,
                          round(cfg.head.margin_warmup_epochs * steps_per_epoch))
    return _Session(model, head, dataset, collate, batch_size, steps_per_epoch, optimizer, scheduler, scaler,
                    amp_dtype, margin, device)


def _run_epoch(s: _Session, seed: int, epoch: int, step: int, desc: str, progress: bool) -> tuple[dict, int]:
    """One epoch over a freshly seeded data order; its log row (without eval metrics) and the step."""
    loader = make_loader(s.dataset, s.collate, s.batch_size, device=s.device,
                         num_workers=s.model.cfg.train.num_workers, shuffle_seed=derive_seed(seed, epoch),
                         drop_last=True)
    if hasattr(s.dataset, "set_epoch_seed"):
        s.dataset.set_epoch_seed(derive_seed(seed, epoch, 1))
    row, step = _train_epoch(s.model, s.head, loader, s.optimizer, s.scheduler, s.scaler, s.amp_dtype, s.margin,
                             s.model.cfg.train.grad_clip, s.device, step, desc=desc, progress=progress)
    return {"epoch": epoch + 1, **row}, step


def train_step(model: nn.Module, head: MarginHead, inputs: torch.Tensor | Mapping[str, torch.Tensor],
               labels: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               amp_dtype: torch.dtype | None, grad_clip: float) -> torch.Tensor:
    """One optimiser step of cross-entropy over the head's margin logits; returns the detached loss.

    ``inputs`` and ``labels`` must already be on the model's device. The learning-rate scheduler
    and the margin are the caller's business.
    """
    with autocast(inputs_device(inputs), amp_dtype):
        embeddings = forward(model, inputs)  # (B, D) float32
        logits = head(embeddings, labels)  # (B, C) float32, outside autocast
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip and grad_clip > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        params = [p for group in optimizer.param_groups for p in group["params"]]
        nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def build_optimizer(model: nn.Module, head: nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the encoder at ``tc.lr`` and the head at ``tc.head_lr``; biases, norms and GeM's p
    (every tensor of one dimension or less) get no weight decay."""
    groups = []
    for name, module, lr in (("encoder", model, tc.lr), ("head", head, tc.head_lr)):
        params = [p for p in module.parameters() if p.requires_grad]
        groups.append({"name": name, "params": [p for p in params if p.ndim > 1], "lr": lr,
                       "weight_decay": tc.weight_decay})
        groups.append({"name": f"{name}_no_decay", "params": [p for p in params if p.ndim <= 1], "lr": lr,
                       "weight_decay": 0.0})
    return torch.optim.AdamW([g for g in groups if g["params"]])


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimiser steps, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _build_head(hc: HeadConfig, embed_dim: int, n_classes: int) -> MarginHead:
    """The head at the start of the margin warm-up."""
    if hc.kind == "cosface":
        if hc.easy_margin:
            raise ValueError("head.easy_margin applies to ArcFace only; set it to false for head.kind=cosface")
        return build_head("cosface", embed_dim, n_classes, scale=hc.scale, margin=hc.margin_start_rad,
                          subcenters=hc.subcenters)
    return build_head(hc.kind, embed_dim, n_classes, scale=hc.scale, margin_rad=hc.margin_start_rad,
                      subcenters=hc.subcenters, easy_margin=hc.easy_margin)


def _set_margin(head: MarginHead, warmup: MarginWarmup, step: int) -> float:
    if isinstance(head, ArcFace):
        return warmup.apply(head, step)
    if isinstance(head, CosFace):
        # Same ramp; for CosFace the values are cosine margins, as head.margin_rad's comment says.
        head.margin = warmup(step)
        return head.margin
    raise TypeError(f"no margin schedule for head {type(head).__name__}")


def _train_epoch(model, head, loader, optimizer, scheduler, scaler, amp_dtype, warmup, grad_clip, device, step,
                 desc: str, progress: bool) -> tuple[dict[str, float], int]:
    model.train()
    head.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_items = n_steps = 0
    lr = head_lr = margin = float("nan")
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for inputs, labels in bar:
        inputs, labels = to_device(inputs, device), labels.to(device, non_blocking=device.type == "cuda")
        margin = _set_margin(head, warmup, step)
        lr, head_lr = _group_lr(optimizer, "encoder"), _group_lr(optimizer, "head")
        scale = scaler.get_scale() if scaler.is_enabled() else None
        loss = train_step(model, head, inputs, labels, optimizer, scaler, amp_dtype, grad_clip)
        # The fp16 scaler skips the update when gradients overflowed (and lowers its scale); the
        # schedule then waits for the first real update.
        if scale is None or scaler.get_scale() >= scale:
            scheduler.step()
        step += 1
        n_steps += 1
        n_items += len(labels)
        loss_sum += loss
        if n_steps % _POSTFIX_EVERY == 0:
            mean = _check_finite(loss_sum.item() / n_steps, step)
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", margin=f"{margin:.3f}", refresh=False)
    bar.close()
    mean_loss = _check_finite(loss_sum.item() / max(n_steps, 1), step)
    seconds = time.perf_counter() - start
    return {"steps": step, "loss": mean_loss, "lr": lr, "head_lr": head_lr, "margin": margin,
            "seconds": round(seconds, 3), "items_per_s": round(n_items / max(seconds, 1e-9), 2)}, step


def _group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    return next(g["lr"] for g in optimizer.param_groups if g["name"] in (name, f"{name}_no_decay"))


def _check_finite(loss: float, step: int) -> float:
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss} by step {step}; lower train.lr / train.head_lr, "
                                 "or try train.amp=off")
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
