"""What one training run is set up from and what it updates: :class:`TrainConfig` and the session
(encoder, margin head, data, optimiser, schedules, mixed precision, DDP wrappers) built from it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pipeline import distributed
from pipeline.data.datasets import make_dataset
from pipeline.device import autocast_dtype, pick_device
from pipeline.inference.embedding import to_device_model
from pipeline.models.config import HeadConfig
from pipeline.models.encoders import build_encoder
from pipeline.models.heads import MarginHead, MarginWarmup, build_head, size_margin_factors
from pipeline.training.config import TrainConfig


class BranchConfig(Protocol):
    """A modality's config section as training reads it: the encoder's own settings (what
    :func:`~pipeline.models.encoders.build_encoder` reads) plus ``train`` and ``head``."""

    train: TrainConfig
    head: HeadConfig


@dataclasses.dataclass
class Session:
    """Everything one training run updates, built in a fixed order so a seed gives the same run."""

    model: nn.Module
    head: MarginHead
    train: TrainConfig
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
    # What a step calls: the DDP wrappers of model and head under torchrun, else model and head.
    step_model: nn.Module
    step_head: nn.Module
    # (C,) cross-entropy weight of each class's rows (train.sample_weight_power), or None.
    class_weights: torch.Tensor | None
    sample_rate: float  # head.sample_rate
    world: int
    # train.early_stopping_patience: the best epoch so far, {"epoch", "val_f1", "model": state dict}.
    best: dict[str, Any] | None = None

    @property
    def parts(self) -> dict[str, Any]:
        """The objects whose state the checkpoint holds."""
        return {
            "model": self.model,
            "head": self.head,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
        }


def setup(
    modality: str,
    cfg: BranchConfig,
    items: list,
    y: np.ndarray,
    n_classes: int,
    device: str | torch.device | None,
    load_weights: bool,
    world: int = 1,
) -> Session:
    """Model, head, data and optimiser of a run; a resumed run (``load_weights=False``) overwrites
    every weight next, so it needs neither the hub nor a weights file."""
    device = _train_device(device, world)
    tc, hc = cfg.train, cfg.head
    if tc.linear_probe_epochs and world > 1:
        raise ValueError(
            "train.linear_probe_epochs is not supported under torchrun yet: DDP expects the same parameters "
            "to get gradients every step; set it to 0"
        )
    model = build_encoder(modality, cfg, load_weights=load_weights)
    head = build_margin_head(hc, model.embed_dim, n_classes)
    counts = np.bincount(y, minlength=n_classes)  # (C,) training rows per class
    if hc.margin_size_power > 0:
        head.set_margin_factors(
            size_margin_factors(counts, hc.margin_size_power, hc.margin_size_min, hc.margin_size_max)
        )
    if world > 1:
        distributed.global_batchnorm(model)
    model, head = to_device_model(model, device), head.to(device)
    dataset, collate = make_dataset(model, items, y, train=True)
    batch_size = _global_batch(tc.batch_size, len(dataset), world)
    steps_per_epoch = len(dataset) // batch_size  # drop_last: a batch of 1 would break BatchNorm
    total_steps = steps_per_epoch * tc.epochs
    optimizer = build_optimizer(model, head, tc)
    scheduler = build_scheduler(
        optimizer,
        total_steps,
        round(tc.warmup_frac * total_steps),
        backbone_frozen_steps=tc.linear_probe_epochs * steps_per_epoch,
    )
    amp_dtype = autocast_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    margin = MarginWarmup(hc.margin_start, hc.margin, round(hc.margin_warmup_epochs * steps_per_epoch))
    step_model, step_head = _ddp_wrappers(model, head, device, world)
    class_weights = None
    if tc.sample_weight_power > 0:
        class_weights = class_loss_weights(y, n_classes, tc.sample_weight_power).to(device)
    return Session(
        model,
        head,
        tc,
        dataset,
        collate,
        batch_size,
        steps_per_epoch,
        optimizer,
        scheduler,
        scaler,
        amp_dtype,
        margin,
        device,
        step_model,
        step_head,
        class_weights,
        hc.sample_rate,
        world,
    )


def _ddp_wrappers(model: nn.Module, head: nn.Module, device: torch.device, world: int) -> tuple[nn.Module, nn.Module]:
    """What a step calls: DistributedDataParallel wrappers under torchrun, else the modules themselves."""
    if world <= 1:
        return model, head
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # static_graph: every step uses the same parameters, and some never get a gradient (a
    # transformer's unused pooler), which DDP otherwise refuses.
    return DDP(model, device_ids=ids, static_graph=True), DDP(head, device_ids=ids)


def class_loss_weights(y: np.ndarray, n_classes: int, power: float) -> torch.Tensor:
    """(C,) float32 loss weight of each class's rows: ``n_c ** -power``, scaled to a mean of 1 over
    the rows ``y``. A fixed scale (not a per-batch normaliser) keeps the loss of a global batch the
    same however many processes share it."""
    w = np.bincount(y, minlength=n_classes).clip(min=1).astype(np.float64) ** -power
    return torch.as_tensor(w / w[y].mean(), dtype=torch.float32)


def _train_device(device: str | torch.device | None, world: int) -> torch.device:
    own = distributed.train_device()
    if own is None:
        return torch.device(device) if device is not None else pick_device()
    if device is not None and torch.device(device).type != own.type:
        raise ValueError(f"device {device} asked for, but this torchrun process group trains on {own.type}")
    return own


def _global_batch(batch_size: int, n_rows: int, world: int) -> int:
    """``train.batch_size`` rows, fewer when there are fewer rows, a multiple of the processes."""
    if batch_size % world:
        raise ValueError(
            f"train.batch_size={batch_size} is the global batch and must be a multiple of the {world} processes"
        )
    batch = min(batch_size, n_rows)
    batch -= batch % world
    if batch < 1:
        raise ValueError(f"{n_rows} rows cannot fill one batch over {world} processes")
    return batch


def build_optimizer(model: nn.Module, head: nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the encoder at ``tc.lr`` (its ``backbone``, when it has one, at ``tc.lr *
    tc.backbone_lr_mult``) and the head at ``tc.head_lr``; biases, norms and GeM's p (every tensor
    of one dimension or less) get no weight decay."""
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if isinstance(backbone, nn.Module) else set()
    parts = (
        ("backbone", [p for p in model.parameters() if id(p) in in_backbone], tc.lr * tc.backbone_lr_mult),
        ("encoder", [p for p in model.parameters() if id(p) not in in_backbone], tc.lr),
        ("head", list(head.parameters()), tc.head_lr),
    )
    decay, no_decay = [], []
    for name, params, lr in parts:
        params = [p for p in params if p.requires_grad]
        decay.append(
            {"name": name, "params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": tc.weight_decay}
        )
        no_decay.append(
            {"name": f"{name}_no_decay", "params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0}
        )
    # The encoder's parameters in the order of one group per decay setting (backbone, encoder,
    # backbone_no_decay, encoder_no_decay): gradient clipping sums their norms in that order, so
    # with backbone_lr_mult=1 training is bitwise what it was before the backbone had a group.
    groups = decay[:2] + no_decay[:2] + [decay[2], no_decay[2]]
    return torch.optim.AdamW([g for g in groups if g["params"]])


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, backbone_frozen_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimiser steps, then cosine decay to 0 at ``total_steps``.

    The backbone's groups (named ``backbone*``) get a factor of 0 for their first
    ``backbone_frozen_steps`` (the linear probe), then the same shape of warm-up and decay over the
    steps left."""

    def schedule(start: int) -> Callable[[int], float]:
        warmup = round(warmup_steps * (total_steps - start) / max(total_steps, 1))

        def factor(step: int) -> float:
            if step < start:
                return 0.0
            step -= start
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total_steps - start - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return factor

    factors = [
        schedule(backbone_frozen_steps if g.get("name", "").startswith("backbone") else 0)
        for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def set_backbone_mode(model: nn.Module, tc: TrainConfig, epoch: int) -> bool:
    """After ``model.train()``: freeze the backbone during the linear probe (no gradients, and eval
    mode, so its BatchNorm statistics and dropout stay put), and keep its BatchNorm layers in eval
    mode with ``tc.freeze_bn``. Returns whether the backbone trains this epoch."""
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return True
    probing = epoch < tc.linear_probe_epochs
    for p in backbone.parameters():
        p.requires_grad_(not probing)
    if probing:
        backbone.eval()
    elif tc.freeze_bn:
        for m in backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return not probing


def build_margin_head(hc: HeadConfig, embed_dim: int, n_classes: int) -> MarginHead:
    """The head of ``hc``, at the start of its margin warm-up."""
    if hc.kind == "cosface":
        return build_head(
            "cosface", embed_dim, n_classes, scale=hc.scale, cosine_margin=hc.margin_start, subcenters=hc.subcenters
        )
    return build_head(
        hc.kind,
        embed_dim,
        n_classes,
        scale=hc.scale,
        margin_rad=hc.margin_start,
        subcenters=hc.subcenters,
        easy_margin=hc.easy_margin,
    )
