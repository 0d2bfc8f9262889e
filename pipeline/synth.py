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

import dataclasses
import functools
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFont
from tqdm import tqdm

from pipeline.io import atomic_path, write_csv

# Generator streams; part of every child seed so the streams never overlap.
_FAMILY, _GROUP, _POSTING, _IDS, _SPLIT, _ORDER = range(6)

# Kaggle's posting ids and label groups are unsigned 32-bit numbers of 9-10 digits.
_ID_LOW, _ID_HIGH = 100_000_000, 4_294_967_295

# (Indonesian name, English name, RGB). Sellers mostly write the Indonesian name.
_COLOURS = (
    ("Merah", "Red", (200, 30, 35)),
    ("Hitam", "Black", (25, 25, 28)),
    ("Putih", "White", (238, 238, 232)),
    ("Biru", "Blue", (35, 80, 190)),
    ("Hijau", "Green", (40, 150, 70)),
    ("Kuning", "Yellow", (240, 200, 40)),
    ("Pink", "Pink", (240, 130, 170)),
    ("Abu", "Grey", (130, 130, 135)),
    ("Coklat", "Brown", (120, 75, 40)),
    ("Ungu", "Purple", (120, 60, 160)),
    ("Navy", "Navy", (25, 35, 85)),
    ("Cream", "Cream", (235, 220, 185)),
    ("Orange", "Orange", (240, 120, 30)),
    ("Tosca", "Teal", (30, 160, 150)),
)


@dataclasses.dataclass(frozen=True)
class _ProductType:
    shape: str
    nouns: tuple[str, ...]
    descriptors: tuple[str, ...]
    # axis name -> the values sibling groups may take along it.
    axes: tuple[tuple[str, tuple], ...]


_PRODUCT_TYPES = (
    _ProductType(
        "bottle",
        ("Botol Minum", "Tumbler", "Shampoo", "Sabun Cair", "Hand Sanitizer", "Minyak Kayu Putih"),
        ("Stainless", "Anti Bocor", "BPA Free", "Tahan Panas", "Premium", "Import", "Wangi"),
        (("volume", (100, 250, 500, 750, 1000, 1500)), ("colour", None)),
    ),
    _ProductType(
        "box",
        ("Susu Bubuk", "Kopi Bubuk", "Teh Celup", "Biskuit", "Masker Medis", "Sereal Coklat"),
        ("Halal", "Exp Lama", "Kemasan Baru", "Premium", "Import", "Sachet", "Hemat"),
        (("weight", (100, 250, 500, 1000, 2000)), ("count", (1, 2, 3, 6, 10, 12))),
    ),
    _ProductType(
        "shirt",
        ("Kaos Polos", "Kemeja Flanel", "Hoodie Jumper", "Kaos Oversize", "Baju Koko", "Jaket Bomber"),
        ("Cotton Combed", "Pria", "Wanita", "Unisex", "Distro", "Lengan Panjang", "Premium"),
        (("size", ("S", "M", "L", "XL", "XXL")), ("colour", None)),
    ),
    _ProductType(
        "phone",
        ("HP Android", "Smartphone", "Tablet", "Flashdisk", "Memory Card", "Handphone"),
        ("Garansi Resmi", "Original", "RAM 4GB", "Dual SIM", "Second Mulus", "Fullset", "Baru"),
        (("storage", (16, 32, 64, 128, 256, 512)), ("colour", None)),
    ),
    _ProductType(
        "bag",
        ("Tas Selempang", "Tas Ransel", "Dompet Wanita", "Tas Laptop", "Totebag Kanvas", "Sling Bag"),
        ("Kulit Sintetis", "Anti Air", "Korean Style", "Pria", "Wanita", "Premium", "Kekinian"),
        (("colour", None),),
    ),
    _ProductType(
        "jar",
        ("Krim Wajah", "Masker Wajah", "Body Butter", "Pomade", "Selai Kacang", "Madu Murni"),
        ("BPOM", "Glowing", "Halal", "Original", "Whitening", "Natural", "Import"),
        (("volume", (15, 30, 50, 100, 200)), ("weight", (100, 250, 500, 1000))),
    ),
    _ProductType(
        "shoe",
        ("Sepatu Sneakers", "Sandal Jepit", "Sepatu Sekolah", "Sepatu Lari", "Sandal Slop", "Sepatu Kets"),
        ("Pria", "Wanita", "Anti Slip", "Empuk", "Casual", "Import", "Kekinian"),
        (("shoe_size", ("38", "39", "40", "41", "42", "43")), ("colour", None)),
    ),
)

_PATTERNS = ("plain", "stripes", "dots", "checks")
_BRAND_SYLLABLES = ("ka", "zu", "mi", "lo", "ve", "ra", "no", "ta", "xi", "do", "re", "sa", "pe",
                    "go", "ri", "fu", "na", "bo", "le", "yo", "ki", "ma", "tu", "se")
_TITLE_PROMOS = ("PROMO", "READY STOCK", "BISA COD", "TERMURAH", "ORIGINAL", "Murah", "Best Seller",
                 "100% ORI", "Grosir", "Diskon", "Free Bubble Wrap", "NEW")
_TITLE_FILLERS = ("untuk", "dan", "bisa", "yang", "ori", "baru", "grosir", "asli", "new", "murah")
_SEPARATORS = (" - ", " | ", " / ", ", ", " ")
_STICKERS = ("SALE 50%", "COD", "GRATIS ONGKIR", "READY", "PROMO", "ORI 100%", "DISKON 30%",
             "BEST SELLER")

# Width, height of the product's bounding box as a fraction of the drawing canvas.
_SHAPE_BOX = {"bottle": (0.38, 0.86), "box": (0.66, 0.62), "shirt": (0.82, 0.76),
              "phone": (0.46, 0.84), "bag": (0.72, 0.72), "jar": (0.6, 0.56), "shoe": (0.86, 0.42)}

# Share of postings that re-upload an earlier picture of the same group, as sellers copy photos.
_REUPLOAD_P = 0.08
# Share of (other) postings built on the family's studio shot rather than a photo of their own.
_STUDIO_P = 0.75


@dataclasses.dataclass(frozen=True)
class _Shot:
    """Where the product sits in a photo, and on what."""

    backdrop: tuple  # ("plain", rgb) or ("gradient", rgb0, rgb1, angle_rad)
    scale: float  # product side over canvas side
    angle_deg: float
    dx: float  # offsets of the product centre, as fractions of the canvas
    dy: float


@dataclasses.dataclass(frozen=True)
class _Family:
    index: int
    kind: _ProductType
    brand: str
    logo: str
    noun: str
    descriptors: tuple[str, ...]
    model: str
    axis: str
    base_colour: tuple[int, int, int]
    accent: tuple[int, int, int]
    pattern: str
    pattern_colour: tuple[int, int, int]
    pattern_step: float  # spacing as a fraction of the body width
    studio: _Shot  # the supplier's photo setup, shared by all sibling groups
    variants: tuple  # one per sibling group


@dataclasses.dataclass(frozen=True)
class _Group:
    family: _Family
    sibling: int
    variant: object
    size: int  # number of postings

    @property
    def body_colour(self) -> tuple[int, int, int]:
        return _COLOURS[self.variant][2] if self.family.axis == "colour" else self.family.base_colour

    @property
    def body_scale(self) -> float:
        """Bigger variants are drawn bigger, so size siblings differ in the picture too."""
        if self.family.axis not in ("volume", "weight", "count"):
            return 1.0
        rank = self.family.variants.index(self.variant) / max(len(self.family.variants) - 1, 1)
        return 0.78 + 0.22 * rank


def make_synthetic(out_dir, n_groups: int = 200, seed: int = 0, image_size: int = 128,
                   test_fraction: float = 0.25, progress: bool = True) -> dict:
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
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels (phash needs 32x32), got {image_size}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    out_dir = Path(out_dir)

    families = _make_families(n_groups, seed)
    groups = [_make_group(fam, i, seed) for fam in families for i in range(len(fam.variants))]
    test_families = _split_families(families, test_fraction, seed)
    postings = _make_postings(groups, test_families, seed)

    bar = tqdm(postings, desc="synthetic postings", unit="img", disable=not progress)
    pictures: dict[tuple[int, int], list[Image.Image]] = {}
    for post in bar:
        group = post["group"]
        key = (group.family.index, group.sibling)
        rng = np.random.default_rng([seed, _POSTING, *key, post["k"]])
        taken = pictures.setdefault(key, [])
        picture, quality = _seller_photo(group, taken, rng, image_size)
        taken.append(picture)
        path = out_dir / f"{post['split']}_images" / post["image"]
        with atomic_path(path) as tmp:
            picture.save(tmp, format="JPEG", quality=quality)
        # Hash the file as written: JPEG loss is part of what the matcher sees.
        with Image.open(path) as written:
            post["image_phash"] = str(imagehash.phash(written))
        post["title"] = _posting_title(group, rng)
        if post["k"] == group.size - 1:
            del pictures[key]  # a group's postings are consecutive; free its pictures

    return _write_tables(postings, out_dir, seed, n_families=len(families))


def synthetic_titles(labels: np.ndarray, seed: int = 0) -> list[str]:
    """Seller titles only (no images), one per posting: postings with the same label get titles
    of the same synthetic group, and labels 0..G-1 map to G groups in sibling families. For
    benchmarks that need realistic titles at a size where images would take too long."""
    labels = np.asarray(labels)
    families = _make_families(int(labels.max()) + 1, seed)
    groups = [_make_group(fam, i, seed) for fam in families for i in range(len(fam.variants))]
    seen = np.zeros(len(groups), dtype=np.int64)
    titles = []
    for label in labels:
        rng = np.random.default_rng([seed, _POSTING, int(label), int(seen[label])])
        seen[label] += 1
        titles.append(_posting_title(groups[label], rng))
    return titles


def _make_families(n_groups: int, seed: int) -> list[_Family]:
    families, total = [], 0
    while total < n_groups:
        rng = np.random.default_rng([seed, _FAMILY, len(families)])
        n_siblings = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
        n_siblings = min(n_siblings, n_groups - total)
        families.append(_make_family(len(families), n_siblings, rng))
        total += len(families[-1].variants)
    return families


def _make_family(index: int, n_siblings: int, rng: np.random.Generator) -> _Family:
    kind = _PRODUCT_TYPES[rng.integers(len(_PRODUCT_TYPES))]
    axis, values = kind.axes[rng.integers(len(kind.axes))]
    if axis == "colour":
        variants = tuple(int(i) for i in rng.choice(len(_COLOURS), n_siblings, replace=False))
    else:
        picked = np.sort(rng.choice(len(values), min(n_siblings, len(values)), replace=False))
        variants = tuple(values[i] for i in picked)
    brand = "".join(rng.choice(_BRAND_SYLLABLES, rng.integers(2, 4))).capitalize()
    n_desc = int(rng.integers(2, 4))
    descriptors = tuple(str(d) for d in rng.choice(kind.descriptors, n_desc, replace=False))
    model = f"{'AKMXSV'[rng.integers(6)]}{rng.integers(1, 100)}" if rng.random() < 0.5 else ""
    colour_ids = rng.choice(len(_COLOURS), 3, replace=False)
    return _Family(
        index=index,
        kind=kind,
        brand=brand,
        logo=brand[: int(rng.integers(2, 5))].upper(),
        noun=str(rng.choice(kind.nouns)),
        descriptors=descriptors,
        model=model,
        axis=axis,
        base_colour=_COLOURS[colour_ids[0]][2],
        accent=_COLOURS[colour_ids[1]][2],
        pattern=str(rng.choice(_PATTERNS, p=[0.4, 0.25, 0.2, 0.15])),
        pattern_colour=_COLOURS[colour_ids[2]][2],
        pattern_step=float(rng.uniform(0.12, 0.25)),
        studio=_random_shot(rng),
        variants=variants,
    )


def _make_group(family: _Family, sibling: int, seed: int) -> _Group:
    rng = np.random.default_rng([seed, _GROUP, family.index, sibling])
    # Kaggle's groups are mostly pairs and triples with a thin tail, capped at 10.
    size = 2 + min(int(rng.geometric(0.5)) - 1, 8)
    return _Group(family, sibling, family.variants[sibling], size)


def _split_families(families: list[_Family], test_fraction: float, seed: int) -> set[int]:
    """Indices of the families held out for test, about ``test_fraction`` of all groups."""
    rng = np.random.default_rng([seed, _SPLIT])
    n_groups = sum(len(f.variants) for f in families)
    target = round(test_fraction * n_groups)
    test, n_test = set(), 0
    for i in rng.permutation(len(families)):
        if n_test >= target or len(test) == len(families) - 1:
            break  # always leave train at least one family
        test.add(int(i))
        n_test += len(families[i].variants)
    return test


def _make_postings(groups: list[_Group], test_families: set[int], seed: int) -> list[dict]:
    rng = np.random.default_rng([seed, _IDS])
    n = sum(g.size for g in groups)
    post_ids = _unique(lambda: int(rng.integers(_ID_LOW, _ID_HIGH)), n)
    images = _unique(lambda: rng.bytes(16).hex(), n)
    labels = _unique(lambda: int(rng.integers(_ID_LOW, _ID_HIGH)), len(groups))
    postings = []
    for group, label in zip(groups, labels):
        split = "test" if group.family.index in test_families else "train"
        for k in range(group.size):
            i = len(postings)
            postings.append({"group": group, "k": k, "split": split, "label_group": label,
                             "posting_id": f"{split}_{post_ids[i]}", "image": f"{images[i]}.jpg"})
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
    order = np.random.default_rng([seed, _ORDER]).permutation(len(table))
    table, family, is_test = (x.iloc[order].reset_index(drop=True) for x in (table, family, is_test))
    train, test = table[~is_test], table[is_test]

    paths = {name: out_dir / name for name in ("train.csv", "test.csv", "test_truth.csv")}
    write_csv(test[["posting_id", "label_group"]], paths["test_truth.csv"])
    write_csv(test.drop(columns="label_group"), paths["test.csv"])
    write_csv(train, paths["train.csv"])

    def split_summary(part: pd.DataFrame, mask: pd.Series, split: str) -> dict:
        return {"rows": len(part), "groups": int(part["label_group"].nunique()),
                "families": int(family[mask].nunique()), "csv": str(out_dir / f"{split}.csv"),
                "images": str(out_dir / f"{split}_images")}

    return {
        "out_dir": str(out_dir),
        "seed": seed,
        "families": n_families,
        "train": split_summary(train, ~is_test, "train"),
        "test": {**split_summary(test, is_test, "test"), "truth_csv": str(paths["test_truth.csv"])},
    }


# --- Titles -------------------------------------------------------------------------------------


def _posting_title(group: _Group, rng: np.random.Generator) -> str:
    """One seller's title: the family's words, dropped, reordered, decorated and re-cased."""
    fam = group.family
    descriptors = [d for d in fam.descriptors if rng.random() > 0.2]
    if rng.random() < 0.5:
        descriptors = [descriptors[i] for i in rng.permutation(len(descriptors))]
    units = [fam.noun, *descriptors]
    units = [_typo(u, rng) if rng.random() < 0.06 else u for u in units]
    if fam.model:
        units.insert(1, fam.model)
    if rng.random() > 0.08:  # some sellers leave the brand out
        units.insert(len(units) if rng.random() < 0.25 else 0, fam.brand)
    variant = _variant_text(fam.axis, group.variant, rng)
    units.insert(0 if rng.random() < 0.2 else len(units), variant)
    for _ in range(rng.choice(3, p=[0.5, 0.35, 0.15])):
        units.insert(int(rng.integers(len(units) + 1)), str(rng.choice(_TITLE_FILLERS)))
    for _ in range(rng.choice(3, p=[0.35, 0.45, 0.2])):
        promo = str(rng.choice(_TITLE_PROMOS))
        promo = str(rng.choice([promo, f"[{promo}]", f"({promo})", f"{promo}!!"], p=[0.55, 0.25, 0.1, 0.1]))
        units.insert(0 if rng.random() < 0.6 else len(units), promo)

    title = units[0]
    for unit in units[1:]:
        title += str(rng.choice(_SEPARATORS, p=[0.08, 0.06, 0.05, 0.06, 0.75])) + unit
    case = rng.choice(["keep", "lower", "upper", "title"], p=[0.4, 0.25, 0.2, 0.15])
    return {"keep": title, "lower": title.lower(), "upper": title.upper(), "title": title.title()}[case]


def _variant_text(axis: str, value, rng: np.random.Generator) -> str:
    """The variant as some seller writes it (``500ml``, ``0.5 L``, ``64 gb``, ``uk XL`` ...)."""
    def pick(options: list) -> str:
        return str(options[rng.integers(len(options))])

    if axis == "colour":
        indonesian, english, _ = _COLOURS[value]
        name = english if rng.random() < 0.2 else indonesian
        return pick([name, f"warna {name}", f"Warna {name}", f"- {name}"])
    if axis == "volume":
        forms = [f"{value}ml", f"{value} ML", f"{value}mL", f"{value} ml"]
        if value >= 250:
            forms += [f"{value / 1000:g}L", f"{value / 1000:g} liter"]
        return pick(forms)
    if axis == "weight":
        forms = [f"{value}gr", f"{value} gram", f"{value}g", f"{value} GR"]
        if value >= 500:
            forms += [f"{value / 1000:g}kg", f"{value / 1000:g} KG", f"{value / 1000:g} Kilo"]
        return pick(forms)
    if axis == "storage":
        return pick([f"{value}GB", f"{value} gb", f"{value}Gb", f"{value} GB", f"ROM {value}GB"])
    if axis == "count":
        return pick([f"isi {value}", f"{value} pcs", f"{value}pcs", f"paket {value}", f"isi {value} pcs"])
    if axis == "size":
        return pick([value, f"size {value}", f"uk {value}", f"ukuran {value}", f"({value})"])
    if axis == "shoe_size":
        return pick([f"size {value}", f"uk {value}", f"no {value}", f"ukuran {value}"])
    raise ValueError(f"unknown variant axis {axis!r}")


def _typo(text: str, rng: np.random.Generator) -> str:
    """Drop or double one letter of a long word, as hurried sellers do."""
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 5]
    if not long:
        return text
    i = long[rng.integers(len(long))]
    j = int(rng.integers(1, len(words[i]) - 1))
    w = words[i]
    words[i] = w[:j] + w[j + 1:] if rng.random() < 0.5 else w[:j] + w[j] + w[j:]
    return " ".join(words)


# --- Pictures -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled font, so the pictures do not depend on the fonts a machine has.
    return ImageFont.load_default(size=max(size, 6))


def _seller_photo(group: _Group, earlier: list[Image.Image], rng: np.random.Generator,
                  size: int) -> tuple[Image.Image, int]:
    """One posting's picture (RGB, ``size`` square) and the JPEG quality to save it with.

    Most sellers reuse the supplier's studio shot with light edits; the rest take their own
    photo. The studio shot belongs to the family, so siblings share it too: a picture hash then
    finds the siblings as readily as the true matches.
    """
    quality = int(rng.integers(40, 96))
    if earlier and rng.random() < _REUPLOAD_P:
        return earlier[int(rng.integers(len(earlier)))], quality
    studio = rng.random() < _STUDIO_P
    shot = group.family.studio if studio else _random_shot(rng)
    canvas = 2 * size  # draw at twice the size so downscaling smooths the edges
    photo = _compose(_product_picture(group, canvas), canvas, shot)

    # phash shifts most under crops and frames, so reposts of the studio shot keep them mild.
    strength = 0.25 if studio else 1.0
    min_crop = 1.0 - 0.28 * strength
    crop_w, crop_h = (int(canvas * rng.uniform(min_crop, 1.0)) for _ in range(2))
    left, top = int(rng.integers(canvas - crop_w + 1)), int(rng.integers(canvas - crop_h + 1))
    photo = photo.resize((size, size), Image.LANCZOS, box=(left, top, left + crop_w, top + crop_h))

    photo = _colour_jitter(photo, rng, strength=max(strength, 0.5))
    for _ in range(rng.choice(3, p=[0.45, 0.4, 0.15])):
        _sticker(photo, rng)
    if rng.random() < 0.3:
        photo = _border(photo, rng, max_width=0.12 * strength)
    return photo, quality


def _random_shot(rng: np.random.Generator) -> _Shot:
    kind = rng.choice(["white", "plain", "gradient"], p=[0.3, 0.3, 0.4])
    if kind == "white":
        backdrop = ("plain", tuple(int(v) for v in rng.integers(225, 256, 3)))
    elif kind == "plain":
        backdrop = ("plain", _random_colour(rng))
    else:
        backdrop = ("gradient", _random_colour(rng), _random_colour(rng), float(rng.uniform(0, 2 * np.pi)))
    return _Shot(backdrop, scale=float(rng.uniform(0.6, 1.05)), angle_deg=float(rng.uniform(-14, 14)),
                 dx=float(rng.uniform(-0.12, 0.12)), dy=float(rng.uniform(-0.12, 0.12)))


def _compose(product: Image.Image, canvas: int, shot: _Shot) -> Image.Image:
    photo = _backdrop(canvas, shot.backdrop)
    side = max(int(canvas * shot.scale), 8)
    placed = product.resize((side, side), Image.BILINEAR)
    placed = placed.rotate(shot.angle_deg, resample=Image.BILINEAR, expand=True)
    x = (canvas - placed.width) // 2 + int(shot.dx * canvas)
    y = (canvas - placed.height) // 2 + int(shot.dy * canvas)
    photo.paste(placed, (x, y), placed)
    return photo


@functools.lru_cache(maxsize=8)
def _product_picture(group: _Group, canvas: int) -> Image.Image:
    """The group's product on a transparent ``canvas`` square; siblings differ only in variant."""
    fam = group.family
    box_w, box_h = _SHAPE_BOX[fam.kind.shape]
    w, h = box_w * canvas * group.body_scale, box_h * canvas * group.body_scale
    box = ((canvas - w) / 2, (canvas - h) / 2, (canvas + w) / 2, (canvas + h) / 2)

    mask = Image.new("L", (canvas, canvas), 0)
    top = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    label = _SHAPES[fam.kind.shape](ImageDraw.Draw(mask), ImageDraw.Draw(top), box, fam.accent)

    picture = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    picture.paste(_patterned(canvas, group.body_colour, fam, w), (0, 0), mask)
    picture.alpha_composite(top)
    _label(ImageDraw.Draw(picture), label, group)
    return picture


def _patterned(canvas: int, colour, fam: _Family, body_w: float) -> Image.Image:
    fill = Image.new("RGB", (canvas, canvas), colour)
    if fam.pattern == "plain":
        return fill
    draw = ImageDraw.Draw(fill)
    step = max(int(fam.pattern_step * body_w), 4)
    if fam.pattern in ("stripes", "checks"):
        for y in range(0, canvas, step):
            draw.rectangle((0, y, canvas, y + step // 3), fill=fam.pattern_colour)
    if fam.pattern == "checks":
        for x in range(0, canvas, step):
            draw.rectangle((x, 0, x + step // 3, canvas), fill=fam.pattern_colour)
    if fam.pattern == "dots":
        r = step // 5
        for y in range(step // 2, canvas, step):
            for x in range(step // 2, canvas, step):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fam.pattern_colour)
    return fill


def _label(draw: ImageDraw.ImageDraw, box, group: _Group) -> None:
    """Brand logo, plus a badge with the variant (``500ml``, ``XL``) unless colour is the variant."""
    fam = group.family
    x0, y0, x1, y1 = box
    height = y1 - y0
    ink = (255, 255, 255) if sum(fam.accent) < 380 else (20, 20, 20)
    draw.text(((x0 + x1) / 2, y0 + 0.3 * height), fam.logo, fill=fam.accent, anchor="mm",
              font=_font(int(0.42 * height)), stroke_width=1, stroke_fill=ink)
    if fam.axis == "colour":
        return
    text = {"volume": f"{group.variant}ml", "weight": f"{group.variant}g", "count": f"x{group.variant}",
            "storage": f"{group.variant}GB"}.get(fam.axis, str(group.variant))
    font = _font(int(0.3 * height))
    cx, cy = (x0 + x1) / 2, y0 + 0.75 * height
    left, top, right, bottom = draw.textbbox((cx, cy), text, font=font, anchor="mm")
    draw.rounded_rectangle((left - 3, top - 2, right + 3, bottom + 2), radius=3, fill=fam.accent)
    draw.text((cx, cy), text, fill=ink, font=font, anchor="mm")


# Each shape draws its body on ``body`` (a mask the pattern fills), its parts on ``top``, and
# returns the box where the logo and variant badge go.


def _bottle(body, top, box, accent):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    body.rounded_rectangle((x0, y0 + 0.22 * h, x1, y1), radius=0.18 * w, fill=255)
    body.rectangle((x0 + 0.3 * w, y0 + 0.08 * h, x1 - 0.3 * w, y0 + 0.25 * h), fill=255)
    top.rectangle((x0 + 0.26 * w, y0, x1 - 0.26 * w, y0 + 0.1 * h), fill=accent)
    band = (x0, y0 + 0.45 * h, x1, y0 + 0.8 * h)
    top.rectangle(band, fill=(245, 245, 240, 255))
    return band


def _box(body, top, box, accent):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    front = (x0, y0 + 0.22 * h, x1 - 0.22 * w, y1)
    body.rectangle(front, fill=255)
    body.polygon([(x0, front[1]), (x0 + 0.22 * w, y0), (x1, y0), (front[2], front[1])], fill=255)
    body.polygon([(front[2], front[1]), (x1, y0), (x1, y1 - 0.22 * h), (front[2], y1)], fill=255)
    top.polygon([(front[2], front[1]), (x1, y0), (x1, y1 - 0.22 * h), (front[2], y1)],
                fill=(0, 0, 0, 70))  # the side in shade gives the box depth
    fw, fh = front[2] - front[0], front[3] - front[1]
    return (front[0] + 0.1 * fw, front[1] + 0.2 * fh, front[2] - 0.1 * fw, front[3] - 0.15 * fh)


def _shirt(body, top, box, accent):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    pts = [(0.35, 0), (0.65, 0), (1, 0.18), (0.88, 0.42), (0.78, 0.36), (0.78, 1), (0.22, 1),
           (0.22, 0.36), (0.12, 0.42), (0, 0.18)]
    body.polygon([(x0 + px * w, y0 + py * h) for px, py in pts], fill=255)
    top.ellipse((x0 + 0.38 * w, y0 - 0.06 * h, x1 - 0.38 * w, y0 + 0.1 * h), fill=accent)
    return (x0 + 0.3 * w, y0 + 0.28 * h, x1 - 0.3 * w, y0 + 0.62 * h)


def _phone(body, top, box, accent):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    body.rounded_rectangle(box, radius=0.14 * w, fill=255)
    screen = (x0 + 0.08 * w, y0 + 0.09 * h, x1 - 0.08 * w, y1 - 0.09 * h)
    top.rectangle(screen, fill=(18, 20, 30, 255))
    top.ellipse((x0 + 0.45 * w, y0 + 0.02 * h, x0 + 0.55 * w, y0 + 0.07 * h), fill=accent)
    sw, sh = screen[2] - screen[0], screen[3] - screen[1]
    return (screen[0], screen[1] + 0.35 * sh, screen[2], screen[1] + 0.35 * sh + 0.9 * sw)


def _bag(body, top, box, accent):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    top.arc((x0 + 0.2 * w, y0, x1 - 0.2 * w, y0 + 0.6 * h), 180, 360, fill=accent,
            width=max(int(0.06 * w), 2))
    body.rounded_rectangle((x0, y0 + 0.3 * h, x1, y1), radius=0.1 * w, fill=255)
    top.polygon([(x0, y0 + 0.3 * h), (x1, y0 + 0.3 * h), (x1, y0 + 0.5 * h), (x0 + 0.5 * w, y0 + 0.6 * h),
                 (x0, y0 + 0.5 * h)], fill=(0, 0, 0, 60))  # flap
    return (x0 + 0.15 * w, y0 + 0.58 * h, x1 - 0.15 * w, y1 - 0.05 * h)


def _jar(body, top, box, accent):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    body.rounded_rectangle((x0, y0 + 0.22 * h, x1, y1), radius=0.12 * w, fill=255)
    top.rounded_rectangle((x0 - 0.03 * w, y0, x1 + 0.03 * w, y0 + 0.26 * h), radius=0.05 * w, fill=accent)
    band = (x0, y0 + 0.38 * h, x1, y0 + 0.9 * h)
    top.rectangle(band, fill=(245, 245, 240, 255))
    return band


def _shoe(body, top, box, accent):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    pts = [(0, 0.85), (0, 0.3), (0.12, 0), (0.38, 0), (0.5, 0.35), (0.85, 0.45), (1, 0.65), (1, 0.85)]
    body.polygon([(x0 + px * w, y0 + py * h) for px, py in pts], fill=255)
    top.rectangle((x0, y0 + 0.82 * h, x1, y1), fill=(240, 240, 240, 255))
    top.line([(x0 + 0.45 * w, y0 + 0.35 * h), (x0 + 0.3 * w, y0 + 0.12 * h)], fill=accent,
             width=max(int(0.03 * w), 2))
    return (x0 + 0.1 * w, y0 + 0.35 * h, x0 + 0.6 * w, y0 + 0.8 * h)


_SHAPES = {"bottle": _bottle, "box": _box, "shirt": _shirt, "phone": _phone, "bag": _bag,
           "jar": _jar, "shoe": _shoe}


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _backdrop(canvas: int, backdrop: tuple) -> Image.Image:
    if backdrop[0] == "plain":
        return Image.new("RGB", (canvas, canvas), backdrop[1])
    _, c0, c1, angle = backdrop
    ramp = np.linspace(-0.5, 0.5, canvas)
    t = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]  # (canvas, canvas)
    t = ((t - t.min()) / (t.max() - t.min())).astype(np.float32)
    c0, c1 = np.array(c0, dtype=np.float32), np.array(c1, dtype=np.float32)
    pixels = c0 + t[..., None] * (c1 - c0)  # (canvas, canvas, 3)
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def _colour_jitter(photo: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Brightness, contrast, saturation and hue shifts; ``strength`` 1 is a phone camera's worst."""
    def factor(spread: float) -> float:
        return 1.0 + strength * rng.uniform(-spread, spread)

    photo = ImageEnhance.Brightness(photo).enhance(factor(0.3))
    photo = ImageEnhance.Contrast(photo).enhance(factor(0.3))
    photo = ImageEnhance.Color(photo).enhance(factor(0.4))
    hsv = np.asarray(photo.convert("HSV")).copy()
    shift = int(round(strength * rng.uniform(-8, 8)))  # of 256: enough to blur Merah vs Orange
    hsv[..., 0] += np.uint8(shift % 256)  # hue wraps around, as uint8 does
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _sticker(photo: Image.Image, rng: np.random.Generator) -> None:
    """Stamp a promo text ("SALE 50%", "COD" ...) somewhere on the picture, in place."""
    draw = ImageDraw.Draw(photo)
    font = _font(int(photo.width * rng.uniform(0.09, 0.16)))
    text = str(rng.choice(_STICKERS))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = int(rng.integers(0, max(photo.width - (right - left), 1)))
    y = int(rng.integers(0, max(photo.height - (bottom - top), 1)))
    # (plate, ink) pairs that stay readable; no plate means the text sits on the photo itself.
    plate, ink = ((None, (255, 255, 255)), (None, (220, 20, 30)), (None, (250, 220, 0)),
                  ((220, 20, 30), (255, 255, 255)), ((250, 200, 0), (20, 20, 20)),
                  ((20, 20, 20), (250, 220, 0)), ((255, 120, 0), (255, 255, 255)))[rng.integers(7)]
    if plate is not None:
        draw.rectangle((x + left - 2, y + top - 2, x + right + 2, y + bottom + 2), fill=plate)
    draw.text((x, y), text, fill=ink, font=font)


def _border(photo: Image.Image, rng: np.random.Generator, max_width: float) -> Image.Image:
    """Pad with a frame of random colour and widths (up to ``max_width`` of the side per side),
    then scale back to the original size."""
    size = photo.width
    left, top, right, bottom = (int(size * rng.uniform(0.0, max_width)) for _ in range(4))
    framed = Image.new("RGB", (size + left + right, size + top + bottom), _random_colour(rng))
    framed.paste(photo, (left, top))
    return framed.resize((size, size), Image.LANCZOS)

