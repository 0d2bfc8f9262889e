"""The TF-IDF vocabulary a catalogue keeps: fitted once, on the run's training titles, then frozen.

``predict`` fits TF-IDF on the gallery it matches (:func:`pipeline.matching.signals.tfidf_vectors`).
A catalogue cannot: refitting on every batch would move every stored vector. It fits the same
vectoriser with the same settings once, on the run's training postings (or the ``init`` CSV), and
transforms every later title with those terms and weights. A word no title of the fit held simply
has no weight: a title made only of new words has a zero vector and no TF-IDF neighbour
(docs/catalogue.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from pipeline.data.titles import normalise_title
from pipeline.matching.signals import TfidfConfig, l2_rows
from pipeline.settings import build


class TitleVocabulary:
    """TF-IDF parts (word and/or character n-grams) with frozen terms and idf weights.

    ``transform`` on the fitted titles gives what :func:`~pipeline.matching.signals.tfidf_vectors`
    gives on them (tests/catalogue/test_vocabulary.py checks it).
    """

    def __init__(self, cfg: TfidfConfig, parts: list[tuple[str, float, TfidfVectorizer | None]]):
        self.cfg = cfg
        self.parts = parts  # (analyzer, weight, vectoriser or None where it kept no term)

    @classmethod
    def fit(cls, titles: Sequence[str], cfg: TfidfConfig) -> TitleVocabulary:
        cleaned = [normalise_title(str(t)) for t in titles]
        parts = []
        if cfg.analyzer in ("word", "both"):
            weight = 1.0 - cfg.char_weight if cfg.analyzer == "both" else 1.0
            parts.append(("word", weight, _fitted(cleaned, cfg, "word")))
        if cfg.analyzer in ("char_wb", "both"):
            weight = cfg.char_weight if cfg.analyzer == "both" else 1.0
            parts.append(("char_wb", weight, _fitted(cleaned, cfg, "char_wb")))
        return cls(cfg, parts)

    @property
    def size(self) -> int:
        return sum(len(v.vocabulary_) if v is not None else 1 for _, _, v in self.parts)

    def transform(self, titles: Sequence[str]) -> sp.csr_matrix:
        """(N, V) L2-normalised rows; a title with no known term is a zero row."""
        cleaned = [normalise_title(str(t)) for t in titles]
        blocks = []
        for _, weight, v in self.parts:
            x = sp.csr_matrix((len(cleaned), 1), dtype=np.float32) if v is None else v.transform(cleaned)
            blocks.append(np.sqrt(weight) * sp.csr_matrix(x, dtype=np.float32))
        return l2_rows(sp.hstack(blocks, format="csr", dtype=np.float32))

    def to_dict(self) -> dict[str, Any]:
        parts = []
        for analyzer, weight, v in self.parts:
            if v is None:
                parts.append({"analyzer": analyzer, "weight": weight, "terms": None, "idf": None})
                continue
            terms = sorted(v.vocabulary_, key=v.vocabulary_.get)
            parts.append({"analyzer": analyzer, "weight": weight, "terms": terms, "idf": v.idf_.tolist()})
        return {"config": {k: getattr(self.cfg, k) for k in self.cfg.__dataclass_fields__}, "parts": parts}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TitleVocabulary:
        cfg = build(TfidfConfig, d["config"], prefix="tfidf.")
        parts = []
        for p in d["parts"]:
            if p["terms"] is None:
                parts.append((p["analyzer"], float(p["weight"]), None))
                continue
            v = _vectoriser(cfg, p["analyzer"], vocabulary={t: i for i, t in enumerate(p["terms"])})
            v.idf_ = np.asarray(p["idf"], dtype=np.float32)
            parts.append((p["analyzer"], float(p["weight"]), v))
        return cls(cfg, parts)


def _vectoriser(cfg: TfidfConfig, analyzer: str, **kwargs: Any) -> TfidfVectorizer:
    word = analyzer == "word"
    return TfidfVectorizer(
        analyzer=analyzer,
        ngram_range=(cfg.ngram_min, cfg.ngram_max) if word else (cfg.char_ngram_min, cfg.char_ngram_max),
        sublinear_tf=cfg.sublinear_tf,
        dtype=np.float32,
        **kwargs,
    )


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
