"""Synthetic postings as vectors, for benchmarks at sizes where images and titles would take too long."""

from __future__ import annotations

import numpy as np


def clustered_postings(n: int, dim: int, seed: int = 0, chunk: int = 65536) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Random postings in Kaggle-like groups: per-modality unit vectors near a group centre, and a
    phash a few bit flips away from the group's hash. Groups come in families of about three
    whose centres are close (the sibling products that make matching hard)."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(2 + rng.geometric(0.45, size=n) - 1, 50)
    labels = np.repeat(np.arange(len(sizes)), sizes)[:n]
    n_groups = labels.max() + 1
    family = rng.integers(0, max(1, n_groups // 3), size=n_groups)
    vectors = {}
    for name, noise in (("image", 1.0), ("text", 0.8)):
        fam = _unit(rng.standard_normal((family.max() + 1, dim), dtype=np.float32))
        centres = _unit(fam[family] + 0.8 * _unit(rng.standard_normal((n_groups, dim), dtype=np.float32)))
        del fam
        x = np.empty((n, dim), dtype=np.float32)  # float32, as encoders give
        for start in range(0, n, chunk):  # in chunks: no full-size temporaries at a million postings
            rows = slice(start, start + chunk)
            part = centres[labels[rows]] + np.float32(noise / np.sqrt(dim)) * rng.standard_normal(
                (len(labels[rows]), dim), dtype=np.float32
            )
            x[rows] = _unit(part)
        vectors[name] = x
        del centres
    hashes = rng.integers(0, 256, size=(n_groups, 8), dtype=np.uint8)[labels]
    flips = rng.random((n, 64)) < 0.08  # about 5 of 64 bits differ from the group's hash
    vectors["phash"] = hashes ^ np.packbits(flips, axis=1)
    return vectors, labels


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
