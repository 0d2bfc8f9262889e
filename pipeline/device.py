"""Where tensors run and in which precision; the one place that knows about CUDA, MPS and CPU."""

from __future__ import annotations

import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")


def pick_device() -> torch.device:
    """CUDA if available, else Apple's MPS if available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device | str, amp: str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype for an ``amp`` setting on ``device``; None means full fp32.

    Args:
        device: where the model runs.
        amp: ``auto`` picks bf16 on CUDA where the GPU supports it, else fp16, and fp32 on CPU and
            MPS (CPU autocast is slower than fp32 on most CPUs, and MPS autocast coverage is thin).
            ``bf16`` and ``fp16`` are taken as asked on any device: CPU autocast supports bf16
            (fast on CPUs with AMX/AVX512-BF16) and, in recent torch, fp16. ``off`` is fp32.

    Raises:
        ValueError: for an ``amp`` outside :data:`AMP_MODES`.
    """
    device = torch.device(device)
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
