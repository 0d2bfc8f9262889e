import numpy as np

from pipeline.catalogue.lists import NeighbourLists
from pipeline.catalogue.scoring import _merged_in_blocks


def test_lists_merged_in_blocks_are_those_merged_at_once(tmp_path):
    rng = np.random.default_rng(0)
    n, k = 200, 6
    lists = NeighbourLists(tmp_path, ["concat"], k)
    idx = np.sort(rng.choice(n, (n, k)), axis=1)
    sim = -np.sort(-rng.random((n, k)).astype(np.float32), axis=1)
    lists.write_journal(1, {"concat": (np.arange(n), idx, sim)})
    lists.apply(1)
    rows = np.sort(rng.choice(n, 90, replace=False))
    new_idx = rng.integers(n, n + 20, (len(rows), 2))  # batch postings: ids past the catalogue's
    new_sim = rng.random((len(rows), 2)).astype(np.float32)
    new_idx[:, 1] = -1
    removed = np.array([3, 17])

    at_once = _merged_in_blocks(lists, "concat", rows, new_idx, new_sim, n, k, removed, block=len(rows))
    blocked = _merged_in_blocks(lists, "concat", rows, new_idx, new_sim, n, k, removed, block=7)
    assert np.array_equal(at_once[0], blocked[0]) and np.array_equal(at_once[1], blocked[1])
    assert not np.isin(blocked[0], removed).any()
    # every new entry better than a row's k-th stored one entered its list
    assert np.isin(new_idx[:, 0][new_sim[:, 0] > sim[rows, -1]], blocked[0]).all()
