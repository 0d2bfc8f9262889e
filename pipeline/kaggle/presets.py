"""Which config a notebook trains with: the Kaggle GPU preset where Kaggle and a GPU are, else the
CPU demo; the bundled MiniLM when the preset's multilingual title model cannot be fetched, and the
EfficientNet-Lite0 ImageNet weights from a pip package when the preset's image backbone cannot be:
never random weights without a word."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.config import Config, load_config
from pipeline.device import pick_device
from pipeline.models.weight_sources import OFFLINE_DEFAULT, offline_overrides
from pipeline.paths import on_kaggle

log = logging.getLogger("pipeline")

KAGGLE_PRESET = "kaggle"
CPU_PRESET = "demo"
# The bundled all-MiniLM-L6-v2 and the learning rates measured best for it on the dev titles (pipeline/config.py).
MINILM_FALLBACK = ("text.model=null", "text.train.lr=1e-4", "text.train.head_lr=1e-2")


def default_preset() -> str:
    """``kaggle`` inside a Kaggle notebook with a GPU, else ``demo`` (sized for a CPU)."""
    return KAGGLE_PRESET if on_kaggle() and pick_device().type == "cuda" else CPU_PRESET


def notebook_config(config: str | None = None, overrides: Sequence[str] = ()) -> tuple[Config, str, list[str]]:
    """(config, preset or file it came from, notes for the reader).

    With ``config`` None the preset follows :func:`default_preset`. What cannot be had here (a
    notebook with the internet off) is replaced, and a note says so: nothing falls back silently.
    A title model that is a hub name neither cached nor downloadable becomes the bundled MiniLM; an
    image backbone whose hub weights cannot be downloaded becomes EfficientNet-Lite0 with the
    ImageNet weights of its pip package (never random weights).
    """
    name = config or default_preset()
    chosen = " (chosen: Kaggle with a GPU)" if name == KAGGLE_PRESET else " (chosen: no Kaggle GPU here)"
    notes = [f"config: {name}" + (chosen if config is None else "")]
    asked = load_config(name, overrides)
    fallbacks: list[str] = []
    if "text" in asked.modalities and asked.text.model is not None and not text_model_available(asked.text.model):
        fallbacks += MINILM_FALLBACK
        notes.append(
            f"title model {asked.text.model!r} cannot be loaded here (no internet, not cached): using the "
            "bundled all-MiniLM-L6-v2 instead (English-centric; expect lower F1 on Indonesian titles)"
        )
    image = asked.image
    if "image" in asked.modalities and image.pretrained and not image.weights:
        if not hub_weights_available(image.backbone):
            fallbacks += offline_overrides()
            notes.append(
                f"image backbone {image.backbone!r}: its pretrained weights cannot be downloaded here (no "
                f"internet, not cached): fine-tuning {OFFLINE_DEFAULT.backbone} from the ImageNet weights of "
                f"the {OFFLINE_DEFAULT.distribution} package instead (a smaller backbone; expect lower image F1)"
            )
    cfg = load_config(name, [*overrides, *fallbacks]) if fallbacks else asked
    for note in notes:
        log.info("[notebook] %s", note)
    return cfg, name, notes


def hub_weights_available(backbone: str) -> bool:
    """Whether timm can build ``backbone`` with its pretrained weights: cached, or downloaded now
    into the cache, where training finds them. Offline this costs the hub client's retries (under a
    minute; at once with ``HF_HUB_OFFLINE=1``)."""
    import timm

    try:
        timm.create_model(backbone, pretrained=True, num_classes=0)
    except Exception:  # the hub client raises OSError, HTTP errors or RuntimeError: all mean "not here"
        return False
    return True


def text_model_available(model: str) -> bool:
    """Whether the title model's tokenizer and config load (local folder, cache, or hub)."""
    from transformers import AutoConfig

    from pipeline.models.encoders import _hf_load

    try:
        _hf_load(AutoConfig.from_pretrained, model)
    except (OSError, RuntimeError, ValueError):
        return False
    return True
