"""Which config a notebook trains with: the Kaggle GPU preset where Kaggle and a GPU are, else the
CPU demo; and the bundled MiniLM when the preset's multilingual title model cannot be fetched."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pipeline.config import Config, load_config
from pipeline.device import pick_device
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

    With ``config`` None the preset follows :func:`default_preset`. When the title model is a hub
    name that can be neither found in the local cache nor downloaded (a notebook with the internet
    off), the bundled MiniLM replaces it, and a note says so: nothing falls back silently.
    """
    name = config or default_preset()
    cfg = load_config(name, overrides)
    notes = [
        f"config: {name}"
        + (
            " (chosen: Kaggle with a GPU)"
            if config is None and name == KAGGLE_PRESET
            else " (chosen: no Kaggle GPU here)"
            if config is None
            else ""
        )
    ]
    if "text" in cfg.modalities and cfg.text.model is not None and not text_model_available(cfg.text.model):
        cfg = load_config(name, [*overrides, *MINILM_FALLBACK])
        notes.append(
            f"title model {load_config(name, overrides).text.model!r} cannot be loaded here (no internet, "
            "not cached): using the bundled all-MiniLM-L6-v2 instead (English-centric; expect lower F1 "
            "on Indonesian titles)"
        )
    for note in notes:
        log.info("[notebook] %s", note)
    return cfg, name, notes


def text_model_available(model: str) -> bool:
    """Whether the title model's tokenizer and config load (local folder, cache, or hub)."""
    from transformers import AutoConfig

    from pipeline.models.encoders import _hf_load

    try:
        _hf_load(AutoConfig.from_pretrained, model)
    except (OSError, RuntimeError, ValueError):
        return False
    return True
