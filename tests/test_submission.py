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
    path = write_submission(build_submission(["a", "b"], [np.array([1]), np.array([0])]), tmp_path / "s.csv", ["a", "b"])
    assert read_matches(path) == {"a": {"a", "b"}, "b": {"a", "b"}}
    pd.DataFrame({"posting_id": ["a", "b", "c"], "label_group": [1, 1, 2]}).to_csv(tmp_path / "t.csv", index=False)
    assert read_truth(tmp_path / "t.csv")["c"] == {"c"}
