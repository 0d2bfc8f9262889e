"""Submission CSVs (``posting_id,matches``): build, validate, write atomically, read back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.contract import DataError, Locator, read_table, where
from pipeline.io import write_csv
from pipeline.metric import score_matches, true_sets_from_labels


class SubmissionError(ValueError):
    """A submission that Kaggle would reject or mis-score."""


def build_submission(ids: Sequence[str], match_indices: Sequence[np.ndarray]) -> pd.DataFrame:
    """Turn per-posting index arrays into the submission frame; each row always includes itself."""
    ids = np.asarray(ids, dtype=object)
    matches = []
    for i, idx in enumerate(match_indices):
        idx = np.asarray(idx, dtype=np.int64)
        # Self first, then the neighbours in the order given (best first), without repeats.
        order = [i] + [int(j) for j in dict.fromkeys(idx.tolist()) if j != i]
        matches.append(" ".join(ids[order]))
    return pd.DataFrame({"posting_id": ids, "matches": matches})


def validate_submission(sub: pd.DataFrame, test_ids: Sequence[str], name: str = "submission") -> None:
    """Every test posting appears exactly once, includes itself, and matches only test postings."""
    if list(sub.columns) != ["posting_id", "matches"]:
        raise SubmissionError(f"{name}: columns must be ['posting_id', 'matches'], got {list(sub.columns)}")
    known = set(test_ids)
    dup = sub["posting_id"].duplicated()
    if dup.any():
        i = int(dup.to_numpy().argmax())
        raise SubmissionError(f"{where(name, i + 1, 'posting_id')}: {sub['posting_id'].iat[i]!r} appears twice")
    missing = known - set(sub["posting_id"])
    if missing:
        raise SubmissionError(f"{name}: {len(missing)} test posting(s) missing, e.g. {sorted(missing)[:3]}")
    for i, (pid, m) in enumerate(zip(sub["posting_id"], sub["matches"])):
        if pid not in known:
            raise SubmissionError(f"{where(name, i + 1, 'posting_id')}: {pid!r} is not a test posting")
        found = str(m).split()
        if pid not in found:
            raise SubmissionError(f"{where(name, i + 1, 'matches')}: {pid!r} does not include itself")
        stray = [x for x in found if x not in known]
        if stray:
            raise SubmissionError(f"{where(name, i + 1, 'matches')}: unknown posting id(s) {stray[:3]}")


def write_submission(sub: pd.DataFrame, path: str | Path, test_ids: Sequence[str]) -> Path:
    validate_submission(sub, test_ids, name=str(path))
    return write_csv(sub, path)


def read_matches(path: str | Path) -> dict[str, set[str]]:
    """Read a ``posting_id,matches`` CSV (a submission, or a truth file in that form).

    Raises:
        DataError: a missing or broken file, or a posting_id that is empty or on two rows.
    """
    df, loc = read_table(path, ("posting_id", "matches"))
    _check_ids(df, loc)
    return {pid: set(m.split()) for pid, m in zip(df["posting_id"], df["matches"])}


def read_truth(path: str | Path) -> dict[str, set[str]]:
    """Read true match sets from ``posting_id,label_group`` or ``posting_id,matches``."""
    df, loc = read_table(path, None)
    if "posting_id" in df.columns and "label_group" in df.columns:
        _check_ids(df, loc)
        return true_sets_from_labels(df["posting_id"].tolist(), df["label_group"].str.strip().tolist())
    if "posting_id" in df.columns and "matches" in df.columns:
        return read_matches(path)
    raise DataError(f"{path}, header: needs posting_id and either label_group or matches; found {list(df.columns)}")


def score_submission(submission: str | Path, truth: str | Path) -> dict[str, float]:
    """Score a submission CSV against a truth CSV, as Kaggle would: the submission must list every
    posting of the truth once, and no other.

    Raises:
        DataError: a file that is missing, broken or lists a posting twice.
        SubmissionError: a posting of the truth without a row, or a row the truth does not know.
    """
    true_sets = read_truth(truth)
    df, loc = read_table(submission, ("posting_id", "matches"))
    _check_ids(df, loc)
    i = _first_true(~df["posting_id"].isin(true_sets))
    if i is not None:
        raise SubmissionError(f"{loc(i, 'posting_id')}: {df['posting_id'].iat[i]!r} is not a posting of {truth}")
    missing = sorted(set(true_sets) - set(df["posting_id"]))
    if missing:
        raise SubmissionError(f"{submission}: {len(missing)} posting(s) of {truth} have no row, e.g. {missing[:3]}")
    return score_matches({pid: set(m.split()) for pid, m in zip(df["posting_id"], df["matches"])}, true_sets)


def _check_ids(df: pd.DataFrame, loc: Locator) -> None:
    i = _first_true(df["posting_id"].str.strip() == "")
    if i is not None:
        raise DataError(f"{loc(i, 'posting_id')}: empty value")
    i = _first_true(df["posting_id"].duplicated())
    if i is not None:
        pid = df["posting_id"].iat[i]
        first = int((df["posting_id"] == pid).to_numpy().argmax())
        raise DataError(
            f"{loc(i, 'posting_id')}: {pid!r} appears twice (first at row {first + 1}), so the "
            "row that counts would be a guess"
        )


def _first_true(mask: pd.Series) -> int | None:
    return int(mask.to_numpy().argmax()) if mask.any() else None
