"""What fresh memory costs on this machine, measured at start-up, and the allocation policy it sets.

The search path allocates and frees arrays of hundreds of MB per block (scores, candidate lists,
sparse products). Each fresh page costs a fault when first touched, and on some machines that
fault is most of the step: in a virtual machine whose host takes back the guest's free memory
(free page reporting, as on this project's CI machines), a page is backed again by the host on its
first touch. There, at 70,000 postings, the faults took a third of the predict path's time
(docs/speed.md). Two settings decide how often that cost is paid:

- **Transparent huge pages.** numpy advises the kernel to back every array over 4 MB with 2 MB
  pages. On bare metal a huge page is cheaper per byte than 512 small ones; on the machines above a
  fresh one cost 3 to 12 s per GB against 0.45 s for small pages. :func:`fresh_page_seconds`
  times both on fresh mappings, and numpy's advice is turned off where huge pages cost more.
- **Freed memory kept.** glibc hands blocks over 32 MB back to the kernel when they are freed
  (``munmap``), so the next block of the same size is fresh pages again. With ``M_MMAP_MAX`` 0 and
  a high ``M_TRIM_THRESHOLD`` they come from the heap and stay in the process, to be reused without
  faults. The process's resident memory then stays near its peak until it exits, which a batch
  command does soon; ``catalogue serve`` keeps glibc's default.

``PIPELINE_MEMORY=default`` leaves both alone.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import platform
import time

log = logging.getLogger("pipeline")

PROBE_BYTES = 8 << 20  # per probed mapping: four huge pages
PROBE_REGIONS = 8
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # the most mallopt takes (an int): 2 GB free at the heap's top before any is returned

_settled: dict | None = None


def fresh_page_seconds(regions: int = PROBE_REGIONS, nbytes: int = PROBE_BYTES) -> dict[str, float]:
    """Seconds per GB to touch fresh anonymous memory for the first time, in small and in huge pages.

    Memory the process (or another) freed a moment ago may still be backed, and a huge mapping can
    land on it and look cheap; so up to ``regions`` huge mappings are touched, all kept until the
    end, and the dearest counts. It stops at the first that costs more than the small pages.
    """
    mapped = [_touch(nbytes, huge=False)]
    seconds = {"small": mapped[0][1], "huge": 0.0}
    try:
        for _ in range(regions):
            mapped.append(_touch(nbytes, huge=True))
            seconds["huge"] = max(seconds["huge"], mapped[-1][1])
            if seconds["huge"] > seconds["small"]:
                break
    finally:
        for region, _ in mapped:
            region.close()
    return seconds


def _touch(nbytes: int, huge: bool) -> tuple[mmap.mmap, float]:
    """A fresh anonymous mapping of ``nbytes`` and the seconds per GB its first touch took."""
    import numpy as np

    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    pages = np.frombuffer(region, dtype=np.uint8)
    t0 = time.perf_counter()
    pages[:: mmap.PAGESIZE] = 1
    seconds = time.perf_counter() - t0
    del pages
    return region, round(seconds * (1 << 30) / nbytes, 4)


def settle_memory(keep_freed: bool = True) -> dict:
    """Set the process's allocation policy once (see the module's docstring) and log it.

    Returns:
        the figures and choices: ``s_per_gb`` (small and huge pages), ``numpy_hugepages`` and
        ``keep_freed``; ``{"policy": "default"}`` where ``PIPELINE_MEMORY=default`` or the platform
        has neither setting (not Linux with glibc).
    """
    global _settled
    if _settled is not None:
        return _settled
    if os.environ.get("PIPELINE_MEMORY", "") == "default" or not _linux_glibc():
        _settled = {"policy": "default"}
        return _settled
    import numpy as np

    seconds = fresh_page_seconds()
    hugepages = seconds["huge"] <= seconds["small"]
    set_hugepages = getattr(getattr(np, "_core", np).multiarray, "_set_madvise_hugepage", None)
    if set_hugepages is not None:
        set_hugepages(hugepages)
    kept = keep_freed and _keep_freed_memory()
    _settled = {"s_per_gb": seconds, "numpy_hugepages": hugepages, "keep_freed": kept}
    log.info(
        "[memory] first touch of fresh memory: %.2f s/GB in small pages, %.2f in huge pages: numpy's huge "
        "pages %s; freed memory %s",
        seconds["small"],
        seconds["huge"],
        "on" if hugepages else "off",
        "kept in the process" if kept else "returned to the kernel",
    )
    return _settled


def memory_policy() -> dict | None:
    """What :func:`settle_memory` chose in this process (None before it ran)."""
    return _settled


def _linux_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and hasattr(mmap, "MADV_HUGEPAGE")


def _keep_freed_memory() -> bool:
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
