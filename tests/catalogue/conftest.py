"""Catalogues for the tests: one of given vectors (no encoder, no run: milliseconds) and one
over a real trained and tuned run (TF-IDF and phash with the pair model: about 10 s, once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.catalogue import Rule, init_with_vectors
from pipeline.matching.decide import MatchSettings
from pipeline.matching.neighbours import SearchConfig

DIM = 16
THRESHOLD = 0.9


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def postings(ids: list[str]) -> pd.DataFrame:
    """Rows in the data contract; the vectors are given, so only the ids and titles matter."""
    return pd.DataFrame(
        {
            "posting_id": ids,
            "image": [f"{i}.jpg" for i in ids],
            "image_phash": "0" * 16,
            "title": [f"t {i}" for i in ids],
        }
    )


def vector_rule() -> Rule:
    """A rule over one given dense signal: a pair is accepted at cosine >= THRESHOLD."""
    return Rule(settings=MatchSettings(thresholds={"text": THRESHOLD}), search=SearchConfig(k=8), modalities=["text"])


class Space:
    """Four product centres: A and B close (cosine 0.85, apart at the threshold), C and D far.

    A posting near the middle of A and B passes the threshold with both (a merge); one near C
    joins C; a random direction matches nothing (a new group).
    """

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        c = unit(self.rng.normal(size=(4, DIM)))
        orth = unit(c[1] - (c[1] @ c[0]) * c[0])
        c[1] = unit(0.85 * c[0] + np.sqrt(1 - 0.85**2) * orth)
        self.centres = dict(zip("ABCD", c))

    def near(self, *names: str, n: int = 1, noise: float = 0.01) -> np.ndarray:
        centre = unit(sum(self.centres[k] for k in names))
        return unit(centre + noise * self.rng.normal(size=(n, DIM)))

    def far(self, n: int = 1) -> np.ndarray:
        return unit(self.rng.normal(size=(n, DIM)))


@pytest.fixture
def space() -> Space:
    return Space()


@pytest.fixture
def catalogue(tmp_path, space):
    """Three postings per product A, B, C, D (a0..d2), grouped by their labels."""
    ids = [f"{p.lower()}{i}" for p in "ABCD" for i in range(3)]
    x = np.vstack([space.near(p, n=3) for p in "ABCD"])
    labels = np.repeat(np.arange(4), 3)
    cat, _ = init_with_vectors(tmp_path / "C", vector_rule(), postings(ids), {"text": x}, labels=labels)
    yield cat
    cat.close()


@pytest.fixture(scope="session")
def synth_run(tmp_path_factory) -> dict[str, Path]:
    """A synthetic dataset and a run trained and tuned on it (TF-IDF, phash, pair model, blending)."""
    from pipeline.cli import main
    from pipeline.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("catalogue_run")
    make_synthetic(root / "data", n_groups=40, seed=1, image_size=32, progress=False)
    args = ["run", "--data", str(root / "data"), "--out", str(root / "run"), "--modalities", "tfidf,phash"]
    assert main([*args, "folds.n_splits=3", "decision.cv_estimate=false"]) == 0
    return {"data": root / "data", "run": root / "run"}
