"""An approximate catalogue index's answer, grown from the stored lists of its best finds."""

from __future__ import annotations

import numpy as np

from pipeline.catalogue.scoring import grown_from_lists
from pipeline.matching.neighbours import SearchConfig, dense_knn

from .conftest import unit


def test_stored_lists_of_the_best_finds_bring_back_what_the_index_missed():
    rng = np.random.default_rng(0)
    centres = unit(rng.normal(size=(40, 16)))
    x = unit(np.repeat(centres, 6, axis=0) + 0.05 * rng.normal(size=(240, 16)))
    stored = dense_knn(x, 10)  # the catalogue's lists: exact, as init and every add leave them
    q = unit(centres + 0.05 * rng.normal(size=(40, 16)))
    exact_sim = q @ x.T
    exact_ids = np.argsort(-exact_sim, axis=1, kind="stable")[:, :10]
    # the index found only the best and the 9th: a posting's group mates are in that one's list
    ids = np.full((40, 10), -1)
    ids[:, :2] = exact_ids[:, [0, 8]]
    sim = np.where(ids >= 0, np.take_along_axis(exact_sim, np.maximum(ids, 0), 1), -np.inf).astype(np.float32)

    def listed(signal, rows):
        return stored.idx[rows], stored.sim[rows]

    got_ids, got_sim = grown_from_lists(lambda r: x[r], listed, "text", q, ids, sim, SearchConfig(k=10), block=16)
    for row in range(40):
        assert set(got_ids[row, :6]) == set(exact_ids[row, :6])  # the whole group of six
        assert len(set(got_ids[row][got_ids[row] >= 0])) == (got_ids[row] >= 0).sum()
    listed_sims = np.take_along_axis(exact_sim, np.maximum(got_ids, 0), 1)
    np.testing.assert_allclose(np.where(got_ids >= 0, got_sim, 0), np.where(got_ids >= 0, listed_sims, 0), atol=1e-5)
    assert (np.diff(got_sim, axis=1) <= 1e-6).all()
