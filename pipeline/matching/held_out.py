"""The held-out F1 a training loop logs after each epoch: one signal alone, at its best threshold."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from torch import nn

from pipeline.inference.embedding import embed_items
from pipeline.matching.candidates import Gallery, build_candidates
from pipeline.matching.decide import MatchSettings
from pipeline.matching.fusion import gallery_neighbours
from pipeline.matching.neighbours import EXACT
from pipeline.matching.scoring import Scorer, threshold_grid
from pipeline.training.config import TrainConfig


def held_out_eval(
    items: list, labels: np.ndarray, k: int, batch_size: int, train: TrainConfig
) -> Callable[[nn.Module], dict[str, float]]:
    """Per-epoch F1 of the encoder's signal alone on a held-out fold (searched within the fold, for speed).

    Args:
        items: the fold's image paths or titles.
        labels: (N,) their ``label_group``.
        k: neighbours per posting (at most the fold's size).
        batch_size: items per forward pass.
        train: the training settings (its workers and mixed precision embed the fold too).
    """
    search = dataclasses.replace(EXACT, k=min(k, len(items)))

    def evaluate(model: nn.Module) -> dict[str, float]:
        x = embed_items(
            model, items, batch_size=batch_size, num_workers=train.num_workers, amp=train.amp, progress=False
        )
        everything = np.arange(len(x))
        g = Gallery(everything, everything, {model.modality: x})
        c = build_candidates(g, gallery_neighbours(g, MatchSettings(), search), len(x))
        _, f1 = Scorer(c, labels).curve(model.modality, threshold_grid(c.sims[model.modality], 41)).best
        return {"val_f1": f1}

    return evaluate
