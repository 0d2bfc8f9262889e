"""What a pair model reads about a candidate pair beyond its per-signal similarities.

The candidates carry one similarity per signal, missing where a signal did not list the pair. The
winners' pair models read more, and so can ours, grouped so that each group's worth is measured
(``benchmarks/pair_features.py``) and chosen in ``pair.features``:

- ``sims``: per signal, the similarity, the pair's rank among its query's candidates and the gap to
  the query's best (missing where the signal did not list the pair);
- ``raw``: per dense or TF-IDF signal, the cosine of every pair, listed or not;
- ``hamming``: the raw phash Hamming distance of every pair;
- ``reciprocal``: per signal, the rank of the query in the candidate's own neighbour list;
- ``density``: per signal, each side's mean top-K similarity (how crowded its neighbourhood is),
  and the pair's similarity standardised by each side's top-K mean and std (2nd place's features);
- ``common``: per signal, how many of the top-K neighbours both sides share;
- ``text``: token Jaccard, edit-distance ratio and token-set ratio of the two titles (rapidfuzz);
- ``numbers``: the quantities of both titles ("400gr", "1.5 l", "12 pcs"): how many agree, how many
  units both give with different values, and the Jaccard of plain numbers;

A :class:`PairContext` holds what these read (each gallery's vectors and neighbour lists, the titles)
and computes any block of pairs on demand, so memory stays O(block) beyond the candidates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipeline.data.titles import normalise_title
from pipeline.matching.candidates import Candidates, Gallery, rank_within
from pipeline.matching.neighbours import PHASH_BITS, Neighbours, faiss_threads

FEATURE_GROUPS = ("sims", "raw", "hamming", "reciprocal", "density", "common", "text", "numbers")
CONTEXT_GROUPS = frozenset(FEATURE_GROUPS) - {"sims"}  # those that need a PairContext
TITLE_GROUPS = frozenset({"text", "numbers"})  # those that need the titles
DENSITY_K = 5  # neighbours in a side's density (its own row excluded)
COMMON_K = 10  # neighbours compared for common neighbours
_SUB_BLOCK = 32_768  # pairs per gather of vectors or neighbour rows

# Units of quantities in titles, each mapped to a base unit and a factor, so that "1 kg" and
# "1000 gr" agree. Words not listed after a number leave it a plain number.
_UNITS = {
    **dict.fromkeys(("g", "gr", "grm", "gram", "grams", "gramm", "gm"), ("g", 1.0)),
    **dict.fromkeys(("kg", "kgs", "kilo", "kilogram"), ("g", 1000.0)),
    **dict.fromkeys(("mg",), ("g", 0.001)),
    **dict.fromkeys(("ml", "mls", "cc"), ("ml", 1.0)),
    **dict.fromkeys(("l", "lt", "ltr", "liter", "litre", "liters"), ("ml", 1000.0)),
    **dict.fromkeys(("mm",), ("cm", 0.1)),
    **dict.fromkeys(("cm",), ("cm", 1.0)),
    **dict.fromkeys(("m", "meter", "metre", "mtr"), ("cm", 100.0)),
    **dict.fromkeys(("inch", "inc", "in"), ("inch", 1.0)),
    **dict.fromkeys(("mb",), ("gb", 1 / 1024)),
    **dict.fromkeys(("gb",), ("gb", 1.0)),
    **dict.fromkeys(("tb",), ("gb", 1024.0)),
    **dict.fromkeys(("mah",), ("mah", 1.0)),
    **dict.fromkeys(("w", "watt"), ("w", 1.0)),
    **dict.fromkeys(("v", "volt"), ("v", 1.0)),
    **dict.fromkeys(
        (
            "pcs",
            "pc",
            "pcs.",
            "pieces",
            "piece",
            "biji",
            "buah",
            "lembar",
            "lbr",
            "pack",
            "pak",
            "sachet",
            "sachets",
            "box",
            "set",
            "pasang",
            "roll",
            "tablet",
            "tab",
            "kapsul",
            "caps",
            "x",
        ),
        ("count", 1.0),
    ),
}
_QUANTITY = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s*([a-z]+\.?)?(?![\w])")


@dataclass
class TitleQuantities:
    """Titles as sparse indicator rows, for the ``text`` and ``numbers`` features.

    Attributes:
        titles: (n,) normalised titles.
        tokens: (n, V) binary word tokens.
        quantities: (n, Q) binary (unit, value) pairs.
        units: (n, U) binary units present.
        unit_of: (Q, U) sparse map of each quantity to its unit.
        numbers: (n, M) binary plain numbers (no known unit).
    """

    titles: np.ndarray
    tokens: sp.csr_matrix
    quantities: sp.csr_matrix
    units: sp.csr_matrix
    unit_of: sp.csr_matrix
    numbers: sp.csr_matrix

    @classmethod
    def of(cls, titles: Sequence[str]) -> TitleQuantities:
        clean = np.array([normalise_title(str(t)) for t in titles], dtype=object)
        vocab: dict[str, dict[Any, int]] = {"tok": {}, "qty": {}, "unit": {}, "num": {}}
        rows: dict[str, list[list[int]]] = {k: [] for k in vocab}
        for title in clean:
            toks, qtys, units, nums = set(), set(), set(), set()
            toks.update(re.findall(r"\w+", title))
            for value, word in _QUANTITY.findall(title):
                v = float(value.replace(",", "."))
                unit = _UNITS.get((word or "").rstrip("."))
                if unit is None:
                    nums.add(v)
                else:
                    qtys.add((unit[0], round(v * unit[1], 6)))
                    units.add(unit[0])
            for key, items in (("tok", toks), ("qty", qtys), ("unit", units), ("num", nums)):
                rows[key].append([vocab[key].setdefault(i, len(vocab[key])) for i in items])
        mats = {k: _indicator(rows[k], len(vocab[k])) for k in vocab}
        qty_unit = [vocab["unit"][u] for (u, _) in vocab["qty"]]
        # As wide as the indicator rows it multiplies: one empty column when no title has a quantity.
        unit_of = sp.csr_matrix(
            (np.ones(len(qty_unit), np.float32), (np.arange(len(qty_unit)), qty_unit)),
            shape=(max(len(qty_unit), 1), max(len(vocab["unit"]), 1)),
        )
        return cls(clean, mats["tok"], mats["qty"], mats["unit"], unit_of, mats["num"])


def _top_similarities(nb: Neighbours, k: int) -> np.ndarray:
    """(G, k) each posting's ``k`` best similarities, itself excluded, best first; -inf past its list."""
    sim = np.where((nb.idx >= 0) & (nb.idx != np.arange(len(nb))[:, None]), nb.sim, -np.inf)
    return -np.sort(-sim, axis=1)[:, :k]


def _indicator(rows: list[list[int]], width: int) -> sp.csr_matrix:
    indptr = np.r_[0, np.cumsum([len(r) for r in rows])]
    indices = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(indptr[-1]))
    data = np.ones(len(indices), np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), max(width, 1)))


def _rowdot(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    """(B,) inner product of matching rows of two sparse matrices."""
    return np.asarray(a.multiply(b).sum(axis=1), dtype=np.float32).ravel()


@dataclass
class PairContext:
    """What the pair features read besides the candidates: galleries, their neighbours, the titles.

    Attributes:
        galleries: the galleries the candidates came from.
        neighbours: per gallery, every signal's neighbour lists (``gallery_neighbours``' output).
        gallery_of: (n,) index of the gallery whose queries hold each global posting; -1 for none.
        titles: (n,) every global posting's title, or None (then ``text`` and ``numbers`` are missing).
        threads: worker threads of the title comparisons.
    """

    galleries: list[Gallery]
    neighbours: list[Mapping[str, Neighbours]]
    gallery_of: np.ndarray
    titles: np.ndarray | None = None
    threads: int = 1
    _positions: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _density: dict[tuple[int, str, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _titles: TitleQuantities | None = field(default=None, repr=False)

    @classmethod
    def single(
        cls,
        gallery: Gallery,
        neighbours: Mapping[str, Neighbours],
        n: int,
        titles: Sequence[str] | None = None,
        threads: int = 1,
    ) -> PairContext:
        """The context of one gallery whose queries are global postings ``gallery.rows[gallery.queries]``."""
        gallery_of = np.full(n, -1, np.int64)
        gallery_of[gallery.rows[gallery.queries]] = 0
        return cls([gallery], [neighbours], gallery_of, None if titles is None else np.asarray(titles, object), threads)

    def positions(self, g: int) -> np.ndarray:
        """(n,) position of each global posting in gallery ``g``; -1 where absent."""
        if g not in self._positions:
            pos = np.full(len(self.gallery_of), -1, np.int64)
            pos[self.galleries[g].rows] = np.arange(len(self.galleries[g].rows))
            self._positions[g] = pos
        return self._positions[g]

    def density(self, g: int, signal: str, k: int = DENSITY_K) -> tuple[np.ndarray, np.ndarray]:
        """(G,) mean and std of each posting's top-``k`` similarities, itself excluded."""
        key = (g, signal, k)
        if key not in self._density:
            top = _top_similarities(self.neighbours[g][signal], k)
            listed = np.isfinite(top)
            count = listed.sum(axis=1)
            top = np.where(listed, top, 0.0)
            # A posting with no neighbour has no density (NaN), which the trees route as missing.
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = top.sum(axis=1) / count
                std = np.sqrt(np.maximum((top**2).sum(axis=1) / count - mean**2, 0.0))
            self._density[key] = (mean.astype(np.float32), std.astype(np.float32))
        return self._density[key]

    def adopt_titles(self, tables: TitleQuantities) -> None:
        """Use title tables already built for the same titles."""
        if len(tables.titles) != len(self.gallery_of):
            raise ValueError(f"title tables of {len(tables.titles)} postings for a context of {len(self.gallery_of)}")
        self._titles = tables

    @property
    def title_quantities(self) -> TitleQuantities | None:
        if self._titles is None and self.titles is not None:
            self._titles = TitleQuantities.of(self.titles)
        return self._titles


def feature_names(signals: Sequence[str], groups: Sequence[str], vector_signals: Sequence[str]) -> list[str]:
    """The feature columns of ``groups`` for ``signals``, in the order :func:`pair_features` stacks them.

    Args:
        vector_signals: the signals whose raw similarity is computed (``raw``), from the vectors.
    """
    names: list[str] = []
    for s in signals:
        if "sims" in groups:
            names += [f"{s}:sim", f"{s}:rank", f"{s}:gap"]
        if "reciprocal" in groups:
            names.append(f"{s}:rev_rank")
        if "density" in groups:
            names += [f"{s}:dens_q", f"{s}:dens_m", f"{s}:z_q", f"{s}:z_m"]
        if "common" in groups:
            names.append(f"{s}:common")
    if "raw" in groups:
        names += [f"{s}:raw" for s in vector_signals if s != "phash"]
    if "hamming" in groups:
        names.append("phash:hamming")
    if "text" in groups:
        names += ["title:jaccard", "title:ratio", "title:token_set"]
    if "numbers" in groups:
        names += ["qty:agree", "qty:conflict", "qty:one_side", "num:jaccard"]
    return names


def pair_features(c: Candidates, names: Sequence[str], context: PairContext | None = None) -> np.ndarray:
    """(P, len(names)) float32 features of every pair of ``c``; NaN where a feature is missing.

    Args:
        names: columns from :func:`feature_names`.
        context: needed by every group but ``sims``; without it those columns are missing.
    """
    cols: dict[str, np.ndarray] = {}
    wanted = set(names)
    _sims_features(c, wanted, cols)
    if context is not None and len(c):
        _context_features(c, wanted, context, cols)
    out = np.full((len(c), len(names)), np.nan, np.float32)
    for j, name in enumerate(names):
        if name in cols:
            out[:, j] = cols[name]
    return out


def _sims_features(c: Candidates, wanted: set[str], cols: dict[str, np.ndarray]) -> None:
    for name, s in c.sims.items():
        if f"{name}:sim" not in wanted:
            continue
        present = np.isfinite(s)
        rank, gap = rank_and_gap(c.query, np.where(present, s, -np.inf))
        cols[f"{name}:sim"] = np.where(present, s, np.nan)
        cols[f"{name}:rank"] = np.where(present, rank, np.nan)
        cols[f"{name}:gap"] = np.where(present, gap, np.nan)


def rank_and_gap(query: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank (0 = best) of each pair among its query's pairs by ``s``, and its gap to the best."""
    ranked = rank_within(query, s)
    lengths = np.diff(np.r_[ranked.starts, len(ranked.order)])
    rank = np.empty(len(s), np.float64)
    rank[ranked.order] = ranked.rank
    gap = np.empty(len(s), np.float64)
    with np.errstate(invalid="ignore"):  # -inf - -inf where a signal lists none of a query's pairs
        gap[ranked.order] = np.repeat(s[ranked.first], lengths) - s[ranked.order]
    return rank, gap


def _context_features(c: Candidates, wanted: set[str], ctx: PairContext, cols: dict[str, np.ndarray]) -> None:
    """Every group but ``sims``, gallery by gallery and a sub-block of pairs at a time."""
    filled = {
        name: np.full(len(c), np.nan, np.float32) for name in wanted if not name.endswith((":sim", ":rank", ":gap"))
    }
    g_of = ctx.gallery_of[c.query]
    if (g_of < 0).any():
        raise ValueError("candidate pairs whose query belongs to no gallery of the pair context")
    for g in np.unique(g_of):
        rows_g = np.flatnonzero(g_of == g)
        pos = ctx.positions(int(g))
        for start in range(0, len(rows_g), _SUB_BLOCK):
            rows = rows_g[start : start + _SUB_BLOCK]
            pq, pm = pos[c.query[rows]], pos[c.match[rows]]
            if (pm < 0).any():
                raise ValueError("candidate pairs whose match is not in its query's gallery")
            sims = {name: s[rows] for name, s in c.sims.items()}
            for name, values in _gallery_block(ctx, int(g), pq, pm, sims, wanted).items():
                if name in filled:  # a block may compute more than asked (raw cosines for z-scores)
                    filled[name][rows] = values
    if (
        wanted
        & {
            "title:jaccard",
            "title:ratio",
            "title:token_set",
            "qty:agree",
            "qty:conflict",
            "qty:one_side",
            "num:jaccard",
        }
        and ctx.title_quantities is not None
    ):
        for name, values in _title_block(ctx.title_quantities, c.query, c.match, ctx.threads).items():
            if name in filled:
                filled[name] = values
    cols.update(filled)


def _gallery_block(
    ctx: PairContext, g: int, pq: np.ndarray, pm: np.ndarray, sims: Mapping[str, np.ndarray], wanted: set[str]
) -> dict[str, np.ndarray]:
    """Features of pairs (gallery positions ``pq``, ``pm``) in gallery ``g``."""
    out: dict[str, np.ndarray] = {}
    gallery, nbs = ctx.galleries[g], ctx.neighbours[g]
    raw: dict[str, np.ndarray] = {}
    for name, x in gallery.vectors.items():
        if name == "phash":
            distance = hamming(x[pq], x[pm])
            if "phash:hamming" in wanted:
                out["phash:hamming"] = distance
            raw[name] = 1.0 - distance / PHASH_BITS
        elif wanted & {f"{name}:raw", f"{name}:z_q"}:
            raw[name] = _raw_cosine(x, pq, pm, ctx.threads)
            out[f"{name}:raw"] = raw[name]
    for name, nb in nbs.items():
        if f"{name}:rev_rank" in wanted:
            hit = nb.idx[pm] == pq[:, None]  # (B, k)
            first = hit.argmax(axis=1)
            out[f"{name}:rev_rank"] = np.where(hit[np.arange(len(pq)), first], first, np.nan)
        if f"{name}:common" in wanted:
            out[f"{name}:common"] = _common(nb.idx[pq, :COMMON_K], nb.idx[pm, :COMMON_K])
        if f"{name}:dens_q" in wanted:
            mean, std = ctx.density(g, name)
            s = _pair_similarity(raw, sims, name, len(pq))
            out[f"{name}:dens_q"], out[f"{name}:dens_m"] = mean[pq], mean[pm]
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{name}:z_q"] = (s - mean[pq]) / np.maximum(std[pq], 1e-3)
                out[f"{name}:z_m"] = (s - mean[pm]) / np.maximum(std[pm], 1e-3)
    return out


def _common(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B,) how many of row i of ``a`` (-1: none) are somewhere in row i of ``b``, one column of ``b``
    at a time (a third of the time of one (B, K, K) comparison)."""
    found = np.zeros(a.shape, dtype=bool)
    for j in range(b.shape[1]):
        found |= a == b[:, j : j + 1]
    return (found & (a >= 0)).sum(axis=1)


def _pair_similarity(raw: Mapping[str, np.ndarray], sims: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    """(B,) the pairs' similarity by ``name``: computed from the vectors where it has them, else as
    listed (NaN where the signal did not list the pair)."""
    if name in raw:
        return raw[name]
    s = sims.get(name, np.full(n, -np.inf))
    return np.where(np.isfinite(s), s, np.nan)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B,) Hamming distance of packed (B, 8) uint8 hashes (one 64-bit popcount each)."""
    words = lambda h: np.ascontiguousarray(h, dtype=np.uint8).view(np.uint64)  # noqa: E731
    return np.bitwise_count(words(a) ^ words(b)).sum(axis=1).astype(np.float32)


def _raw_cosine(x: Any, pq: np.ndarray, pm: np.ndarray, threads: int = 1) -> np.ndarray:
    """(B,) inner product of rows ``pq`` and ``pm`` of L2-normalised dense or sparse vectors.

    Dense rows go to FAISS's ``pairwise_indexed_inner_product``, which reads them in place (no
    gathered (B, D) copies), far faster than gathering them in NumPy.
    """
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        return _rowdot(x[pq], x[pm])
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    pq, pm = np.ascontiguousarray(pq, dtype=np.int64), np.ascontiguousarray(pm, dtype=np.int64)
    out = np.empty(len(pq), dtype=np.float32)
    with faiss_threads(threads):
        faiss.pairwise_indexed_inner_product(
            x.shape[1],
            len(pq),
            faiss.swig_ptr(x),
            faiss.swig_ptr(pq),
            faiss.swig_ptr(x),
            faiss.swig_ptr(pm),
            faiss.swig_ptr(out),
        )
    return out


def _title_block(tq: TitleQuantities, q: np.ndarray, m: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Title features of global pairs (q, m)."""
    from rapidfuzz import fuzz, process

    out: dict[str, np.ndarray] = {}
    n_tok = np.asarray(tq.tokens.sum(axis=1)).ravel()
    n_num = np.asarray(tq.numbers.sum(axis=1)).ravel()
    has_qty = np.asarray(tq.units.sum(axis=1)).ravel() > 0
    jac, ratio, tset = (np.empty(len(q), np.float32) for _ in range(3))
    agree, conflict, num_jac = (np.empty(len(q), np.float32) for _ in range(3))
    for start in range(0, len(q), _SUB_BLOCK):
        sl = slice(start, start + _SUB_BLOCK)
        a, b = q[sl], m[sl]
        inter = _rowdot(tq.tokens[a], tq.tokens[b])
        jac[sl] = inter / np.maximum(n_tok[a] + n_tok[b] - inter, 1)
        ratio[sl] = process.cpdist(tq.titles[a], tq.titles[b], scorer=fuzz.ratio, workers=threads) / 100
        tset[sl] = process.cpdist(tq.titles[a], tq.titles[b], scorer=fuzz.token_set_ratio, workers=threads) / 100
        shared_units = _rowdot(tq.units[a], tq.units[b])
        same_qty = tq.quantities[a].multiply(tq.quantities[b]).tocsr()
        agree_units = np.asarray(((same_qty @ tq.unit_of) > 0).sum(axis=1)).ravel()
        agree[sl] = same_qty.sum(axis=1).A.ravel()
        conflict[sl] = shared_units - agree_units
        inter_num = _rowdot(tq.numbers[a], tq.numbers[b])
        union_num = n_num[a] + n_num[b] - inter_num
        num_jac[sl] = np.where(union_num > 0, inter_num / np.maximum(union_num, 1), np.nan)
    out["title:jaccard"], out["title:ratio"], out["title:token_set"] = jac, ratio, tset
    out["qty:agree"], out["qty:conflict"] = agree, conflict
    out["qty:one_side"] = (has_qty[q] != has_qty[m]).astype(np.float32)
    out["num:jaccard"] = num_jac
    return out
