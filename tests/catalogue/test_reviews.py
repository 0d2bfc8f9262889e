"""Reviews are stored and obeyed: 'different' forbids a merge now and in later batches, 'same'
forces one."""

from __future__ import annotations

import json

import pytest

from pipeline.catalogue import CatalogueError, add_postings, check, review

from .conftest import postings


def group(cat, posting_id: str) -> int:
    return cat.con.execute("SELECT group_id FROM postings WHERE posting_id = ?", (posting_id,)).fetchone()[0]


def test_different_forbids_the_merge_in_every_later_batch(catalogue, space):
    review(catalogue, "a0", "b1", "different")
    for name in ("mid1", "mid2"):
        decision = add_postings(catalogue, postings([name]), vectors={"text": space.near("A", "B")}).iloc[0]
        assert decision["action"] == "join"
        assert json.loads(decision["evidence"])["refused_by_review"]
        assert group(catalogue, "a0") != group(catalogue, "b0")
        assert group(catalogue, name) in (group(catalogue, "a0"), group(catalogue, "b0"))
    assert check(catalogue) == []


def test_different_splits_a_merged_group_and_keeps_it_split(catalogue, space):
    add_postings(catalogue, postings(["mid"]), vectors={"text": space.near("A", "B")})
    assert group(catalogue, "a0") == group(catalogue, "b0")
    out = review(catalogue, "a1", "b2", "different")
    assert out["groups"]["a1"] != out["groups"]["b2"]
    assert group(catalogue, "a0") == group(catalogue, "a2") != group(catalogue, "b0") == group(catalogue, "b1")
    assert check(catalogue) == []
    decision = add_postings(catalogue, postings(["mid2"]), vectors={"text": space.near("A", "B")}).iloc[0]
    assert decision["action"] == "join" and group(catalogue, "a0") != group(catalogue, "b0")


def test_same_forces_a_merge_that_later_batches_keep(catalogue, space):
    review(catalogue, "c0", "d0", "same")
    assert group(catalogue, "c1") == group(catalogue, "d2")
    assert catalogue.con.execute("SELECT size FROM groups WHERE id = ?", (group(catalogue, "c0"),)).fetchone()[0] == 6
    add_postings(catalogue, postings(["c_new"]), vectors={"text": space.near("C")})
    assert group(catalogue, "c_new") == group(catalogue, "d1")
    assert check(catalogue) == []


def test_a_same_review_across_a_different_one_is_refused(catalogue):
    review(catalogue, "a0", "b0", "different")
    with pytest.raises(CatalogueError, match="reviewed 'different'"):
        review(catalogue, "a1", "b1", "same")
    assert group(catalogue, "a1") != group(catalogue, "b1") and check(catalogue) == []
    with pytest.raises(CatalogueError, match="verdict 'maybe'"):
        review(catalogue, "a1", "b1", "maybe")
