"""``python -m pipeline catalogue ...``: the whole loop on a real run, and bad input refused with
exit 2, one ``error:`` line that names the file, row and column, and nothing written."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.cli import main


@pytest.fixture(scope="module")
def loop(synth_run, tmp_path_factory):
    """A catalogue made by ``init`` and the test set's first 20 rows made a batch CSV."""
    root = tmp_path_factory.mktemp("catalogue_cli")
    assert main(["catalogue", "init", "--run", str(synth_run["run"]), "--out", str(root / "C")]) == 0
    test = pd.read_csv(synth_run["data"] / "test.csv", dtype=str, keep_default_na=False)
    test.iloc[:20].to_csv(root / "batch.csv", index=False)
    test.iloc[20:].to_csv(root / "later.csv", index=False)
    return root


def lines(capsys) -> list[dict]:
    return [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]


def test_init_add_match_explain_remove_export(loop, capsys, tmp_path):
    capsys.readouterr()
    c, batch = str(loop / "C"), str(loop / "batch.csv")
    assert main(["catalogue", "add", c, "--postings", batch]) == 0
    added = lines(capsys)[-1]
    decisions = pd.read_csv(added["decisions"])
    assert added["added"] == 20 and list(decisions.columns) == [
        "posting_id",
        "group",
        "action",
        "confidence",
        "evidence",
    ]
    assert set(decisions["action"]) <= {"new", "join", "merge"}

    assert main(["catalogue", "match", c, "--postings", str(loop / "later.csv"), "--top", "3"]) == 0
    matched = lines(capsys)
    assert len(matched) == len(pd.read_csv(loop / "later.csv")) and all(len(m["candidates"]) <= 3 for m in matched)
    assert {m["verdict"] for m in matched} <= {"match", "no confident match"}

    first = decisions["posting_id"].iloc[0]
    assert main(["catalogue", "explain", c, first]) == 0
    assert "vs threshold" in capsys.readouterr().out
    assert main(["catalogue", "remove", c, first]) == 0
    assert main(["catalogue", "export", c, "--out", str(tmp_path / "sub.csv")]) == 0
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["posting_id", "matches"] and first not in set(sub["posting_id"])
    assert main(["catalogue", "check", c]) == 0


def state(root) -> tuple:
    import sqlite3

    con = sqlite3.connect(root / "C" / "catalogue.db")
    try:
        return con.execute("SELECT COUNT(*), MAX(seq) FROM batches").fetchone(), sorted(
            p.name for p in (root / "C").rglob("*") if p.is_file() and "-wal" not in p.name and "-shm" not in p.name
        )
    finally:
        con.close()


def with_a_training_posting(df: pd.DataFrame) -> pd.DataFrame:
    """Three new rows, then a posting ``init`` already added (row 4)."""
    train = pd.read_csv(df.attrs["train"], dtype=str, keep_default_na=False)
    return pd.concat([df.iloc[:3], train.iloc[:1, :4]])


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda df: df.assign(image_phash=["zz", *df["image_phash"][1:]]), "row 1 (line 2), column 'image_phash'"),
        (lambda df: df.drop(columns=["title"]), "missing column(s) ['title']"),
        (lambda df: pd.concat([df, df.iloc[:1]]), "column 'posting_id'"),
        (with_a_training_posting, "row 4, column 'posting_id'"),
    ],
    ids=["bad-phash", "missing-column", "repeated-row", "already-there"],
)
def test_bad_input_exits_2_naming_the_place_and_writes_nothing(loop, synth_run, capsys, tmp_path, edit, where):
    df = pd.read_csv(loop / "later.csv", dtype=str, keep_default_na=False)
    df.attrs["train"] = synth_run["data"] / "train.csv"
    edit(df).to_csv(tmp_path / "bad.csv", index=False)
    before = state(loop)
    capsys.readouterr()
    assert main(["catalogue", "add", str(loop / "C"), "--postings", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "bad.csv" in err and where in err, err
    assert state(loop) == before


def test_init_with_bad_postings_creates_nothing(synth_run, capsys, tmp_path):
    df = pd.read_csv(synth_run["data"] / "train.csv", dtype=str, keep_default_na=False)
    df.loc[2, "label_group"] = "not a number"
    df.to_csv(tmp_path / "bad.csv", index=False)
    args = ["catalogue", "init", "--run", str(synth_run["run"]), "--out", str(tmp_path / "C")]
    assert main([*args, "--postings", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "bad.csv, row 3" in err and "label_group" in err, err
    assert not (tmp_path / "C").exists()


def test_init_keeps_the_chosen_weight_of_unseen_title_terms(synth_run, tmp_path):
    from pipeline.catalogue import open_catalogue

    base = ["catalogue", "init", "--run", str(synth_run["run"])]
    assert main([*base, "--out", str(tmp_path / "H")]) == 0
    assert main([*base, "--out", str(tmp_path / "I"), "--unseen-terms", "ignored"]) == 0
    seen = {}
    for name in ("H", "I"):
        cat = open_catalogue(tmp_path / name)
        seen[name] = (cat.vocabulary.unseen, cat.vocabulary.transform(["zorblax qwzx"]).nnz)
        cat.close()
    assert seen["H"][0] == "hashed" and seen["I"][0] == "ignored"
    assert seen["H"][1] > seen["I"][1]  # the new words and their new character n-grams weigh
