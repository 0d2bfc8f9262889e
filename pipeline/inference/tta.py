"""Horizontal-flip test-time augmentation.

:class:`FlipTTA` wraps an image encoder so that every caller of it (the embed stage, ``predict``,
the Kaggle inference) embeds each image and its mirror image and averages the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FlipTTA(nn.Module):
    """An image encoder that embeds each image and its horizontal mirror, and returns their renormalised mean.

    It exposes the wrapped encoder's ``modality``, ``cfg`` and ``embed_dim`` and its data config,
    so the datasets and :func:`pipeline.inference.embedding.embed_items` use it as the encoder itself.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        if getattr(encoder, "modality", None) != "image":
            raise ValueError("flip TTA applies to image encoders only")
        self.encoder = encoder
        self.modality = "image"
        self.cfg = encoder.cfg
        self.embed_dim = encoder.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim) unit vectors: mean of the image's and its mirror's embeddings."""
        both = self.encoder(images) + self.encoder(torch.flip(images, dims=(3,)))  # (B, D)
        return F.normalize(both.float(), dim=1)

    def data_config(self):
        return self.encoder.data_config()


def with_tta(encoder: nn.Module, tta_flip: bool) -> nn.Module:
    """The encoder wrapped in :class:`FlipTTA` when asked (images only; titles are left as they are)."""
    if tta_flip and getattr(encoder, "modality", None) == "image":
        return FlipTTA(encoder).eval()
    return encoder
