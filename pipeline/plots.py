"""Figures a user would rather look at than read: F1 against threshold, training curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # headless: CI, Kaggle batch runs and servers have no display
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.io import save_figure  # noqa: E402


def plot_threshold_f1(curves: Mapping, chosen: Mapping[str, float], path: str | Path) -> Path:
    """One panel per signal (F1, precision, recall against its threshold) and one for the fused rule.

    Args:
        curves: name -> ``pipeline.tuning.Curve``; the ``fused`` curve is against a common shift of
            every union threshold.
        chosen: name -> the threshold the tuned rule uses (marked with a dashed line).
    """
    names = [n for n in curves if n != "fused"] + (["fused"] if "fused" in curves else [])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        c = curves[name]
        ax.plot(c.thresholds, c.f1, label="F1", lw=2)
        ax.plot(c.thresholds, c.precision, label="precision", lw=1, alpha=0.8)
        ax.plot(c.thresholds, c.recall, label="recall", lw=1, alpha=0.8)
        best_t, best_f1 = c.best
        if name == "fused":
            ax.axvline(0.0, ls="--", c="k", lw=0.8)
            ax.set_xlabel("shift of every union threshold")
            ax.set_title(f"fused rule (F1 {c.f1[len(c.f1) // 2]:.3f} at tuned)")
        else:
            if name in chosen:
                ax.axvline(chosen[name], ls="--", c="k", lw=0.8)
            ax.set_xlabel("similarity threshold")
            ax.set_title(f"{name} alone (best F1 {best_f1:.3f} at {best_t:.2f})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    axes.ravel()[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Out-of-fold F1 against threshold")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_training_logs(logs: Mapping[str, "object"], path: str | Path) -> Path:
    """Loss and held-out F1 per epoch for each trained model (``logs``: label -> DataFrame)."""
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 3.5))
    for label, df in logs.items():
        ax_loss.plot(df["epoch"], df["loss"], marker="o", label=label)
        if "val_f1" in df:
            ax_f1.plot(df["epoch"], df["val_f1"], marker="o", label=label)
    ax_loss.set_title("training loss")
    ax_f1.set_title("held-out fold F1 (signal alone)")
    for ax in (ax_loss, ax_f1):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
