"""The one training loop shared by the image and title encoders.

:func:`train_encoder` trains an encoder with a margin head over ``label_group`` and leaves in its
output folder (see :class:`pipeline.paths.ModelPaths`)::

    last.pt    full state after each epoch (model, head, optimiser, scheduler, scaler, RNGs, step,
               and the run's identity: config, seed and data fingerprint, checked on resume);
               deleted once the model is finished unless ``train.keep_last``
    log.csv    one row per epoch: epoch, steps, loss, lr, head_lr, margin, seconds, items_per_s, eval...
    log.json   the same rows plus the run's identity, code version and ``done``
    model.pt   the trained encoder, weights only (see :func:`pipeline.models.encoders.save_encoder`)

Reproducibility: seeds are set once, each epoch's data order comes from a generator seeded by
(seed, epoch) and each item's augmentation from (seed, epoch, index), and the RNG states go into
``last.pt``. A run killed after any epoch and resumed therefore ends with the same weights as an
uninterrupted one (bitwise on CPU; on CUDA up to the non-determinism of its kernels, since
``torch.use_deterministic_algorithms`` is left off for speed).

Under ``torchrun --nproc_per_node N`` the same function trains with DistributedDataParallel (see
:mod:`pipeline.training.distributed`): ``train.batch_size`` stays the global batch, each rank
trains on its slice of every global batch of the same seeded order, plain BatchNorm layers use the
global batch's statistics, gradients (the head's included) are averaged over the ranks, and rank 0
alone writes files and logs. Kept equal whatever N: the global batches and their order, each
row's augmentation, the sampled classes, the schedules and the checkpoint's contents, so a run
checkpointed by N processes resumes under M. Not kept: dropout masks (each rank draws its own,
reseeded per epoch from the seed, the epoch and the rank), and the statistics of BatchNorm
subclasses such as timm's ``BatchNormAct2d``, which stay per rank as under plain DDP.
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
from pipeline.models.heads import ArcFace, CosFace, MarginHead, MarginWarmup, build_head, sample_classes, size_margin_factors
from pipeline.paths import ModelPaths
from pipeline.training import distributed
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
from pipeline.training.progress import EpochLog, log

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
    # What a step calls: the DDP wrappers of model and head under torchrun, else model and head.
    step_model: nn.Module
    step_head: nn.Module
    # (C,) cross-entropy weight of each class's rows (train.sample_weight_power), or None.
    class_weights: torch.Tensor | None
    sample_rate: float  # head.sample_rate
    world: int

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
    label: str | None = None,
    later_row_epochs: float = 0.0,
) -> dict[str, Any]:
    """Train an encoder and its margin head; write ``log.csv``, ``log.json``, ``model.pt`` (and
    ``last.pt`` after each epoch, deleted at the end unless ``train.keep_last``). An existing ``out_dir`` holding a finished run of the same config, seed and data is not
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
    identity = {"modality": modality, "cfg": dataclasses.asdict(cfg), "seed": seed,
                "data": data_fingerprint(modality, items, y, classes)}
    finished, ckpt = existing_run(files, identity, resume=resume, overwrite=overwrite, clear=main)
    if finished is not None:
        if main:
            log.info("%s: finished earlier in %s, skipped", label, files.root)
        return run_summary(files, finished["history"], skipped=True)

    seed_everything(seed)
    s = _setup(modality, cfg, items, y, len(classes), device, load_weights=ckpt is None, world=world)
    start_epoch, step, history = _restore(s, ckpt) if ckpt is not None else (0, 0, [])
    del ckpt
    context = {"run": identity, "device": str(s.device), "n_items": len(items), "n_classes": len(classes),
               "batch_size": s.batch_size, "steps_per_epoch": s.steps_per_epoch, "epochs": cfg.train.epochs,
               "code_version": code_version(), **({"world_size": world} if world > 1 else {})}
    epoch_log = EpochLog(label, cfg.train.epochs, len(items), later_row_epochs, enabled=main)
    for epoch in range(start_epoch, cfg.train.epochs):
        started = time.perf_counter()
        row, step = _run_epoch(s, seed, epoch, step, desc=f"train {label} {epoch + 1}/{cfg.train.epochs}",
                               progress=progress and main)
        if eval_fn is not None:
            row.update(_evaluate(eval_fn, s.model, s.device))
        history.append(row)
        if main:
            _save_epoch(files, s, context, history, epoch, step, identity, classes)
        epoch_log(row, time.perf_counter() - started)
    if main:
        _finish(files, s, modality, cfg, context, history)
    distributed.barrier()  # no rank goes on (e.g. to embed with model.pt) before the files exist
    return run_summary(files, history, skipped=False)


def _finish(files: ModelPaths, s: _Session, modality: str, cfg: ImageConfig | TextConfig, context: dict,
            history: list[dict]) -> None:
    save_encoder(s.model, files.model, modality, cfg)
    write_logs(files, context, history, done=True)
    if not cfg.train.keep_last:
        files.last.unlink(missing_ok=True)  # model.pt and log.json mark the run finished


def _restore(s: _Session, ckpt: dict[str, Any]) -> tuple[int, int, list[dict]]:
    """Load a checkpoint's full state into the session; (epochs done, step, log rows)."""
    for name, part in s.parts.items():
        part.load_state_dict(ckpt[name])
    set_rng_state(ckpt["rng"])
    return ckpt["epoch"], ckpt["step"], list(ckpt["history"])


def _save_epoch(files: ModelPaths, s: _Session, context: dict, history: list[dict], epoch: int, step: int,
                identity: dict, classes: np.ndarray) -> None:
    write_logs(files, context, history, done=False)
    # RNG states are taken after the eval, so a resumed run continues from the same states.
    save_torch({
        **{name: part.state_dict() for name, part in s.parts.items()},
        "epoch": epoch + 1, "step": step, "history": history, "rng": get_rng_state(), "run": identity,
        "classes": classes.tolist(), "code_version": context["code_version"],
    }, files.last)


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
           device: str | torch.device | None, load_weights: bool, world: int = 1) -> _Session:
    """Model, head, data and optimiser of a run; a resumed run (``load_weights=False``) overwrites
    every weight next, so it needs neither the hub nor a weights file."""
    device = _train_device(device, world)
    tc = cfg.train
    model = build_encoder(modality, cfg, load_weights=load_weights)
    head = _build_head(cfg.head, model.embed_dim, n_classes)
    counts = np.bincount(y, minlength=n_classes)  # (C,) training rows per class
    if cfg.head.margin_size_power > 0:
        head.set_margin_factors(size_margin_factors(counts, cfg.head.margin_size_power, cfg.head.margin_size_min,
                                                    cfg.head.margin_size_max))
    if world > 1:
        distributed.global_batchnorm(model)
    model, head = to_device_model(model, device), head.to(device)
    dataset, collate = make_dataset(model, items, y, train=True)
    batch_size = _global_batch(tc.batch_size, len(dataset), world)
    steps_per_epoch = len(dataset) // batch_size  # drop_last: a batch of 1 would break BatchNorm
    total_steps = steps_per_epoch * tc.epochs
    optimizer = build_optimizer(model, head, tc)
    scheduler = build_scheduler(optimizer, total_steps, round(tc.warmup_frac * total_steps))
    amp_dtype = autocast_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    margin = MarginWarmup(cfg.head.margin_start_rad, cfg.head.margin_rad,
                          round(cfg.head.margin_warmup_epochs * steps_per_epoch))
    step_model, step_head = model, head
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # static_graph: every step uses the same parameters, and some never get a gradient (a
        # transformer's unused pooler), which DDP otherwise refuses.
        step_model = DDP(model, device_ids=ids, static_graph=True)
        step_head = DDP(head, device_ids=ids)
    class_weights = None
    if tc.sample_weight_power > 0:
        class_weights = class_loss_weights(y, n_classes, tc.sample_weight_power).to(device)
    return _Session(model, head, dataset, collate, batch_size, steps_per_epoch, optimizer, scheduler, scaler,
                    amp_dtype, margin, device, step_model, step_head, class_weights, cfg.head.sample_rate, world)


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
        raise ValueError(f"train.batch_size={batch_size} is the global batch and must be a multiple of the "
                         f"{world} processes")
    batch = min(batch_size, n_rows)
    batch -= batch % world
    if batch < 1:
        raise ValueError(f"{n_rows} rows cannot fill one batch over {world} processes")
    return batch


def _run_epoch(s: _Session, seed: int, epoch: int, step: int, desc: str, progress: bool) -> tuple[dict, int]:
    """One epoch over a freshly seeded data order; its log row (without eval metrics) and the step."""
    loader = make_loader(s.dataset, s.collate, s.batch_size, device=s.device,
                         num_workers=s.model.cfg.train.num_workers, shuffle_seed=derive_seed(seed, epoch),
                         drop_last=True, rank=distributed.rank(), world=s.world)
    if hasattr(s.dataset, "set_epoch_seed"):
        s.dataset.set_epoch_seed(derive_seed(seed, epoch, 1))
    if s.world > 1:
        # Each rank its own dropout masks; reseeded per epoch, so a resume at any epoch draws the same.
        seed_everything(derive_seed(seed, epoch, 2, distributed.rank()))
    row, step = _train_epoch(s, loader, seed, step, desc=desc, progress=progress)
    return {"epoch": epoch + 1, **row}, step


def train_step(model: nn.Module, head: MarginHead, inputs: torch.Tensor | Mapping[str, torch.Tensor],
               labels: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               amp_dtype: torch.dtype | None, grad_clip: float, *, classes: torch.Tensor | None = None,
               class_weights: torch.Tensor | None = None) -> torch.Tensor:
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




def _step_classes(s: _Session, labels: torch.Tensor, seed: int, step: int) -> torch.Tensor | None:
    """The classes this step's softmax runs over: those of the whole global batch (every rank's
    rows) and random others, drawn from (seed, step), so every rank and any world size agree."""
    if s.sample_rate >= 1.0:
        return None
    generator = torch.Generator().manual_seed(derive_seed(seed, step, 3))
    return sample_classes(distributed.all_gather_rows(labels), s.head.n_classes, s.sample_rate, generator)


def _train_epoch(s: _Session, loader, seed: int, step: int, desc: str, progress: bool) -> tuple[dict[str, float], int]:
    s.model.train()
    s.head.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=s.device)
    n_items = n_steps = 0
    lr = head_lr = margin = float("nan")
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for inputs, labels in bar:
        inputs, labels = to_device(inputs, s.device), labels.to(s.device, non_blocking=s.device.type == "cuda")
        margin = _set_margin(s.head, s.margin, step)
        lr, head_lr = _group_lr(s.optimizer, "encoder"), _group_lr(s.optimizer, "head")
        scale = s.scaler.get_scale() if s.scaler.is_enabled() else None
        loss = train_step(s.step_model, s.step_head, inputs, labels, s.optimizer, s.scaler, s.amp_dtype,
                          s.model.cfg.train.grad_clip, classes=_step_classes(s, labels, seed, step),
                          class_weights=s.class_weights)
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
    return {"steps": step, "loss": mean_loss, "lr": lr, "head_lr": head_lr, "margin": margin,
            "seconds": round(seconds, 3), "items_per_s": round(n_items * s.world / max(seconds, 1e-9), 2)}, step


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
