"""Synthetic seller titles: a family's words, dropped, reordered, decorated and re-cased."""

from __future__ import annotations

import numpy as np

from pipeline.data.synth.catalogue import COLOURS, SEPARATORS, TITLE_FILLERS, TITLE_PROMOS, Group


def posting_title(group: Group, rng: np.random.Generator) -> str:
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
        units.insert(int(rng.integers(len(units) + 1)), str(rng.choice(TITLE_FILLERS)))
    for _ in range(rng.choice(3, p=[0.35, 0.45, 0.2])):
        promo = str(rng.choice(TITLE_PROMOS))
        promo = str(rng.choice([promo, f"[{promo}]", f"({promo})", f"{promo}!!"], p=[0.55, 0.25, 0.1, 0.1]))
        units.insert(0 if rng.random() < 0.6 else len(units), promo)

    title = units[0]
    for unit in units[1:]:
        title += str(rng.choice(SEPARATORS, p=[0.08, 0.06, 0.05, 0.06, 0.75])) + unit
    case = rng.choice(["keep", "lower", "upper", "title"], p=[0.4, 0.25, 0.2, 0.15])
    return {"keep": title, "lower": title.lower(), "upper": title.upper(), "title": title.title()}[case]


def _variant_text(axis: str, value, rng: np.random.Generator) -> str:
    """The variant as some seller writes it (``500ml``, ``0.5 L``, ``64 gb``, ``uk XL`` ...)."""

    def pick(options: list) -> str:
        return str(options[rng.integers(len(options))])

    if axis == "colour":
        indonesian, english, _ = COLOURS[value]
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
    words[i] = w[:j] + w[j + 1 :] if rng.random() < 0.5 else w[:j] + w[j] + w[j:]
    return " ".join(words)
