"""Typed run configuration: dataclass defaults, YAML diffs and ``key=value`` overrides.

The dataclass defaults are the base config for real (GPU, Kaggle-sized) use. A YAML file holds only
the keys an experiment changes, and command-line ``section.key=value`` pairs go on top. Unknown keys
are an error that lists the valid ones, never silently dropped. Every run folder stores the resolved
config (``config.yaml``), so a run can be reproduced from it alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

MODALITIES = ("image", "text", "tfidf", "phash")
# The pair model's feature groups (see pipeline.matching.evidence).
PAIR_FEATURE_GROUPS = ("sims", "raw", "hamming", "reciprocal", "density", "common", "text", "numbers", "standard")
# The pair model's groups by default: all but ``standard`` (benchmarks/gallery_size.py measures it).
DEFAULT_PAIR_FEATURES = tuple(g for g in PAIR_FEATURE_GROUPS if g != "standard")
LEARNED_MODALITIES = ("image", "text")
CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


class _Invalid(ConfigError):
    """A value refused by a section's own checks; its key is relative to the section, and
    :func:`_build` prefixes the section's path (``train.epochs`` -> ``image.train.epochs``)."""


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise _Invalid(f"{key} must be {rule}, got {value!r}")


def _positive(section: Any, *keys: str) -> None:
    for key in keys:
        _require(getattr(section, key) >= 1, key, ">= 1", getattr(section, key))


def default_threads() -> int:
    """A few threads: enough for BLAS and OpenMP to help, few enough that a shared machine stays
    usable; an ``OMP_NUM_THREADS`` set by the user lowers it."""
    n = min(4, os.cpu_count() or 1)
    env = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(n, int(env)) if env.isdigit() and int(env) > 0 else n)


@dataclass
class FoldsConfig:
    n_splits: int = 5
    seed: int = 42
    # Out-of-fold search space. "all": each held-out fold's postings are searched among every train
    # posting (embedded by that fold's model), close to the test set's size. "fold": only among the
    # held-out fold itself, the usual Kaggle CV, smaller and so more optimistic.
    gallery: str = "all"

    def __post_init__(self) -> None:
        _require(self.gallery in ("all", "fold"), "gallery", "'all' or 'fold'", self.gallery)
        _require(self.n_splits >= 2, "n_splits", "at least 2", self.n_splits)


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
    # Class-size margins: class c gets margin_rad * clip((n_c / median n) ** -margin_size_power,
    # margin_size_min, margin_size_max), n_c its training rows, so rare classes get a larger margin.
    # 0 turns it off.
    margin_size_power: float = 0.0
    margin_size_min: float = 0.5
    margin_size_max: float = 1.5
    # PartialFC-style sampling (arXiv 2203.15565): each step's softmax runs over every class of the
    # (global) batch plus random other classes up to this share of all classes; 1.0 is the full head.
    sample_rate: float = 1.0

    def __post_init__(self) -> None:
        _require(self.kind in ("arcface", "cosface"), "kind", "arcface or cosface", self.kind)
        _require(self.scale > 0, "scale", "> 0", self.scale)
        for key in ("margin_rad", "margin_start_rad", "margin_warmup_epochs"):
            _require(getattr(self, key) >= 0, key, ">= 0", getattr(self, key))
        _require(self.subcenters >= 1, "subcenters", ">= 1", self.subcenters)
        _require(0.0 < self.sample_rate <= 1.0, "sample_rate", "in (0, 1]", self.sample_rate)
        _require(self.margin_size_power >= 0, "margin_size_power", ">= 0 (0 = off)", self.margin_size_power)
        _require(0.0 < self.margin_size_min <= 1.0 <= self.margin_size_max, "margin_size_min/max",
                 "0 < min <= 1 <= max", (self.margin_size_min, self.margin_size_max))
        largest = self.margin_rad * (self.margin_size_max if self.margin_size_power > 0 else 1.0)
        _require(self.kind != "arcface" or largest < math.pi, "margin_rad * margin_size_max", "below pi",
                 round(largest, 3))


@dataclass
class TrainConfig:
    """Settings of the one training loop shared by both encoders."""

    epochs: int = 10
    batch_size: int = 32  # the global batch: under torchrun each of N processes takes batch_size / N rows
    lr: float = 3e-5  # backbone
    head_lr: float = 3e-3  # the head starts from random and needs a larger step
    weight_decay: float = 1e-4
    warmup_frac: float = 0.1  # share of steps with linear LR warm-up before the cosine decay
    grad_clip: float = 1.0
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    num_workers: int = 2
    # The model that embeds test.csv: full (one more model, trained on every row), fold0 (the first
    # fold's model, which saves a training; thresholds were tuned on fold models anyway), folds
    # (every fold model, their embeddings averaged and renormalised; no full training) or none.
    final: str = "full"
    # Keep last.pt (the full training state) once a model has finished; it is deleted by default,
    # since model.pt and log.json are all a finished run needs.
    keep_last: bool = False
    # Each row's cross-entropy weighs n^-p, n its class's training rows, normalised to a mean of 1
    # over the rows (2nd place in the competition used p = 0.4); 0 weighs every row alike.
    sample_weight_power: float = 0.0

    def __post_init__(self) -> None:
        _require(self.final in ("full", "fold0", "folds", "none"), "final", "full, fold0, folds or none", self.final)
        _require(self.epochs >= 1, "epochs", ">= 1 (no epoch trains nothing)", self.epochs)
        # The BatchNorm neck needs two rows a batch in training mode.
        _require(self.batch_size >= 2, "batch_size", ">= 2", self.batch_size)
        for key in ("lr", "head_lr"):
            _require(getattr(self, key) > 0, key, "> 0", getattr(self, key))
        _require(self.grad_clip >= 0, "grad_clip", ">= 0 (0 = no clipping)", self.grad_clip)
        _require(self.weight_decay >= 0, "weight_decay", ">= 0", self.weight_decay)
        _require(0 <= self.warmup_frac < 1, "warmup_frac", "in [0, 1)", self.warmup_frac)
        _require(self.amp in ("auto", "bf16", "fp16", "off"), "amp", "auto, bf16, fp16 or off", self.amp)
        _require(self.num_workers >= 0, "num_workers", ">= 0", self.num_workers)
        _require(self.sample_weight_power >= 0, "sample_weight_power", ">= 0 (0 = off)", self.sample_weight_power)


@dataclass
class ImageConfig:
    backbone: str = "tf_efficientnet_b3.ns_jft_in1k"
    pretrained: bool = True  # from the timm hub; needs internet unless `weights` is set
    weights: str | None = None  # local .pth / .safetensors backbone weights (offline Kaggle use)
    image_size: int = 512
    embed_dim: int = 512
    gem_p: float = 3.0
    embed_batch_size: int = 64  # images per forward pass when embedding (every stage and the Kaggle inference)
    # Test-time augmentation: embed each image and its mirror image, average, renormalise. Applied to
    # every embedding (out-of-fold and test alike), so thresholds are tuned on what test sees.
    tta_flip: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, head_lr=1e-2, batch_size=32))
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        _require(self.image_size >= 16, "image_size", ">= 16", self.image_size)
        _require(self.gem_p > 0, "gem_p", "> 0", self.gem_p)
        _positive(self, "embed_dim", "embed_batch_size")


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

    def __post_init__(self) -> None:
        _require(self.max_length >= 2, "max_length", ">= 2 (the [CLS] and [SEP] tokens)", self.max_length)
        _positive(self, "embed_dim", "embed_batch_size")


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
        _require(self.analyzer in ("word", "char_wb", "both"), "analyzer", "word, char_wb or both", self.analyzer)
        _require(0.0 <= self.char_weight <= 1.0, "char_weight", "in [0, 1]", self.char_weight)
        _require(0.0 < self.max_df <= 1.0, "max_df", "in (0, 1]", self.max_df)
        _positive(self, "ngram_min", "char_ngram_min", "min_df")
        # An inverted range would leave that part of the vectoriser with no terms at all.
        _require(self.ngram_max >= self.ngram_min, "ngram_max", f">= ngram_min ({self.ngram_min})", self.ngram_max)
        _require(self.char_ngram_max >= self.char_ngram_min, "char_ngram_max",
                 f">= char_ngram_min ({self.char_ngram_min})", self.char_ngram_max)
        _require(self.max_features is None or self.max_features >= 1, "max_features", "null or >= 1",
                 self.max_features)


@dataclass
class MatchConfig:
    """Neighbour search, fusion and post-processing (see ``pipeline.matching``)."""

    k: int = 50
    batch_size: int = 4096  # queries per FAISS search call
    # Dense index: auto (flat up to 30,000 postings, hnsw above) | flat (exact) | hnsw | ivf |
    # ivfpq (millions of postings). ef_search and nprobe were set from the measured recall of
    # candidate pairs above the tuned floors against flat search (README, "Speed"): HNSW kept them
    # all on the dev text embeddings from ef_search 32, and of the bench's image pairs above 0.3 at
    # 70,000 postings 0.986 / 0.990 / 0.991 / 0.992 with 128 / 192 / 224 / 256 (float16, time about
    # linear in it); IVF kept 0.97-0.999 at nprobe 16 of 38 lists on the dev ones, under 0.91 on the bench's.
    index: str = "auto"
    nprobe: int = 16  # inverted lists visited per query (ivf, ivfpq)
    ef_search: int = 224  # HNSW's candidate list per query: the smallest with recall >= 0.99 on both
    hnsw_fp16: bool = True  # HNSW holds float16 vectors; its lists are rescored exactly (README, "Speed")
    nlist: int = 0  # inverted lists; 0 = 4 sqrt(N), at most 1,024
    pq_m: int = 0  # IVF-PQ sub-quantisers (4-bit codes on CPUs); 0 = dim / 8
    refine: int = 2  # IVF-PQ shortlists refine * k per query and rescores them exactly
    threads: int = 0  # FAISS / sparse_dot_topn threads; 0 = the run's `threads` (what the stage bounded)
    # Prediction without the pair model scores the fused image+text cosine only on listed pairs
    # above the tuned rule's thresholds (it cannot decide below them).
    search_floors: bool = True
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
    pair_features: list[str] = field(default_factory=lambda: list(DEFAULT_PAIR_FEATURES))
    # Move every threshold with the size of the gallery matched, by a slope fitted on sub-galleries
    # of train (see pipeline.matching.tuning.calibrate_size).
    size_calibration: bool = True
    # The signals the decision (union thresholds and min-2) may use; empty = every signal. ["pair"]
    # decides on the pair score alone (benchmarks/gallery_size.py, variants *_pair).
    rule_signals: list[str] = field(default_factory=list)
    # With size_calibration: move the thresholds along the fitted slopes as far as gives the tuned
    # matches per posting on the predicted gallery's own candidates (no label read), instead of by
    # log2 of its size (pipeline.matching.decide.transductive_doublings).
    transductive: bool = False

    def __post_init__(self) -> None:
        choices = {"index": ("auto", "flat", "hnsw", "ivf", "ivfpq"), "blend_method": ("graph", "exact"),
                   "phash_source": ("column", "image")}
        for key, valid in choices.items():
            _require(getattr(self, key) in valid, key, f"one of {list(valid)}", getattr(self, key))
        _require(self.k >= 2, "k", ">= 2 (a posting and one neighbour)", self.k)
        _positive(self, "batch_size", "nprobe", "ef_search", "refine")
        for key in ("nlist", "pq_m", "threads"):
            _require(getattr(self, key) >= 0, key, ">= 0 (0 = automatic)", getattr(self, key))
        _require(self.n_thresholds >= 2, "n_thresholds", ">= 2", self.n_thresholds)
        _require(self.blend_rounds >= 0, "blend_rounds", ">= 0", self.blend_rounds)
        for name, w in self.fusion_weights.items():
            _require(w >= 0, f"fusion_weights.{name}", ">= 0", w)
        if self.fusion_weights:
            _require(sum(self.fusion_weights.values()) > 0, "fusion_weights", "not all zero", self.fusion_weights)
        bad = [g for g in self.pair_features if g not in PAIR_FEATURE_GROUPS]
        # Without sims the pair model reads no similarity on an absolute scale (only ``standard``'s,
        # read against the neighbourhood), which needs the context every other group needs too.
        _require(not bad and bool(self.pair_features), "pair_features",
                 f"a non-empty list from {list(PAIR_FEATURE_GROUPS)}", self.pair_features)
        signals = (*MODALITIES, "concat", "blend", "pair")  # pipeline.matching.predict.ALL_SIGNALS
        _require(all(s in signals for s in self.rule_signals), "rule_signals", f"a list from {list(signals)}",
                 self.rule_signals)


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
    match: MatchConfig = field(default_factory=MatchConfig)

    def __post_init__(self) -> None:
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ConfigError(f"modalities {self.modalities} invalid: choose a non-empty subset of {list(MODALITIES)}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"modalities {self.modalities} repeat a name")
        _require(1 <= self.threads <= 1024, "threads", "in [1, 1024]", self.threads)
        off = sorted(set(self.match.fusion_weights) - set(self.learned))
        if off:
            raise ConfigError(f"match.fusion_weights names {off}, which {'is' if len(off) == 1 else 'are'} not among "
                              f"the learned modalities on {self.learned}; drop the weight or turn the modality on")

    @property
    def learned(self) -> list[str]:
        return [m for m in self.modalities if m in LEARNED_MODALITIES]

    @property
    def needs_images(self) -> bool:
        """Whether the image files are read: by the image encoder, or to recompute the phash."""
        return "image" in self.modalities or ("phash" in self.modalities and self.match.phash_source == "image")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_local_files(cfg: Config) -> None:
    """The local files the config names must exist: ``image.weights``, and ``text.model`` when it
    is a path rather than a hub name. Checked by ``prepare`` (a config is also read on machines
    where these paths differ, such as Kaggle's), so that a typo fails before any work.
    """
    if "image" in cfg.modalities and cfg.image.weights is not None:
        if not Path(cfg.image.weights).expanduser().is_file():
            raise ConfigError(f"image.weights: {cfg.image.weights} does not exist (or is not a file)")
    model = cfg.text.model
    if "text" in cfg.modalities and model is not None and _looks_local(model):
        if not Path(model).expanduser().is_dir():
            raise ConfigError(f"text.model: {model} looks like a local folder and does not exist "
                              "(a hub model is named like 'org/name')")


def _looks_local(name: str) -> bool:
    """A path, not a hub id: absolute, starting with '.' or '~', with two slashes or more, or an
    existing folder (a hub id is 'name' or 'org/name')."""
    return (name.startswith(("/", ".", "~")) or name.count("/") >= 2 or "\\" in name
            or Path(name).expanduser().exists())


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
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            merged = dataclasses.asdict(default)
            merged = _merge(merged, value, f"{prefix}{name}")
            kwargs[name] = _build(type(default), merged, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hints.get(name, type(default)), f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except _Invalid as e:
        raise ConfigError(f"{prefix}{e}") from None


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


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a leaf value against its field's type; ints are accepted where floats are."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return value
        hint = rest[0]
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if origin is float:
        return _number(value, where)
    if origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of names, got {value!r}")
        return value
    if origin is dict:  # the only mappings are name -> weight
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where} must be a mapping of names to numbers, got {value!r}")
        return {k: _number(v, f"{where}.{k}") for k, v in value.items()}
    if origin is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        # YAML 1.1 reads "3e-3" (no dot) as a string.
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)
