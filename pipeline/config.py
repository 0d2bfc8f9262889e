"""The run configuration: every section composed, read from YAML diffs and ``key=value`` overrides.

Each section is a dataclass defined beside the code that reads it (``search`` in
:mod:`pipeline.matching.neighbours`, ``decision`` in :mod:`pipeline.matching.tuning` ...); this module
composes them into :class:`Config`. The dataclass defaults are the base config for real (GPU,
Kaggle-sized) use. A YAML file holds only the keys an experiment changes, and command-line
``section.key=value`` pairs go on top. Unknown keys are an error that lists the valid ones, never
silently dropped. Every run folder stores the resolved config (``config.yaml``), so a run can be
reproduced from it alone.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.data.contract import LEARNED_MODALITIES, MODALITIES
from pipeline.data.folds import FoldsConfig
from pipeline.device import default_threads
from pipeline.matching.fusion import FusionConfig
from pipeline.matching.groups import GroupConfig
from pipeline.matching.neighbours import SearchConfig
from pipeline.matching.pair_model import PairModelConfig
from pipeline.matching.signals import PhashConfig, TfidfConfig
from pipeline.matching.tuning import DecisionConfig
from pipeline.models.config import HeadConfig, ImageEncoderConfig, TextEncoderConfig
from pipeline.models.weight_sources import resolve_weights
from pipeline.settings import ConfigError, build, require
from pipeline.training.config import TrainConfig

__all__ = ["Config", "ConfigError", "ImageConfig", "TextConfig", "dump_config", "from_dict", "load_config"]

CONFIG_DIR = Path(__file__).parent / "configs"
log = logging.getLogger("pipeline")

# Keys of the former catch-all ``match`` section, read as their new homes (with a warning).
MOVED_KEYS = {
    **{
        f"match.{k}": f"search.{k}"
        for k in ("k", "batch_size", "index", "nprobe", "ef_search", "hnsw_fp16", "nlist", "pq_m", "refine", "threads")
    },
    "match.search_floors": "search.floors",
    "match.fusion_weights": "fusion.weights",
    "match.blend_rounds": "fusion.blend_rounds",
    "match.blend_method": "fusion.blend_method",
    **{f"match.{k}": f"decision.{k}" for k in ("n_thresholds", "union", "min2", "size_calibration", "cv_estimate")},
    "match.pair_model": "pair.enabled",
    "match.pair_features": "pair.features",
    "match.phash_source": "phash.source",
}
REMOVED_KEYS = ("match.transductive", "match.rule_signals")


@dataclass
class ImageConfig(ImageEncoderConfig):
    """The image branch: its encoder's settings, how it trains, and its margin head."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, head_lr=1e-2, batch_size=32))
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class TextConfig(TextEncoderConfig):
    """The title branch: its encoder's settings, how it trains, and its margin head."""

    # On the dev titles (fold 0, all-train gallery), lr 1e-4 / head 1e-2 for 6 epochs beat the loop's
    # defaults and a larger step (docs/quality.md).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=1e-4, head_lr=1e-2))
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class Config:
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    seed: int = 42
    baseline_untrained: bool = True  # also embed with the untrained encoders, for the report
    # OpenMP/BLAS threads of every stage (torch, FAISS, NumPy, scikit-learn, the pair model) and the
    # image checks' workers. More threads than free cores slow everything down on a shared machine.
    threads: int = field(default_factory=default_threads)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tfidf: TfidfConfig = field(default_factory=TfidfConfig)
    phash: PhashConfig = field(default_factory=PhashConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    pair: PairModelConfig = field(default_factory=PairModelConfig)
    group: GroupConfig = field(default_factory=GroupConfig)

    def __post_init__(self) -> None:
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ConfigError(f"modalities {self.modalities} invalid: choose a non-empty subset of {list(MODALITIES)}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities {self.modalities} repeat a name")
        require(1 <= self.threads <= 1024, "threads", "in [1, 1024]", self.threads)
        off = sorted(set(self.fusion.weights) - set(self.learned))
        if off:
            raise ConfigError(
                f"fusion.weights names {off}, which {'is' if len(off) == 1 else 'are'} not among "
                f"the learned modalities on {self.learned}; drop the weight or turn the modality on"
            )

    @property
    def learned(self) -> list[str]:
        return [m for m in self.modalities if m in LEARNED_MODALITIES]

    @property
    def needs_images(self) -> bool:
        """Whether the image files are read: by the image encoder, or to recompute the phash."""
        return "image" in self.modalities or ("phash" in self.modalities and self.phash.source == "image")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Resolve a config: defaults, then the YAML file at ``path``, then ``key=value`` overrides.

    Args:
        path: a YAML file, or the name of a bundled preset in ``pipeline/configs`` (``demo``).
        overrides: strings such as ``text.train.epochs=3`` or ``modalities=[text,tfidf]``; values
            are parsed as YAML.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(_resolve_path(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key.strip()}: {raw!r} is not a YAML value ({_yaml_problem(e)})") from None
        _set_dotted(data, key.strip(), value)
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> Config:
    return build(Config, _moved(data), prefix="")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def new_key(key: str) -> str:
    """The key a former ``match.*`` key is now (itself for any other key)."""
    return MOVED_KEYS.get(key, key)


def _moved(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the former ``match`` section's keys in their new sections, each named in a warning."""
    match = data.get("match")
    if not isinstance(match, dict):
        return data
    out = {k: v for k, v in data.items() if k != "match"}
    for key, value in match.items():
        old = f"match.{key}"
        if old in REMOVED_KEYS:
            raise ConfigError(f"{old} was removed: it lost on the dev titles (docs/quality.md); drop it")
        if old not in MOVED_KEYS:
            raise ConfigError(
                f"unknown key {old!r}: the match section is gone, its keys moved to search, fusion, "
                "decision, pair and phash"
            )
        section, _, name = MOVED_KEYS[old].partition(".")
        log.warning("config: %s is now %s (read as such)", old, MOVED_KEYS[old])
        _set_dotted(out, f"{section}.{name}", value)
    return out


def _resolve_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    preset = CONFIG_DIR / f"{path}.yaml"
    if preset.exists():
        return preset
    presets = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {path!s} not found (neither a file nor a preset; presets: {presets})")


def _yaml_problem(e: yaml.YAMLError) -> str:
    """The parser's complaint on one line, with the line and column it points at."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte offset {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def check_local_files(cfg: Config) -> None:
    """The local files the config names must exist: ``image.weights`` (a file, or an installed weights
    package), and ``text.model`` when it is a path rather than a hub name. Checked by ``prepare`` (a
    config is also read on machines where these paths differ, such as Kaggle's), so that a typo fails
    before any work; whether the weights fit the backbone is :mod:`pipeline.runs.preflight`'s check.
    """
    if "image" in cfg.modalities and cfg.image.weights is not None:
        resolve_weights(cfg.image.weights)
    model = cfg.text.model
    if "text" in cfg.modalities and model is not None and _looks_local(model):
        if not Path(model).expanduser().is_dir():
            raise ConfigError(
                f"text.model: {model} looks like a local folder and does not exist "
                "(a hub model is named like 'org/name')"
            )


def _looks_local(name: str) -> bool:
    """A path, not a hub id: absolute, starting with '.' or '~', with two slashes or more, or an
    existing folder (a hub id is 'name' or 'org/name')."""
    return name.startswith(("/", ".", "~")) or name.count("/") >= 2 or "\\" in name or Path(name).expanduser().exists()
