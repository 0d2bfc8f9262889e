"""A learned pair score: gradient-boosted trees (LightGBM) over each candidate pair's features.

Thresholds decide each signal on its own; the pair model looks at all of them at once, and at the
features of :mod:`pipeline.matching.pair_features` (titles' quantities and words, raw phash distance,
reciprocal ranks, neighbourhood density, common neighbours). Its output, the probability that the
pair is a match, joins the candidates as the signal ``pair`` and is tuned like any other: alone, in
the union, as the min-2 signal.

Out-of-fold scores are cross-fitted: the model that scores fold f's queries never saw their pairs.

The model is saved as JSON holding LightGBM's own text model format and the feature list: loading
it runs no code (never ``pickle``), and LightGBM reads text models of earlier versions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_path
from pipeline.matching.candidates import Candidates
from pipeline.matching.pair_features import (
    CONTEXT_GROUPS,
    FEATURE_GROUPS,
    TITLE_GROUPS,
    PairContext,
    feature_names,
    pair_features,
)
from pipeline.settings import require

PAIR_SIGNAL = "pair"
FORMAT = "pipeline.pair_model"
FORMAT_VERSION = 1
# Threads of the trees and the title comparisons where no run config is at hand (stages pass its
# ``threads``).
DEFAULT_THREADS = 2
DEFAULT_GROUPS = FEATURE_GROUPS
DEFAULT_ROUNDS = 300


# The trees' shape, LightGBM's parameters. Every model saved before the shape was recorded in its
# file was fitted with LEGACY_TREES. Smaller trees (7 leaves, 200 per leaf, L2 30, feature fraction
# 0.5) score a pair in half the time and scored as well on unseen galleries tuned on a third of the
# dev groups, but 0.3 points lower on all dev rows (docs/groups.md, "Pair scores that transfer"):
# the default stays.
LEGACY_TREES = {"num_leaves": 31, "min_data_in_leaf": 20, "lambda_l2": 1.0, "feature_fraction": 1.0}
DEFAULT_TREES = dict(LEGACY_TREES)


@dataclass
class PairModelConfig:
    """The learned pair score: whether tuning fits it, the feature groups it reads
    (:mod:`pipeline.matching.pair_features`; each group's worth is in docs/quality.md) and its trees' shape."""

    enabled: bool = True
    features: list[str] = field(default_factory=lambda: list(DEFAULT_GROUPS))
    num_leaves: int = DEFAULT_TREES["num_leaves"]
    min_data_in_leaf: int = DEFAULT_TREES["min_data_in_leaf"]
    lambda_l2: float = DEFAULT_TREES["lambda_l2"]
    feature_fraction: float = DEFAULT_TREES["feature_fraction"]

    def __post_init__(self) -> None:
        bad = [g for g in self.features if g not in FEATURE_GROUPS]
        require(
            not bad and bool(self.features), "features", f"a non-empty list from {list(FEATURE_GROUPS)}", self.features
        )
        require(self.num_leaves >= 2, "num_leaves", "an integer of at least 2", self.num_leaves)
        require(self.min_data_in_leaf >= 1, "min_data_in_leaf", "an integer of at least 1", self.min_data_in_leaf)
        require(self.lambda_l2 >= 0, "lambda_l2", "a number of at least 0", self.lambda_l2)
        require(0 < self.feature_fraction <= 1, "feature_fraction", "a number in (0, 1]", self.feature_fraction)

    @property
    def trees(self) -> dict[str, Any]:
        """The LightGBM parameters of the trees' shape."""
        return {k: getattr(self, k) for k in DEFAULT_TREES}


class PairModelError(ValueError):
    """A pair-model file that is not one this code wrote (or wrote with other features)."""


class PairModel:
    """LightGBM trees on :func:`~pipeline.matching.pair_features.pair_features`; ``predict`` gives match probabilities.

    Args:
        signals: the signals whose features are used, in feature order.
        groups: the feature groups (see :mod:`pipeline.matching.pair_features`); all but ``sims`` need a
            :class:`~pipeline.matching.pair_features.PairContext` at fit and predict time.
        vector_signals: the signals with vectors (their raw similarity is a feature); default: the
            base signals among ``signals``.
        seed: the trees' random state.
        threads: LightGBM's ``num_threads`` (and the title comparisons' workers).
        rounds: boosting rounds (default :data:`DEFAULT_ROUNDS`).
        trees: the trees' shape, the keys of :data:`DEFAULT_TREES` (default those).
    """

    def __init__(
        self,
        signals: Sequence[str],
        groups: Sequence[str] = DEFAULT_GROUPS,
        vector_signals: Sequence[str] | None = None,
        seed: int = 0,
        threads: int = DEFAULT_THREADS,
        rounds: int | None = None,
        trees: Mapping[str, Any] | None = None,
    ):
        unknown = sorted(set(groups) - set(FEATURE_GROUPS))
        if unknown:
            raise ValueError(f"unknown pair feature groups {unknown}; valid: {list(FEATURE_GROUPS)}")
        self.signals = list(signals)
        self.groups = [g for g in FEATURE_GROUPS if g in groups]
        base = ("image", "text", "tfidf", "phash")
        self.vector_signals = [s for s in self.signals if s in base] if vector_signals is None else list(vector_signals)
        self.seed, self.threads = seed, int(threads)
        self.rounds = DEFAULT_ROUNDS if rounds is None else int(rounds)
        unknown = sorted(set(trees or {}) - set(DEFAULT_TREES))
        if unknown:
            raise ValueError(f"unknown tree parameters {unknown}; valid: {list(DEFAULT_TREES)}")
        self.trees = {**DEFAULT_TREES, **(trees or {})}
        self.features = feature_names(self.signals, self.groups, self.vector_signals)
        self.booster: Any = None

    @property
    def needs_context(self) -> bool:
        return bool(CONTEXT_GROUPS & set(self.groups))

    @property
    def needs_titles(self) -> bool:
        return bool(TITLE_GROUPS & set(self.groups))

    def params(self) -> dict[str, Any]:
        # Column-wise histograms sum each feature in one thread, so the trees do not depend on
        # the thread count (tests/matching/test_pairs.py checks it).
        return {
            "objective": "binary",
            "learning_rate": 0.05,
            **self.trees,
            "bagging_fraction": 1.0,
            "max_bin": 255,
            "num_threads": self.threads,
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }

    def fit(self, c: Candidates, labels: np.ndarray, context: PairContext | None = None) -> PairModel:
        import lightgbm as lgb

        self._check_context(context)
        y = labels[c.query] == labels[c.match]
        if y.all() or not y.any():
            raise ValueError("the pair model needs both matching and non-matching candidate pairs")
        x = self._features(c, context)
        data = lgb.Dataset(
            x,
            label=y.astype(np.float32),
            feature_name=_lgb_names(self.features),
            params={"verbosity": -1, "max_bin": 255},
            free_raw_data=True,
        )
        self.booster = lgb.train(self.params(), data, num_boost_round=self.rounds)
        return self

    def predict(self, c: Candidates, context: PairContext | None = None, chunk_pairs: int = 200_000) -> np.ndarray:
        """(P,) match probability of each pair, scored in blocks of whole queries so that memory
        stays at about ``chunk_pairs`` rows of features whatever the number of postings."""
        if self.booster is None:
            raise RuntimeError("PairModel.predict before fit")
        self._check_context(context)
        out = np.empty(len(c), np.float32)
        for rows in _query_blocks(c.query, chunk_pairs):
            out[rows] = self.booster.predict(self._features(c.take(rows), context), num_threads=self.threads)
        return out

    def _features(self, c: Candidates, context: PairContext | None) -> np.ndarray:
        if context is not None:
            context.threads = self.threads
        return pair_features(c, self.features, context if self.needs_context else None)

    def _check_context(self, context: PairContext | None) -> None:
        if self.needs_context and context is None:
            raise ValueError(f"the pair model's feature groups {self.groups} need a PairContext")
        if self.needs_titles and context is not None and context.titles is None:
            raise ValueError(f"the pair model's feature groups {self.groups} need the postings' titles")

    def to_dict(self) -> dict[str, Any]:
        import lightgbm as lgb

        if self.booster is None:
            raise RuntimeError("PairModel.save before fit")
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "signals": self.signals,
            "groups": self.groups,
            "vector_signals": self.vector_signals,
            "features": self.features,
            "seed": self.seed,
            "rounds": self.rounds,
            "trees": self.trees,
            "lightgbm_version": lgb.__version__,
            "lightgbm_model": self.booster.model_to_string(),
        }

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON (LightGBM's text model inside); atomic."""
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict()), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, threads: int = DEFAULT_THREADS) -> PairModel:
        """Read a model written by :meth:`save`. Nothing in the file is executed: it is parsed as
        JSON and its trees as LightGBM text; anything else is refused with :class:`PairModelError`."""
        raw = Path(path).read_bytes()
        if raw[:1] == b"\x80":  # every pickle protocol from 2 on starts so
            raise PairModelError(
                f"{path} is a Python pickle, which is never loaded (it can run code): "
                "rerun the tune stage to write the pair model as JSON"
            )
        try:
            blob = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PairModelError(f"{path} is not a pair model (not JSON: {e}); rerun the tune stage") from None
        return cls.from_dict(blob, str(path), threads)

    @classmethod
    def from_dict(cls, blob: Any, where: str = "pair model", threads: int = DEFAULT_THREADS) -> PairModel:
        import lightgbm as lgb

        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise PairModelError(f"{where} is not a pair model (format is not {FORMAT!r}); rerun the tune stage")
        if blob.get("version") != FORMAT_VERSION:
            raise PairModelError(
                f"{where} has pair-model format version {blob.get('version')!r}; this code reads "
                f"{FORMAT_VERSION}: rerun the tune stage"
            )
        keys = {
            "signals": list,
            "groups": list,
            "vector_signals": list,
            "features": list,
            "seed": int,
            "rounds": int,
            "lightgbm_model": str,
        }
        for key, kind in keys.items():
            if not isinstance(blob.get(key), kind):
                raise PairModelError(f"{where}: field {key!r} missing or not a {kind.__name__}")
        trees = blob.get("trees", LEGACY_TREES)
        if not isinstance(trees, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in trees.values()
        ):
            raise PairModelError(f"{where}: field 'trees' is not a mapping of numbers")
        try:
            out = cls(
                blob["signals"], blob["groups"], blob["vector_signals"], blob["seed"], threads, blob["rounds"], trees
            )
        except ValueError as e:
            raise PairModelError(f"{where}: {e}") from None
        if out.features != blob["features"]:
            raise PairModelError(
                f"{where} lists features this code does not compute in that order; rerun the tune stage"
            )
        try:
            out.booster = lgb.Booster(model_str=blob["lightgbm_model"])
        except lgb.basic.LightGBMError as e:
            raise PairModelError(f"{where}: LightGBM cannot read its trees ({e})") from None
        if out.booster.feature_name() != _lgb_names(out.features):
            raise PairModelError(f"{where}: its trees read other features than it lists")
        return out


def _lgb_names(names: Sequence[str]) -> list[str]:
    # LightGBM refuses JSON's special characters (":" among them) in feature names.
    return [n.replace(":", "__") for n in names]


def _query_blocks(query: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Index arrays of about ``size`` pairs each that never split one query's pairs."""
    order = np.argsort(query, kind="stable")
    q = query[order]
    start = 0
    while start < len(order):
        stop = min(start + size, len(order))
        # Extend to the end of the query that the block would cut.
        stop = int(np.searchsorted(q, q[stop - 1], side="right"))
        yield order[start:stop]
        start = stop


def cross_fit(
    c: Candidates,
    labels: np.ndarray,
    folds: np.ndarray,
    signals: Sequence[str],
    context: PairContext | None = None,
    seed: int = 0,
    groups: Sequence[str] = DEFAULT_GROUPS,
    threads: int = DEFAULT_THREADS,
    rows: np.ndarray | None = None,
    trees: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, PairModel, dict[int, PairModel]]:
    """Cross-fitted pair scores and the models behind them.

    The model that scores fold f's queries is fitted on pairs with *neither* end in fold f. A pair
    (q, m) with q in another fold and m in fold f is always a non-match (folds split no group), and
    its mirror (m, q) is one of fold f's candidates: fitting on it would teach the trees to reject
    fold f's own distractors, a leak that flatters the out-of-fold score and that no test gallery
    repeats.

    Args:
        rows: (N,) bool, the postings whose labels may be learned from (default: all); pairs with
            either end outside are not fitted on (``cross_validated`` holds a fold out this way).
        trees: the trees' shape (see :class:`PairModel`).

    Returns:
        (P,) out-of-fold scores (each fold's queries scored by a model fitted on the other folds),
        a model fitted on every allowed pair (for the rows that come later: test, or a held-out
        fold), and the per-fold models (fold -> the model that never saw a pair touching that fold).
    """

    def new() -> PairModel:
        return PairModel(signals, groups, seed=seed, threads=threads, trees=trees)

    allowed = np.ones(len(labels), bool) if rows is None else np.asarray(rows, bool)
    usable = allowed[c.query] & allowed[c.match]
    scores = np.zeros(len(c), np.float32)
    query_fold, match_fold = folds[c.query], folds[c.match]
    per_fold: dict[int, PairModel] = {}
    for fold in np.unique(query_fold):
        mine = query_fold == fold
        per_fold[int(fold)] = new().fit(c.take(usable & ~mine & (match_fold != fold)), labels, context)
        scores[mine] = per_fold[int(fold)].predict(c.take(mine), context)
    return scores, new().fit(c.take(usable), labels, context), per_fold
