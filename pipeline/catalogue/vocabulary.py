"""The TF-IDF vocabulary a catalogue keeps: fitted once, on the run's training titles, then frozen.

``predict`` fits TF-IDF on the gallery it matches (:func:`pipeline.matching.signals.tfidf_vectors`).
A catalogue cannot: refitting on every batch would move every stored vector. It fits the same
vectoriser with the same settings once, on the run's training postings, and transforms every later
title with those terms and weights.

A term that no fitted title held (``unseen``):

- ``hashed`` (new catalogues): gets a column of its own among ``UNSEEN_BUCKETS`` hashed ones, with
  the weight of a term in none of the fitted titles, the highest idf there is. Two postings that
  share a new brand or model word match on it, as they would in ``predict``, whose vocabulary holds
  the gallery's words. The weight never changes, so no stored vector moves.
- ``ignored`` (catalogues written before the choice existed): has no weight, and a title made
  only of new words has a zero vector and no TF-IDF neighbour.

A term the fit dropped (``min_df``, ``max_df``, ``max_features``) stays dropped either way
(docs/catalogue.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.utils import murmurhash3_32

from pipeline.data.titles import normalise_title
from pipeline.matching.signals import TfidfConfig, l2_rows
from pipeline.settings import build, require

UNSEEN = ("hashed", "ignored")
UNSEEN_BUCKETS = 1 << 18  # columns the unseen terms are hashed into, per part


@dataclass
class VocabularyPart:
    """One analyzer's frozen terms: ``vectoriser`` is None where the fit kept no term."""

    analyzer: str  # word | char_wb
    weight: float  # share of the cosine
    vectoriser: TfidfVectorizer | None
    dropped: frozenset[str] = frozenset()  # terms the fit held but dropped (min_df, max_df, max_features)


class TitleVocabulary:
    """TF-IDF parts (word and/or character n-grams) with frozen terms and idf weights.

    ``transform`` on the fitted titles gives what :func:`~pipeline.matching.signals.tfidf_vectors`
    gives on them (tests/catalogue/test_vocabulary.py checks it).
    """

    def __init__(self, cfg: TfidfConfig, parts: list[VocabularyPart], unseen: str = "ignored", fitted_titles: int = 0):
        require(unseen in UNSEEN, "unseen", f"one of {list(UNSEEN)}", unseen)
        self.cfg, self.parts, self.unseen, self.fitted_titles = cfg, parts, unseen, fitted_titles

    @classmethod
    def fit(cls, titles: Sequence[str], cfg: TfidfConfig, unseen: str = "hashed") -> TitleVocabulary:
        cleaned = [normalise_title(str(t)) for t in titles]
        parts = []
        if cfg.analyzer in ("word", "both"):
            weight = 1.0 - cfg.char_weight if cfg.analyzer == "both" else 1.0
            parts.append(_part(cleaned, cfg, "word", weight))
        if cfg.analyzer in ("char_wb", "both"):
            weight = cfg.char_weight if cfg.analyzer == "both" else 1.0
            parts.append(_part(cleaned, cfg, "char_wb", weight))
        return cls(cfg, parts, unseen, len(cleaned))

    @property
    def size(self) -> int:
        return sum(len(p.vectoriser.vocabulary_) if p.vectoriser is not None else 1 for p in self.parts)

    @property
    def unseen_idf(self) -> float:
        """The smoothed idf of a term in none of the fitted titles (scikit-learn's formula at df 0)."""
        return math.log(1.0 + self.fitted_titles) + 1.0

    def transform(self, titles: Sequence[str]) -> sp.csr_matrix:
        """(N, V) L2-normalised rows; a title with no known term (nor, ``hashed``, a new one) is a zero row."""
        cleaned = [normalise_title(str(t)) for t in titles]
        blocks = []
        for part in self.parts:
            if part.vectoriser is None:
                x = sp.csr_matrix((len(cleaned), 1), dtype=np.float32)
            elif self.unseen == "hashed":
                x = self._hashed(part, cleaned)
            else:
                x = part.vectoriser.transform(cleaned)
            blocks.append(np.sqrt(part.weight) * sp.csr_matrix(x, dtype=np.float32))
        return l2_rows(sp.hstack(blocks, format="csr", dtype=np.float32))

    def _hashed(self, part: VocabularyPart, titles: list[str]) -> sp.csr_matrix:
        """One part's rows: known terms at their columns and idf, unseen ones in hashed columns
        after them at ``unseen_idf``; counted, weighted and normalised as the vectoriser does."""
        v = part.vectoriser
        analyse, known = v.build_analyzer(), v.vocabulary_
        width = len(known)
        indices: list[int] = []
        indptr = [0]
        for title in titles:
            for term in analyse(title):
                j = known.get(term)
                if j is None:
                    if term in part.dropped:
                        continue
                    j = width + murmurhash3_32(term, positive=True) % UNSEEN_BUCKETS
                indices.append(j)
            indptr.append(len(indices))
        x = sp.csr_matrix(
            (np.ones(len(indices), np.float32), np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
            shape=(len(titles), width + UNSEEN_BUCKETS),
        )
        x.sum_duplicates()
        if v.sublinear_tf:
            x.data = 1.0 + np.log(x.data)
        seen = x.indices < width
        x.data[seen] *= v.idf_[x.indices[seen]]
        x.data[~seen] *= self.unseen_idf
        return l2_rows(x)

    def to_dict(self) -> dict[str, Any]:
        parts = []
        for p in self.parts:
            entry: dict[str, Any] = {"analyzer": p.analyzer, "weight": p.weight, "terms": None, "idf": None}
            if p.vectoriser is not None:
                known = p.vectoriser.vocabulary_
                entry.update(terms=sorted(known, key=known.get), idf=p.vectoriser.idf_.tolist())
                entry["dropped"] = sorted(p.dropped)
            parts.append(entry)
        config = {k: getattr(self.cfg, k) for k in self.cfg.__dataclass_fields__}
        return {"config": config, "parts": parts, "unseen": self.unseen, "fitted_titles": self.fitted_titles}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TitleVocabulary:
        cfg = build(TfidfConfig, d["config"], prefix="tfidf.")
        parts = []
        for p in d["parts"]:
            v = None
            if p["terms"] is not None:
                v = _vectoriser(cfg, p["analyzer"], vocabulary={t: i for i, t in enumerate(p["terms"])})
                v.idf_ = np.asarray(p["idf"], dtype=np.float32)
            parts.append(VocabularyPart(p["analyzer"], float(p["weight"]), v, frozenset(p.get("dropped", ()))))
        # A catalogue written before ``unseen`` existed ignored new terms: it keeps doing so.
        return cls(cfg, parts, d.get("unseen", "ignored"), int(d.get("fitted_titles", 0)))


def _vectoriser(cfg: TfidfConfig, analyzer: str, **kwargs: Any) -> TfidfVectorizer:
    word = analyzer == "word"
    return TfidfVectorizer(
        analyzer=analyzer,
        ngram_range=(cfg.ngram_min, cfg.ngram_max) if word else (cfg.char_ngram_min, cfg.char_ngram_max),
        sublinear_tf=cfg.sublinear_tf,
        dtype=np.float32,
        **kwargs,
    )


def _part(titles: list[str], cfg: TfidfConfig, analyzer: str, weight: float) -> VocabularyPart:
    v = _fitted(titles, cfg, analyzer)
    if v is None or (cfg.min_df == 1 and cfg.max_df >= 1.0 and cfg.max_features is None):
        return VocabularyPart(analyzer, weight, v)  # the fit kept every term it met
    analyse = v.build_analyzer()
    held = set().union(*(analyse(t) for t in titles))
    return VocabularyPart(analyzer, weight, v, frozenset(held - v.vocabulary_.keys()))


def _fitted(titles: list[str], cfg: TfidfConfig, analyzer: str) -> TfidfVectorizer | None:
    """The vectoriser fitted as :func:`pipeline.matching.signals.tfidf_vectors` fits it, or None
    when it keeps no term."""
    if cfg.min_df > len(titles):
        return None
    max_df = 1.0 if cfg.max_df >= 1.0 else max(int(cfg.max_df * len(titles)), cfg.min_df)
    v = _vectoriser(cfg, analyzer, min_df=cfg.min_df, max_df=max_df, max_features=cfg.max_features)
    try:
        v.fit(titles)
    except ValueError as e:
        if "vocabulary" in str(e) or "no terms remain" in str(e):
            return None
        raise
    return v
