"""Horizontal-flip TTA: invariant to mirroring, and the mean of both views."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import ImageConfig
from pipeline.inference.tta import FlipTTA, with_tta
from pipeline.models.encoders import build_encoder


def encoder():
    torch.manual_seed(0)
    return build_encoder(
        "image", ImageConfig(backbone="test_resnet", pretrained=False, image_size=32, embed_dim=16)
    ).eval()


def test_flip_tta_is_the_renormalised_mean_of_both_views_and_mirror_invariant():
    base = encoder()
    tta = FlipTTA(base).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = F.normalize(base(x) + base(torch.flip(x, dims=(3,))), dim=1)
        torch.testing.assert_close(tta(x), expected)
        torch.testing.assert_close(tta(torch.flip(x, dims=(3,))), tta(x), atol=1e-5, rtol=1e-5)
    assert tta.embed_dim == 16 and tta.modality == "image" and tta.data_config() == base.data_config()


def test_with_tta_wraps_images_only_when_asked(tiny_bert_dir):
    base = encoder()
    assert with_tta(base, False) is base
    assert isinstance(with_tta(base, True), FlipTTA)
    from pipeline.config import TextConfig

    text = build_encoder("text", TextConfig(model=str(tiny_bert_dir), embed_dim=8))
    assert with_tta(text, True) is text
