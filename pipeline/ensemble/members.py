"""Which saved encoders an ensemble run, or a plain run, embeds new postings with.

A plain run has one member per learned modality, whose files ``train.final`` names; an ensemble
run (``python -m pipeline ensemble``) lists its member runs and their weights in ``members.json``.
:func:`test_members` describes them, :func:`load_members` loads them (torch is imported only then).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import io
from pipeline.config import Config, ConfigError, load_config
from pipeline.ensemble.combine import EncoderMember
from pipeline.paths import RunPaths


class EnsembleError(ConfigError):
    """Runs that cannot be combined, or an ensemble whose members are missing."""


@dataclass
class Member:
    """One member of a modality's test-time ensemble: its saved encoder files and how to use them.

    Attributes:
        weight: its share of the concatenation.
        models: one ``model.pt``, or every fold model, whose embeddings are averaged.
        tta_flip: also embed each image mirrored and average the two (images only).
        run: the run folder it comes from (for messages and the package's manifest).
    """

    weight: float
    models: list[Path]
    tta_flip: bool = False
    run: Path | None = None


def read_members(run_root: str | Path) -> list[tuple[Path, float]]:
    """(member run folder, weight) of an ensemble run; empty for a plain run."""
    paths = RunPaths(Path(run_root))
    if not paths.members.exists():
        return []
    return [(Path(m["run"]), float(m["weight"])) for m in io.read_json(paths.members)["members"]]


def test_members(run_root: str | Path, cfg: Config | None = None) -> dict[str, list[Member]]:
    """Per learned modality, the saved encoders that embed new postings (test.csv, a Kaggle test set).

    A plain run has one member whose files ``train.final`` names: the full model, fold 0's, or
    every fold model (``folds``, averaged). An ensemble run lists its members' own.

    Raises:
        EnsembleError: a model file is missing (with the command that makes it), or ``train.final`` is none.
    """
    root = Path(run_root)
    cfg = cfg or load_config(RunPaths(root).config)
    members = read_members(root)
    if not members:
        return {m: [_member(root, cfg, m, 1.0)] for m in cfg.learned}
    out: dict[str, list[Member]] = {}
    for member_root, weight in members:
        member_cfg = load_config(RunPaths(member_root).config)
        for m in member_cfg.learned:
            if m in cfg.learned:
                out.setdefault(m, []).append(_member(member_root, member_cfg, m, weight))
    return out


def _member(root: Path, cfg: Config, modality: str, weight: float) -> Member:
    paths = RunPaths(root)
    final = getattr(cfg, modality).train.final
    if final == "none":
        raise EnsembleError(f"{root}: {modality}.train.final is none, so no model embeds new postings")
    folds: list[int | None] = list(range(cfg.folds.n_splits)) if final == "folds" else [None if final == "full" else 0]
    files = [paths.model(modality, f).model for f in folds]
    for f in files:
        if not f.exists():
            raise EnsembleError(f"{f} missing: run `python -m pipeline train-{modality} --run {root}` first")
    return Member(weight, files, tta_flip=modality == "image" and cfg.image.tta_flip, run=root)


def same_folds(a: str | Path, b: str | Path) -> bool:
    """Whether two runs' folds.csv list the same postings, in the same order, in the same folds."""
    fa, fb = (pd.read_csv(RunPaths(Path(r)).folds, dtype=str) for r in (a, b))
    cols = ["posting_id", "fold"]
    return len(fa) == len(fb) and bool((fa[cols].to_numpy() == fb[cols].to_numpy()).all())


def load_members(
    members: Sequence[Member], text_model_dirs: Sequence[str | os.PathLike | None] | None = None
) -> list[EncoderMember]:
    """Load every encoder of a modality's members (in eval mode, on the CPU, no hub access).

    Args:
        members: from :func:`pipeline.ensemble.combine.test_members` or a package's ``encoders.json``.
        text_model_dirs: per member, a folder with its tokenizer and transformer config (packages).
    """
    from pipeline.inference.tta import with_tta  # torch: only when encoders are loaded
    from pipeline.models.encoders import load_encoder

    dirs = list(text_model_dirs) if text_model_dirs is not None else [None] * len(members)
    out = []
    for member, text_dir in zip(members, dirs):
        encoders = [with_tta(load_encoder(f, text_model_dir=text_dir), member.tta_flip) for f in member.models]
        out.append(EncoderMember(encoders, member.weight, list(member.models)))
    return out
