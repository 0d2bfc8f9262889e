"""Submission CSVs (``posting_id,matches``): build, validate, write atomically, read back."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.data.contract import DataError, where
from pipeline.io import write_csv
from pipeline.metric import true_sets_from_labels


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
    """Read a ``posting_id,matches`` CSV (a submission, or a truth file in that form)."""
    df = _read(path, ("posting_id", "matches"))
    return {pid: set(str(m).split()) for pid, m in zip(df["posting_id"], df["matches"])}


def read_truth(path: str | Path) -> dict[str, set[str]]:
    """Read true match sets from ``posting_id,label_group`` or ``posting_id,matches``."""
    head = pd.read_csv(path, nrows=0)
    if "label_group" in head.columns:
        df = _read(path, ("posting_id", "label_group"))
        return true_sets_from_labels(df["posting_id"].tolist(), df["label_group"].tolist())
    if "matches" in head.columns:
        return read_matches(path)
    raise DataError(f"{path}, header: needs posting_id and either label_group or matches; found {list(head.columns)}")


def _read(path: str | Path, columns: tuple[str, ...]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}, header: missing column(s) {missing}; found {list(df.columns)}")
    return df
