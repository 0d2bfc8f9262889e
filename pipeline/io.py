"""Atomic file writes and small readers shared by every stage.

Every output goes to a temporary file in the destination folder first and is renamed into place
only once it is complete, so a killed stage never leaves a half-written file that a later stage
would trust.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import pipeline

# Errors that mean "this file cannot be written here": the user's disk or permissions, not a bug.
# EFBIG is what a process over its file-size limit (RLIMIT_FSIZE) gets; it reads like a full disk.
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
WRITE_ERRNOS = DISK_FULL | {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class WriteError(OSError):
    """A file that could not be written (disk full, read-only, no permission); names the file."""

    def __init__(self, path: str | os.PathLike, cause: OSError):
        why = "disk full" if cause.errno in DISK_FULL else "not writable"
        super().__init__(cause.errno, f"cannot write {path}: {why} ({cause.strerror or cause})")
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Args:
        path: the final destination.
        suffix: suffix of the temporary file (some writers pick the format from it). Defaults to
            the destination's suffix.

    Raises:
        WriteError: naming ``path``, when the disk is full or the folder not writable; the
            temporary file is removed and ``path`` keeps what it held before.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix, dir=path.parent
        )
    except OSError as e:
        raise (WriteError(path, e) if e.errno in WRITE_ERRNOS else e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        # mkstemp creates 0600; give the final file the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        yield tmp_path
        os.replace(tmp_path, path)
    except Exception as e:
        if isinstance(e, WriteError):
            raise
        # Only a full or read-only disk: the block may also read files, whose errors are its own.
        if isinstance(e, OSError) and e.errno in DISK_FULL | {errno.EROFS}:
            raise WriteError(path, e) from e
        # Some writers (torch.save's C++ one) lose the errno; the disk itself then tells.
        if _out_of_space(tmp_path):
            raise WriteError(path, OSError(errno.ENOSPC, f"{type(e).__name__}: {str(e).splitlines()[0]}")) from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _out_of_space(tmp: Path) -> bool:
    """Whether a failed write to ``tmp`` met a full disk or this process's file-size limit."""
    try:
        st = os.statvfs(tmp.parent)
        if st.f_bavail * st.f_frsize < 2**20:
            return True
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        return soft != resource.RLIM_INFINITY and tmp.stat().st_size >= soft
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write strict JSON: infinities and NaN (no JSON value) become null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    return write_text(text + "\n", path)


def _finite(obj: Any) -> Any:
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    import torch  # only the stages that train or embed load torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a :class:`matplotlib.figure.Figure` atomically; its format follows the suffix."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def code_version() -> str:
    """The package version plus the git commit (and ``-dirty``) when run from a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return f"{pipeline.__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return pipeline.__version__


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
