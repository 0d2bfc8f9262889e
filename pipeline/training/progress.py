"""The one line per epoch a training run logs: which model, epoch k/K, loss, held-out F1, seconds,
and the time left for this model and for every model still to train after it."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("pipeline.training")


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class EpochLog:
    """Logs each finished epoch on the ``pipeline`` logger (the CLI prints it on stderr).

    The time left is the mean of this session's epochs (training and evaluation) times the epochs
    left; for the models after this one it scales by their rows (``later_row_epochs`` is the sum
    of rows times epochs of every model still to train after this one).

    Args:
        label: names the model, e.g. ``text fold0``.
        epochs: K, the run's epochs.
        rows: training rows of this model.
        later_row_epochs: see above; 0 when this is the last model.
        enabled: False logs nothing (ranks other than 0 under torchrun).
    """

    def __init__(self, label: str, epochs: int, rows: int, later_row_epochs: float = 0.0, enabled: bool = True):
        self.label, self.epochs, self.rows = label, epochs, max(rows, 1)
        self.later_row_epochs, self.enabled = later_row_epochs, enabled
        self.seconds: list[float] = []

    def __call__(self, row: Mapping[str, Any], seconds: float) -> str:
        """Log the line for ``row`` (a log row of the loop) that took ``seconds``; returns it."""
        self.seconds.append(seconds)
        per_epoch = statistics.fmean(self.seconds)
        left = per_epoch * (self.epochs - row["epoch"])
        parts = [f"loss {row['loss']:.4f}"]
        parts += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and isinstance(v, float)]
        line = f"{self.label} epoch {row['epoch']}/{self.epochs}: {', '.join(parts)}, {seconds:.1f}s"
        line += f"; ETA {format_duration(left)}"
        if self.later_row_epochs > 0:
            everything = left + per_epoch / self.rows * self.later_row_epochs
            line += f" for this model, {format_duration(everything)} for the stage"
        if self.enabled:
            log.info("%s", line)
        return line
