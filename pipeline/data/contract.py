"""The data contract: Kaggle's Shopee layout, read and checked before anything is written.

``DIR/train.csv`` holds ``posting_id,image,image_phash,title,label_group``; ``DIR/test.csv`` the same
without ``label_group``; images live in ``DIR/train_images/`` and ``DIR/test_images/``. Every problem
is reported as a :class:`DataError` that names the file, the row and the column. Rows are counted
from 1 for the first data row, which sits on line 2 of the file.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

TRAIN_COLUMNS = ("posting_id", "image", "image_phash", "title", "label_group")
TEST_COLUMNS = ("posting_id", "image", "image_phash", "title")
_PHASH = re.compile(r"^[0-9a-fA-F]{16}$")


class DataError(ValueError):
    """Input data that breaks the contract; the message names file, row and column."""


def where(path: Path | str, row: int | None = None, column: str | None = None) -> str:
    """Format a location: ``train.csv, row 3 (line 4), column 'title'``."""
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row} (line {row + 1})")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Dataset:
    """Paths of one dataset in Kaggle's layout."""

    root: Path

    @property
    def train_csv(self) -> Path:
        return self.root / "train.csv"

    @property
    def test_csv(self) -> Path:
        return self.root / "test.csv"

    def images_dir(self, split: str) -> Path:
        return self.root / f"{split}_images"

    def csv(self, split: str) -> Path:
        return self.train_csv if split == "train" else self.test_csv

    def read(self, split: str, check_images: bool = False) -> pd.DataFrame:
        return read_postings(
            self.csv(split),
            labelled=split == "train",
            images_dir=self.images_dir(split) if check_images else None,
        )


def read_postings(path: str | Path, labelled: bool, images_dir: str | Path | None = None) -> pd.DataFrame:
    """Read and validate a postings CSV.

    Args:
        path: ``train.csv`` or ``test.csv``.
        labelled: whether ``label_group`` is required (train) or ignored when present (test).
        images_dir: when given, every ``image`` must exist there and open as an image.

    Returns:
        A frame with ``posting_id, image, image_phash, title`` (strings) and, when labelled,
        ``label_group`` (int64), in file order.

    Raises:
        DataError: naming the file, row and column of the first problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    text = _decode_utf8(path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[])
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: not a readable CSV: {e}") from e

    required = TRAIN_COLUMNS if labelled else TEST_COLUMNS
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{where(path)}, header: missing column(s) {missing}; found {list(df.columns)}")
    df = df[list(required)].copy()
    if df.empty:
        raise DataError(f"{path}: no rows")

    _check_nonempty(df, path, "posting_id")
    _check_id_spaces(df, path)
    _check_unique_ids(df, path)
    _check_nonempty(df, path, "image")
    _check_phash(df, path)
    if labelled:
        df["label_group"] = _parse_labels(df, path)
    df["title"] = _clean_titles(df["title"], path)
    if images_dir is not None:
        check_images(df, Path(images_dir), path)
    return df.reset_index(drop=True)


def encoder_inputs(modality: str, df: pd.DataFrame, images_dir: Path) -> list[str]:
    """What an encoder reads for each row: image paths (image) or titles (text)."""
    if modality == "image":
        return [str(images_dir / name) for name in df["image"]]
    if modality == "text":
        return df["title"].tolist()
    raise ValueError(f"no encoder reads modality {modality!r}; learned modalities are image and text")


def check_images(df: pd.DataFrame, images_dir: Path, csv_path: Path) -> None:
    """Every image must exist and have a readable image header (decoding happens at load time)."""
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found (needed for {csv_path} with the image modality on)")
    for i, name in enumerate(tqdm(df["image"], desc=f"checking {images_dir.name}", leave=False, mininterval=1.0)):
        p = images_dir / name
        if not p.is_file():
            raise DataError(f"{where(csv_path, i + 1, 'image')}: image file {p} does not exist")
        try:
            with Image.open(p) as im:
                im.size  # noqa: B018 - reading the header is the check
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{where(csv_path, i + 1, 'image')}: image file {p} is unreadable: {e}") from e


def _decode_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = _column_of_bad_byte(raw, e.start)
        col = f", column {column!r}" if column else ""
        raise DataError(
            f"{path}, row {line - 1} (line {line}){col}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "re-save the file as UTF-8"
        ) from e
    return text.removeprefix("\ufeff")


def _column_of_bad_byte(raw: bytes, offset: int) -> str | None:
    """Name the CSV column that holds the undecodable byte, when the header can be read."""
    header_end = raw.find(b"\n")
    line_start = raw.rfind(b"\n", 0, offset) + 1
    if header_end < 0 or line_start == 0:
        return None
    header = next(csv.reader([raw[:header_end].decode("utf-8", "replace").strip()]))
    prefix = raw[line_start:offset].decode("utf-8", "replace")
    # Count unquoted commas before the bad byte to find its field.
    field_idx, quoted = 0, False
    for ch in prefix:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            field_idx += 1
    return header[field_idx] if field_idx < len(header) else None


def _check_nonempty(df: pd.DataFrame, path: Path, column: str) -> None:
    blank = df[column].str.strip() == ""
    if blank.any():
        i = int(blank.to_numpy().argmax())
        raise DataError(f"{where(path, i + 1, column)}: empty value")


def _check_id_spaces(df: pd.DataFrame, path: Path) -> None:
    # A submission separates ids with spaces, so an id holding one could never be matched.
    spaced = df["posting_id"].str.contains(r"\s", regex=True)
    if spaced.any():
        i = int(spaced.to_numpy().argmax())
        raise DataError(f"{where(path, i + 1, 'posting_id')}: posting_id {df['posting_id'].iat[i]!r} contains whitespace")


def _check_unique_ids(df: pd.DataFrame, path: Path) -> None:
    dup = df["posting_id"].duplicated(keep="first")
    if dup.any():
        i = int(dup.to_numpy().argmax())
        pid = df["posting_id"].iat[i]
        first = int((df["posting_id"] == pid).to_numpy().argmax())
        raise DataError(
            f"{where(path, i + 1, 'posting_id')}: duplicate posting_id {pid!r} (first seen at row {first + 1})"
        )


def _check_phash(df: pd.DataFrame, path: Path) -> None:
    ok = df["image_phash"].str.fullmatch(_PHASH)
    if not ok.all():
        i = int((~ok).to_numpy().argmax())
        raise DataError(
            f"{where(path, i + 1, 'image_phash')}: malformed phash {df['image_phash'].iat[i]!r} "
            "(expected 16 hexadecimal digits)"
        )


def _parse_labels(df: pd.DataFrame, path: Path) -> pd.Series:
    raw = df["label_group"].str.strip()
    # Digits only ("123.0", as pandas writes an int column that held a NaN, is accepted): "inf",
    # "1e400" or "3.5" are not group ids, and a value past int64 would wrap.
    bad = ~raw.str.fullmatch(r"-?\d{1,18}(\.0+)?")
    if bad.any():
        i = int(bad.to_numpy().argmax())
        what = "missing" if raw.iat[i] == "" else f"not an integer (at most 18 digits): {raw.iat[i]!r}"
        raise DataError(f"{where(path, i + 1, 'label_group')}: label_group {what}")
    return raw.str.replace(r"\.0+$", "", regex=True).astype("int64")


def _clean_titles(titles: pd.Series, path: Path) -> pd.Series:
    empty = titles.str.strip() == ""
    n = int(empty.sum())
    if n:
        warnings.warn(f"{path}: {n} empty title(s) read as empty strings", stacklevel=3)
    return titles.where(~empty, "")
