"""match (read-only), explain, remove (tombstones) and export (the submission format)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from pipeline.catalogue import CatalogueError, add_postings, check, explain, export_groups, match_postings, remove
from pipeline.catalogue.reading import NO_MATCH, explain_text
from pipeline.submission import read_matches

from .conftest import THRESHOLD, postings


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_match_is_read_only_and_names_the_group_or_no_match(catalogue, space):
    db = catalogue.root / "catalogue.db"
    catalogue.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = digest(db)
    x = np.vstack([space.near("C"), space.far()])
    results = match_postings(catalogue, postings(["q_c", "q_far"]), vectors={"text": x}, top=3)
    c_group = catalogue.groups_of(np.array([6]))[6]  # c0 is the catalogue's 7th posting
    assert results[0].verdict == "match" and results[0].group == c_group
    assert len(results[0].candidates) == 3 and {c.posting_id for c in results[0].candidates} == {"c0", "c1", "c2"}
    best = results[0].candidates[0]
    assert best.accepted and best.probability > 0.5
    assert (
        best.evidence["thresholds"] == {"text": pytest.approx(THRESHOLD)} and best.evidence["sims"]["text"] > THRESHOLD
    )
    assert results[1].verdict == NO_MATCH and results[1].group is None
    catalogue.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert digest(db) == before
    assert catalogue.live_count() == 12 and not catalogue.ids_of(["q_c", "q_far"])


def test_explain_shows_each_signal_against_its_threshold(catalogue, space):
    add_postings(catalogue, postings(["mid"]), vectors={"text": space.near("A", "B")})
    info = explain(catalogue, "mid")
    assert info["decision"]["action"] == "merge" and len(info["decision"]["evidence"]["merged_groups"]) == 1
    linked = {link["with"] for link in info["links"] if link["accepted"]}
    assert {"a0", "b0"} <= linked
    ev = info["links"][0]["evidence"]
    assert ev["passed"] == ["text"] and ev["sims"]["text"] >= ev["thresholds"]["text"]
    text = explain_text(info)
    assert "merge" in text and f"vs threshold {THRESHOLD:.4f}: passes" in text
    with pytest.raises(CatalogueError, match="'nobody' is not in"):
        explain(catalogue, "nobody")


def test_remove_leaves_tombstones_out_of_groups_and_indexes(catalogue, space):
    add_postings(catalogue, postings(["extra"]), vectors={"text": space.far()})
    remove(catalogue, ["c0", "extra"])
    sub = export_groups(catalogue)
    assert "c0" not in set(sub["posting_id"]) and "extra" not in set(sub["posting_id"])
    assert sub.set_index("posting_id").loc["c1", "matches"].split() == ["c1", "c2"]
    assert check(catalogue) == []
    found = match_postings(catalogue, postings(["q"]), vectors={"text": space.near("C")}, top=5)[0]
    assert "c0" not in {c.posting_id for c in found.candidates}
    # A removed posting id is not added again: its tombstone keeps it.
    with pytest.raises(CatalogueError, match=r"'c0' was removed from the catalogue \(batch 3\)"):
        add_postings(catalogue, postings(["c0"]), vectors={"text": space.near("C")})
    with pytest.raises(CatalogueError, match="not a live posting"):
        remove(catalogue, ["extra"])


def test_export_writes_the_submission_format(catalogue, tmp_path):
    out = tmp_path / "submission.csv"
    sub = export_groups(catalogue, out)
    assert list(pd.read_csv(out).columns) == ["posting_id", "matches"]
    matches = read_matches(out)
    assert len(matches) == 12 and matches["a0"] == {"a0", "a1", "a2"} and matches["d2"] == {"d0", "d1", "d2"}
    assert sub["matches"].str.split().str[0].tolist() == sub["posting_id"].tolist()  # each lists itself first
    only = export_groups(catalogue, only=["a0", "a1", "b0"])
    assert dict(zip(only["posting_id"], only["matches"])) == {"a0": "a0 a1", "a1": "a1 a0", "b0": "b0"}
