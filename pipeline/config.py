"""Typed run configuration: dataclass defaults, YAML diffs and ``key=value`` overrides.

The dataclass defaults are the base config for real (GPU, Kaggle-sized) use. A YAML file holds only
the keys an experiment changes, and command-line ``section.key=value`` pairs go on top. Unknown keys
are an error that lists the valid ones, never silently dropped. Every run folder stores the resolved
config (``config.yaml``), so a run can be reproduced from it alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

MODALITIES = ("image", "text", "tfidf", "phash")
# The pair model's feature groups (see pipeline.matching.evidence).
PAIR_FEATURE_GROUPS = ("sims", "raw", "hamming", "reciprocal", "density", "common", "text", "numbers")
LEARNED_MODALITIES = ("image", "text")
CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class FoldsConfig:
    n_splits: int = 5
    seed: int = 42
    # Out-of-fold search space. "all": each held-out fold's postings are searched among every train
    # posting (embedded by that fold's model), close to the test set's size. "fold": only among the
    # held-out fold itself, the usual Kaggle CV, smaller and so more optimistic.
    gallery: str = "all"

    def __post_init__(self) -> None:
        if self.gallery not in ("all", "fold"):
            raise ConfigError(f"folds.gallery must be 'all' or 'fold', got {self.gallery!r}")
        if self.n_splits < 2:
            raise ConfigError(f"folds.n_splits must be at least 2, got {self.n_splits}")


@dataclass
class HeadConfig:
    """Margin head over ``label_group`` (see ``pipeline.heads``)."""

    kind: str = "arcface"  # arcface | cosface
    scale: float = 30.0
    margin_rad: float = 0.5  # final margin (CosFace: additive cosine margin)
    margin_start_rad: float = 0.2  # margin warm-up starts here ...
    margin_warmup_epochs: float = 2.0  # ... and reaches margin_rad after this many epochs
    subcenters: int = 1
    easy_margin: bool = False


@dataclass
class TrainConfig:
    """Settings of the one training loop shared by both encoders."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-5  # backbone
    head_lr: float = 3e-3  # the head starts from random and needs a larger step
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1  # share of steps with linear LR warm-up before the cosine decay
    grad_clip: float = 1.0
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    num_workers: int = 2
    # The model that embeds test.csv: full (one more model, trained on every row), fold0 (the first
    # fold's model, which saves a training; thresholds were tuned on fold models anyway) or none.
    final: str = "full"

    def __post_init__(self) -> None:
        if self.final not in ("full", "fold0", "none"):
            raise ConfigError(f"train.final must be full, fold0 or none, got {self.final!r}")


@dataclass
class ImageConfig:
    backbone: str = "tf_efficientnet_b3.ns_jft_in1k"
    pretrained: bool = True  # from the timm hub; needs internet unless `weights` is set
    weights: str | None = None  # local .pth / .safetensors backbone weights (offline Kaggle use)
    image_size: int = 512
    embed_dim: int = 512
    gem_p: float = 3.0
    embed_batch_size: int = 64  # images per forward pass when embedding (every stage and the Kaggle inference)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, head_lr=1e-2, batch_size=32))
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class TextConfig:
    model: str | None = None  # HF name or local dir; None = the bundled all-MiniLM-L6-v2
    max_length: int = 64
    embed_dim: int = 384
    embed_batch_size: int = 64  # titles per forward pass when embedding (every stage and the Kaggle inference)
    # Measured on the real dev titles (fold 0, all-train gallery): lr 1e-4 / head 1e-2 for 6 epochs
    # beat 3e-5 / 3e-3 for 10 (0.866 vs 0.860 F1 alone) and 2e-4 / 2e-2 (0.858).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=6, lr=1e-4, head_lr=1e-2))
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class TfidfConfig:
    # word | char_wb | both (word and character n-grams side by side, weighted by char_weight)
    analyzer: str = "both"
    ngram_min: int = 1  # word n-grams
    ngram_max: int = 1
    char_ngram_min: int = 2  # character n-grams within word boundaries
    char_ngram_max: int = 4
    char_weight: float = 0.5  # share of the cosine that comes from character n-grams ("both")
    min_df: int = 1
    # Terms in more than this share of titles are dropped. Search time grows with how many titles
    # share a query's terms, and the commonest character n-grams are in nearly every title.
    max_df: float = 1.0
    max_features: int | None = None
    sublinear_tf: bool = True

    def __post_init__(self) -> None:
        if self.analyzer not in ("word", "char_wb", "both"):
            raise ConfigError(f"tfidf.analyzer must be word, char_wb or both, got {self.analyzer!r}")
        if not 0.0 <= self.char_weight <= 1.0:
            raise ConfigError(f"tfidf.char_weight must be in [0, 1], got {self.char_weight}")
        if not 0.0 < self.max_df <= 1.0:
            raise ConfigError(f"tfidf.max_df must be in (0, 1], got {self.max_df}")


@dataclass
class MatchConfig:
    """Neighbour search, fusion and post-processing (see ``pipeline.matching``)."""

    k: int = 50
    batch_size: int = 4096  # queries per FAISS / sparse search call
    index: str = "flat"  # flat | hnsw | ivf
    fusion_weights: dict[str, float] = field(default_factory=dict)  # per dense modality; default 1
    union: bool = True
    min2: bool = True
    blend_rounds: int = 1  # largest number of blending rounds tuning tries (0 = off)
    # graph: blended similarities from the top-k lists, no second search; exact: blend the vectors
    # and search again (TF-IDF on 10,000 synthetic titles: 22 s against 1.6 s; it grows as N squared)
    blend_method: str = "graph"
    n_thresholds: int = 81
    phash_source: str = "column"  # column (image_phash) | image (recomputed from the files)
    cv_estimate: bool = True  # also tune on K-1 folds and score the held-out one, per fold
    pair_model: bool = True  # learn a pair score from every signal's evidence (see pipeline.matching.pairs)
    pair_features: list[str] = field(default_factory=lambda: list(PAIR_FEATURE_GROUPS))
    # Move every threshold with the size of the gallery matched, by a slope fitted on sub-galleries
    # of train (see pipeline.matching.tuning.calibrate_size).
    size_calibration: bool = True

    def __post_init__(self) -> None:
        choices = {"index": ("flat", "hnsw", "ivf"), "blend_method": ("graph", "exact"),
                   "phash_source": ("column", "image")}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ConfigError(f"match.{key} must be one of {list(valid)}, got {getattr(self, key)!r}")
        if self.k < 2:
            raise ConfigError(f"match.k must be >= 2 (a posting and one neighbour), got {self.k}")
        bad = [g for g in self.pair_features if g not in PAIR_FEATURE_GROUPS]
        if bad or "sims" not in self.pair_features:
            raise ConfigError(f"match.pair_features {self.pair_features} invalid: a list from {list(PAIR_FEATURE_GROUPS)} "
                              "that holds sims")


@dataclass
class Config:
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    seed: int = 42
    baseline_untrained: bool = True  # also embed with the untrained encoders, for the report
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tfidf: TfidfConfig = field(default_factory=TfidfConfig)
    match: MatchConfig = field(default_factory=MatchConfig)

    def __post_init__(self) -> None:
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ConfigError(f"modalities {self.modalities} invalid: choose a non-empty subset of {list(MODALITIES)}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities {self.modalities} repeat a name")

    @property
    def learned(self) -> list[str]:
        return [m for m in self.modalities if m in LEARNED_MODALITIES]

    @property
    def needs_images(self) -> bool:
        """Whether the image files are read: by the image encoder, or to recompute the phash."""
        return "image" in self.modalities or ("phash" in self.modalities and self.match.phash_source == "image")

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
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data, prefix="")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _resolve_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    preset = CONFIG_DIR / f"{path}.yaml"
    if preset.exists():
        return preset
    presets = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {path!s} not found (neither a file nor a preset; presets: {presets})")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
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


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            merged = dataclasses.asdict(default)
            merged = _merge(merged, value, f"{prefix}{name}")
            kwargs[name] = _build(type(default), merged, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, default, f"{prefix}{name}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: Any, where: str) -> dict[str, Any]:
    if not isinstance(update, dict):
        raise ConfigError(f"{where} must be a mapping, got {update!r}")
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "fusion_weights":
            out[key] = _merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a leaf value against the type of its default; ints are accepted where floats are."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str):
        # YAML 1.1 reads "3e-3" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if isinstance(default, list) and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, type(default)):
        raise ConfigError(f"{where} must be {type(default).__name__}, got {value!r}")
    return value
