"""The allocation policy of a batch command: freed blocks reused, not traded for fresh pages.

The search path allocates and frees arrays of hundreds of MB per block (scores, candidate lists,
sparse products). A fresh page costs a fault and the kernel's zeroing when first touched, and on
some machines that is most of a step: in a virtual machine whose host takes back the guest's free
memory (free page reporting, as on this project's CI machines), the zeroing is where the host backs
the page again. There, at 70,000 postings, the faults took a quarter of the predict path's time, and
in the catalogue's batch of 10,000 into a million, a third of the profile was the kernel's
``clear_page`` (docs/speed.md). Two settings decide how often that cost is paid:

- **Freed blocks up to 32 MB are kept.** glibc maps big blocks on their own and unmaps them when
  freed, so the next such block is fresh pages again; its threshold grows with what is freed, up to
  32 MB. Here it starts at 32 MB (``M_MMAP_THRESHOLD``, glibc's most on 64-bit) and up to 512 MB
  free at the heap's top is kept (``M_TRIM_THRESHOLD``), so the search's blocks reuse their pages.
  Bigger blocks are still unmapped when freed: with no mapped blocks at all (``M_MMAP_MAX`` 0) a
  million postings peaked at 8,049 MB instead of 7,150, the freed blocks' holes staying resident.
- **numpy's huge-page advice is off.** numpy asks for 2 MB pages for every array over 4 MB. Where
  fresh memory is cheap, a huge page saves little once freed memory is reused (at most the small
  pages' faults over the process's peak: about 0.4 s per GB here); where it is not, a fresh huge
  page cost 3 to 12 s per GB here, against 0.45 s in small pages. A timed probe could not tell the
  two apart reliably: a few MB freed a moment ago are still backed and look cheap.

A long-lived server (``catalogue serve``) and ``PIPELINE_MEMORY=default`` keep the platform's
behaviour; so does any platform other than Linux with glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the most glibc takes on 64-bit: blocks up to 32 MB come from the heap
TRIM_THRESHOLD = 512 << 20  # free memory at the heap's top kept before any is returned

_settled: dict | None = None


def settle_memory(batch: bool = True) -> dict:
    """Set the process's allocation policy once (see the module's docstring).

    Args:
        batch: a command that runs and exits; False for a server, which keeps the platform's policy.

    Returns:
        ``{"numpy_hugepages": False, "keep_freed": True}``, or ``{"policy": "default"}`` where the
        policy was left alone.
    """
    global _settled
    if _settled is not None:
        return _settled
    if not batch or os.environ.get("PIPELINE_MEMORY", "") == "default" or not _linux_glibc():
        _settled = {"policy": "default"}
        return _settled
    import numpy as np

    set_hugepages = getattr(getattr(np, "_core", np).multiarray, "_set_madvise_hugepage", None)
    if set_hugepages is not None:
        set_hugepages(False)
    _settled = {"numpy_hugepages": False if set_hugepages is not None else None, "keep_freed": _keep_freed_memory()}
    return _settled


def memory_policy() -> dict | None:
    """What :func:`settle_memory` chose in this process (None before it ran)."""
    return _settled


def _linux_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _keep_freed_memory() -> bool:
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
