"""Every dense index kind against the exact one: the same groups, the same candidates, and the check
passing after removals (HNSW keeps tombstones, the others remove)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.catalogue import IndexConfig, add_postings, check, export_groups, init_with_vectors, match_postings
from pipeline.catalogue import remove as remove_postings

from .conftest import DIM, postings, unit, vector_rule


def build(root, kind: str, rng_seed: int = 3):
    rng = np.random.default_rng(rng_seed)
    centres = unit(rng.normal(size=(20, DIM)))
    x = unit(np.repeat(centres, 3, axis=0) + 0.01 * rng.normal(size=(60, DIM)))
    rule = dataclasses.replace(vector_rule(), index=IndexConfig(kind=kind, stale_share=0.05))
    ids = [f"p{i}" for i in range(60)]
    cat, _ = init_with_vectors(root, rule, postings(ids), {"text": x}, labels=np.repeat(np.arange(20), 3))
    new = unit(centres[:5] + 0.01 * rng.normal(size=(5, DIM)))
    add_postings(cat, postings([f"n{i}" for i in range(5)]), vectors={"text": new})
    remove_postings(cat, ["p0", "p4", "n1"])
    return cat, centres


@pytest.mark.parametrize("kind", ["ivf", "ivfsq", "hnsw"])
def test_each_index_kind_agrees_with_the_exact_one(tmp_path, kind):
    exact, centres = build(tmp_path / "flat", "flat")
    other, _ = build(tmp_path / kind, kind)
    assert check(other) == [] and check(exact) == []
    assert export_groups(other).equals(export_groups(exact))
    q = {"text": unit(centres[:8] + 0.02)}
    got = match_postings(other, postings([f"q{i}" for i in range(8)]), vectors=q, top=4)
    want = match_postings(exact, postings([f"q{i}" for i in range(8)]), vectors=q, top=4)
    assert [[c.posting_id for c in r.candidates] for r in got] == [[c.posting_id for c in r.candidates] for r in want]
    assert "p0" not in {c.posting_id for r in got for c in r.candidates}


def test_hnsw_tombstones_until_stale_then_a_rebuild(tmp_path):
    cat, _ = build(tmp_path / "hnsw", "hnsw")
    index = cat.store.indexes["text"]
    assert len(index.dead) == 3 and index.index.ntotal == 65  # 3 of 65: under the 5 % that rebuilds
    remove_postings(cat, ["p7"])
    index = cat.store.indexes["text"]
    assert not index.dead and index.index.ntotal == 61 and check(cat) == []


def test_auto_is_exact_while_small_and_turns_to_ivf_past_auto_rows(tmp_path):
    from pipeline.catalogue import open_catalogue

    rng = np.random.default_rng(5)
    centres = unit(rng.normal(size=(20, DIM)))
    x = unit(np.repeat(centres, 3, axis=0) + 0.01 * rng.normal(size=(60, DIM)))
    rule = dataclasses.replace(vector_rule(), index=IndexConfig(kind="auto", auto_rows=64))
    cat, _ = init_with_vectors(tmp_path / "C", rule, postings([f"p{i}" for i in range(60)]), {"text": x})
    assert cat.store.indexes["text"].kind == "flat" and not cat.store.approximate("text")
    new = unit(centres[:6] + 0.01 * rng.normal(size=(6, DIM)))
    add_postings(cat, postings([f"n{i}" for i in range(6)]), vectors={"text": new})  # 66 live: past 64
    assert cat.store.indexes["text"].kind == "ivf" and cat.store.approximate("text")
    assert check(cat) == []
    cat.close()
    again = open_catalogue(tmp_path / "C")
    got = match_postings(again, postings(["q"]), vectors={"text": unit(centres[:1] + 0.02)}, top=4)
    assert {c.posting_id for c in got[0].candidates} >= {"p0", "p1", "p2", "n0"}  # a centre's whole group
    assert again.store.indexes["text"].kind == "ivf"  # loaded: the snapshot says what it was built as
    assert check(again) == []
    again.close()
    index = again.store.indexes["text"]
    assert not index.stale(40) and index.stale(31)  # back to exact only below half the line
