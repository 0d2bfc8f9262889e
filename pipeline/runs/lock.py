"""One writer per run folder: an exclusive ``flock`` on the folder's lock file.

The operating system drops the lock when the process ends, however it ends (``kill -9``
included), so a dead run never blocks the next one. The lock file holds the holder's pid, host
and start time, which a refused writer names. Locks are re-entrant within a process: ``run``
holds the folder from ``prepare`` to the report while each stage takes it again. Readers
(``score``, the analysis helpers) take no lock. POSIX only (Linux, macOS, Kaggle).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path


class RunLockedError(RuntimeError):
    """Another process is writing the run folder."""


_held: dict[Path, tuple[int, int]] = {}  # lock file -> (fd, depth) held by this process
_guard = threading.Lock()


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold ``lock_file`` for writing ``what`` (a run folder); refuse at once if another process does.

    Raises:
        RunLockedError: naming the holder's pid, host and start time.
    """
    key = Path(os.path.abspath(lock_file))
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
        else:
            _held[key] = (_acquire(key, what), 1)
    try:
        yield
    finally:
        with _guard:
            fd, depth = _held.pop(key)
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                os.close(fd)  # closing the descriptor releases the lock


def _acquire(lock_file: Path, what: str) -> int:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a process that has not said who it is"
        os.close(fd)
        raise RunLockedError(
            f"{what} is being written by {holder}; wait for it to finish, or write to another folder"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    note = f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode()
    with contextlib.suppress(OSError):  # the note only informs; a full disk must not stop the lock
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
    return fd


def held(lock_file: Path) -> bool:
    """Whether this process holds ``lock_file``."""
    return Path(os.path.abspath(lock_file)) in _held
