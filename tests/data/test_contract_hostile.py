"""The data contract against hostile files: image paths stay inside their folder, images
decode fully (in parallel) within a pixel limit, and row numbers follow the file's lines."""

from __future__ import annotations

import io
import struct

import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.data import DataError, Dataset, read_postings

COLUMNS = ["posting_id", "image", "image_phash", "title", "label_group"]


def jpeg(size: int = 32, color=(200, 30, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture()
def data(tmp_path):
    """Six rows in three groups with real JPEGs, train and test alike."""
    root = tmp_path / "data"
    for split in ("train", "test"):
        (root / f"{split}_images").mkdir(parents=True)
        rows = []
        for i in range(6):
            name = f"{split}{i}.jpg"
            (root / f"{split}_images" / name).write_bytes(jpeg(color=(40 * i, 30, 90)))
            rows.append((f"{split}_{i}", name, f"{i:016x}", f"title number {i // 2}", 100 + i // 2))
        df = pd.DataFrame(rows, columns=COLUMNS)
        (df if split == "train" else df.drop(columns="label_group")).to_csv(root / f"{split}.csv", index=False)
    return root


def set_cell(path, row: int, column: str, value: str) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(path, index=False)


def prepare_fails(data, tmp_path, capsys, *extra: str) -> str:
    run = tmp_path / "run"
    code = main(
        [
            "prepare",
            "--data",
            str(data),
            "--out",
            str(run),
            "--modalities",
            "tfidf,phash",
            "folds.n_splits=2",
            "phash.source=image",
            *extra,
        ]
    )
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and not run.exists()
    return errors[0]


@pytest.mark.parametrize(
    "value",
    ["../../outside.jpg", "../train_images/../../outside.jpg", "/etc/hostname", "C:\\images\\x.jpg", "sub/../../x.jpg"],
)
def test_an_image_outside_its_folder_is_refused_at_prepare(data, tmp_path, capsys, value):
    (tmp_path / "outside.jpg").write_bytes(jpeg())
    set_cell(data / "train.csv", 2, "image", value)
    msg = prepare_fails(data, tmp_path, capsys)
    assert "train.csv, row 3 (line 4), column 'image'" in msg and "must be a path inside the images folder" in msg


def test_an_image_link_that_resolves_outside_is_refused(data, tmp_path):
    (tmp_path / "secret.jpg").write_bytes(jpeg())
    (data / "train_images" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    set_cell(data / "train.csv", 1, "image", "link.jpg")
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'image': .*link\.jpg resolves to .*outside"):
        Dataset(data).read("train", check_images=True)
    read_postings(data / "train.csv", labelled=True)  # without images in use, the name alone is fine


def test_a_truncated_jpeg_fails_prepare_although_its_header_reads(data, tmp_path, capsys):
    import numpy as np

    path = data / "train_images" / "train4.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # a scan much longer than the header
    Image.fromarray(noise).save(path, format="JPEG", quality=90)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 4 // 5])
    with Image.open(path) as im:
        assert im.size == (64, 64)  # the header alone passes
    msg = prepare_fails(data, tmp_path, capsys)
    assert "row 5 (line 6), column 'image'" in msg and "truncated" in msg


def test_a_decompression_bomb_is_refused_by_name(data, tmp_path, capsys):
    raw = bytearray(jpeg(16))
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)  # the header claims 900 million pixels
    (data / "train_images" / "train1.jpg").write_bytes(bytes(raw))
    msg = prepare_fails(data, tmp_path, capsys)
    assert "row 2 (line 3), column 'image'" in msg and "900000000 pixels" in msg


def test_images_over_the_pixel_limit_are_refused(data, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 32 x 32 = 1024 pixels
    with pytest.raises(DataError, match=r"row 1 \(line 2\).* is 32x32 = 1,024 pixels, above the limit of 1,000"):
        Dataset(data).read("train", check_images=True, workers=3)


def test_the_first_bad_image_in_file_order_is_named_whatever_the_workers(data):
    for i in (1, 4):
        (data / "train_images" / f"train{i}.jpg").write_bytes(b"not an image")
    for workers in (1, 4):
        with pytest.raises(DataError, match=r"row 2 \(line 3\)"):
            Dataset(data).read("train", check_images=True, workers=workers)


def test_rows_after_a_title_spanning_lines_are_named_by_their_file_line(data):
    set_cell(data / "train.csv", 0, "title", "a title\nover\nthree lines")
    set_cell(data / "train.csv", 4, "label_group", "notanumber")
    lines = (data / "train.csv").read_text().splitlines()
    assert lines[7].startswith("train_4,")  # row 5 starts on line 8
    with pytest.raises(DataError, match=r"row 5 \(line 8\), column 'label_group'"):
        read_postings(data / "train.csv", labelled=True)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"empty file \(no header\)"),
        ("posting_id,image,image_phash,title,label_group\n", "no rows"),
        (
            'posting_id,image,image_phash,title,label_group\na,a.jpg,0000000000000000,"open quote,1\n',
            r"row 1 \(line 2\): not a readable CSV",
        ),
        (
            "posting_id,image,image_phash,title,label_group\na,a.jpg,0000000000000000,t\n",
            r"row 1 \(line 2\): 4 field\(s\) where the header has 5",
        ),
        (
            "posting_id,image,image_phash,title,label_group\n\na,a.jpg,0000000000000000,t,1,extra\n",
            r"row 1 \(line 3\): 6 field\(s\)",
        ),
        (
            "posting_id,image,image,image_phash,title,label_group\na,a,a,0000000000000000,t,1\n",
            r"column\(s\) \['image'\] appear more than once",
        ),
        (
            'posting_id,image,image_phash,title,label_group\na,a.jpg,0000000000000000,"t"x,1\n',
            r"row 1 \(line 2\): not a readable CSV",
        ),
    ],
)
def test_broken_csvs_name_the_row_and_line(tmp_path, text, message):
    path = tmp_path / "train.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_postings(path, labelled=True)
    assert "\n" not in str(err.value)


def test_non_utf8_after_a_title_spanning_lines_names_row_line_and_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(
        b"posting_id,image,image_phash,title,label_group\n"
        b'a,a.jpg,0000000000000000,"two\nlines",1\n'
        b"b,b.jpg,0000000000000000,caf\xe9,1\n"
    )
    with pytest.raises(DataError, match=r"row 2 \(line 4\), column 'title': not UTF-8 \(byte 0xe9"):
        read_postings(path, labelled=True)
