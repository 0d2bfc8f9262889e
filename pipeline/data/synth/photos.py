"""Photo-like postings: products cut from real photographs, re-shot as sellers re-shoot them.

Drawn pictures cannot tell a good pretrained backbone from a bad one; these can. The photographs
are the ones that installed packages bundle (scikit-image's sample data, scikit-learn's two sample
images, Matplotlib's Grace Hopper), about twenty, some greyscale and tinted per product.

A *family* of the catalogue (:mod:`pipeline.data.synth.catalogue`: sibling groups, group sizes and
titles) becomes one product: a region of one photograph, with a mirror and a tint of its own. Its
sibling groups differ only a little, along the family's variant axis: a colour variant is the same
region recoloured toward the variant's colour; a size variant (``500ml``, ``XL``, ``64GB``) is the
region slid a little (mostly the same pixels), framed a little tighter, with the variant printed
on a badge. Regions of one photograph
are drawn to overlap little, so different families are different products, though they may share
a photograph's colours and style.

Each posting then re-shoots the product: the family's studio shot lightly edited, or a shot of its
own (backdrop, which may be another photograph, blurred; scale; rotation), then a crop, colour
jitter, blur, promo stickers, a price tag, a shop watermark, a border, and a JPEG quality of its
own; a few postings re-upload an earlier picture. The layout is Kaggle's, as
:func:`pipeline.data.synth.make_synthetic` writes it (phash of the written file, synthetic titles),
so every stage runs on it.

Randomness: every family, group and posting draws from its own generator seeded by
``[seed, stream, indices...]``: a seed gives byte-identical files, and a family's product does not
change when ``n_groups`` grows (its region is drawn against the earlier families' only).
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import os
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from tqdm import tqdm

from pipeline.data.synth import _check_arguments, _make_postings, _write_tables
from pipeline.data.synth.catalogue import (
    COLOURS,
    POSTING,
    REUPLOAD_P,
    STUDIO_P,
    Family,
    Group,
    make_families,
    make_group,
    random_shot,
    split_families,
)
from pipeline.data.synth.pictures import _backdrop, _border, _colour_jitter, _font, _sticker
from pipeline.data.synth.titles import posting_title
from pipeline.io import atomic_path

# Generator streams of this module; offset from the catalogue's so they never meet.
PRODUCT = 100

# (package, file, greyscale): photographs bundled by installed packages. Greyscale ones are tinted
# per product, so one texture makes products of several colours.
_SOURCES = (
    ("skimage", "astronaut.png", False),
    ("skimage", "chelsea.png", False),
    ("skimage", "coffee.png", False),
    ("skimage", "rocket.jpg", False),
    ("skimage", "motorcycle_left.png", False),
    ("skimage", "hubble_deep_field.jpg", False),
    ("skimage", "ihc.png", False),
    ("skimage", "retina.jpg", False),
    ("skimage", "logo.png", False),
    ("sklearn", "china.jpg", False),
    ("sklearn", "flower.jpg", False),
    ("matplotlib", "grace_hopper.jpg", False),
    ("skimage", "camera.png", True),
    ("skimage", "brick.png", True),
    ("skimage", "grass.png", True),
    ("skimage", "gravel.png", True),
    ("skimage", "moon.png", True),
    ("skimage", "coins.png", True),
    ("skimage", "page.png", True),
)

# A product's region: its side as a share of the photograph's shorter side, and the most that two
# regions of one photograph may overlap (intersection over union) before the draw is retried.
REGION_SIDE = (0.22, 0.55)
MAX_OVERLAP = 0.2
# Siblings along a size-like axis: how far (a share of the region's side) each one's region slides;
# colour siblings: how far the picture is blended toward the variant's colour.
SIBLING_SHIFT = 0.3
RECOLOUR = 0.6
PRICES = ("Rp 9.900", "Rp 15.000", "Rp 25.000", "Rp 49.000", "Rp 99.000", "Rp 125.000", "Rp 250.000", "Rp 1.299.000")
SHOPS = ("tokoku", "grosir.id", "mall_murah", "official", "jaya store", "berkah shop", "ori100")


def _source_path(package: str, name: str) -> Path:
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    if package == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images" / name
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


@functools.cache
def source_photo(index: int) -> Image.Image:
    """The index-th bundled photograph, RGB (greyscale ones as L); RGBA is flattened on white."""
    package, name, grey = _SOURCES[index]
    try:
        path = _source_path(package, name)
    except ImportError as e:
        raise RuntimeError(f"photo-like synthetic data needs the package {package!r} ({name}); install it") from e
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            flat = Image.new("RGB", im.size, (255, 255, 255))
            flat.paste(im, (0, 0), im)
            im = flat
        return im.convert("L" if grey else "RGB")


@dataclasses.dataclass(frozen=True)
class Product:
    """A family's product: a region of a photograph and how it is dressed."""

    source: int
    box: tuple[float, float, float, float]  # left, top, right, bottom in the photograph's pixels
    mirror: bool
    tint: tuple[tuple[int, int, int], tuple[int, int, int]] | None  # (dark, light) for greyscale photos
    badge_xy: tuple[float, float]  # where a size variant's badge sits, as shares of the product's side
    badge_colour: tuple[int, int, int]
    shift_dir: tuple[float, float]  # unit vector the regions of size-like siblings slide along


def make_products(families: list[Family], seed: int) -> list[Product]:
    """One product per family, each region drawn against the earlier ones of its photograph."""
    taken: dict[int, list[tuple]] = {}
    return [_make_product(fam.index, taken, seed) for fam in families]


def _make_product(index: int, taken: dict[int, list[tuple]], seed: int) -> Product:
    rng = np.random.default_rng([seed, PRODUCT, index])
    source = int(rng.integers(len(_SOURCES)))
    w, h = source_photo(source).size
    best, best_overlap = None, 2.0
    for _ in range(40):
        side = rng.uniform(*REGION_SIDE) * min(w, h)
        aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
        bw, bh = min(side * np.sqrt(aspect), w), min(side / np.sqrt(aspect), h)
        left, top = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        box = (float(left), float(top), float(left + bw), float(top + bh))
        overlap = max((_iou(box, other) for other in taken.get(source, [])), default=0.0)
        if overlap < best_overlap:
            best, best_overlap = box, overlap
        if overlap <= MAX_OVERLAP:
            break
    taken.setdefault(source, []).append(best)
    tint = None
    if _SOURCES[source][2]:
        hue = rng.uniform()
        dark = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, rng.uniform(0.4, 0.9), rng.uniform(0.1, 0.35)))
        light = tuple(
            int(255 * c)
            for c in colorsys.hsv_to_rgb(
                (hue + rng.uniform(-0.15, 0.15)) % 1, rng.uniform(0.1, 0.6), rng.uniform(0.75, 1.0)
            )
        )
        tint = (dark, light)
    angle = rng.uniform(0, 2 * np.pi)
    return Product(
        source,
        best,
        bool(rng.random() < 0.5),
        tint,
        (float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.2, 0.8))),
        COLOURS[int(rng.integers(len(COLOURS)))][2],
        (float(np.cos(angle)), float(np.sin(angle))),
    )


def _iou(a: tuple, b: tuple) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


@functools.lru_cache(maxsize=16)
def product_picture(product: Product, group: Group, side: int) -> Image.Image:
    """The group's product, RGB, ``side`` on its longer edge; siblings differ only in their variant."""
    fam = group.family
    left, top, right, bottom = product.box
    if fam.axis != "colour":
        # Other variants (size, volume, storage) are the same product line in another design: the
        # region slides along the product's own direction by SIBLING_SHIFT of its side per sibling,
        # and the smaller variants are framed a little tighter (up to 10 %).
        w, h = right - left, bottom - top
        shift = SIBLING_SHIFT * group.sibling
        src_w, src_h = source_photo(product.source).size
        dx = float(np.clip(shift * w * product.shift_dir[0], -left, src_w - right))
        dy = float(np.clip(shift * h * product.shift_dir[1], -top, src_h - bottom))
        rank = fam.variants.index(group.variant) / max(len(fam.variants) - 1, 1)
        shrink = 0.1 * (1.0 - rank) if len(fam.variants) > 1 else 0.0
        left, top = left + dx + shrink * w / 2, top + dy + shrink * h / 2
        right, bottom = left + (1 - shrink) * w, top + (1 - shrink) * h
    aspect = (right - left) / (bottom - top)
    size = (side, max(int(side / aspect), 8)) if aspect >= 1 else (max(int(side * aspect), 8), side)
    picture = source_photo(product.source).resize(size, Image.LANCZOS, box=(left, top, right, bottom))
    if product.tint is not None:
        picture = ImageOps.colorize(picture, black=product.tint[0], white=product.tint[1])
    if product.mirror:
        picture = ImageOps.mirror(picture)
    if fam.axis == "colour":
        picture = _recolour(picture, COLOURS[group.variant][2])
    else:
        _badge(picture, product, group)
    return picture


def _recolour(picture: Image.Image, colour: tuple[int, int, int], amount: float = RECOLOUR) -> Image.Image:
    """Blend toward the variant's colour at the picture's own lightness: a colourway of one product."""
    pixels = np.asarray(picture, dtype=np.float32)  # (H, W, 3)
    light = pixels.mean(axis=2, keepdims=True) / 255.0  # (H, W, 1)
    target = light * np.asarray(colour, dtype=np.float32) * (255.0 / max(np.mean(colour), 1.0))
    out = (1.0 - amount) * pixels + amount * np.clip(target, 0, 255)
    return Image.fromarray(out.round().astype(np.uint8), "RGB")


def _badge(picture: Image.Image, product: Product, group: Group) -> None:
    """The size variant printed on the product (``500ml``, ``XL``), in place."""
    fam = group.family
    text = {
        "volume": f"{group.variant}ml",
        "weight": f"{group.variant}g",
        "count": f"x{group.variant}",
        "storage": f"{group.variant}GB",
    }.get(fam.axis, str(group.variant))
    draw = ImageDraw.Draw(picture)
    font = _font(int(0.16 * min(picture.size)))
    cx, cy = product.badge_xy[0] * picture.width, product.badge_xy[1] * picture.height
    left, top, right, bottom = draw.textbbox((cx, cy), text, font=font, anchor="mm")
    draw.rounded_rectangle((left - 3, top - 2, right + 3, bottom + 2), radius=3, fill=product.badge_colour)
    ink = (255, 255, 255) if sum(product.badge_colour) < 380 else (20, 20, 20)
    draw.text((cx, cy), text, fill=ink, font=font, anchor="mm")


def seller_photo(
    product: Product, group: Group, earlier: list[Image.Image], rng: np.random.Generator, size: int
) -> tuple[Image.Image, int]:
    """One posting's picture (RGB, ``size`` square) and the JPEG quality to save it with."""
    quality = int(rng.integers(35, 96))
    if earlier and rng.random() < REUPLOAD_P:
        return earlier[int(rng.integers(len(earlier)))], quality
    studio = rng.random() < STUDIO_P
    strength = 0.3 if studio else 1.0
    canvas = 2 * size
    shot = group.family.studio if studio else random_shot(rng)
    if not studio and rng.random() < 0.3:
        backdrop = _photo_backdrop(rng, canvas)
    else:
        backdrop = _backdrop(canvas, shot.backdrop)
    # A product that fills the frame, or one placed on the backdrop at the shot's scale and angle.
    full_frame = rng.random() < (0.5 if studio else 0.3)
    scale = 1.0 if full_frame else min(shot.scale, 0.95)
    angle = shot.angle_deg if studio else float(rng.uniform(-25, 25))
    picture = product_picture(product, group, max(int(canvas * scale), 8))
    placed = picture.convert("RGBA").rotate(0.0 if full_frame else angle, resample=Image.BICUBIC, expand=True)
    x = (canvas - placed.width) // 2 + (0 if full_frame else int(shot.dx * canvas))
    y = (canvas - placed.height) // 2 + (0 if full_frame else int(shot.dy * canvas))
    backdrop.paste(placed, (x, y), placed)

    min_crop = 1.0 - 0.3 * strength
    crop_w, crop_h = (int(canvas * rng.uniform(min_crop, 1.0)) for _ in range(2))
    left, top = int(rng.integers(canvas - crop_w + 1)), int(rng.integers(canvas - crop_h + 1))
    photo = backdrop.resize((size, size), Image.LANCZOS, box=(left, top, left + crop_w, top + crop_h))

    photo = _colour_jitter(photo, rng, strength=max(strength, 0.5))
    if rng.random() < 0.2 * strength:
        photo = photo.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.2))))
    for _ in range(rng.choice(3, p=[0.5, 0.35, 0.15])):
        _sticker(photo, rng)
    if rng.random() < 0.35:
        _price_tag(photo, rng)
    if rng.random() < 0.25:
        _watermark(photo, rng)
    if rng.random() < 0.3:
        photo = _border(photo, rng, max_width=0.12 * strength)
    return photo, quality


def _photo_backdrop(rng: np.random.Generator, canvas: int) -> Image.Image:
    """A blurred region of a random photograph: a table, a shelf, a room."""
    source = source_photo(int(rng.integers(len(_SOURCES)))).convert("RGB")
    w, h = source.size
    side = rng.uniform(0.3, 0.8) * min(w, h)
    left, top = rng.uniform(0, w - side), rng.uniform(0, h - side)
    region = source.resize((canvas, canvas), Image.BILINEAR, box=(left, top, left + side, top + side))
    return region.filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 6))))


def _price_tag(photo: Image.Image, rng: np.random.Generator) -> None:
    draw = ImageDraw.Draw(photo)
    font = _font(int(photo.width * rng.uniform(0.08, 0.13)))
    text = str(rng.choice(PRICES))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = int(rng.integers(0, max(photo.width - (right - left) - 6, 1)))
    y = int(rng.integers(0, max(photo.height - (bottom - top) - 6, 1)))
    plate = ((230, 30, 40), (255, 200, 0), (250, 250, 250), (20, 120, 60))[rng.integers(4)]
    ink = (20, 20, 20) if sum(plate) > 500 else (255, 255, 255)
    draw.rounded_rectangle((x + left - 4, y + top - 3, x + right + 4, y + bottom + 3), radius=6, fill=plate)
    draw.text((x, y), text, fill=ink, font=font)


def _watermark(photo: Image.Image, rng: np.random.Generator) -> None:
    """A shop's name across the picture, half transparent, in place."""
    layer = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = _font(int(photo.width * rng.uniform(0.1, 0.16)))
    draw.text(
        (photo.width / 2, photo.height * rng.uniform(0.3, 0.7)),
        str(rng.choice(SHOPS)),
        fill=(255, 255, 255, int(rng.integers(70, 140))),
        font=font,
        anchor="mm",
    )
    photo.paste(Image.alpha_composite(photo.convert("RGBA"), layer).convert("RGB"))


def make_photo_synthetic(
    out_dir: str | os.PathLike,
    n_groups: int = 200,
    seed: int = 0,
    image_size: int = 160,
    test_fraction: float = 0.25,
    progress: bool = True,
) -> dict:
    """Write a photo-like synthetic dataset in Kaggle's layout; see the module's docstring.

    Writes ``train.csv``, ``test.csv``, ``test_truth.csv``, ``train_images/`` and ``test_images/``
    as :func:`pipeline.data.synth.make_synthetic` does (images first, CSVs last, each atomically).

    Args:
        out_dir: destination folder (created if missing).
        n_groups: label groups over both splits (about 3.4 postings each).
        seed: the same seed gives byte-identical files.
        image_size: side of the square JPEGs, in pixels.
        test_fraction: share of groups held out in test, rounded to whole families.
        progress: show a progress bar over postings.

    Returns:
        Rows, groups and families per split, and the paths written.
    """
    _check_arguments(n_groups, image_size, test_fraction)
    out_dir = Path(out_dir)
    families = make_families(n_groups, seed)
    products = make_products(families, seed)
    groups = [make_group(fam, i, seed) for fam in families for i in range(len(fam.variants))]
    postings = _make_postings(groups, split_families(families, test_fraction, seed), seed)

    pictures: dict[tuple[int, int], list[Image.Image]] = {}
    for post in tqdm(postings, desc="photo postings", unit="img", disable=not progress):
        group = post["group"]
        key = (group.family.index, group.sibling)
        rng = np.random.default_rng([seed, POSTING, *key, post["k"]])
        taken = pictures.setdefault(key, [])
        picture, quality = seller_photo(products[group.family.index], group, taken, rng, image_size)
        taken.append(picture)
        path = out_dir / f"{post['split']}_images" / post["image"]
        with atomic_path(path) as tmp:
            picture.save(tmp, format="JPEG", quality=quality)
        with Image.open(path) as written:  # hash the file as written: JPEG loss is part of what is matched
            post["image_phash"] = str(imagehash.phash(written))
        post["title"] = posting_title(group, rng)
        if post["k"] == group.size - 1:
            del pictures[key]
    return _write_tables(postings, out_dir, seed, n_families=len(families))
