import numpy as np
import pandas as pd
import pytest

from pipeline.submission import (
    SubmissionError,
    build_submission,
    read_matches,
    read_truth,
    validate_submission,
    write_submission,
)


def test_build_puts_self_first_without_repeats():
    sub = build_submission(["a", "b", "c"], [np.array([1, 1, 0]), np.array([]), np.array([1, 0])])
    assert sub["matches"].tolist() == ["a b", "b", "c b a"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("a", "a"), ("a", "a b")], r"row 2 \(line 3\), column 'posting_id': 'a' appears twice"),
        ([("a", "a")], "1 test posting"),
        ([("a", "b"), ("b", "b")], r"row 1 \(line 2\), column 'matches': 'a' does not include itself"),
        ([("a", "a z"), ("b", "b")], "unknown posting id"),
        ([("a", "a"), ("b", "b"), ("z", "z")], "not a test posting"),
    ],
)
def test_validation_failures(rows, message):
    sub = pd.DataFrame(rows, columns=["posting_id", "matches"])
    with pytest.raises(SubmissionError, match=message):
        validate_submission(sub, ["a", "b"])


def test_invalid_submission_is_not_written(tmp_path):
    path = tmp_path / "submission.csv"
    with pytest.raises(SubmissionError):
        write_submission(pd.DataFrame({"posting_id": ["a"], "matches": ["b"]}), path, ["a"])
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_roundtrip_and_truth_formats(tmp_path):
    path = write_submission(
        build_submission(["a", "b"], [np.array([1]), np.array([0])]), tmp_path / "s.csv", ["a", "b"]
    )
    assert read_matches(path) == {"a": {"a", "b"}, "b": {"a", "b"}}
    pd.DataFrame({"posting_id": ["a", "b", "c"], "label_group": [1, 1, 2]}).to_csv(tmp_path / "t.csv", index=False)
    assert read_truth(tmp_path / "t.csv")["c"] == {"c"}


@pytest.fixture()
def truth_file(tmp_path):
    path = tmp_path / "truth.csv"
    pd.DataFrame({"posting_id": ["a", "b", "c"], "label_group": [1, 1, 2]}).to_csv(path, index=False)
    return path


def score_cli(capsys, sub_path, truth_path) -> tuple[int, list[str]]:
    from pipeline.cli import main

    capsys.readouterr()
    code = main(["score", "--submission", str(sub_path), "--truth", str(truth_path)])
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("posting_id,matches\na,a b\nb,a b\n", r"1 posting\(s\) of .*truth\.csv have no row, e\.g\. \['c'\]"),
        (
            "posting_id,matches\na,a b\nb,a b\nc,c\nz,z\n",
            r"row 4 \(line 5\), column 'posting_id': 'z' is not a posting of",
        ),
        ("posting_id,matches\na,a b\nb,a b\nc,c\na,a\n", r"row 4 \(line 5\), column 'posting_id': 'a' appears twice"),
        ("", r"sub\.csv: empty file \(no header\)"),
        ("posting_id,matches\n", r"sub\.csv: no rows"),
        ("posting_id\na\n", r"header: missing column\(s\) \['matches'\]"),
    ],
)
def test_score_refuses_what_kaggle_would_not_score(tmp_path, capsys, truth_file, text, message):
    import re

    sub = tmp_path / "sub.csv"
    sub.write_text(text)
    code, errors = score_cli(capsys, sub, truth_file)
    assert code == 2 and len(errors) == 1 and re.search(message, errors[0])


def test_score_with_a_missing_truth_file_names_it(tmp_path, capsys):
    sub = tmp_path / "sub.csv"
    sub.write_text("posting_id,matches\na,a\n")
    code, errors = score_cli(capsys, sub, tmp_path / "nope.csv")
    assert code == 2 and errors == [f"error: {tmp_path / 'nope.csv'}: file not found"]


def test_score_of_a_complete_submission(tmp_path, capsys, truth_file):
    import json

    from pipeline.cli import main

    sub = tmp_path / "sub.csv"
    sub.write_text("posting_id,matches\nc,c\na,a b\nb,b\n")
    assert main(["score", "--submission", str(sub), "--truth", str(truth_file)]) == 0
    score = json.loads(capsys.readouterr().out)
    assert score["rows"] == 3 and score["f1"] == pytest.approx((1 + 1 + 2 / 3) / 3, abs=1e-6)
