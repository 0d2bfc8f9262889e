"""Data-parallel training under ``torchrun``: the process group, each rank's share of an epoch,
BatchNorm over the global batch, and the gathers that embedding and class sampling need.

Nothing happens at import. :func:`init_if_launched` starts a process group only when torchrun's
variables say there are several processes (``WORLD_SIZE`` > 1): NCCL when CUDA is there (one GPU
per local rank), gloo on the CPU. Outside torchrun every function here answers as the one and only
rank, so the single-process path runs exactly as it did before any of this existed.

What a global batch is, whatever the number of processes N: ``train.batch_size`` rows, taken in
order from the epoch's seeded permutation of the rows (:func:`epoch_order`); rank r trains on the
r-th of its N equal slices. An epoch therefore has the same steps and the same batches for any N,
which is what lets a checkpoint written by N processes resume under M.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

# torchrun sets all of these for every process it starts.
_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched_world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``), 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_if_launched(timeout_minutes: float = 30.0) -> int:
    """Join torchrun's process group if there is one to join; the world size (1 outside torchrun).

    Idempotent: a second call returns the group already there. The backend follows the device:
    NCCL on CUDA (each process takes the GPU of its ``LOCAL_RANK``), gloo on the CPU.

    Raises:
        RuntimeError: torchrun's variables are incomplete, or there are fewer GPUs than local ranks.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if launched_world_size() <= 1:
        return 1
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE is {launched_world_size()} but {', '.join(missing)} unset: start the "
            "processes with torchrun (e.g. torchrun --nproc_per_node 2 -m pipeline train-text ...)"
        )
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; train with one process")
    backend = "gloo"
    if torch.cuda.is_available():
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local} but {torch.cuda.device_count()} GPU(s): start at most "
                "--nproc_per_node <number of GPUs> processes per machine"
            )
        torch.cuda.set_device(local)
        backend = "nccl"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return dist.get_world_size()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files and logs: rank 0, or the only process."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def train_device() -> torch.device | None:
    """The device of this rank under a process group (its own GPU, or the CPU); None outside one."""
    if world_size() == 1:
        return None
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _comm_device() -> torch.device:
    """Where tensors must be for a collective: NCCL moves CUDA tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's (n, ...) tensor stacked in rank order, (N * n, ...) on ``x``'s device; equal n on every rank."""
    if world_size() == 1:
        return x
    local = x.to(_comm_device())
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts).to(x.device)


def all_sum(value: float) -> float:
    """A float summed over the ranks."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item())


def epoch_order(n: int, seed: int) -> np.ndarray:
    """(n,) the epoch's permutation of the rows: what ``RandomSampler`` gives inside a ``DataLoader``
    whose generator is seeded with ``seed`` (the loader draws its workers' base seed first), so one
    process trains on the same batches as it did before this function existed."""
    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader's base-seed draw
    return torch.randperm(n, generator=generator).numpy()


class RankBatches(Sampler[list[int]]):
    """This rank's slice of each global batch of a seeded epoch order (a ``batch_sampler``).

    Global batch t is ``order[t * B:(t + 1) * B]``; rank r of N gets its r-th slice of B / N rows.
    With ``drop_last`` a last short global batch is dropped (needed by more than one rank, whose
    slices must be equal for the gradient average to weigh every row alike).

    Args:
        n: rows in the dataset.
        seed: the epoch's seed (see :func:`epoch_order`).
        batch_size: B, the global batch, a multiple of ``world``.
        rank, world: this process and the number of processes.
    """

    def __init__(self, n: int, seed: int, batch_size: int, rank: int = 0, world: int = 1, drop_last: bool = True):
        if batch_size < 1 or batch_size % world:
            raise ValueError(f"the global batch ({batch_size}) must be a positive multiple of the {world} processes")
        if world > 1 and not drop_last:
            raise ValueError("several processes need drop_last=True (equal slices of every global batch)")
        self.order = epoch_order(n, seed)
        self.batch_size, self.rank, self.world, self.drop_last = batch_size, rank, world, drop_last

    def __len__(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.batch_size // self.world
        for t in range(len(self)):
            start = t * self.batch_size + self.rank * per_rank
            yield self.order[start : min(start + per_rank, len(self.order))].tolist()


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: with every rank's loss depending
    on the sum, each input's gradient gathers every rank's share."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, summed over the ranks.

    With one process it is the BatchNorm it replaced. Under a process group the per-channel count,
    sum and centred sum of squares are summed over the ranks by all-reduces that carry gradients (gloo or NCCL, unlike
    torch's ``SyncBatchNorm``, which needs a GPU), so the forward and the gradients are those of
    one process seeing the whole batch. Parameters, buffers and state-dict keys are the replaced
    module's, so checkpoints move freely between one process and several.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of 2 or more dimensions, got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()  # statistics in fp32 under autocast, as BatchNorm does
        count = torch.full((1,), xf.numel() / xf.shape[1], dtype=torch.float32, device=x.device)
        totals = all_reduce(torch.cat([xf.sum(dims), count]))  # (C + 1,)
        n = totals[-1]
        mean = totals[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n  # biased, as used to normalise
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / (n - 1).clamp(min=1))
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)


_PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def global_batchnorm(module: nn.Module) -> int:
    """Replace, in place, every plain ``nn.BatchNorm1d/2d/3d`` under ``module`` by a
    :class:`GlobalBatchNorm` holding the same parameters and buffers; the number replaced.

    Subclasses that do more than normalise (timm's ``BatchNormAct2d`` in EfficientNets adds an
    activation) are left alone and normalise with their rank's rows, as under plain DDP.
    """
    replaced = 0
    for name, child in list(module.named_children()):
        if type(child) in _PLAIN_BATCHNORMS:
            new = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            # The very tensors, so an optimiser built before or after sees the same parameters.
            new._parameters = child._parameters
            new._buffers = child._buffers
            new.train(child.training)
            setattr(module, name, new)
            replaced += 1
        else:
            replaced += global_batchnorm(child)
    return replaced
