"""The unsupervised signals: TF-IDF on titles and the 64-bit perceptual hash of images."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import imagehash
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image
from sklearn.feature_extraction.text import TfidfVectorizer

from pipeline.data.contract import DataError
from pipeline.data.titles import normalise_title
from pipeline.settings import ConfigError, require, require_positive


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
        require(self.analyzer in ("word", "char_wb", "both"), "analyzer", "word, char_wb or both", self.analyzer)
        require(0.0 <= self.char_weight <= 1.0, "char_weight", "in [0, 1]", self.char_weight)
        require(0.0 < self.max_df <= 1.0, "max_df", "in (0, 1]", self.max_df)
        require_positive(self, "ngram_min", "char_ngram_min", "min_df")
        # An inverted range would leave that part of the vectoriser with no terms at all.
        require(self.ngram_max >= self.ngram_min, "ngram_max", f">= ngram_min ({self.ngram_min})", self.ngram_max)
        require(
            self.char_ngram_max >= self.char_ngram_min,
            "char_ngram_max",
            f">= char_ngram_min ({self.char_ngram_min})",
            self.char_ngram_max,
        )
        require(self.max_features is None or self.max_features >= 1, "max_features", "null or >= 1", self.max_features)


@dataclass
class PhashConfig:
    source: str = "column"  # column (image_phash) | image (recomputed from the files)

    def __post_init__(self) -> None:
        require(self.source in ("column", "image"), "source", "one of ['column', 'image']", self.source)


class SignalsConfig(Protocol):
    """What the unsupervised signals read of a run's config."""

    modalities: list[str]
    tfidf: TfidfConfig
    phash: PhashConfig


def unsupervised_vectors(cfg: SignalsConfig, df: pd.DataFrame, images_dir: Path | None = None) -> dict[str, Any]:
    """TF-IDF (fitted on these titles) and phash codes of a gallery, for the modalities that are on."""
    out: dict[str, Any] = {}
    if "tfidf" in cfg.modalities:
        out["tfidf"] = tfidf_vectors(df["title"].tolist(), cfg.tfidf)
    if "phash" in cfg.modalities:
        if cfg.phash.source == "image":
            if images_dir is None:
                raise ConfigError("phash.source=image needs the images folder")
            hashes = compute_phash(images_dir / name for name in df["image"])
        else:
            hashes = df["image_phash"].tolist()
        out["phash"] = phash_codes(hashes)
    return out


def tfidf_vectors(titles: Sequence[str], cfg: TfidfConfig) -> sp.csr_matrix:
    """Fit TF-IDF on the given titles (the gallery being searched) and return L2-normalised rows.

    Fitting on the gallery itself is what the test set allows: the vectoriser is unsupervised, so
    fitting it on the test titles leaks no label. With ``analyzer="both"``, word and character
    n-gram vectors are each normalised, scaled by the square root of their weight and stacked, so
    the cosine is the weighted mean of the two cosines (the same rule as the dense fusion).
    """
    cleaned = [normalise_title(t) for t in titles]
    parts = []
    if cfg.analyzer in ("word", "both"):
        parts.append(
            (
                1.0 - cfg.char_weight if cfg.analyzer == "both" else 1.0,
                _fit(cleaned, cfg, "word", (cfg.ngram_min, cfg.ngram_max)),
            )
        )
    if cfg.analyzer in ("char_wb", "both"):
        parts.append(
            (
                cfg.char_weight if cfg.analyzer == "both" else 1.0,
                _fit(cleaned, cfg, "char_wb", (cfg.char_ngram_min, cfg.char_ngram_max)),
            )
        )
    if all(p is None for _, p in parts):
        # Zero vectors would match nothing and leave tuning with no signal to blend: say why instead.
        if not any(cleaned):
            raise DataError(
                f"TF-IDF has no vocabulary: all {len(cleaned)} titles are empty; "
                "turn the tfidf modality off for these postings"
            )
        raise ConfigError(
            f"TF-IDF kept no term from the {len(cleaned)} titles: none is in tfidf.min_df="
            f"{cfg.min_df} titles or more (within tfidf.max_df={cfg.max_df}); lower tfidf.min_df"
        )
    empty = sp.csr_matrix((len(cleaned), 1), dtype=np.float32)
    x = sp.hstack([np.sqrt(w) * (empty if p is None else p) for w, p in parts], format="csr", dtype=np.float32)
    # Renormalise: a title empty in one part has a zero row there.
    return l2_rows(x)


def l2_rows(x: sp.spmatrix) -> sp.csr_matrix:
    """Sparse rows scaled to unit L2 norm; an all-zero row stays zero."""
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1))).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ x, dtype=np.float32)


def _fit(titles: list[str], cfg: TfidfConfig, analyzer: str, ngram_range: tuple[int, int]) -> sp.csr_matrix | None:
    """One analyzer's TF-IDF rows, or None when it keeps no term."""
    if cfg.min_df > len(titles):
        return None  # no term is in more titles than there are
    # As a count, so that on a handful of titles a share below one title does not reject everything.
    max_df = 1.0 if cfg.max_df >= 1.0 else max(int(cfg.max_df * len(titles)), cfg.min_df)
    vectoriser = TfidfVectorizer(
        analyzer=analyzer,
        ngram_range=ngram_range,
        min_df=cfg.min_df,
        max_df=max_df,
        max_features=cfg.max_features,
        sublinear_tf=cfg.sublinear_tf,
        dtype=np.float32,
    )
    try:
        return sp.csr_matrix(vectoriser.fit_transform(titles), dtype=np.float32)
    except ValueError as e:
        # scikit-learn's words for "no term": an empty vocabulary, or none left after min_df/max_df.
        if "vocabulary" in str(e) or "no terms remain" in str(e):
            return None
        raise


def phash_codes(hashes: Iterable[str]) -> np.ndarray:
    """(N, 8) uint8 packed bits of 16-hex-digit phashes, as FAISS binary indexes take them."""
    return np.array([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in hashes], dtype=np.uint8).reshape(-1, 8)


def compute_phash(paths: Iterable[str | Path]) -> list[str]:
    """The 64-bit DCT phash of each image, in the ``image_phash`` column's hex form.

    Raises:
        DataError: naming the image that is missing, truncated or over Pillow's pixel limit.
    """
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(str(imagehash.phash(im)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{p}: cannot compute its phash: {type(e).__name__}: {e}") from e
    return out
