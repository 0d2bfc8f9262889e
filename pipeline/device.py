"""Where tensors run, in which precision and on how many CPU threads; the one place that knows
about CUDA, MPS and CPU.

torch is imported by the functions that need it, so a TF-IDF-only stage can bound its threads
without loading torch.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")
# The variables OpenMP and the BLAS libraries read when they start; set before they load, they
# bound libraries that a stage imports later (and DataLoader worker processes).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def default_threads() -> int:
    """A few threads: enough for BLAS and OpenMP to help, few enough that a shared machine stays
    usable; an ``OMP_NUM_THREADS`` set by the user lowers it."""
    n = min(4, os.cpu_count() or 1)
    env = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(n, int(env)) if env.isdigit() and int(env) > 0 else n)


def bound_threads(n: int) -> int:
    """Cap every CPU thread pool of this process at ``n``: torch, FAISS, OpenCV and, through
    threadpoolctl, the BLAS and OpenMP libraries NumPy, SciPy and scikit-learn loaded.

    Called once per stage with ``cfg.threads``; libraries that are not loaded yet read the
    environment variables it sets. Returns ``n``.
    """
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(n)
    return n


def pick_device() -> torch.device:
    """CUDA if available, else Apple's MPS if available, else the CPU."""
    import torch

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
        amp: ``auto`` picks bf16 on CUDA GPUs with native bf16 (compute capability 8.0 and up:
            A100, H100, L4, RTX 30xx...), fp16 on older ones (T4, P100, V100), and fp32 on CPU and
            MPS (CPU autocast is slower than fp32 on most CPUs, and MPS autocast coverage is thin).
            ``bf16`` and ``fp16`` are taken as asked on any device: CPU autocast supports bf16
            (fast on CPUs with AMX/AVX512-BF16) and, in recent torch, fp16. ``off`` is fp32.

    Raises:
        ValueError: for an ``amp`` outside :data:`AMP_MODES`.
    """
    import torch

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
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return None


def native_bf16(device: torch.device | str) -> bool:
    """Whether a CUDA GPU computes bf16 in hardware: compute capability 8.0 (Ampere) and up.

    Not ``torch.cuda.is_bf16_supported()``: recent torch says True where bf16 is only emulated (a
    T4 or P100), which trains slower than fp16 and slower than the time estimate assumes.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8
