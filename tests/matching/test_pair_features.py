"""The title features of the pair model on any titles: with quantities, plain numbers, or neither."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.matching.candidates import Candidates
from pipeline.matching.pair_features import TitleQuantities, _title_block

WORDS = ["kaos", "polos", "susu", "bubuk", "shampoo", "hitam", "pack", "isi"]
UNITS = ["gr", "kg", "ml", "l", "pcs", "cm", "mm", ""]


def title_part(with_numbers: bool):
    word = st.sampled_from(WORDS)
    if not with_numbers:
        return word
    quantity = st.builds(lambda v, u: f"{v}{u}" if u else f"{v}", st.integers(1, 2000), st.sampled_from(UNITS))
    return st.one_of(word, quantity)


@st.composite
def titles(draw):
    with_numbers = draw(st.booleans())
    n = draw(st.integers(2, 12))
    return [" ".join(draw(st.lists(title_part(with_numbers), min_size=1, max_size=6))) for _ in range(n)]


def reference(tq: TitleQuantities, a: int, b: int) -> tuple[int, int]:
    """(quantities both titles give, units both give with different values), pair by pair."""
    qa = set(tq.quantities[a].indices)
    qb = set(tq.quantities[b].indices)
    ua, ub = set(tq.units[a].indices), set(tq.units[b].indices)
    same = qa & qb
    agreeing_units = {int(tq.unit_of[q].indices[0]) for q in same}
    return len(same), len(ua & ub) - len(agreeing_units)


@settings(max_examples=60, deadline=None)
@given(titles())
def test_title_features_on_any_titles_match_a_pair_by_pair_reference(drawn):
    tq = TitleQuantities.of(drawn)
    n = len(drawn)
    q, m = np.divmod(np.arange(n * n), n)
    out = _title_block(tq, q, m, threads=1)
    assert all(len(v) == n * n for v in out.values())
    for name in ("title:jaccard", "title:ratio", "title:token_set", "qty:agree", "qty:conflict", "qty:one_side"):
        assert np.isfinite(out[name]).all(), name
    for i in range(n * n):
        agree, conflict = reference(tq, q[i], m[i])
        assert (out["qty:agree"][i], out["qty:conflict"][i]) == (agree, conflict)


def test_titles_without_any_quantity_score_pairs():
    """No title has a quantity: the tables are empty and every pair still gets its features."""
    tq = TitleQuantities.of(["kaos polos hitam", "kaos polos", "susu bubuk"])
    c = Candidates(np.array([0, 0, 1]), np.array([1, 2, 2]), {"tfidf": np.ones(3, np.float32)}, 3)
    out = _title_block(tq, c.query, c.match, threads=1)
    assert (out["qty:agree"] == 0).all() and (out["qty:conflict"] == 0).all()
