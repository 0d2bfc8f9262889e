"""Ensembles: several encoders of one modality combined into one signal, at tuning and at test time.

Two combinations, both on L2-normalised embeddings:

- **members** (runs trained with other seeds, margins or backbones) are concatenated, member i
  scaled by sqrt(w_i / sum w). A pair's cosine under the concatenation is then the weighted mean of
  its cosines under each member, so thresholds stay on the familiar [-1, 1] scale.
- **fold averaging**: one member's fold models each embed the postings, and the mean of the K unit
  vectors, renormalised, is the member's embedding (``train.final=folds``).

An ensemble *run* (``python -m pipeline ensemble``) holds the members' combined out-of-fold and test
embeddings, so ``tune`` and ``predict`` treat it as any run; :mod:`pipeline.ensemble.members` says
which saved encoders embed new postings, for ``predict --data`` and for a Kaggle package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
