"""``group: run``: a batch's region clustered again with the run's group step, so the order postings
arrive in stops deciding their groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.catalogue import add_postings, check, export_groups, init_from_run
from pipeline.catalogue.assign import regroup
from pipeline.catalogue.region import link_weights
from pipeline.data.contract import read_postings
from pipeline.matching.groups import GroupSettings
from pipeline.metric import score_matches, true_sets_from_labels


def pairs(*triples):
    a, b, w = zip(*triples)
    return np.array(a), np.array(b), np.array(w, float)


def test_an_early_wrong_join_is_undone_when_the_true_group_arrives():
    # Group 7 holds postings 1 and 2 (2 joined on a 0.4 link); 3 and 4 arrive bound to 1 only.
    links = pairs((1, 2, 0.4), (1, 3, 0.9), (1, 4, 0.9), (3, 4, 0.9))
    out = regroup(np.array([3, 4]), {1: 7, 2: 7}, links, [], [], next_group=8, cut=0.3)
    assert out.group == {3: 7, 4: 7} and out.action == {3: "join", 4: "join"}
    assert out.moved == {2: 8} and out.new_groups == [8] and out.emptied == []


def test_two_groups_bound_by_the_batch_merge_and_the_smaller_id_survives_a_tie():
    links = pairs((1, 5, 0.9), (2, 5, 0.9), (1, 2, 0.0))
    out = regroup(np.array([5]), {1: 4, 2: 3}, links, [], [], next_group=9, cut=0.3)
    assert out.group == {5: 3} and out.action == {5: "merge"} and out.moved == {1: 3}
    assert out.emptied == [4] and out.absorbed == {3: [4]} and out.merged_into(3) == [4]


def test_labels_and_reviews_bind_and_part_postings_whatever_the_weights():
    links = pairs((1, 3, 0.9), (2, 3, 0.9))
    out = regroup(np.array([3]), {1: 0, 2: 0}, links, forced=[(1, 2)], forbidden=[(2, 3)], next_group=1, cut=0.3)
    assert out.group == {3: 1} and out.action == {3: "new"} and out.moved == {}
    loose = pairs((1, 2, 0.0), (1, 3, 0.9))
    apart = regroup(np.array([3]), {1: 0, 2: 0}, loose, [], [], next_group=1, cut=0.3)
    assert apart.group == {3: 0} and apart.moved == {2: 1}  # nothing binds 2 to its old group any more


@pytest.mark.parametrize("weights, expected", [("accepted", [0.9, 0.0, 0.0]), ("density", [1.0, 0.0, 0.0])])
def test_links_weigh_what_the_runs_group_step_weighs(weights, expected):
    group = GroupSettings("average", weights)
    got = link_weights(group, np.array([0.9, 0.9, 0.01]), np.array([True, False, False]))
    assert got == pytest.approx(expected)
    every = link_weights(GroupSettings("average", "prob"), np.array([0.9, 0.01]), np.array([False, False]))
    assert every == pytest.approx([0.9, 0.0])  # below the edge floor nothing links


def test_groups_hardly_depend_on_the_batch_size(synth_run, tmp_path):
    test = read_postings(synth_run["data"] / "test.csv", labelled=False)
    labels = pd.read_csv(synth_run["data"] / "test_truth.csv")
    truth = true_sets_from_labels(labels["posting_id"].tolist(), labels["label_group"].tolist())
    scores = {}
    for batch in (1, len(test)):
        cat, _ = init_from_run(synth_run["run"], tmp_path / f"C{batch}", size=len(test), group="run")
        for start in range(0, len(test), batch):
            add_postings(cat, test.iloc[start : start + batch].reset_index(drop=True), source="test.csv")
        assert check(cat) == []
        sub = export_groups(cat, only=test["posting_id"].tolist())
        scores[batch] = score_matches({p: set(m.split()) for p, m in zip(sub.posting_id, sub.matches)}, truth)["f1"]
        cat.close()
    assert scores[1] == pytest.approx(scores[len(test)], abs=0.03)
    assert scores[1] > 0.8


def test_a_group_emptied_by_a_regroup_goes_unless_a_removed_posting_names_it(synth_run, tmp_path):
    from pipeline.catalogue import remove, schema
    from pipeline.catalogue.adding import drop_groups, resize_groups

    cat, _ = init_from_run(synth_run["run"], tmp_path / "C")
    groups = cat.con.execute("SELECT group_id, MIN(id) FROM postings GROUP BY group_id HAVING COUNT(*) > 1").fetchall()
    (g1, first), (g2, _) = groups[:2]
    nobody = int(cat.con.execute("SELECT MAX(id) + 1 FROM groups").fetchone()[0])
    remove(cat, cat.column_of(np.array([first]), "posting_id"))  # a tombstone names g1
    with schema.transaction(cat.con):
        cat.con.execute("INSERT INTO groups(id, size, created) VALUES (?, 0, 1)", (nobody,))
        cat.con.execute("UPDATE postings SET group_id = ? WHERE group_id = ? AND removed IS NULL", (g2, g1))
        resize_groups(cat, [g1, g2])
        drop_groups(cat, [g1, nobody])
    sizes = dict(cat.con.execute("SELECT id, size FROM groups"))
    assert nobody not in sizes and sizes[g1] == 0  # the emptied group stays while its tombstone names it
    assert check(cat) == []
    cat.close()


def test_average_linkage_counts_every_member_a_new_posting_links_to():
    from pipeline.catalogue.assign import Links, assign_average

    links = Links(np.array([9, 9, 9]), np.array([1, 2, 3]), np.ones(3), np.ones(3, bool))
    group_of = {1: 0, 2: 0, 3: 0}
    out = assign_average(np.array([9]), links, np.ones(3), group_of, {0: 4}, [], next_group=1, cut=0.5)
    assert out.group == {9: 0} and out.action == {9: "join"}  # 3 of 4 members: 0.75 >= 0.5
    one = Links(np.array([9]), np.array([1]), np.ones(1), np.ones(1, bool))
    alone = assign_average(np.array([9]), one, np.ones(1), group_of, {0: 4}, [], next_group=1, cut=0.5)
    assert alone.group == {9: 1} and alone.action == {9: "new"}  # 1 of 4: 0.25


ADD_TEST = """
import sys
from pipeline.catalogue import add_postings, open_catalogue
from pipeline.data.contract import read_postings
cat = open_catalogue(sys.argv[1], write=True)
add_postings(cat, read_postings(sys.argv[2], labelled=False), source="test.csv")
"""


@pytest.mark.parametrize("point", ["journaled", "committed"])
def test_a_killed_regrouping_add_is_repaired_and_resent_as_a_clean_add(synth_run, tmp_path, point):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.catalogue import open_catalogue
    from pipeline.catalogue.catalogue import CRASH_ENV

    root = Path(__file__).resolve().parents[2]
    test_csv = synth_run["data"] / "test.csv"
    test = read_postings(test_csv, labelled=False)
    clean, _ = init_from_run(synth_run["run"], tmp_path / "clean", size=len(test))
    expected = add_postings(clean, test, source="test.csv").set_index("posting_id")[["group", "action"]]
    clean.close()
    killed, _ = init_from_run(synth_run["run"], tmp_path / "killed", size=len(test))
    assert killed.rule.group == "run"
    killed.close()
    env = {**os.environ, CRASH_ENV: point, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", ADD_TEST, str(tmp_path / "killed"), str(test_csv)]
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    cat = open_catalogue(tmp_path / "killed", write=True)
    with cat.writer():  # the restart: the next writer repairs
        assert check(cat) == []
    again = add_postings(cat, test, source="test.csv").set_index("posting_id")[["group", "action"]]
    assert again.equals(expected)
    assert check(cat) == []
    cat.close()


def test_the_regions_old_postings_are_scored_again_with_the_batch_in_the_catalogue(synth_run, tmp_path, monkeypatch):
    import pipeline.catalogue.adding as adding
    from pipeline.catalogue.rule import Rule

    test = read_postings(synth_run["data"] / "test.csv", labelled=False)
    half = len(test) // 2
    seen = []
    rescored = adding._rescored
    monkeypatch.setattr(adding, "_rescored", lambda *a, **k: seen.append(rescored(*a, **k)) or seen[-1])
    for on in (True, False):
        seen.clear()
        cat, _ = init_from_run(synth_run["run"], tmp_path / f"C{on}", size=len(test), group="run", rescore_region=on)
        add_postings(cat, test.iloc[:half].reset_index(drop=True), source="test.csv")
        first = int(cat.con.execute("SELECT MAX(id) + 1 FROM postings").fetchone()[0])
        add_postings(cat, test.iloc[half:].reset_index(drop=True), source="test.csv")
        assert check(cat) == []
        if not on:
            assert seen == []  # the stored links weigh the region's pairs
            cat.close()
            continue
        fresh = seen[-1]
        region = set(cat.con.execute("SELECT id FROM postings WHERE id < ?", (first,)).fetchall())
        assert len(fresh.a) and all((int(a),) in region for a in fresh.a)  # old postings only
        assert (fresh.b >= first).any()  # ... and they now see the batch's postings
        assert ((fresh.probability >= 0) & (fresh.probability <= 1)).all()
        assert Rule.from_dict({**cat.rule.to_dict(), "rescore_region": True}).rescore_region
        cat.close()
    legacy = {k: v for k, v in cat.rule.to_dict().items() if k != "rescore_region"}
    assert not Rule.from_dict(legacy).rescore_region  # a catalogue made before keeps its behaviour
