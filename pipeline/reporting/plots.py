"""Figures a user would rather look at than read: F1 against threshold, training curves, pairs.

Every function returns an explicit :class:`matplotlib.figure.Figure`, never pyplot's global state,
so importing this module switches no backend. A notebook shows a figure with ``display(fig)``; a
stage writes it with :func:`save_figure` (atomic), headless or not.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from PIL import Image


def plot_threshold_f1(curves: Mapping, chosen: Mapping[str, float]) -> Figure:
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
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    axes.ravel()[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Out-of-fold F1 against threshold")
    fig.tight_layout()
    return fig


def plot_training_logs(logs: Mapping[str, object]) -> Figure:
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
    return fig


def plot_pairs(
    pairs, images_dir: str | Path | None, title: str, signals: Sequence[str] = (), max_chars: int = 40
) -> Figure:
    """Posting pairs side by side: both images (or, without images, both titles), their label
    groups, every signal's similarity and the margin the decision used.

    Args:
        pairs: rows with ``query_*`` / ``match_*`` ``title``, ``image``, ``group``, ``margin`` and
            ``decided_by`` (see :func:`pipeline.reporting.analysis.pairs_frame`), plus one column per signal.
        images_dir: the folder holding the images; None draws the titles only (text-only runs), in
            full up to :data:`TITLE_LINES` wrapped lines, in rows a few lines high.
        signals: the similarity columns to print under each pair.
        max_chars: characters of a title shown above an image.
    """
    n = max(len(pairs), 1)
    fig = Figure(figsize=(8, 2.9 * n) if images_dir is not None else (10, 1.05 * n + 0.5))
    axes = fig.subplots(n, 2, squeeze=False)
    for row, (_, p) in zip(axes, pairs.iterrows()):
        for ax, side in zip(row, ("query", "match")):
            _draw_posting(ax, p, side, images_dir, max_chars)
        sims = "  ".join(f"{s} {p[s]:.2f}" if math.isfinite(p[s]) else f"{s} -" for s in signals if s in p)
        row[0].text(
            0.0,
            -0.04 if images_dir is not None else 0.0,
            f"{sims}\ndecided by {p['decided_by']}, margin {p['margin']:+.3f}",
            transform=row[0].transAxes,
            ha="left",
            va="top",
            fontsize=7,
        )
    for ax in axes.ravel()[2 * len(pairs) :]:
        ax.axis("off")
    fig.suptitle(title)
    if images_dir is not None:
        fig.tight_layout()
    else:  # text boxes fill their axes; tight_layout would squeeze them for nothing
        fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.45 / fig.get_figheight(), bottom=0.02, hspace=0.45)
    return fig


TITLE_LINES = 3  # wrapped lines of a title drawn without its image
TITLE_WIDTH = 60  # characters per wrapped line (half of a 10-inch figure at 7.5 pt)


def _draw_posting(ax, p, side: str, images_dir: str | Path | None, max_chars: int) -> None:
    """One posting of a pair: its image with a short title, or its title wrapped, and its group."""
    group = f"[{side} group {p[f'{side}_group']}]"
    if images_dir is not None:
        with Image.open(Path(images_dir) / p[f"{side}_image"]) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{str(p[f'{side}_title'])[:max_chars]}\n{group}", fontsize=7)
    else:
        lines = textwrap.wrap(str(p[f"{side}_title"]), TITLE_WIDTH, max_lines=TITLE_LINES, placeholder=" ...")
        ax.text(0.0, 1.0, "\n".join([*lines, group]), ha="left", va="top", fontsize=7.5, transform=ax.transAxes)
    ax.axis("off")


def plot_data_overview(train) -> Figure:
    """Group sizes and title lengths of a train set: what a matching rule is up against."""
    sizes = train.groupby("label_group").size()
    fig = Figure(figsize=(10, 3))
    ax1, ax2 = fig.subplots(1, 2)
    counts = sizes.value_counts().sort_index()
    ax1.bar(counts.index.astype(int), counts.to_numpy())
    ax1.set(
        title=f"group sizes ({len(sizes)} groups, {len(train)} postings)",
        xlabel="postings in the group",
        ylabel="groups",
    )
    ax2.hist(train["title"].astype(str).str.split().str.len(), bins=30)
    ax2.set(title="title length", xlabel="words", ylabel="postings")
    fig.tight_layout()
    return fig


def plot_f1_by_group_size(by_size: Mapping[str, Mapping[str, float]]) -> Figure:
    """Mean F1 per true group size bucket (``{bucket: {"f1": .., "postings": ..}}``)."""
    names = list(by_size)
    fig = Figure(figsize=(6, 3))
    ax = fig.subplots()
    ax.bar(names, [by_size[k]["f1"] for k in names])
    for i, k in enumerate(names):
        ax.text(i, by_size[k]["f1"] + 0.01, f"{by_size[k]['postings']}", ha="center", fontsize=7)
    ax.set(
        ylim=(0, 1.05),
        xlabel="postings in the true group (count of postings above each bar)",
        ylabel="F1",
        title="F1 by group size",
    )
    fig.tight_layout()
    return fig


def plot_group_samples(
    df, images_dir: str | Path, n_groups: int = 4, per_group: int = 4, seed: int = 0, max_chars: int = 28
):
    """A grid of sample images: one row per label group, its postings side by side with titles."""
    sizes = df.groupby("label_group")["posting_id"].transform("size")
    groups = (
        df.loc[sizes >= 2, "label_group"]
        .drop_duplicates()
        .sample(n=min(n_groups, df.loc[sizes >= 2, "label_group"].nunique()), random_state=seed)
    )
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
        row[0].text(
            -0.08, 0.5, str(group), transform=row[0].transAxes, rotation=90, ha="right", va="center", fontsize=7
        )
    fig.suptitle("sample postings, one label group per row")
    fig.tight_layout()
    return fig
