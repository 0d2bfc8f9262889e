"""Batched embedding under autocast, and the pieces of a forward pass the training loop shares:
loaders, moving batches to a device, and calling an encoder on a batch."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from pipeline import distributed
from pipeline.data.datasets import make_dataset
from pipeline.device import autocast_dtype, pick_device
from pipeline.distributed import RankBatches
from pipeline.io import atomic_path

log = logging.getLogger("pipeline")
HEARTBEAT_S = 60.0  # without a progress bar, a line this often says how far an embedding is


class Heartbeat:
    """Logs how far a long embedding is, every ``every_s`` seconds, where no progress bar shows
    (a notebook cell, a Kaggle log): items done, the rate and the time left.

    Args:
        total: items to embed.
        enabled: False logs nothing (a progress bar shows instead, or another rank logs).
        every_s: seconds between lines (default :data:`HEARTBEAT_S`).
    """

    def __init__(self, total: int, enabled: bool, every_s: float | None = None):
        self.total, self.enabled = total, enabled
        self.every_s = HEARTBEAT_S if every_s is None else every_s
        self.start = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.every_s or done >= self.total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / max(rate, 1e-9)
        log.info(
            "embedding: %s of %s items, %.1f/s, about %s left", f"{done:,}", f"{self.total:,}", rate, _minutes(left)
        )


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.1f} min"


def make_loader(
    dataset: Dataset,
    collate: Callable | None,
    batch_size: int,
    *,
    device: torch.device,
    num_workers: int = 0,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
    rank: int = 0,
    world: int = 1,
) -> DataLoader:
    """A DataLoader; ``shuffle_seed`` shuffles with a generator of its own, which also seeds the
    workers, so the order does not depend on (or disturb) the global RNG.

    With ``shuffle_seed``, ``batch_size`` is the global batch and the loader yields rank ``rank``'s
    slice of each (see :class:`~pipeline.distributed.RankBatches`); without it, the
    dataset in order, in batches of ``batch_size``.
    """
    if num_workers > 0 and collate is not None:
        # A fast tokenizer used before the workers fork would deadlock in them.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    common = {
        "collate_fn": collate,
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": False,
    }
    if shuffle_seed is None:
        return DataLoader(dataset, batch_size=batch_size, drop_last=drop_last, **common)
    batches = RankBatches(len(dataset), shuffle_seed, batch_size, rank, world, drop_last)
    # The same generator state the order was drawn from, so the workers' base seed is unchanged too.
    return DataLoader(dataset, batch_sampler=batches, generator=torch.Generator().manual_seed(shuffle_seed), **common)


def embed_items(
    model: nn.Module,
    items: Sequence,
    *,
    batch_size: int,
    out_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    amp: str = "auto",
    progress: bool = True,
) -> np.ndarray:
    """Embed items in batches under autocast; the (N, D) float32 L2-normalised embeddings.

    With ``out_path``, rows are written straight into a ``.npy`` memmap in a temporary file beside
    it, renamed into place when complete, and the result is that file opened read-only: memory
    holds one batch, never every image. Ids are the caller's to write.

    Under a process group of several ranks (torchrun), every rank must call this with the same
    items: each embeds its share, and every rank gets all the rows back; with ``out_path``, rank 0
    writes the file and the others open it once it is complete (a shared filesystem, as resuming
    from a checkpoint needs anyway).

    Args:
        model: an encoder from :mod:`pipeline.models.encoders`; it is moved to ``device`` and left there, in
            the train/eval mode it came in.
        items: image paths or titles.
        batch_size: items per forward pass.
        out_path: the ``.npy`` file to write; None returns an in-memory array.
        device: default: the model's device if that is an accelerator, else ``pick_device()``.
        num_workers: DataLoader workers (a run embeds with its ``train.num_workers``).
        amp: an :data:`pipeline.device.AMP_MODES` value (a run embeds with its ``train.amp``).
        progress: show a progress bar.
    """
    device = _embed_device(model, device)
    amp_dtype = autocast_dtype(device, amp)
    dataset, collate = make_dataset(model, items, None, train=False)
    shape = (len(dataset), model.embed_dim)
    if distributed.world_size() > 1:
        embed_into = _ShardedEmbedding(dataset, collate, batch_size, device, num_workers, amp_dtype)
    else:
        loader = make_loader(dataset, collate, batch_size, device=device, num_workers=num_workers)

        def embed_into(out, model, progress, beat):
            _embed_into(out, model, loader, device, amp_dtype, progress, beat)

    was_training = model.training
    model = to_device_model(model, device).eval()
    beat = Heartbeat(shape[0], enabled=not progress and distributed.is_main())
    progress = progress and distributed.is_main()
    try:
        if out_path is None:
            out = np.empty(shape, dtype=np.float32)
            embed_into(out, model, progress, beat)
            return out
        if distributed.is_main():
            with atomic_path(out_path, suffix=".npy") as tmp:
                if shape[0] == 0:
                    np.save(tmp, np.empty(shape, dtype=np.float32))  # a memmap cannot map zero bytes
                else:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
                    embed_into(out, model, progress, beat)
                    out.flush()
                    del out  # close the map before the rename
        elif shape[0]:
            embed_into(None, model, progress, beat)  # embeds its share; rank 0 writes
        distributed.barrier()  # the file is complete before any rank opens it
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


def _embed_into(
    out: np.ndarray,
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    progress: bool,
    beat: Heartbeat,
) -> None:
    row = 0
    with torch.inference_mode(), autocast(device, amp_dtype):
        for inputs in tqdm(loader, desc="embed", disable=not progress, leave=False, dynamic_ncols=True):
            x = forward(model, to_device(inputs, device)).float().cpu().numpy()  # (B, D)
            out[row : row + len(x)] = x
            row += len(x)
            beat(row)
    if row != len(out):
        raise RuntimeError(f"embedded {row} rows for {len(out)} items")


class _ShardedEmbedding:
    """Embedding split over the ranks of a process group, in lockstep rounds.

    Round t covers rows ``[t * N * b, (t + 1) * N * b)``: rank r embeds its r-th slice of b rows,
    the slices are gathered in rank order (padded to b, since a gather needs equal shapes), and
    each rank that holds an output writes the round's rows. Memory holds one round.
    """

    def __init__(
        self,
        dataset: Dataset,
        collate: Callable | None,
        batch_size: int,
        device: torch.device,
        workers: int,
        amp_dtype: torch.dtype | None,
    ):
        self.n, self.b, self.device, self.amp_dtype = len(dataset), batch_size, device, amp_dtype
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.rounds = -(-self.n // (self.world * self.b))
        mine = [i for t in range(self.rounds) for i in self._slice(t, self.rank)]
        # Every round but the last gives this rank exactly b rows, so the loader's batches are the rounds'.
        self.loader = make_loader(Subset(dataset, mine), collate, batch_size, device=device, num_workers=workers)

    def _slice(self, t: int, r: int) -> range:
        start = t * self.world * self.b + r * self.b
        return range(min(start, self.n), min(start + self.b, self.n))

    def __call__(self, out: np.ndarray | None, model: nn.Module, progress: bool, beat: Heartbeat) -> None:
        batches = iter(self.loader)
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            for t in tqdm(range(self.rounds), desc="embed", disable=not progress, leave=False, dynamic_ncols=True):
                mine = self._slice(t, self.rank)
                block = torch.zeros(self.b, model.embed_dim, device=self.device)  # (b, D)
                if len(mine):
                    block[: len(mine)] = forward(model, to_device(next(batches), self.device)).float()
                gathered = distributed.all_gather_rows(block).view(self.world, self.b, -1)  # (N, b, D)
                rows = torch.cat([gathered[r, : len(self._slice(t, r))] for r in range(self.world)])
                start = t * self.world * self.b
                if out is not None:
                    out[start : start + len(rows)] = rows.cpu().numpy()
                beat(start + len(rows))
