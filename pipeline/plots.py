"""Figures a user would rather look at than read: F1 against threshold, training curves, pairs.

Every figure is an explicit :class:`matplotlib.figure.Figure`, never pyplot's global state, so
importing this module switches no backend: a notebook keeps showing its plots inline, and a
headless run (CI, a Kaggle batch job) writes them to files all the same.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from matplotlib.figure import Figure
from PIL import Image

from pipeline.io import save_figure


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
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
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
    fig = Figure(figsize=(10, 3.5))
    ax_loss, ax_f1 = fig.subplots(1, 2)
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


def plot_pairs(pairs, images_dir: str | Path, title: str, path: str | Path | None = None, max_chars: int = 38):
    """Posting pairs side by side: both images with their titles and the pair's score.

    Args:
        pairs: rows with ``query_image``, ``match_image``, ``query_title``, ``match_title``, ``score``.
        images_dir: the folder holding the images.
        path: save the figure there (atomically) and close it; without it the open figure is
            returned, for a notebook to show.
    """
    n = max(len(pairs), 1)
    fig = Figure(figsize=(7, 2.6 * n))
    axes = fig.subplots(n, 2, squeeze=False)
    for row, (_, p) in zip(axes, pairs.iterrows()):
        for ax, side in zip(row, ("query", "match")):
            with Image.open(Path(images_dir) / p[f"{side}_image"]) as im:
                ax.imshow(im.convert("RGB"))
            ax.set_title(str(p[f"{side}_title"])[:max_chars], fontsize=8)
            ax.axis("off")
        row[0].text(-0.05, 0.5, f"{p['score']:.2f}", transform=row[0].transAxes, ha="right", va="center", fontsize=9)
    for ax in axes.ravel()[2 * len(pairs):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        return save_figure(fig, path)
    return fig


def plot_group_samples(df, images_dir: str | Path, n_groups: int = 4, per_group: int = 4, seed: int = 0,
                       max_chars: int = 28):
    """A grid of sample images: one row per label group, its postings side by side with titles."""
    sizes = df.groupby("label_group")["posting_id"].transform("size")
    groups = df.loc[sizes >= 2, "label_group"].drop_duplicates().sample(
        n=min(n_groups, df.loc[sizes >= 2, "label_group"].nunique()), random_state=seed)
    fig = Figure(figsize=(2.4 * per_group, 2.6 * len(groups)))
    axes = fig.subplots(len(groups), per_group, squeeze=False)
    for row, group in zip(axes, groups):
        members = df[df["label_group"] == group].head(per_group)
        for ax, (_, p) in zip(row, members.iterrows()):
            with Image.open(Path(images_dir) / p["image"]) as im:
                ax.imshow(im.convert("RGB"))
            ax.set_title(str(p["title"])[:max_chars], fontsize=7)
        for ax in row:
            ax.axis("off")
        row[0].text(-0.08, 0.5, str(group), transform=row[0].transAxes, rotation=90, ha="right", va="center", fontsize=7)
    fig.suptitle("sample postings, one label group per row")
    fig.tight_layout()
    return fig
