"""The data contract: Kaggle's Shopee layout, read and checked before anything is written.

``DIR/train.csv`` holds ``posting_id,image,image_phash,title,label_group``; ``DIR/test.csv`` the same
without ``label_group``; images live in ``DIR/train_images/`` and ``DIR/test_images/``. Every problem
is reported as a :class:`DataError` that names the file, the row and the column. Rows are counted
from 1 for the first data row, and each is also named by the file line it starts on (a quoted
title may span lines). An ``image`` must name a file inside its split's images folder.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from pipeline.device import default_threads

TRAIN_COLUMNS = ("posting_id", "image", "image_phash", "title", "label_group")
TEST_COLUMNS = ("posting_id", "image", "image_phash", "title")
_PHASH = re.compile(r"^[0-9a-fA-F]{16}$")


class DataError(ValueError):
    """Input data that breaks the contract; the message names file, row and column."""


def where(path: Path | str, row: int | None = None, column: str | None = None, line: int | None = None) -> str:
    """Format a location: ``train.csv, row 3 (line 4), column 'title'``.

    Args:
        row: the data row, from 1.
        line: the file line the row starts on; default ``row + 1`` (no field spans lines before it).
    """
    parts = [str(path)]
    if row is not None:
        parts.append(f"row {row} (line {row + 1 if line is None else line})")
    if column is not None:
        parts.append(f"column {column!r}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Locator:
    """Names a row of a CSV by its data row and the file line it starts on (a quoted title may span
    lines, so the two drift apart)."""

    path: Path
    lines: tuple[int, ...]  # the file line each data row starts on

    def __call__(self, i: int, column: str | None = None) -> str:
        """The location of data row ``i`` (from 0)."""
        return where(self.path, i + 1, column, self.lines[i] if i < len(self.lines) else None)


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

    def read(self, split: str, check_images: bool = False, workers: int | None = None) -> pd.DataFrame:
        return read_postings(
            self.csv(split),
            labelled=split == "train",
            images_dir=self.images_dir(split) if check_images else None,
            workers=workers,
        )


def read_table(path: str | Path, columns: Sequence[str] | None) -> tuple[pd.DataFrame, Locator]:
    """Read a UTF-8 CSV of strings that must hold ``columns`` (others are dropped; None keeps all).

    Every record must have as many fields as the header; empty lines are skipped. Quoted fields
    may span lines, and the returned :class:`Locator` names each row with the line it starts on.

    Raises:
        DataError: naming the file, and the row and line where the CSV itself is broken.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    header, rows, lines = _parse_csv(_decode_utf8(path), path)
    loc = Locator(path, tuple(lines))
    columns = header if columns is None else columns
    dup = sorted({c for c in header if header.count(c) > 1 and c in columns})
    missing = [c for c in columns if c not in header]
    if missing or dup:
        problem = f"missing column(s) {missing}" if missing else f"column(s) {dup} appear more than once"
        raise DataError(f"{where(path)}, header: {problem}; found {header}")
    width = len(header)
    for i, rec in enumerate(rows):
        if len(rec) != width:
            raise DataError(
                f"{loc(i)}: {len(rec)} field(s) where the header has {width}; a comma or quote "
                "in a value must be inside double quotes"
            )
    if not rows:
        raise DataError(f"{path}: no rows")
    keep = [header.index(c) for c in columns]
    df = pd.DataFrame({c: [rec[k] for rec in rows] for c, k in zip(columns, keep)}, dtype=object)
    return df, loc


def _parse_csv(text: str, path: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, records, first line of each record), reading with the csv module so that line
    numbers stay true after a quoted field spanning lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    start = 1
    try:
        for rec in reader:
            if rec:  # an empty line holds no record
                if header is None:
                    header = rec
                else:
                    rows.append(rec)
                    lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        what = "header" if header is None else f"row {len(rows) + 1}"
        raise DataError(
            f"{path}, {what} (line {start}): not a readable CSV ({e}); a quote opened there may never be closed"
        ) from None
    if header is None:
        raise DataError(f"{path}: empty file (no header)")
    return header, rows, lines


def read_postings(
    path: str | Path, labelled: bool, images_dir: str | Path | None = None, workers: int | None = None
) -> pd.DataFrame:
    """Read and validate a postings CSV.

    Args:
        path: ``train.csv`` or ``test.csv``.
        labelled: whether ``label_group`` is required (train) or ignored when present (test).
        images_dir: when given, every ``image`` must exist there and decode fully (see
            :func:`check_images`).
        workers: threads that decode images (default :func:`pipeline.device.default_threads`).

    Returns:
        A frame with ``posting_id, image, image_phash, title`` (strings) and, when labelled,
        ``label_group`` (int64), in file order.

    Raises:
        DataError: naming the file, row and column of the first problem found.
    """
    required = TRAIN_COLUMNS if labelled else TEST_COLUMNS
    df, loc = read_table(path, required)
    _check_nonempty(df, loc, "posting_id")
    _check_id_spaces(df, loc)
    _check_unique_ids(df, loc)
    _check_nonempty(df, loc, "image")
    _check_image_names(df, loc)
    _check_phash(df, loc)
    if labelled:
        df["label_group"] = _parse_labels(df, loc)
    df["title"] = _clean_titles(df["title"], loc.path)
    if images_dir is not None:
        check_images(df, Path(images_dir), loc, workers)
    return df.reset_index(drop=True)


# The signals a posting gives: two learned by an encoder, two computed from the title and the image.
MODALITIES = ("image", "text", "tfidf", "phash")
LEARNED_MODALITIES = ("image", "text")


def encoder_inputs(modality: str, df: pd.DataFrame, images_dir: Path) -> list[str]:
    """What an encoder reads for each row: image paths (image) or titles (text)."""
    if modality == "image":
        return [str(images_dir / name) for name in df["image"]]
    if modality == "text":
        return df["title"].tolist()
    raise ValueError(f"no encoder reads modality {modality!r}; learned modalities are image and text")


def check_images(df: pd.DataFrame, images_dir: Path, csv_path: Path | Locator, workers: int | None = None) -> None:
    """Every image must lie inside ``images_dir`` and decode fully, within Pillow's pixel limit.

    Reading only the header would pass a truncated JPEG that fails hours later, in training; the
    decode runs on ``workers`` threads (Pillow's decoders release the GIL), JPEGs at 1/8 scale,
    which still reads every byte of the scan.
    """
    loc = csv_path if isinstance(csv_path, Locator) else Locator(Path(csv_path), ())
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: image folder not found (needed for {loc.path} with images in use)")
    root = images_dir.resolve()
    names = df["image"].tolist()
    workers = max(1, min(workers or default_threads(), len(names)))
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool:
        # Pillow warns between its limit and twice it; the check below refuses those images anyway.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        problems = pool.map(lambda name: _image_problem(images_dir / name, root), names)
        for i, problem in enumerate(
            tqdm(problems, total=len(names), desc=f"decoding {images_dir.name}", leave=False, mininterval=1.0)
        ):
            if problem:
                pool.shutdown(wait=True, cancel_futures=True)
                raise DataError(f"{loc(i, 'image')}: image file {_shown(str(images_dir / names[i]))} {problem}")


def _image_problem(path: Path, root: Path) -> str | None:
    """What is wrong with one image file, or None."""
    try:
        if not path.resolve().is_relative_to(root):
            return f"resolves to {path.resolve()}, outside {root}"
        if not path.is_file():
            return "does not exist"
        with Image.open(path) as im:
            width, height = im.size
            if width * height > (Image.MAX_IMAGE_PIXELS or float("inf")):
                return (
                    f"is {width}x{height} = {width * height:,} pixels, above the limit of "
                    f"{Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS; a decompression bomb?)"
                )
            im.draft("RGB", (64, 64))
            im.load()
    except Image.DecompressionBombError as e:
        return f"is refused: {e}"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return f"is unreadable: {e}"
    return None


def _decode_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        at = f"line {line}"
        try:  # name the row and column too, when the CSV itself parses
            header, rows, lines = _parse_csv(raw.decode("utf-8", "surrogateescape"), path)
            i, k = next((i, k) for i, rec in enumerate(rows) for k, v in enumerate(rec) if _has_bad_byte(v))
            at = f"row {i + 1} (line {lines[i]}), column {header[k]!r}" if k < len(header) else f"row {i + 1}"
        except (DataError, StopIteration):
            pass
        raise DataError(
            f"{path}, {at}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); re-save the file as UTF-8"
        ) from None


def _has_bad_byte(value: str) -> bool:
    """Whether a field decoded with ``surrogateescape`` held a byte that is not UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _shown(value: str) -> str:
    """A value as it can be shown on one line of an error message."""
    return repr(value) if not value.isprintable() else value


def _first(mask: pd.Series) -> int | None:
    """Position of the first True, or None."""
    return int(mask.to_numpy().argmax()) if mask.any() else None


def _check_nonempty(df: pd.DataFrame, loc: Locator, column: str) -> None:
    i = _first(df[column].str.strip() == "")
    if i is not None:
        raise DataError(f"{loc(i, column)}: empty value")


def _check_id_spaces(df: pd.DataFrame, loc: Locator) -> None:
    # A submission separates ids with spaces, so an id holding one could never be matched.
    i = _first(df["posting_id"].str.contains(r"\s", regex=True))
    if i is not None:
        raise DataError(f"{loc(i, 'posting_id')}: posting_id {df['posting_id'].iat[i]!r} contains whitespace")


def _check_unique_ids(df: pd.DataFrame, loc: Locator) -> None:
    i = _first(df["posting_id"].duplicated(keep="first"))
    if i is not None:
        pid = df["posting_id"].iat[i]
        first = int((df["posting_id"] == pid).to_numpy().argmax())
        raise DataError(f"{loc(i, 'posting_id')}: duplicate posting_id {pid!r} (first seen at row {first + 1})")


def _check_image_names(df: pd.DataFrame, loc: Locator) -> None:
    """An image is named relative to its split's images folder; an absolute path or a ``..`` part
    would read a file outside it (a crafted CSV could point anywhere on the disk)."""
    for i, name in enumerate(df["image"]):
        p = PurePosixPath(name.replace("\\", "/"))
        if p.is_absolute() or PureWindowsPath(name).is_absolute() or ".." in p.parts or "\0" in name:
            raise DataError(
                f"{loc(i, 'image')}: image {name!r} must be a path inside the images folder (no absolute path, no '..')"
            )


def _check_phash(df: pd.DataFrame, loc: Locator) -> None:
    i = _first(~df["image_phash"].str.fullmatch(_PHASH))
    if i is not None:
        raise DataError(
            f"{loc(i, 'image_phash')}: malformed phash {df['image_phash'].iat[i]!r} (expected 16 hexadecimal digits)"
        )


def _parse_labels(df: pd.DataFrame, loc: Locator) -> pd.Series:
    raw = df["label_group"].str.strip()
    # ASCII digits only ("123.0", as pandas writes an int column that held a NaN, is accepted):
    # "inf", "1e400" or "3.5" are not group ids, and a value past int64 would wrap.
    i = _first(~raw.str.fullmatch(r"-?[0-9]{1,18}(\.0+)?"))
    if i is not None:
        what = "missing" if raw.iat[i] == "" else f"not an integer (at most 18 digits): {raw.iat[i]!r}"
        raise DataError(f"{loc(i, 'label_group')}: label_group {what}")
    return raw.str.replace(r"\.0+$", "", regex=True).astype("int64")


def _clean_titles(titles: pd.Series, path: Path) -> pd.Series:
    empty = titles.str.strip() == ""
    n = int(empty.sum())
    if n:
        warnings.warn(f"{path}: {n} empty title(s) read as empty strings", stacklevel=3)
    return titles.where(~empty, "")
