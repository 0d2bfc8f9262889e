"""Synthetic product photos: a drawn product on a backdrop, edited as sellers edit their photos."""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from pipeline.data.synth.catalogue import (
    REUPLOAD_P,
    SHAPE_BOX,
    STICKERS,
    STUDIO_P,
    Family,
    Group,
    Shot,
    random_colour,
    random_shot,
)


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled font, so the pictures do not depend on the fonts a machine has.
    return ImageFont.load_default(size=max(size, 6))


def seller_photo(
    group: Group, earlier: list[Image.Image], rng: np.random.Generator, size: int
) -> tuple[Image.Image, int]:
    """One posting's picture (RGB, ``size`` square) and the JPEG quality to save it with.

    Most sellers reuse the supplier's studio shot with light edits; the rest take their own
    photo. The studio shot belongs to the family, so siblings share it too: a picture hash then
    finds the siblings as readily as the true matches.
    """
    quality = int(rng.integers(40, 96))
    if earlier and rng.random() < REUPLOAD_P:
        return earlier[int(rng.integers(len(earlier)))], quality
    studio = rng.random() < STUDIO_P
    shot = group.family.studio if studio else random_shot(rng)
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


def _compose(product: Image.Image, canvas: int, shot: Shot) -> Image.Image:
    photo = _backdrop(canvas, shot.backdrop)
    side = max(int(canvas * shot.scale), 8)
    placed = product.resize((side, side), Image.BILINEAR)
    placed = placed.rotate(shot.angle_deg, resample=Image.BILINEAR, expand=True)
    x = (canvas - placed.width) // 2 + int(shot.dx * canvas)
    y = (canvas - placed.height) // 2 + int(shot.dy * canvas)
    photo.paste(placed, (x, y), placed)
    return photo


@functools.lru_cache(maxsize=8)
def _product_picture(group: Group, canvas: int) -> Image.Image:
    """The group's product on a transparent ``canvas`` square; siblings differ only in variant."""
    fam = group.family
    box_w, box_h = SHAPE_BOX[fam.kind.shape]
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


def _patterned(canvas: int, colour, fam: Family, body_w: float) -> Image.Image:
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


def _label(draw: ImageDraw.ImageDraw, box, group: Group) -> None:
    """Brand logo, plus a badge with the variant (``500ml``, ``XL``) unless colour is the variant."""
    fam = group.family
    x0, y0, x1, y1 = box
    height = y1 - y0
    ink = (255, 255, 255) if sum(fam.accent) < 380 else (20, 20, 20)
    draw.text(
        ((x0 + x1) / 2, y0 + 0.3 * height),
        fam.logo,
        fill=fam.accent,
        anchor="mm",
        font=_font(int(0.42 * height)),
        stroke_width=1,
        stroke_fill=ink,
    )
    if fam.axis == "colour":
        return
    text = {
        "volume": f"{group.variant}ml",
        "weight": f"{group.variant}g",
        "count": f"x{group.variant}",
        "storage": f"{group.variant}GB",
    }.get(fam.axis, str(group.variant))
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
    top.polygon(
        [(front[2], front[1]), (x1, y0), (x1, y1 - 0.22 * h), (front[2], y1)], fill=(0, 0, 0, 70)
    )  # the side in shade gives the box depth
    fw, fh = front[2] - front[0], front[3] - front[1]
    return (front[0] + 0.1 * fw, front[1] + 0.2 * fh, front[2] - 0.1 * fw, front[3] - 0.15 * fh)


def _shirt(body, top, box, accent):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    pts = [
        (0.35, 0),
        (0.65, 0),
        (1, 0.18),
        (0.88, 0.42),
        (0.78, 0.36),
        (0.78, 1),
        (0.22, 1),
        (0.22, 0.36),
        (0.12, 0.42),
        (0, 0.18),
    ]
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
    top.arc((x0 + 0.2 * w, y0, x1 - 0.2 * w, y0 + 0.6 * h), 180, 360, fill=accent, width=max(int(0.06 * w), 2))
    body.rounded_rectangle((x0, y0 + 0.3 * h, x1, y1), radius=0.1 * w, fill=255)
    top.polygon(
        [(x0, y0 + 0.3 * h), (x1, y0 + 0.3 * h), (x1, y0 + 0.5 * h), (x0 + 0.5 * w, y0 + 0.6 * h), (x0, y0 + 0.5 * h)],
        fill=(0, 0, 0, 60),
    )  # flap
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
    top.line([(x0 + 0.45 * w, y0 + 0.35 * h), (x0 + 0.3 * w, y0 + 0.12 * h)], fill=accent, width=max(int(0.03 * w), 2))
    return (x0 + 0.1 * w, y0 + 0.35 * h, x0 + 0.6 * w, y0 + 0.8 * h)


_SHAPES = {"bottle": _bottle, "box": _box, "shirt": _shirt, "phone": _phone, "bag": _bag, "jar": _jar, "shoe": _shoe}


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
    text = str(rng.choice(STICKERS))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = int(rng.integers(0, max(photo.width - (right - left), 1)))
    y = int(rng.integers(0, max(photo.height - (bottom - top), 1)))
    # (plate, ink) pairs that stay readable; no plate means the text sits on the photo itself.
    plate, ink = (
        (None, (255, 255, 255)),
        (None, (220, 20, 30)),
        (None, (250, 220, 0)),
        ((220, 20, 30), (255, 255, 255)),
        ((250, 200, 0), (20, 20, 20)),
        ((20, 20, 20), (250, 220, 0)),
        ((255, 120, 0), (255, 255, 255)),
    )[rng.integers(7)]
    if plate is not None:
        draw.rectangle((x + left - 2, y + top - 2, x + right + 2, y + bottom + 2), fill=plate)
    draw.text((x, y), text, fill=ink, font=font)


def _border(photo: Image.Image, rng: np.random.Generator, max_width: float) -> Image.Image:
    """Pad with a frame of random colour and widths (up to ``max_width`` of the side per side),
    then scale back to the original size."""
    size = photo.width
    left, top, right, bottom = (int(size * rng.uniform(0.0, max_width)) for _ in range(4))
    framed = Image.new("RGB", (size + left + right, size + top + bottom), random_colour(rng))
    framed.paste(photo, (left, top))
    return framed.resize((size, size), Image.LANCZOS)
