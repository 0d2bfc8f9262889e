"""Adding batches: a new group, joining one, merging several; refused and skipped repeats; one
batch, one transaction."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.catalogue import CatalogueError, add_postings, check, export_groups, match_postings, open_catalogue
from pipeline.catalogue import adding as adding_module

from .conftest import postings


def fault_at(point: str):
    """A stand-in for ``crash_point`` that raises at ``point`` instead of killing the process."""

    def fault(name: str) -> None:
        if name == point:
            raise RuntimeError(f"fault at {name}")

    return fault


def groups_by_id(cat) -> dict[str, int]:
    return dict(cat.con.execute("SELECT posting_id, group_id FROM postings WHERE removed IS NULL"))


def test_init_groups_by_labels_and_passes_the_check(catalogue):
    groups = groups_by_id(catalogue)
    assert len(set(groups.values())) == 4
    assert groups["a0"] == groups["a2"] != groups["b0"] == groups["b1"]
    assert check(catalogue) == []


def test_a_batch_gives_new_join_and_merge(catalogue, space):
    before = groups_by_id(catalogue)
    df = postings(["new1", "c_like", "ab_mid"])
    x = np.vstack([space.far(), space.near("C"), space.near("A", "B")])
    decisions = add_postings(catalogue, df, vectors={"text": x}).set_index("posting_id")
    assert decisions.loc["new1", "action"] == "new"
    assert decisions.loc["c_like", "action"] == "join"
    assert decisions.loc["c_like", "group"] == before["c0"]
    assert decisions.loc["ab_mid", "action"] == "merge"
    after = groups_by_id(catalogue)
    assert after["a0"] == after["b0"] == after["ab_mid"] == min(before["a0"], before["b0"])
    assert after["new1"] not in set(before.values())
    assert check(catalogue) == []
    # The decisions CSV's columns, with evidence naming what it matched.
    assert list(decisions.reset_index().columns) == ["posting_id", "group", "action", "confidence", "evidence"]
    assert '"c0"' in decisions.loc["c_like", "evidence"] or '"c1"' in decisions.loc["c_like", "evidence"]


def test_postings_of_one_batch_group_together(catalogue, space):
    x = space.far()
    twins = np.vstack([x, x])  # two postings of a product the catalogue does not hold
    decisions = add_postings(catalogue, postings(["n1", "n2"]), vectors={"text": twins})
    assert decisions["group"].nunique() == 1 and set(decisions["action"]) == {"new"}


def test_a_posting_id_already_there_is_refused_or_skipped(catalogue, space):
    before = export_groups(catalogue)
    df = postings(["fresh", "a1"])
    x = np.vstack([space.far(), space.near("A")])
    with pytest.raises(CatalogueError, match=r"row 2, column 'posting_id': 'a1' is already in the catalogue"):
        add_postings(catalogue, df, vectors={"text": x}, source="new.csv")
    assert export_groups(catalogue).equals(before)
    decisions = add_postings(catalogue, df, vectors={"text": x}, skip_existing=True)
    assert decisions["posting_id"].tolist() == ["fresh"]
    again = add_postings(catalogue, postings(["a1"]), vectors={"text": x[1:]}, skip_existing=True)
    assert again.empty and len(export_groups(catalogue)) == len(before) + 1


def test_the_same_batch_sent_again_changes_nothing(catalogue, space):
    df, x = postings(["p", "q"]), np.vstack([space.near("C"), space.far()])
    first = add_postings(catalogue, df, vectors={"text": x})
    batches = catalogue.con.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    second = add_postings(catalogue, df, vectors={"text": x})
    assert second.equals(first)
    assert catalogue.con.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == batches


@pytest.mark.parametrize("point", ["appended", "journaled", "committed", "applied"])
def test_a_fault_mid_batch_leaves_the_batch_all_or_nothing(catalogue, space, monkeypatch, point):
    """A fault before the commit leaves the catalogue as before; after it, the batch is whole. Either
    way, after reopening, the check passes and the retried batch gives what a clean add gives."""
    df, x = postings(["p", "q", "r"]), np.vstack([space.near("A", "B"), space.near("D"), space.far()])
    before, root = export_groups(catalogue), catalogue.root

    monkeypatch.setattr(adding_module, "crash_point", fault_at(point))
    with pytest.raises(RuntimeError):
        add_postings(catalogue, df, vectors={"text": x})
    monkeypatch.undo()
    catalogue.close()

    cat = open_catalogue(root, write=True)
    with cat.writer():
        committed = cat.live_count() == len(before) + len(df)
        assert committed == (point in ("committed", "applied"))
        if not committed:
            assert export_groups(cat).equals(before)
        assert check(cat) == []
    retried = add_postings(cat, df, vectors={"text": x})
    assert retried.set_index("posting_id")["action"].to_dict() == {"p": "merge", "q": "join", "r": "new"}
    assert check(cat) == []
    cat.close()


@pytest.mark.parametrize("point", ["appended", "journaled", "committed", "applied"])
def test_a_service_retries_a_failed_batch_on_the_same_open_catalogue(catalogue, space, monkeypatch, point):
    """A long-lived writer (the service) does not reload at each write; after a failed batch its
    next write must still see the catalogue as the database has it."""
    df, x = postings(["p", "q", "r"]), np.vstack([space.near("A", "B"), space.near("D"), space.far()])
    monkeypatch.setattr(adding_module, "crash_point", fault_at(point))
    with pytest.raises(RuntimeError):
        add_postings(catalogue, df, vectors={"text": x})
    monkeypatch.undo()
    retried = add_postings(catalogue, df, vectors={"text": x})
    assert retried.set_index("posting_id")["action"].to_dict() == {"p": "merge", "q": "join", "r": "new"}
    later = add_postings(catalogue, postings(["s"]), vectors={"text": space.near("D")}).iloc[0]
    assert later["action"] == "join" and check(catalogue) == []
    found = match_postings(catalogue, postings(["t"]), vectors={"text": space.near("D")}, top=10)[0]
    assert {"q", "s"} <= {c.posting_id for c in found.candidates}
