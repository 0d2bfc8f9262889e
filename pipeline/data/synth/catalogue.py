"""The synthetic catalogue: product families, their sibling groups, and where each photo is taken."""

from __future__ import annotations

import dataclasses

import numpy as np

# Generator streams; part of every child seed so the streams never overlap.
FAMILY, GROUP, POSTING, IDS, SPLIT, ORDER = range(6)

# Kaggle's posting ids and label groups are unsigned 32-bit numbers of 9-10 digits.
ID_LOW, ID_HIGH = 100_000_000, 4_294_967_295

# (Indonesian name, English name, RGB). Sellers mostly write the Indonesian name.
COLOURS = (
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
class ProductType:
    shape: str
    nouns: tuple[str, ...]
    descriptors: tuple[str, ...]
    # axis name -> the values sibling groups may take along it.
    axes: tuple[tuple[str, tuple], ...]


_PRODUCT_TYPES = (
    ProductType(
        "bottle",
        ("Botol Minum", "Tumbler", "Shampoo", "Sabun Cair", "Hand Sanitizer", "Minyak Kayu Putih"),
        ("Stainless", "Anti Bocor", "BPA Free", "Tahan Panas", "Premium", "Import", "Wangi"),
        (("volume", (100, 250, 500, 750, 1000, 1500)), ("colour", None)),
    ),
    ProductType(
        "box",
        ("Susu Bubuk", "Kopi Bubuk", "Teh Celup", "Biskuit", "Masker Medis", "Sereal Coklat"),
        ("Halal", "Exp Lama", "Kemasan Baru", "Premium", "Import", "Sachet", "Hemat"),
        (("weight", (100, 250, 500, 1000, 2000)), ("count", (1, 2, 3, 6, 10, 12))),
    ),
    ProductType(
        "shirt",
        ("Kaos Polos", "Kemeja Flanel", "Hoodie Jumper", "Kaos Oversize", "Baju Koko", "Jaket Bomber"),
        ("Cotton Combed", "Pria", "Wanita", "Unisex", "Distro", "Lengan Panjang", "Premium"),
        (("size", ("S", "M", "L", "XL", "XXL")), ("colour", None)),
    ),
    ProductType(
        "phone",
        ("HP Android", "Smartphone", "Tablet", "Flashdisk", "Memory Card", "Handphone"),
        ("Garansi Resmi", "Original", "RAM 4GB", "Dual SIM", "Second Mulus", "Fullset", "Baru"),
        (("storage", (16, 32, 64, 128, 256, 512)), ("colour", None)),
    ),
    ProductType(
        "bag",
        ("Tas Selempang", "Tas Ransel", "Dompet Wanita", "Tas Laptop", "Totebag Kanvas", "Sling Bag"),
        ("Kulit Sintetis", "Anti Air", "Korean Style", "Pria", "Wanita", "Premium", "Kekinian"),
        (("colour", None),),
    ),
    ProductType(
        "jar",
        ("Krim Wajah", "Masker Wajah", "Body Butter", "Pomade", "Selai Kacang", "Madu Murni"),
        ("BPOM", "Glowing", "Halal", "Original", "Whitening", "Natural", "Import"),
        (("volume", (15, 30, 50, 100, 200)), ("weight", (100, 250, 500, 1000))),
    ),
    ProductType(
        "shoe",
        ("Sepatu Sneakers", "Sandal Jepit", "Sepatu Sekolah", "Sepatu Lari", "Sandal Slop", "Sepatu Kets"),
        ("Pria", "Wanita", "Anti Slip", "Empuk", "Casual", "Import", "Kekinian"),
        (("shoe_size", ("38", "39", "40", "41", "42", "43")), ("colour", None)),
    ),
)

_PATTERNS = ("plain", "stripes", "dots", "checks")
_BRAND_SYLLABLES = (
    "ka",
    "zu",
    "mi",
    "lo",
    "ve",
    "ra",
    "no",
    "ta",
    "xi",
    "do",
    "re",
    "sa",
    "pe",
    "go",
    "ri",
    "fu",
    "na",
    "bo",
    "le",
    "yo",
    "ki",
    "ma",
    "tu",
    "se",
)
TITLE_PROMOS = (
    "PROMO",
    "READY STOCK",
    "BISA COD",
    "TERMURAH",
    "ORIGINAL",
    "Murah",
    "Best Seller",
    "100% ORI",
    "Grosir",
    "Diskon",
    "Free Bubble Wrap",
    "NEW",
)
TITLE_FILLERS = ("untuk", "dan", "bisa", "yang", "ori", "baru", "grosir", "asli", "new", "murah")
SEPARATORS = (" - ", " | ", " / ", ", ", " ")
STICKERS = ("SALE 50%", "COD", "GRATIS ONGKIR", "READY", "PROMO", "ORI 100%", "DISKON 30%", "BEST SELLER")

# Width, height of the product's bounding box as a fraction of the drawing canvas.
SHAPE_BOX = {
    "bottle": (0.38, 0.86),
    "box": (0.66, 0.62),
    "shirt": (0.82, 0.76),
    "phone": (0.46, 0.84),
    "bag": (0.72, 0.72),
    "jar": (0.6, 0.56),
    "shoe": (0.86, 0.42),
}

# Share of postings that re-upload an earlier picture of the same group, as sellers copy photos.
REUPLOAD_P = 0.08
# Share of (other) postings built on the family's studio shot rather than a photo of their own.
STUDIO_P = 0.75


@dataclasses.dataclass(frozen=True)
class Shot:
    """Where the product sits in a photo, and on what."""

    backdrop: tuple  # ("plain", rgb) or ("gradient", rgb0, rgb1, angle_rad)
    scale: float  # product side over canvas side
    angle_deg: float
    dx: float  # offsets of the product centre, as fractions of the canvas
    dy: float


@dataclasses.dataclass(frozen=True)
class Family:
    index: int
    kind: ProductType
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
    studio: Shot  # the supplier's photo setup, shared by all sibling groups
    variants: tuple  # one per sibling group


@dataclasses.dataclass(frozen=True)
class Group:
    family: Family
    sibling: int
    variant: object
    size: int  # number of postings

    @property
    def body_colour(self) -> tuple[int, int, int]:
        return COLOURS[self.variant][2] if self.family.axis == "colour" else self.family.base_colour

    @property
    def body_scale(self) -> float:
        """Bigger variants are drawn bigger, so size siblings differ in the picture too."""
        if self.family.axis not in ("volume", "weight", "count"):
            return 1.0
        rank = self.family.variants.index(self.variant) / max(len(self.family.variants) - 1, 1)
        return 0.78 + 0.22 * rank


def make_families(n_groups: int, seed: int) -> list[Family]:
    families, total = [], 0
    while total < n_groups:
        rng = np.random.default_rng([seed, FAMILY, len(families)])
        n_siblings = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
        n_siblings = min(n_siblings, n_groups - total)
        families.append(make_family(len(families), n_siblings, rng))
        total += len(families[-1].variants)
    return families


def make_family(index: int, n_siblings: int, rng: np.random.Generator) -> Family:
    kind = _PRODUCT_TYPES[rng.integers(len(_PRODUCT_TYPES))]
    axis, values = kind.axes[rng.integers(len(kind.axes))]
    if axis == "colour":
        variants = tuple(int(i) for i in rng.choice(len(COLOURS), n_siblings, replace=False))
    else:
        picked = np.sort(rng.choice(len(values), min(n_siblings, len(values)), replace=False))
        variants = tuple(values[i] for i in picked)
    brand = "".join(rng.choice(_BRAND_SYLLABLES, rng.integers(2, 4))).capitalize()
    n_desc = int(rng.integers(2, 4))
    descriptors = tuple(str(d) for d in rng.choice(kind.descriptors, n_desc, replace=False))
    model = f"{'AKMXSV'[rng.integers(6)]}{rng.integers(1, 100)}" if rng.random() < 0.5 else ""
    colour_ids = rng.choice(len(COLOURS), 3, replace=False)
    return Family(
        index=index,
        kind=kind,
        brand=brand,
        logo=brand[: int(rng.integers(2, 5))].upper(),
        noun=str(rng.choice(kind.nouns)),
        descriptors=descriptors,
        model=model,
        axis=axis,
        base_colour=COLOURS[colour_ids[0]][2],
        accent=COLOURS[colour_ids[1]][2],
        pattern=str(rng.choice(_PATTERNS, p=[0.4, 0.25, 0.2, 0.15])),
        pattern_colour=COLOURS[colour_ids[2]][2],
        pattern_step=float(rng.uniform(0.12, 0.25)),
        studio=random_shot(rng),
        variants=variants,
    )


def make_group(family: Family, sibling: int, seed: int) -> Group:
    rng = np.random.default_rng([seed, GROUP, family.index, sibling])
    # Kaggle's groups are mostly pairs and triples with a thin tail, capped at 10.
    size = 2 + min(int(rng.geometric(0.5)) - 1, 8)
    return Group(family, sibling, family.variants[sibling], size)


def split_families(families: list[Family], test_fraction: float, seed: int) -> set[int]:
    """Indices of the families held out for test, about ``test_fraction`` of all groups."""
    rng = np.random.default_rng([seed, SPLIT])
    n_groups = sum(len(f.variants) for f in families)
    target = round(test_fraction * n_groups)
    test, n_test = set(), 0
    for i in rng.permutation(len(families)):
        if n_test >= target or len(test) == len(families) - 1:
            break  # always leave train at least one family
        test.add(int(i))
        n_test += len(families[i].variants)
    return test


def random_shot(rng: np.random.Generator) -> Shot:
    kind = rng.choice(["white", "plain", "gradient"], p=[0.3, 0.3, 0.4])
    if kind == "white":
        backdrop = ("plain", tuple(int(v) for v in rng.integers(225, 256, 3)))
    elif kind == "plain":
        backdrop = ("plain", random_colour(rng))
    else:
        backdrop = ("gradient", random_colour(rng), random_colour(rng), float(rng.uniform(0, 2 * np.pi)))
    return Shot(
        backdrop,
        scale=float(rng.uniform(0.6, 1.05)),
        angle_deg=float(rng.uniform(-14, 14)),
        dx=float(rng.uniform(-0.12, 0.12)),
        dy=float(rng.uniform(-0.12, 0.12)),
    )


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))
