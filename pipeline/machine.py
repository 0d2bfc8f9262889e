"""What machine a timing ran on: cores, CPU model and matrix features, BLAS libraries and threads.

Timings of the search path differ several-fold between machines (BLAS build, AMX or not, how
busy the cores are), so every benchmark prints these beside its seconds.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys

from pipeline.memory import memory_policy

# The CPU features that decide which search is cheapest (bfloat16 / int8 matrix units, AVX-512).
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8")
# The environment variables that change how fast a benchmark runs.
ENV_VARIABLES = ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PIPELINE_MEMORY")


def cpu_flags() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; empty where it cannot be read (not Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    return model, flags


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_facts() -> dict:
    """Cores this process may use, CPU model and features, BLAS / OpenMP pools (threadpoolctl),
    OPENBLAS_CORETYPE and the thread variables, torch's threads and oneDNN when torch is loaded,
    and the load average."""
    from threadpoolctl import threadpool_info

    model, flags = cpu_flags()
    pools = [
        {key: info.get(key) for key in ("internal_api", "version", "architecture", "num_threads", "threading_layer")}
        | {"library": os.path.basename(info.get("filepath", ""))}
        for info in threadpool_info()
    ]
    facts = {
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": model,
        "cpu_features": [f for f in CPU_FEATURES if f in flags],
        "blas_openmp": pools,
        "env": {v: os.environ.get(v) for v in ENV_VARIABLES if os.environ.get(v) is not None},
        "load_average": load_average(),
        "memory": memory_policy(),
    }
    if "faiss" in sys.modules:
        faiss = sys.modules["faiss"]
        facts["faiss"] = {
            "version": getattr(faiss, "__version__", None),
            "omp_threads": faiss.omp_get_max_threads(),
            "simd": faiss.get_compile_options() if hasattr(faiss, "get_compile_options") else None,
        }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        facts["torch"] = {
            "version": torch.__version__,
            "threads": torch.get_num_threads(),
            "onednn": torch.backends.mkldnn.is_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }
    return facts
