"""A deterministic synthetic dataset in Kaggle's Shopee layout, hard enough that learning pays.

Each *family* is one product template (type, brand, base title words, shape, pattern, logo). Its
1-4 *sibling groups* differ only in one variant (colour, size, volume, storage, ...), so siblings
are the hard negatives: same picture and nearly the same title, different ``label_group``. Each
posting is a seller's photo of the group's product: mostly the family's studio shot lightly edited,
sometimes a shot of its own (backdrop, scale, rotation, crop), then colour jitter, promo stickers,
borders and a JPEG quality of its own, with a freshly messed-up title.

Families, not groups, are split between train and test, so no test group or sibling is seen in
training, as on Kaggle.

Randomness: every family, group and posting draws from its own generator seeded by
``[seed, stream, indices...]``, so the output is byte-identical for a seed and a family's content
does not change when ``n_groups`` grows.
"""

from __future__ import annotations

from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pipeline.data.synth.catalogue import (
    ID_HIGH,
    ID_LOW,
    IDS,
    ORDER,
    POSTING,
    Group,
    make_families,
    make_group,
    split_families,
)
from pipeline.data.synth.pictures import seller_photo
from pipeline.data.synth.titles import posting_title
from pipeline.io import atomic_path, write_csv


def _check_arguments(n_groups: int, image_size: int, test_fraction: float) -> None:
    """The generators' shared argument checks (ValueError naming the bad one)."""
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels (phash needs 32x32), got {image_size}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")


def make_synthetic(
    out_dir,
    n_groups: int = 200,
    seed: int = 0,
    image_size: int = 128,
    test_fraction: float = 0.25,
    progress: bool = True,
) -> dict:
    """Writes a synthetic Shopee-style dataset and returns a small summary.

    Writes ``train.csv``, ``test.csv``, ``test_truth.csv``, ``train_images/`` and ``test_images/``
    in ``out_dir``. Images are written first and CSVs last, each atomically, so a killed run never
    leaves a CSV that points at missing images. Images left by an earlier run with another seed
    are not deleted; the CSVs name only this run's files.

    Args:
        out_dir: destination folder (created if missing).
        n_groups: number of label groups over both splits.
        seed: seed of every random choice; the same seed gives byte-identical files.
        image_size: side of the square JPEGs, in pixels.
        test_fraction: share of groups held out in test, rounded to whole families.
        progress: show a progress bar over postings.

    Returns:
        Rows, groups and families per split, and the paths written.
    """
    _check_arguments(n_groups, image_size, test_fraction)
    out_dir = Path(out_dir)

    families = make_families(n_groups, seed)
    groups = [make_group(fam, i, seed) for fam in families for i in range(len(fam.variants))]
    test_families = split_families(families, test_fraction, seed)
    postings = _make_postings(groups, test_families, seed)

    bar = tqdm(postings, desc="synthetic postings", unit="img", disable=not progress)
    pictures: dict[tuple[int, int], list[Image.Image]] = {}
    for post in bar:
        group = post["group"]
        key = (group.family.index, group.sibling)
        rng = np.random.default_rng([seed, POSTING, *key, post["k"]])
        taken = pictures.setdefault(key, [])
        picture, quality = seller_photo(group, taken, rng, image_size)
        taken.append(picture)
        path = out_dir / f"{post['split']}_images" / post["image"]
        with atomic_path(path) as tmp:
            picture.save(tmp, format="JPEG", quality=quality)
        # Hash the file as written: JPEG loss is part of what the matcher sees.
        with Image.open(path) as written:
            post["image_phash"] = str(imagehash.phash(written))
        post["title"] = posting_title(group, rng)
        if post["k"] == group.size - 1:
            del pictures[key]  # a group's postings are consecutive; free its pictures

    return _write_tables(postings, out_dir, seed, n_families=len(families))


def synthetic_titles(labels: np.ndarray, seed: int = 0) -> list[str]:
    """Seller titles only (no images), one per posting: postings with the same label get titles
    of the same synthetic group, and labels 0..G-1 map to G groups in sibling families. For
    benchmarks that need realistic titles at a size where images would take too long."""
    labels = np.asarray(labels)
    families = make_families(int(labels.max()) + 1, seed)
    groups = [make_group(fam, i, seed) for fam in families for i in range(len(fam.variants))]
    seen = np.zeros(len(groups), dtype=np.int64)
    titles = []
    for label in labels:
        rng = np.random.default_rng([seed, POSTING, int(label), int(seen[label])])
        seen[label] += 1
        titles.append(posting_title(groups[label], rng))
    return titles


def _make_postings(groups: list[Group], test_families: set[int], seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, IDS])
    n = sum(g.size for g in groups)
    post_ids = _unique(lambda: int(rng.integers(ID_LOW, ID_HIGH)), n)
    images = _unique(lambda: rng.bytes(16).hex(), n)
    labels = _unique(lambda: int(rng.integers(ID_LOW, ID_HIGH)), len(groups))
    postings = []
    for group, label in zip(groups, labels):
        split = "test" if group.family.index in test_families else "train"
        for k in range(group.size):
            i = len(postings)
            postings.append(
                {
                    "group": group,
                    "k": k,
                    "split": split,
                    "label_group": label,
                    "posting_id": f"{split}_{post_ids[i]}",
                    "image": f"{images[i]}.jpg",
                }
            )
    return postings


def _unique(draw, n: int) -> list:
    """``n`` distinct draws in the order drawn (collisions are redrawn, deterministically)."""
    seen: dict = {}
    while len(seen) < n:
        seen.setdefault(draw(), None)
    return list(seen)


def _write_tables(postings: list[dict], out_dir: Path, seed: int, n_families: int) -> dict:
    columns = ["posting_id", "image", "image_phash", "title", "label_group"]
    table = pd.DataFrame([{c: p[c] for c in columns} for p in postings], columns=columns)
    family = pd.Series([p["group"].family.index for p in postings])
    is_test = pd.Series([p["split"] == "test" for p in postings])
    # Kaggle's rows are not grouped by label; shuffle so no code can lean on row order.
    order = np.random.default_rng([seed, ORDER]).permutation(len(table))
    table, family, is_test = (x.iloc[order].reset_index(drop=True) for x in (table, family, is_test))
    train, test = table[~is_test], table[is_test]

    paths = {name: out_dir / name for name in ("train.csv", "test.csv", "test_truth.csv")}
    write_csv(test[["posting_id", "label_group"]], paths["test_truth.csv"])
    write_csv(test.drop(columns="label_group"), paths["test.csv"])
    write_csv(train, paths["train.csv"])

    def split_summary(part: pd.DataFrame, mask: pd.Series, split: str) -> dict:
        return {
            "rows": len(part),
            "groups": int(part["label_group"].nunique()),
            "families": int(family[mask].nunique()),
            "csv": str(out_dir / f"{split}.csv"),
            "images": str(out_dir / f"{split}_images"),
        }

    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "families": n_families,
        "train": split_summary(train, ~is_test, "train"),
        "test": {**split_summary(test, is_test, "test"), "truth_csv": str(paths["test_truth.csv"])},
    }
