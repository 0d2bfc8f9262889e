"""The one training loop shared by the image and title encoders, and batched embedding.

:func:`train_encoder` trains an encoder with a margin head over ``label_group`` and leaves in its
output folder::

    last.pt    full state after each epoch (model, head, optimiser, scheduler, scaler, RNGs, step,
               and the run's config, seed and data fingerprint, checked on resume)
    log.csv    one row per epoch: epoch, steps, loss, lr, head_lr, margin, seconds, items_per_s, eval...
    log.json   the same rows plus the run's config, seed, data fingerprint, code version and ``done``
    model.pt   the trained encoder, weights only (see :func:`pipeline.encoders.save_encoder`)

Reproducibility: seeds are set once, each epoch's data order comes from a generator seeded by
(seed, epoch) and each item's augmentation from (seed, epoch, index), and the RNG states go into
``last.pt``. A run killed after any epoch and resumed therefore ends with the same weights as an
uninterrupted one (bitwise on CPU; on CUDA up to the non-determinism of its kernels, since
``torch.use_deterministic_algorithms`` is left off for speed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from pipeline.config import HeadConfig, ImageConfig, TextConfig, TrainConfig
from pipeline.datasets import label_index, make_dataset
from pipeline.device import autocast_dtype, pick_device
from pipeline.encoders import MODALITIES as ENCODER_MODALITIES, build_encoder, save_encoder
from pipeline.heads import ArcFace, CosFace, MarginHead, MarginWarmup, build_head
from pipeline.io import atomic_path, code_version, read_json, save_torch, write_csv, write_json

class RunStateError(RuntimeError):
    """An output folder that holds another or an unfinished run; the message says what to do."""


EvalFn = Callable[[nn.Module], Mapping[str, float]]

# Config keys that change nothing in the weights a run produces: a resumed or finished run may
# differ from the current config in these.
RESUME_IGNORED = frozenset({"train.num_workers", "train.final"})
# Progress-bar refresh period in steps; reading the loss syncs the GPU, so not every step.
_POSTFIX_EVERY = 10


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """The files of one training run's folder."""

    root: Path

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def log_csv(self) -> Path:
        return self.root / "log.csv"

    @property
    def log_json(self) -> Path:
        return self.root / "log.json"

    def clear(self) -> None:
        for p in (self.last, self.model, self.log_csv, self.log_json):
            p.unlink(missing_ok=True)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every GPU) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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

    What happens with an existing ``out_dir``:

    * a finished run (``log.json`` says done and ``model.pt`` exists) with the same config, seed
      and data is not retrained: its summary is returned with ``skipped=True``;
    * an unfinished one (``last.pt`` only) continues with ``resume=True``; without it, or when
      either run differs in a setting that matters (anything but :data:`RESUME_IGNORED`), a
      :class:`RunStateError` says what to do;
    * ``overwrite=True`` deletes the run's files and starts over.

    ``resume=True`` on an empty folder starts a fresh run, so a preemptible job can always pass it.

    Args:
        modality: "image" (``items`` are image paths) or "text" (``items`` are titles).
        cfg: that modality's config; ``cfg.train`` and ``cfg.head`` drive the loop.
        items: one per row.
        labels: ``label_group`` per row (any hashable values); classes are their distinct values.
        out_dir: the run folder (created).
        seed: seeds the weights' init, data order, augmentations and dropout.
        resume: continue from ``out_dir/last.pt`` if it exists.
        overwrite: discard whatever ``out_dir`` holds.
        eval_fn: called after each epoch with the encoder in eval mode; its returned metrics (e.g.
            held-out F1) are added to the epoch's log row.
        progress: show a progress bar per epoch.
        device: default :func:`pipeline.device.pick_device`.

    Returns:
        ``model_path``, ``out_dir``, ``skipped``, ``epochs``, ``steps``, ``history`` (the log rows)
        and ``final`` (the last row).
    """
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; pick one")
    if modality not in ENCODER_MODALITIES:
        raise ValueError(f"unknown encoder modality {modality!r}; valid: {', '.join(ENCODER_MODALITIES)}")
    files = RunFiles(Path(out_dir))
    items = list(items)
    labels = np.asarray(labels)
    if len(items) != len(labels):
        raise ValueError(f"{len(items)} items but {len(labels)} labels")
    if len(items) < 2:
        raise ValueError(f"training needs at least 2 rows (the BatchNorm neck needs batches of 2+), got {len(items)}")
    y, classes = label_index(labels)
    identity = {"modality": modality, "cfg": dataclasses.asdict(cfg), "seed": seed,
                "data": data_fingerprint(modality, items, y, classes)}

    finished, ckpt = _existing_run(files, identity, resume=resume, overwrite=overwrite)
    if finished is not None:
        return _summary(files, finished["history"], skipped=True)

    device = torch.device(device) if device is not None else pick_device()
    tc = cfg.train
    seed_everything(seed)
    # A resumed run overwrites every weight, so it needs neither the hub nor a weights file.
    model = build_encoder(modality, cfg, load_weights=ckpt is None)
    head = _build_head(cfg.head, model.embed_dim, len(classes))
    model, head = _to_device_model(model, device), head.to(device)

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

    parts = {"model": model, "head": head, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    start_epoch, step, history = 0, 0, []
    if ckpt is not None:
        for name, part in parts.items():
            part.load_state_dict(ckpt[name])
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], list(ckpt["history"])
        _set_rng_state(ckpt["rng"])
        del ckpt

    context = {"run": identity, "device": str(device), "n_items": len(items), "n_classes": len(classes),
               "batch_size": batch_size, "steps_per_epoch": steps_per_epoch, "epochs": tc.epochs,
               "code_version": code_version()}
    for epoch in range(start_epoch, tc.epochs):
        loader = make_loader(dataset, collate, batch_size, device=device, num_workers=tc.num_workers,
                             shuffle_seed=_derive_seed(seed, epoch), drop_last=True)
        if hasattr(dataset, "set_epoch_seed"):
            dataset.set_epoch_seed(_derive_seed(seed, epoch, 1))
        row, step = _train_epoch(
            model, head, loader, optimizer, scheduler, scaler, amp_dtype, margin, tc.grad_clip, device, step,
            desc=f"train {modality} {epoch + 1}/{tc.epochs}", progress=progress,
        )
        row = {"epoch": epoch + 1, **row}
        if eval_fn is not None:
            row.update(_evaluate(eval_fn, model, device))
        history.append(row)
        _write_logs(files, context, history, done=False)
        # RNG states are taken after the eval, so a resumed run continues from the same states.
        save_torch({
            **{name: part.state_dict() for name, part in parts.items()},
            "epoch": epoch + 1, "step": step, "history": history, "rng": _get_rng_state(), "run": identity,
            "classes": classes.tolist(), "code_version": context["code_version"],
        }, files.last)

    save_encoder(model, files.model, modality, cfg)
    _write_logs(files, context, history, done=True)
    return _summary(files, history, skipped=False)


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


def make_loader(dataset: Dataset, collate: Callable | None, batch_size: int, *, device: torch.device,
                num_workers: int = 0, shuffle_seed: int | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader; ``shuffle_seed`` shuffles with a generator of its own, which also seeds the
    workers, so the order does not depend on (or disturb) the global RNG."""
    generator = sampler = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
        sampler = RandomSampler(dataset, generator=generator)
    if num_workers > 0 and collate is not None:
        # A fast tokenizer used before the workers fork would deadlock in them.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=num_workers, pin_memory=device.type == "cuda", drop_last=drop_last,
                      persistent_workers=False, generator=generator)


def embed_items(
    model: nn.Module,
    items: Sequence,
    *,
    batch_size: int,
    out_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    num_workers: int | None = None,
    amp: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Embed items in batches under autocast; the (N, D) float32 L2-normalised embeddings.

    With ``out_path``, rows are written straight into a ``.npy`` memmap in a temporary file beside
    it, renamed into place when complete, and the result is that file opened read-only: memory
    holds one batch, never every image. Ids are the caller's to write.

    Args:
        model: an encoder from :mod:`pipeline.encoders`; it is moved to ``device`` and left there, in
            the train/eval mode it came in.
        items: image paths or titles.
        batch_size: items per forward pass.
        out_path: the ``.npy`` file to write; None returns an in-memory array.
        device: default: the model's device if that is an accelerator, else ``pick_device()``.
        num_workers: DataLoader workers; default ``model.cfg.train.num_workers``.
        amp: an :data:`pipeline.device.AMP_MODES` value; default ``model.cfg.train.amp``.
        progress: show a progress bar.
    """
    device = _embed_device(model, device)
    amp_dtype = autocast_dtype(device, amp or model.cfg.train.amp)
    workers = model.cfg.train.num_workers if num_workers is None else num_workers
    dataset, collate = make_dataset(model, items, None, train=False)
    loader = make_loader(dataset, collate, batch_size, device=device, num_workers=workers)
    shape = (len(dataset), model.embed_dim)
    was_training = model.training
    model = _to_device_model(model, device).eval()
    try:
        if out_path is None:
            out = np.empty(shape, dtype=np.float32)
            _embed_into(out, model, loader, device, amp_dtype, progress)
            return out
        with atomic_path(out_path, suffix=".npy") as tmp:
            if shape[0] == 0:
                np.save(tmp, np.empty(shape, dtype=np.float32))  # a memmap cannot map zero bytes
            else:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                _embed_into(out, model, loader, device, amp_dtype, progress)
                out.flush()
                del out  # close the map before the rename
        return np.load(out_path, mmap_mode="r") if shape[0] else np.load(out_path)
    finally:
        model.train(was_training)


def embed(model: nn.Module, items: Sequence, out_path: str | os.PathLike, *, batch_size: int,
          device: str | torch.device | None = None, progress: bool = True, **kwargs: Any) -> Path:
    """:func:`embed_items` into ``out_path`` (a ``.npy``); returns the path."""
    embed_items(model, items, batch_size=batch_size, out_path=out_path, device=device, progress=progress, **kwargs)
    return Path(out_path)


def data_fingerprint(modality: str, items: Sequence, y: np.ndarray, classes: np.ndarray) -> str:
    """A hash of the training rows: image file names (not their folder, which may move) or titles,
    with their class ids and classes."""
    h = hashlib.sha256()
    for item in items:
        h.update((Path(str(item)).name if modality == "image" else str(item)).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update("\0".join(map(str, np.asarray(classes).tolist())).encode())
    return h.hexdigest()[:16]


# --- the loop's pieces ----------------------------------------------------------------------------


def forward(model: nn.Module, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Call an encoder on a batch: an image tensor, or the tokenizer's dict of tensors."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def to_device(inputs: torch.Tensor | Mapping[str, torch.Tensor], device: torch.device):
    non_blocking = device.type == "cuda"
    if isinstance(inputs, Mapping):
        return {k: v.to(device, non_blocking=non_blocking) for k, v in inputs.items()}
    if inputs.ndim == 4 and device.type == "cuda":
        return inputs.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
    return inputs.to(device, non_blocking=non_blocking)


def inputs_device(inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(inputs.values())).device if isinstance(inputs, Mapping) else inputs.device


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or nothing for None (full fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device_model(model: nn.Module, device: torch.device) -> nn.Module:
    # Convolutions on CUDA run faster in NHWC, especially under AMP; the CPU gains nothing.
    if getattr(model, "modality", None) == "image" and device.type == "cuda":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


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
        _to_device_model(model, device)  # eval_fn may have embedded elsewhere
    return {str(k): _plain(v) for k, v in dict(metrics or {}).items()}


def _plain(value: Any) -> Any:
    """NumPy and torch scalars as Python numbers, so logs and checkpoints hold plain types."""
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    return value


def _embed_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    current = next(model.parameters()).device
    return current if current.type != "cpu" else pick_device()


def _embed_into(out: np.ndarray, model: nn.Module, loader: DataLoader, device: torch.device,
                amp_dtype: torch.dtype | None, progress: bool) -> None:
    row = 0
    with torch.inference_mode(), autocast(device, amp_dtype):
        for inputs in tqdm(loader, desc="embed", disable=not progress, leave=False, dynamic_ncols=True):
            x = forward(model, to_device(inputs, device)).float().cpu().numpy()  # (B, D)
            out[row:row + len(x)] = x
            row += len(x)
    if row != len(out):
        raise RuntimeError(f"embedded {row} rows for {len(out)} items")


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers; unlike seed + epoch, (1, 0) and (0, 1) differ."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def _get_rng_state() -> dict[str, Any]:
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_same_run(saved: Mapping[str, Any], now: Mapping[str, Any], where: Path) -> None:
    """Raise if a saved run differs from the requested one in anything that shapes the weights."""
    a, b = _flatten(saved), _flatten(now)
    diffs = [f"{k}: {a.get(k, '<absent>')!r} there, {b.get(k, '<absent>')!r} now"
             for k in sorted(set(a) | set(b))
             if k.removeprefix("cfg.") not in RESUME_IGNORED and a.get(k, "<absent>") != b.get(k, "<absent>")]
    if diffs:
        raise RunStateError(f"{where} belongs to a different run ({'; '.join(diffs)}); use another output folder "
                           "or overwrite=True to start over")


def _existing_run(files: RunFiles, identity: Mapping[str, Any], *, resume: bool,
                  overwrite: bool) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """What ``out_dir`` already holds: (the log of a finished run to skip to, or the checkpoint to
    resume from); both None for a fresh start. Raises when it holds another run."""
    if overwrite:
        files.clear()
        return None, None
    if files.model.exists() and files.log_json.exists():
        log = read_json(files.log_json)
        if log.get("done"):
            _check_same_run(log["run"], identity, files.log_json)
            return log, None
    if not files.last.exists():
        return None, None
    if not resume:
        raise RunStateError(f"{files.last} holds an unfinished run: pass resume=True to continue it "
                           "or overwrite=True to start over")
    ckpt = torch.load(files.last, map_location="cpu", weights_only=True)
    _check_same_run(ckpt["run"], identity, files.last)
    return None, ckpt


def _write_logs(files: RunFiles, context: Mapping[str, Any], history: list[dict], done: bool) -> None:
    write_csv(pd.DataFrame(history), files.log_csv)
    write_json({**context, "done": done, "history": history}, files.log_json)


def _summary(files: RunFiles, history: list[dict], skipped: bool) -> dict[str, Any]:
    return {"model_path": str(files.model), "out_dir": str(files.root), "skipped": skipped,
            "epochs": len(history), "steps": history[-1]["steps"] if history else 0,
            "history": history, "final": history[-1] if history else {}}
