"""A learned pair score: gradient-boosted trees over each candidate pair's per-signal evidence.

Thresholds decide each signal on its own; the pair model looks at all of them at once. For a pair
(query, candidate) its features are, per signal, the similarity, the candidate's rank among the
query's candidates by that signal and the gap to the query's best similarity (missing where the
signal did not list the pair; the trees route missing values on their own). Its output, the
probability that the pair is a match, joins the candidates as the signal ``pair`` and is tuned like
any other: alone, in the union, as the min-2 signal.

Out-of-fold scores are cross-fitted: the model that scores fold f's queries never saw their pairs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier

from pipeline.io import atomic_path
from pipeline.matching.candidates import Candidates, rank_within

PAIR_SIGNAL = "pair"


def pair_features(c: Candidates, signals: list[str]) -> np.ndarray:
    """(P, 3 * len(signals)) float32: similarity, rank within the query and gap to its best, per signal."""
    cols = []
    for name in signals:
        s = c.sims.get(name)
        if s is None:
            cols += [np.full(len(c), np.nan, np.float32)] * 3
            continue
        present = np.isfinite(s)
        sim = np.where(present, s, np.nan).astype(np.float32)
        rank, gap = _rank_and_gap(c.query, np.where(present, s, -np.inf))
        cols += [sim, np.where(present, rank, np.nan).astype(np.float32), np.where(present, gap, np.nan).astype(np.float32)]
    return np.column_stack(cols) if cols else np.empty((len(c), 0), np.float32)


def _rank_and_gap(query: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank (0 = best) of each pair among its query's pairs by ``s``, and its gap to the best."""
    ranked = rank_within(query, s)
    lengths = np.diff(np.r_[ranked.starts, len(ranked.order)])
    rank = np.empty(len(s), np.float64)
    rank[ranked.order] = ranked.rank
    gap = np.empty(len(s), np.float64)
    gap[ranked.order] = np.repeat(s[ranked.first], lengths) - s[ranked.order]
    return rank, gap


class PairModel:
    """Gradient-boosted trees on :func:`pair_features`; ``predict`` gives match probabilities.

    Args:
        signals: the signals whose evidence is used, in feature order.
        seed: the trees' random state.
    """

    def __init__(self, signals: list[str], seed: int = 0, max_iter: int = 200):
        self.signals = list(signals)
        self.seed = seed
        self.max_iter = max_iter
        self.model: HistGradientBoostingClassifier | None = None

    def fit(self, c: Candidates, labels: np.ndarray) -> "PairModel":
        y = labels[c.query] == labels[c.match]
        if y.all() or not y.any():
            raise ValueError("the pair model needs both matching and non-matching candidate pairs")
        self.model = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=0.05, max_leaf_nodes=31, l2_regularization=1.0,
            random_state=self.seed,
        )
        self.model.fit(pair_features(c, self.signals), y)
        return self

    def predict(self, c: Candidates, chunk_pairs: int = 500_000) -> np.ndarray:
        """(P,) match probability of each pair, scored in blocks of whole queries so that memory
        stays at about ``chunk_pairs`` rows of features whatever the number of postings."""
        if self.model is None:
            raise RuntimeError("PairModel.predict before fit")
        out = np.empty(len(c), np.float32)
        for rows in _query_blocks(c.query, chunk_pairs):
            out[rows] = self.model.predict_proba(pair_features(c.take(rows), self.signals))[:, 1]
        return out

    def save(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump({"signals": self.signals, "seed": self.seed, "max_iter": self.max_iter,
                             "sklearn": sklearn.__version__, "model": self.model}, f)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "PairModel":
        """Load a saved model; scikit-learn must be the version that saved it (pickles of its trees
        are not portable across versions)."""
        with open(path, "rb") as f:
            blob = pickle.load(f)
        if blob.get("sklearn") != sklearn.__version__:
            raise RuntimeError(
                f"{path} was saved with scikit-learn {blob.get('sklearn')}, this is {sklearn.__version__}: install "
                f"scikit-learn=={blob.get('sklearn')} (on Kaggle, add its wheel with `pipeline package --wheels`), "
                f"or tune the run again without the pair model: `python -m pipeline tune --run {Path(path).parent} "
                "match.pair_model=false` (for a package: on the source_run its manifest.json names, then package again)"
            )
        out = cls(blob["signals"], blob["seed"], blob["max_iter"])
        out.model = blob["model"]
        return out


def _query_blocks(query: np.ndarray, size: int):
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


def cross_fit(c: Candidates, labels: np.ndarray, folds: np.ndarray, signals: list[str], seed: int = 0
              ) -> tuple[np.ndarray, PairModel]:
    """Out-of-fold pair scores (each fold's queries scored by a model fitted on the other folds),
    and a model fitted on every pair, for the rows that come later (test, or a held-out fold)."""
    scores = np.zeros(len(c), np.float32)
    query_fold = folds[c.query]
    for fold in np.unique(query_fold):
        held = folds == fold
        model = PairModel(signals, seed).fit(c.subset(~held), labels)
        scores[query_fold == fold] = model.predict(c.subset(held))
    return scores, PairModel(signals, seed).fit(c, labels)
