"""The models' settings: each encoder's own and its margin head's.

They live apart from the torch modules that read them (:mod:`.encoders`, :mod:`.heads`) so that
reading a run's config never imports torch: a TF-IDF-only run never loads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.settings import Invalid, require, require_positive

HEAD_KINDS = ("arcface", "cosface")  # the heads of pipeline.models.heads.HEADS


@dataclass
class ImageEncoderConfig:
    """The image encoder: a timm backbone, GeM pooling and a neck to ``embed_dim``."""

    backbone: str = "tf_efficientnet_b3.ns_jft_in1k"
    pretrained: bool = True  # from the timm hub; needs internet unless `weights` is set
    # Offline backbone weights: a weights package (efficientnet-lite0/1/2, ImageNet) or a local .pth /
    # .safetensors file, mapped onto the backbone by name or by order and shape (pipeline.models.weights).
    weights: str | None = None
    # Load weights that map only in part (by name), leaving the rest at random init; off, they are refused.
    weights_partial: bool = False
    image_size: int = 512
    embed_dim: int = 512
    gem_p: float = 3.0
    embed_batch_size: int = 64  # images per forward pass when embedding (every stage and the Kaggle inference)
    # Test-time augmentation: embed each image and its mirror image, average, renormalise. Applied to
    # every embedding (out-of-fold and test alike), so thresholds are tuned on what test sees.
    tta_flip: bool = False

    def __post_init__(self) -> None:
        require(self.image_size >= 16, "image_size", ">= 16", self.image_size)
        require(self.gem_p > 0, "gem_p", "> 0", self.gem_p)
        require_positive(self, "embed_dim", "embed_batch_size")


@dataclass
class TextEncoderConfig:
    """The title encoder: a Hugging Face transformer, mean pooling and a neck to ``embed_dim``."""

    model: str | None = None  # HF name or local dir; None = the bundled all-MiniLM-L6-v2
    max_length: int = 64
    embed_dim: int = 384
    embed_batch_size: int = 64  # titles per forward pass when embedding (every stage and the Kaggle inference)

    def __post_init__(self) -> None:
        require(self.max_length >= 2, "max_length", ">= 2 (the [CLS] and [SEP] tokens)", self.max_length)
        require_positive(self, "embed_dim", "embed_batch_size")


@dataclass
class HeadConfig:
    """A margin head over ``label_group``: its kind, scale, margin and its warm-up, and the options.

    Each kind's margin has its own unit, so its own key: ArcFace's is an angle (``margin_rad``),
    CosFace's a cosine (``cosine_margin``). Both ramp linearly from their start value over
    ``margin_warmup_epochs``.
    """

    kind: str = "arcface"  # arcface | cosface
    scale: float = 30.0
    margin_rad: float = 0.5  # ArcFace: the final angular margin, radians
    margin_start_rad: float = 0.2  # ArcFace: the warm-up starts here
    cosine_margin: float = 0.5  # CosFace: the final margin subtracted from the target cosine
    cosine_margin_start: float = 0.2  # CosFace: the warm-up starts here
    margin_warmup_epochs: float = 2.0  # the margin reaches its final value after this many epochs
    subcenters: int = 1
    easy_margin: bool = False  # ArcFace only
    # Class-size margins: class c gets margin * clip((n_c / median n) ** -margin_size_power,
    # margin_size_min, margin_size_max), n_c its training rows, so rare classes get a larger margin.
    # 0 turns it off.
    margin_size_power: float = 0.0
    margin_size_min: float = 0.5
    margin_size_max: float = 1.5
    # PartialFC-style sampling (arXiv 2203.15565): each step's softmax runs over every class of the
    # (global) batch plus random other classes up to this share of all classes; 1.0 is the full head.
    sample_rate: float = 1.0

    def __post_init__(self) -> None:
        require(self.kind in HEAD_KINDS, "kind", " or ".join(HEAD_KINDS), self.kind)
        require(self.scale > 0, "scale", "> 0", self.scale)
        for key in ("margin_rad", "margin_start_rad", "cosine_margin", "cosine_margin_start", "margin_warmup_epochs"):
            require(getattr(self, key) >= 0, key, ">= 0", getattr(self, key))
        self._refuse_the_other_kinds_margin()
        require(self.subcenters >= 1, "subcenters", ">= 1", self.subcenters)
        require(0.0 < self.sample_rate <= 1.0, "sample_rate", "in (0, 1]", self.sample_rate)
        require(self.margin_size_power >= 0, "margin_size_power", ">= 0 (0 = off)", self.margin_size_power)
        require(
            0.0 < self.margin_size_min <= 1.0 <= self.margin_size_max,
            "margin_size_min/max",
            "0 < min <= 1 <= max",
            (self.margin_size_min, self.margin_size_max),
        )
        largest = self.margin_rad * (self.margin_size_max if self.margin_size_power > 0 else 1.0)
        require(
            self.kind != "arcface" or largest < math.pi, "margin_rad * margin_size_max", "below pi", round(largest, 3)
        )

    def _refuse_the_other_kinds_margin(self) -> None:
        """A margin set for the kind that is not used would be silently ignored: refuse it."""
        default = HeadConfig.__dataclass_fields__
        unused = {
            "arcface": ("cosine_margin", "cosine_margin_start"),
            "cosface": ("margin_rad", "margin_start_rad", "easy_margin"),
        }[self.kind]
        changed = [k for k in unused if getattr(self, k) != default[k].default]
        if changed:
            wanted = "cosine_margin" if self.kind == "cosface" else "margin_rad"
            raise Invalid(
                f"{changed[0]} does not apply to kind {self.kind} (its margin is {wanted}); drop it or set kind"
            )

    @property
    def margin(self) -> float:
        """The final margin in the head's own unit."""
        return self.margin_rad if self.kind == "arcface" else self.cosine_margin

    @property
    def margin_start(self) -> float:
        return self.margin_start_rad if self.kind == "arcface" else self.cosine_margin_start
