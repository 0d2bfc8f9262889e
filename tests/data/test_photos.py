"""Photo-like synthetic postings: Kaggle's layout, deterministic, products stable as the catalogue
grows, siblings close to each other, and the pipeline's contract holds."""

from __future__ import annotations

import json
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("skimage")

from pipeline.data import Dataset  # noqa: E402
from pipeline.data.synth.catalogue import make_families, make_group  # noqa: E402
from pipeline.data.synth.photos import make_photo_synthetic, make_products, product_picture  # noqa: E402

N_GROUPS, IMAGE_SIZE, SEED = 16, 48, 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("photos")
    return out, make_photo_synthetic(out, n_groups=N_GROUPS, seed=SEED, image_size=IMAGE_SIZE, progress=False)


def _file_bytes(out: Path) -> dict[str, bytes]:
    files = [out / n for n in ("train.csv", "test.csv", "test_truth.csv")]
    files += sorted((out / "train_images").iterdir()) + sorted((out / "test_images").iterdir())
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_layout_passes_the_contract_and_phash_is_of_the_file(dataset):
    out, summary = dataset
    data = Dataset(out)
    train = data.read("train", check_images=True, workers=1)
    test = data.read("test", check_images=True, workers=1)
    assert len(train) == summary["train"]["rows"] and len(test) == summary["test"]["rows"]
    assert summary["train"]["groups"] + summary["test"]["groups"] == N_GROUPS
    for row in train.head(5).itertuples():
        with Image.open(out / "train_images" / row.image) as image:
            assert image.format == "JPEG" and image.size == (IMAGE_SIZE, IMAGE_SIZE)
            assert row.image_phash == str(imagehash.phash(image))


def test_same_seed_is_byte_identical(dataset, tmp_path):
    make_photo_synthetic(tmp_path / "again", n_groups=N_GROUPS, seed=SEED, image_size=IMAGE_SIZE, progress=False)
    assert _file_bytes(tmp_path / "again") == _file_bytes(dataset[0])


def test_products_do_not_change_when_more_groups_are_asked_for():
    small, large = make_families(10, SEED), make_families(40, SEED)
    assert make_products(small, SEED)[:-1] == make_products(large, SEED)[: len(small) - 1]


def test_siblings_differ_less_than_families():
    """Two sibling groups' products are closer in pixels than products of different families."""
    families = [f for f in make_families(60, SEED) if len(f.variants) >= 2][:8]
    products = make_products(make_families(60, SEED), SEED)

    def pixels(fam, sibling) -> np.ndarray:
        picture = product_picture(products[fam.index], make_group(fam, sibling, SEED), 64)
        return np.asarray(picture.resize((32, 32)), dtype=np.float32)

    siblings = [np.abs(pixels(f, 0) - pixels(f, 1)).mean() for f in families]
    strangers = [np.abs(pixels(a, 0) - pixels(b, 0)).mean() for a, b in zip(families, families[1:])]
    assert np.mean(siblings) < 0.5 * np.mean(strangers)


def test_groups_repeat_a_product_without_copying_it(dataset):
    out, _ = dataset
    train = pd.read_csv(out / "train.csv", dtype={"image_phash": str})
    assert train.groupby("label_group").size().min() >= 2
    assert train["image_phash"].nunique() > 0.6 * len(train)  # most postings are re-shot, not re-uploaded


def test_cli_writes_photo_postings(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["synth", "--out", str(tmp_path), "--photos", "--groups", "4", "--image-size", "48"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["train"]["groups"] + summary["test"]["groups"] == 4
    assert (tmp_path / "train.csv").exists()
