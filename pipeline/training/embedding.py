"""Batched embedding under autocast, and the pieces of a forward pass the training loop shares:
loaders, moving batches to a device, and calling an encoder on a batch."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm.auto import tqdm

from pipeline.data.datasets import make_dataset
from pipeline.device import autocast_dtype, pick_device
from pipeline.io import atomic_path


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
        model: an encoder from :mod:`pipeline.models.encoders`; it is moved to ``device`` and left there, in
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
    model = to_device_model(model, device).eval()
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


def to_device_model(model: nn.Module, device: torch.device) -> nn.Module:
    # Convolutions on CUDA run faster in NHWC, especially under AMP; the CPU gains nothing.
    if getattr(model, "modality", None) == "image" and device.type == "cuda":
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


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
