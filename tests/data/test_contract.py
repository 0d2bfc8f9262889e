import warnings

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.data import DataError, Dataset, read_postings
from pipeline.stages import prepare

ROWS = [
    ("train_1", "a.jpg", "94d8e2b2a5d35e0c", "Kaos Polos Hitam", 11),
    ("train_2", "b.jpg", "94d8e2b2a5d35e0d", "kaos polos hitam murah", 11),
    ("train_3", "c.jpg", "0f0f0f0f0f0f0f0f", "Botol Minum 500ml", 22),
    ("train_4", "d.jpg", "0f0f0f0f0f0f0f0e", "botol minum 0.5L", 22),
]


def write_train(tmp_path, rows=ROWS, name="train.csv"):
    df = pd.DataFrame(rows, columns=["posting_id", "image", "image_phash", "title", "label_group"])
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_reads_types(tmp_path):
    df = read_postings(write_train(tmp_path), labelled=True)
    assert df["label_group"].dtype == "int64"
    assert df["posting_id"].tolist() == ["train_1", "train_2", "train_3", "train_4"]


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "train.csv"
    pd.DataFrame([r[:4] for r in ROWS], columns=["posting_id", "image", "image_phash", "title"]).to_csv(
        path, index=False
    )
    with pytest.raises(DataError, match=r"train\.csv.*missing column.*label_group"):
        read_postings(path, labelled=True)


@pytest.mark.parametrize(
    "row_index, column, value, message",
    [
        (
            2,
            "posting_id",
            "train_1",
            r"row 3 \(line 4\), column 'posting_id': duplicate posting_id 'train_1' \(first seen at row 1\)",
        ),
        (1, "label_group", None, r"row 2 \(line 3\), column 'label_group': label_group missing"),
        (3, "label_group", "abc", r"row 4 \(line 5\), column 'label_group': label_group not an integer"),
        (3, "label_group", "inf", r"row 4 \(line 5\), column 'label_group': label_group not an integer"),
        (
            2,
            "label_group",
            "99999999999999999999",
            r"row 3 \(line 4\), column 'label_group': label_group not an integer",
        ),
        (
            0,
            "posting_id",
            "train 1",
            r"row 1 \(line 2\), column 'posting_id': posting_id 'train 1' contains whitespace",
        ),
        (0, "image_phash", "xyz", r"row 1 \(line 2\), column 'image_phash': malformed phash 'xyz'"),
        (3, "image_phash", "94d8e2b2a5d35e0", r"row 4 \(line 5\), column 'image_phash': malformed phash"),
        (1, "image", "", r"row 2 \(line 3\), column 'image': empty value"),
    ],
)
def test_bad_values_name_file_row_and_column(tmp_path, row_index, column, value, message):
    rows = [list(r) for r in ROWS]
    rows[row_index][["posting_id", "image", "image_phash", "title", "label_group"].index(column)] = value
    path = write_train(tmp_path, rows)
    with pytest.raises(DataError, match=message) as err:
        read_postings(path, labelled=True)
    assert str(path) in str(err.value)


def test_non_utf8_names_row_and_column(tmp_path):
    path = write_train(tmp_path)
    raw = path.read_bytes().replace(b"Botol Minum", b"Botol Min\xe9m")
    path.write_bytes(raw)
    with pytest.raises(DataError, match=r"row 3 \(line 4\), column 'title': not UTF-8"):
        read_postings(path, labelled=True)


def test_empty_titles_warn_once_with_count(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[0][3] = ""
    rows[2][3] = "   "
    path = write_train(tmp_path, rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = read_postings(path, labelled=True)
    msgs = [str(w.message) for w in caught if "empty title" in str(w.message)]
    assert msgs == [f"{path}: 2 empty title(s) read as empty strings"]
    assert df["title"].tolist()[0] == "" and df["title"].tolist()[2] == ""


def test_title_text_like_nan_is_kept(tmp_path):
    rows = [list(r) for r in ROWS]
    rows[0][3] = "NA"
    df = read_postings(write_train(tmp_path, rows), labelled=True)
    assert df["title"].iat[0] == "NA"


def test_test_csv_needs_no_label(tmp_path):
    path = tmp_path / "test.csv"
    pd.DataFrame([r[:4] for r in ROWS], columns=["posting_id", "image", "image_phash", "title"]).to_csv(
        path, index=False
    )
    assert "label_group" not in read_postings(path, labelled=False).columns


def test_missing_and_unreadable_images(tmp_path):
    write_train(tmp_path)
    (tmp_path / "train_images").mkdir()
    with pytest.raises(DataError, match=r"row 1 \(line 2\), column 'image': image file .*a\.jpg does not exist"):
        Dataset(tmp_path).read("train", check_images=True)
    for name in "abcd":
        (tmp_path / "train_images" / f"{name}.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"row 1 \(line 2\), column 'image': image file .* is unreadable"):
        Dataset(tmp_path).read("train", check_images=True)


def test_prepare_writes_nothing_on_bad_data(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [list(r) for r in ROWS]
    rows[1][2] = "nothex"
    write_train(data, rows)
    pd.DataFrame([r[:4] for r in ROWS], columns=["posting_id", "image", "image_phash", "title"]).to_csv(
        data / "test.csv", index=False
    )
    run = tmp_path / "run"
    with pytest.raises(DataError, match="image_phash"):
        prepare(data, run, load_config(None, ["modalities=[tfidf,phash]", "folds.n_splits=2"]))
    assert not run.exists()
