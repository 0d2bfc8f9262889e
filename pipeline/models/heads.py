"""Margin heads over ``label_group``, shared by the image and title encoders.

ArcFace (arXiv 1801.07698) adds an angular margin to the target class, CosFace (arXiv 1801.09414)
a cosine margin; both optionally with K sub-centres per class (ArcFace paper, section on
sub-centre ArcFace), which lets a class with noisy or multi-modal members spread over K centres.
A head returns scaled logits; the loss is plain ``F.cross_entropy(logits, labels)``.

The two heads share :class:`MarginHead`, which computes the cosine and places the modified target
cosine; each subclass only implements :meth:`MarginHead.apply_margin`, as pytorch-metric-learning
does.

The weight's rows are class-major, row ``c * K + k`` is sub-centre ``k`` of class ``c``, which is
also pytorch-metric-learning's ``SubCenterArcFaceLoss`` layout (its ``W`` is our weight transposed).

Two options change which logits a step sees, both off by default:

- per-class margins (:func:`size_margin_factors`, :meth:`MarginHead.set_margin_factors`): class c's
  margin is the head's margin times a factor, e.g. larger for rare classes;
- sampled classes (:func:`sample_classes`, the ``classes`` argument of :meth:`MarginHead.forward`):
  the softmax runs over the batch's classes plus random others, as PartialFC (arXiv 2203.15565)
  does, so the logits and the matmul shrink from (B, C) to (B, S).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Keeps acos and its gradient, -1 / sqrt(1 - cos^2), finite at cos = +-1. In fp32 this moves a
# logit by at most scale * 1e-6.
COS_EPS = 1e-6


class MarginHead(nn.Module):
    """Normalised linear classifier whose target logit gets a margin; subclasses pick the margin.

    Args:
        in_features: embedding size D.
        n_classes: number of classes C.
        scale: s, multiplies every logit.
        subcenters: K sub-centres per class; a class's cosine is the max over its sub-centres.
    """

    def __init__(self, in_features: int, n_classes: int, scale: float, subcenters: int = 1):
        super().__init__()
        if in_features < 1 or n_classes < 1 or subcenters < 1:
            raise ValueError(
                f"in_features, n_classes and subcenters must be >= 1, got {in_features}, {n_classes}, {subcenters}"
            )
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.in_features = in_features
        self.n_classes = n_classes
        self.scale = float(scale)
        self.subcenters = subcenters
        self.weight = nn.Parameter(torch.empty(n_classes * subcenters, in_features))  # (C*K, D)
        nn.init.xavier_uniform_(self.weight)
        # (C,) per-class margin factors, or None for the head's margin everywhere. Derived from the
        # data at each start, so not part of the state dict.
        self.register_buffer("margin_factors", None, persistent=False)

    def set_margin_factors(self, factors: torch.Tensor | None) -> None:
        """Give class c the margin ``factors[c]`` times the head's (None: the head's margin for all)."""
        if factors is not None:
            factors = torch.as_tensor(factors, dtype=torch.float32, device=self.weight.device)
            if factors.shape != (self.n_classes,) or not bool((factors > 0).all()):
                raise ValueError(
                    f"margin factors must be ({self.n_classes},) positive values, got shape {tuple(factors.shape)}"
                )
        self.margin_factors = factors

    def cosine(self, embeddings: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine between each embedding and each class, max over sub-centres.

        Args:
            embeddings: (B, D), any float dtype.
            classes: (S,) class ids to score; None scores all C.

        Returns:
            (B, C) or (B, S) float32 cosines, unclamped.
        """
        # fp32 throughout: a bf16 matmul alone moves logits by a few hundredths at s = 30.
        x = F.normalize(embeddings.float(), dim=1)
        weight = self.weight if classes is None else self.weight.view(self.n_classes, self.subcenters, -1)[classes]
        w = F.normalize(weight.reshape(-1, self.in_features).float(), dim=1)  # each sub-centre on its own
        cos = x @ w.t()  # (B, C*K) or (B, S*K)
        return cos.view(len(x), -1, self.subcenters).amax(dim=2)

    def apply_margin(self, cos_target: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        """Map the target class's cosine (any shape, float32) to its margin-penalised value.

        ``factor`` (broadcastable to ``cos_target``) multiplies the margin; None means 1.
        """
        raise NotImplementedError

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled logits.

        Args:
            embeddings: (B, D).
            labels: (B,) class ids in [0, C). Without them, no margin is applied (inference).
            classes: (S,) sorted class ids holding every label (see :func:`sample_classes`): only
                these are scored, and ``torch.searchsorted(classes, labels)`` gives the targets.

        Returns:
            (B, C) float32 logits, or (B, S) with ``classes``: s * cos, with the target entry
            replaced by s * apply_margin(cos).
        """
        # Autocast would otherwise run the matmul in half precision and undo the casts above.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = self.cosine(embeddings, classes)
            if labels is not None:
                labels = labels.long()
                idx = (labels if classes is None else torch.searchsorted(classes, labels)).unsqueeze(1)  # (B, 1)
                factor = None if self.margin_factors is None else self.margin_factors[labels].unsqueeze(1)
                cos = cos.scatter(1, idx, self.apply_margin(cos.gather(1, idx), factor))
            return cos * self.scale

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, n_classes={self.n_classes}, "
            f"subcenters={self.subcenters}, scale={self.scale}"
        )


class ArcFace(MarginHead):
    """Additive angular margin: the target logit is s * cos(theta + m).

    Past theta = pi - m, cos(theta + m) would rise again and reward moving away from the class,
    so there the target logit becomes cos(theta) - m * sin(m). That is insightface's fallback (its
    ``cos - mm`` with ``mm = sin(pi - m) * m``) and pytorch-metric-learning's: a CosFace-style
    penalty that keeps the logit decreasing in theta; it jumps down at the switch, never up.

    Args:
        in_features: embedding size D.
        n_classes: number of classes C.
        scale: s, multiplies every logit.
        margin_rad: m in radians, in [0, pi). Settable during training (see :class:`MarginWarmup`).
        subcenters: K sub-centres per class.
        easy_margin: apply the margin only where cos(theta) > 0, leaving the rest unpenalised.
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        scale: float = 30.0,
        margin_rad: float = 0.5,
        subcenters: int = 1,
        easy_margin: bool = False,
    ):
        super().__init__(in_features, n_classes, scale, subcenters)
        self.margin_rad = margin_rad
        self.easy_margin = easy_margin

    @property
    def margin_rad(self) -> float:
        return self._margin_rad

    @margin_rad.setter
    def margin_rad(self, value: float) -> None:
        if not 0.0 <= value < math.pi:
            raise ValueError(f"margin_rad must be in [0, pi), got {value}")
        self._margin_rad = float(value)

    def apply_margin(self, cos_target: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        # The constants follow margin_rad on every call, so a warm-up needs no extra step.
        m = self.margin_rad if factor is None else (self.margin_rad * factor).clamp(max=math.pi - COS_EPS)
        sin_m = math.sin(m) if factor is None else torch.sin(m)
        cos = cos_target.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)
        theta = torch.acos(cos)
        penalised = torch.where(theta <= math.pi - m, torch.cos(theta + m), cos - m * sin_m)
        if self.easy_margin:
            penalised = torch.where(cos > 0, penalised, cos)
        return penalised

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin_rad={self.margin_rad}, easy_margin={self.easy_margin}"


class CosFace(MarginHead):
    """Additive cosine margin: the target logit is s * (cos(theta) - m).

    Args:
        in_features: embedding size D.
        n_classes: number of classes C.
        scale: s, multiplies every logit.
        cosine_margin: m, subtracted from the target cosine (a cosine, not an angle). Settable
            during training (see :class:`MarginWarmup`).
        subcenters: K sub-centres per class.
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        scale: float = 30.0,
        cosine_margin: float = 0.35,
        subcenters: int = 1,
    ):
        super().__init__(in_features, n_classes, scale, subcenters)
        if cosine_margin < 0:
            raise ValueError(f"cosine_margin must be >= 0, got {cosine_margin}")
        self.cosine_margin = float(cosine_margin)

    def apply_margin(self, cos_target: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
        return cos_target - (self.cosine_margin if factor is None else self.cosine_margin * factor)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cosine_margin={self.cosine_margin}"


@dataclass(frozen=True)
class MarginWarmup:
    """Linear ramp of a head's margin from ``start`` to ``end`` over ``steps``, in the head's own
    unit (ArcFace's radians, CosFace's cosine).

    Constant at ``end`` from ``steps`` on; ``steps=0`` means ``end`` throughout. Starting low lets
    a freshly initialised head learn before the margin makes the target hard to reach; the
    competition's winners ended ArcFace at 0.8 to 1.0 rad.
    """

    start: float
    end: float
    steps: int

    def __call__(self, step: int) -> float:
        if self.steps <= 0:
            return self.end
        frac = min(max(step / self.steps, 0.0), 1.0)
        return self.start + (self.end - self.start) * frac

    def apply(self, head: MarginHead, step: int) -> float:
        """Set the head's margin (``margin_rad`` or ``cosine_margin``) for ``step`` and return it."""
        # nn.Module would silently accept a new attribute, so refuse a head whose margin is unknown.
        if isinstance(head, ArcFace):
            head.margin_rad = self(step)
            return head.margin_rad
        if isinstance(head, CosFace):
            head.cosine_margin = self(step)
            return head.cosine_margin
        raise TypeError(f"MarginWarmup ramps ArcFace or CosFace margins, got {type(head).__name__}")


HEADS: dict[str, type[MarginHead]] = {"arcface": ArcFace, "cosface": CosFace}


def build_head(kind: str, in_features: int, n_classes: int, **kwargs) -> MarginHead:
    """Build a margin head by name.

    Args:
        kind: one of ``HEADS`` ("arcface", "cosface").
        in_features: embedding size D.
        n_classes: number of classes C.
        **kwargs: passed to the head's constructor; an unknown one raises TypeError there.
    """
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; valid kinds: {', '.join(sorted(HEADS))}")
    return HEADS[kind](in_features, n_classes, **kwargs)


def size_margin_factors(
    class_sizes: np.ndarray | torch.Tensor, power: float, lo: float = 0.5, hi: float = 1.5
) -> torch.Tensor:
    """Per-class margin factors from class sizes: ``clip((n_c / median n) ** -power, lo, hi)``.

    With ``power > 0`` a class smaller than the median gets a larger margin (its few rows must sit
    further inside it), a larger class a smaller one; the median class keeps the head's margin.

    Args:
        class_sizes: (C,) training rows per class, each >= 1.
        power: the exponent; 0 gives factors of 1.
        lo, hi: the clip, so the largest and rarest classes stay near the head's margin.

    Returns:
        (C,) float32 factors.
    """
    n = torch.as_tensor(np.asarray(class_sizes), dtype=torch.float64)
    if n.ndim != 1 or not bool((n >= 1).all()):
        raise ValueError("class sizes must be a 1-d array of counts >= 1")
    return (n / n.median()).pow(-power).clamp(lo, hi).float()


def sample_classes(labels: torch.Tensor, n_classes: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """The classes one step's softmax runs over: every class in ``labels``, and random others.

    Positives are always kept; negatives are drawn uniformly without replacement until
    ``ceil(rate * n_classes)`` classes are chosen (never fewer than the positives), as PartialFC's
    sampling does.

    Args:
        labels: (B,) class ids of the step's whole batch (under DDP, every rank's rows).
        n_classes: C.
        rate: share of the classes to keep, in (0, 1]; 1 keeps them all.
        generator: a CPU generator; seeded per step it makes the choice reproducible and the same on
            every rank.

    Returns:
        (S,) sorted int64 class ids on ``labels``'s device.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"sample rate must be in (0, 1], got {rate}")
    positives = torch.unique(labels.detach().cpu().long())
    keep = max(len(positives), min(n_classes, math.ceil(rate * n_classes)))
    if keep >= n_classes:
        return torch.arange(n_classes, device=labels.device)
    score = torch.rand(n_classes, generator=generator)  # (C,) in [0, 1): a random order of the negatives
    score[positives] = 2.0  # ahead of every negative
    chosen = torch.topk(score, keep, sorted=False).indices.sort().values
    return chosen.to(labels.device)
