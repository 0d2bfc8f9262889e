"""Tests for the synthetic Shopee-style dataset generator."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.data import synth
from pipeline.data.synth import make_synthetic

N_GROUPS, IMAGE_SIZE, SEED = 24, 64, 3
TRAIN_COLUMNS = ["posting_id", "image", "image_phash", "title", "label_group"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    summary = make_synthetic(out, n_groups=N_GROUPS, seed=SEED, image_size=IMAGE_SIZE, progress=False)
    return out, summary


def _read(out: Path, name: str) -> pd.DataFrame:
    # A phash of only digits would otherwise be parsed as a number.
    return pd.read_csv(out / name, dtype={"image_phash": str, "title": str}, keep_default_na=False)


def _all_rows(out: Path) -> pd.DataFrame:
    """Train and test rows together, each with its label group and image path."""
    train = _read(out, "train.csv").assign(folder="train_images")
    test = _read(out, "test.csv").merge(_read(out, "test_truth.csv"), on="posting_id")
    rows = pd.concat([train, test.assign(folder="test_images")], ignore_index=True)
    return rows.assign(path=[out / f / i for f, i in zip(rows["folder"], rows["image"])])


def _hamming(phashes: pd.Series) -> np.ndarray:
    """Pairwise Hamming distances between 64-bit hex phashes, (n, n)."""
    as_bytes = np.array([list(bytes.fromhex(h)) for h in phashes], dtype=np.uint8)
    bits = np.unpackbits(as_bytes, axis=1)  # (n, 64)
    return (bits[:, None, :] != bits[None, :, :]).sum(-1)


def _tokens(title: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", title.lower()))


def test_layout_and_columns(dataset):
    out, summary = dataset
    train, test, truth = (_read(out, n) for n in ("train.csv", "test.csv", "test_truth.csv"))
    assert list(train.columns) == TRAIN_COLUMNS
    assert list(test.columns) == TRAIN_COLUMNS[:-1]
    assert list(truth.columns) == ["posting_id", "label_group"]
    assert truth["posting_id"].tolist() == test["posting_id"].tolist()

    assert train["posting_id"].str.fullmatch(r"train_\d{9,10}").all()
    assert test["posting_id"].str.fullmatch(r"test_\d{9,10}").all()
    for table in (train, test):
        assert table["image"].str.fullmatch(r"[0-9a-f]{32}\.jpg").all()
        assert table["image_phash"].str.fullmatch(r"[0-9a-f]{16}").all()
        assert (table["title"].str.strip().str.len() > 0).all()
    for table in (train, truth):
        assert table["label_group"].astype(str).str.fullmatch(r"\d{9,10}").all()

    assert summary["train"]["rows"] == len(train) and summary["test"]["rows"] == len(test)
    assert summary["train"]["groups"] + summary["test"]["groups"] == N_GROUPS
    assert len(test) > 0


def test_ids_and_images_are_unique_across_splits(dataset):
    rows = _all_rows(dataset[0])
    assert rows["posting_id"].is_unique
    assert rows["image"].is_unique
    on_disk = sorted(p.name for d in ("train_images", "test_images") for p in (dataset[0] / d).iterdir())
    assert on_disk == sorted(rows["image"])  # no temporary files left behind, none missing


def test_images_are_rgb_jpegs_whose_phash_matches_the_csv(dataset):
    for row in _all_rows(dataset[0]).itertuples():
        with Image.open(row.path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
            assert row.image_phash == str(imagehash.phash(image))


def _file_bytes(out: Path) -> dict[str, bytes]:
    files = [out / n for n in ("train.csv", "test.csv", "test_truth.csv")]
    files += sorted((out / "train_images").iterdir()) + sorted((out / "test_images").iterdir())
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_same_seed_is_byte_identical_and_another_seed_differs(dataset, tmp_path):
    again = make_synthetic(tmp_path / "again", n_groups=N_GROUPS, seed=SEED, image_size=IMAGE_SIZE, progress=False)
    other = make_synthetic(tmp_path / "other", n_groups=N_GROUPS, seed=SEED + 1, image_size=IMAGE_SIZE, progress=False)
    first = _file_bytes(dataset[0])
    assert _file_bytes(tmp_path / "again") == first
    assert again["train"]["rows"] == dataset[1]["train"]["rows"]

    different = _file_bytes(tmp_path / "other")
    assert different["train.csv"] != first["train.csv"]
    assert not set(different.values()) & set(first.values())  # no image or table is shared
    assert other["train"]["groups"] + other["test"]["groups"] == N_GROUPS


def test_splits_share_no_group_and_groups_are_small_but_varied(dataset):
    out = dataset[0]
    train_groups = set(_read(out, "train.csv")["label_group"])
    test_groups = set(_read(out, "test_truth.csv")["label_group"])
    assert train_groups and test_groups
    assert not train_groups & test_groups

    sizes = _all_rows(out)["label_group"].value_counts()
    assert sizes.min() >= 2
    assert sizes.max() <= 10
    assert sizes.nunique() >= 3
    assert (sizes <= 3).mean() >= 0.5  # skewed small, like Kaggle's


def test_siblings_are_hard_negatives_with_near_identical_titles(dataset):
    rows = _all_rows(dataset[0])
    tokens = [_tokens(t) for t in rows["title"]]
    labels = rows["label_group"].to_numpy()
    groups_with_lookalike = set()
    for i, j in itertools.combinations(range(len(rows)), 2):
        if labels[i] != labels[j] and len(tokens[i] & tokens[j]) / len(tokens[i] | tokens[j]) >= 0.5:
            groups_with_lookalike.update((labels[i], labels[j]))
    # Most families have siblings, so a good share of groups have a look-alike elsewhere.
    assert len(groups_with_lookalike) >= 0.3 * N_GROUPS


def test_titles_vary_within_a_group(dataset):
    rows = _all_rows(dataset[0])
    distinct = rows.groupby("label_group")["title"].nunique()
    sizes = rows.groupby("label_group").size()
    assert (distinct > 1).all()
    assert (distinct == sizes).mean() >= 0.8  # nearly every posting writes its own title


def test_images_are_near_duplicates_within_groups_but_not_trivially(dataset):
    rows = _all_rows(dataset[0])
    distance = _hamming(rows["image_phash"])
    labels = rows["label_group"].to_numpy()
    upper = np.triu(np.ones_like(distance, dtype=bool), k=1)
    same = (labels[:, None] == labels[None, :]) & upper
    different = (labels[:, None] != labels[None, :]) & upper

    within, between = distance[same].mean(), distance[different].mean()
    assert between > 28  # unrelated products look random to phash (32 of 64 bits)
    assert within < between - 6
    assert (distance[same] == 0).mean() < 0.5  # phash equality must not solve the task


def test_families_do_not_change_when_more_groups_are_asked_for():
    small, large = synth.make_families(10, SEED), synth.make_families(40, SEED)
    # The last small family may have been cut short to hit exactly 10 groups.
    assert small[:-1] == large[: len(small) - 1]
    assert sum(len(f.variants) for f in small) == 10


@pytest.mark.parametrize("test_fraction", [0.0, 0.25, 0.5])
def test_test_fraction_is_respected_to_the_family(tmp_path, test_fraction):
    n_groups = 16
    summary = make_synthetic(
        tmp_path, n_groups=n_groups, seed=SEED, image_size=32, test_fraction=test_fraction, progress=False
    )
    target = round(test_fraction * n_groups)
    assert target <= summary["test"]["groups"] <= target + 3  # a family has at most 4 groups
    assert summary["train"]["groups"] + summary["test"]["groups"] == n_groups
    assert len(_read(tmp_path, "test.csv")) == summary["test"]["rows"]


@pytest.mark.parametrize(
    "kwargs", [{"n_groups": 0}, {"image_size": 16}, {"test_fraction": 1.0}, {"test_fraction": -0.1}]
)
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_synthetic(tmp_path, progress=False, **kwargs)
    assert not (tmp_path / "train.csv").exists()
