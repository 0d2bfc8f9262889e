"""A catalogue over a real trained and tuned run (TF-IDF, phash, blending and the pair model):
the incremental path against the run's own one-shot ``predict``."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.catalogue import add_postings, check, explain, export_groups, init_from_run, match_postings
from pipeline.data.contract import read_postings
from pipeline.metric import score_matches, true_sets_from_labels
from pipeline.submission import read_matches


def f1_of(sub: pd.DataFrame, truth: dict) -> float:
    matches = {pid: set(m.split()) for pid, m in zip(sub["posting_id"], sub["matches"])}
    return score_matches(matches, truth)["f1"]


@pytest.fixture(scope="module")
def data(synth_run):
    test = read_postings(synth_run["data"] / "test.csv", labelled=False)
    labels = pd.read_csv(synth_run["data"] / "test_truth.csv")
    truth = true_sets_from_labels(labels["posting_id"].tolist(), labels["label_group"].tolist())
    return test, truth


def added_in_batches(run, out, test, batch: int):
    """A catalogue of the run's training postings, the test set added ``batch`` rows at a time; the
    thresholds moved to the test set's size, as ``predict`` moves them to its gallery."""
    cat, _ = init_from_run(run, out, size=len(test))
    for start in range(0, len(test), batch):
        add_postings(cat, test.iloc[start : start + batch].reset_index(drop=True), source="test.csv")
    return cat


def test_batches_agree_with_one_batch_and_with_predict(synth_run, data, tmp_path):
    test, truth = data
    singles = {pid: {pid} for pid in truth}
    predicted = score_matches(read_matches(synth_run["run"] / "submission.csv"), truth)["f1"]
    scores = {}
    for batch in (10, len(test)):
        cat = added_in_batches(synth_run["run"], tmp_path / f"C{batch}", test, batch)
        assert check(cat) == []
        scores[batch] = f1_of(export_groups(cat, only=test["posting_id"].tolist()), truth)
        cat.close()
    # Batching changes little: groups form as the postings arrive (0.971 in batches of 10 against
    # 1.000 at once on this data: docs/catalogue.md).
    assert scores[10] == pytest.approx(scores[len(test)], abs=0.04)
    # Far better than leaving every posting alone, and not below the run's own predict by more than the
    # issue's 0.01 (the test titles' new words weigh, hashed: 0.869 when they were ignored).
    assert scores[10] > score_matches(singles, truth)["f1"] + 0.3
    assert min(scores.values()) >= predicted - 0.01


def test_training_postings_keep_their_labelled_groups(synth_run, tmp_path):
    cat, decisions = init_from_run(synth_run["run"], tmp_path / "C")
    train = pd.read_csv(synth_run["data"] / "train.csv")
    truth = true_sets_from_labels(train["posting_id"].tolist(), train["label_group"].tolist())
    assert len(decisions) == len(train)
    assert f1_of(export_groups(cat), truth) == 1.0


def test_explain_and_match_show_the_pair_models_probability(synth_run, data, tmp_path):
    test, _ = data
    cat = added_in_batches(synth_run["run"], tmp_path / "C", test, len(test))
    linked = cat.con.execute(
        "SELECT p.posting_id FROM links l JOIN postings p ON p.id = l.a WHERE l.accepted = 1 AND l.kind = 'rule'"
    ).fetchone()[0]
    info = explain(cat, linked)
    link = next(link for link in info["links"] if link["accepted"])
    ev = link["evidence"]
    assert ev["sims"]["pair"] == pytest.approx(link["probability"], abs=1e-3)
    assert ev["sims"]["pair"] >= ev["thresholds"]["pair"] and "pair" in ev["passed"]
    assert len(ev["features"]) == 5 and all(isinstance(f[2], float) for f in ev["features"])
    result = match_postings(cat, test.iloc[:3].assign(posting_id=lambda d: "q_" + d["posting_id"]))
    assert [r.posting_id for r in result] == ["q_" + p for p in test["posting_id"][:3]]
    assert all(0 <= c.probability <= 1 and "pair" in c.evidence["sims"] for r in result for c in r.candidates)
    json.dumps([r.candidates[0].evidence for r in result if r.candidates])  # evidence is plain JSON
    cat.close()
