"""Ensembles: several encoders of one modality combined into one signal, at tuning and at test time.

Two combinations, both on L2-normalised embeddings:

- **members** (runs trained with other seeds, margins or backbones) are concatenated, member i
  scaled by sqrt(w_i / sum w). A pair's cosine under the concatenation is then the weighted mean of
  its cosines under each member, so thresholds stay on the familiar [-1, 1] scale.
- **fold averaging**: one member's fold models each embed the postings, and the mean of the K unit
  vectors, renormalised, is the member's embedding (``train.final=folds``).

An ensemble *run* (``python -m pipeline ensemble``) holds the members' combined out-of-fold and test
embeddings, so ``tune`` and ``predict`` treat it as any run; :func:`test_members` says which saved
encoders embed new postings, for ``predict --data`` and for a Kaggle package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import Config, ConfigError, load_config
from pipeline.paths import RunPaths


class EnsembleError(ConfigError):
    """Runs that cannot be combined, or an ensemble whose members are missing."""


def weighted_concat(parts: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """(N, sum D_i) float32: each (N, D_i) part L2-normalised and scaled by sqrt(w_i / sum w).

    The inner product of two rows is the weighted mean of the parts' cosines, and rows have unit
    length. One part with any weight comes back as it was given (already unit length), so a
    one-member ensemble matches its member bit for bit.
    """
    if len(parts) != len(weights) or not parts:
        raise ValueError(f"{len(parts)} parts for {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"ensemble weights {list(w)} must be non-negative with a positive sum")
    if len(parts) == 1:
        return np.asarray(parts[0], dtype=np.float32)
    scaled = [_l2(p) * np.float32(np.sqrt(wi / w.sum())) for p, wi in zip(parts, w)]
    return np.ascontiguousarray(np.hstack(scaled), dtype=np.float32)


def mean_direction(parts: Sequence[np.ndarray]) -> np.ndarray:
    """(N, D) float32: the renormalised mean of K (N, D) unit-vector arrays (one array: as given)."""
    if len(parts) == 1:
        return np.asarray(parts[0], dtype=np.float32)
    total = np.zeros_like(np.asarray(parts[0], dtype=np.float32))
    for p in parts:
        total += np.asarray(p, dtype=np.float32)
    return _l2(total)


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


@dataclass
class EncoderMember:
    """A :class:`Member` whose encoders are loaded: any objects that ``embed`` (below) accepts."""

    encoders: list[Any]
    weight: float = 1.0
    files: list[Path] = field(default_factory=list)


def embed_members(members: Sequence[EncoderMember], embed: Callable[[Any], np.ndarray]) -> np.ndarray:
    """Embed with every encoder of every member: fold models averaged, then members concatenated.

    Args:
        members: the modality's members, in the order their embeddings were concatenated for tuning.
        embed: one encoder -> its (N, D) L2-normalised embeddings of the postings.
    """
    parts = []
    for member in members:
        total = None
        for encoder in member.encoders:
            x = np.asarray(embed(encoder), dtype=np.float32)
            total = x.copy() if total is None else total + x
        parts.append(total if len(member.encoders) == 1 else _l2(total))
    return weighted_concat(parts, [m.weight for m in members])


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
    folds: list[int | None] = list(range(cfg.folds.n_splits)) if final == "folds" else [
        None if final == "full" else 0]
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


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
