"""Steps 3 and 4 of a batch: search candidates among the catalogue and the batch, and score them
with the run's signals, blending, pair model and tuned rule.

``predict`` searches one gallery and then works on its neighbour lists. Here the batch's postings
are searched against the catalogue's indexes and among themselves, and the lists of the catalogue
postings they meet come from :class:`~pipeline.catalogue.lists.NeighbourLists`, with the batch's
postings inserted. Those lists form a *local gallery*: the batch, the catalogue postings its lists
hold (and, for blending, their blending neighbours), and every posting those lists name. The
library's own steps then run on it unchanged: graph blending, :func:`build_candidates`, the pair
model's features and scores, and :func:`decide` with the thresholds moved to the catalogue's size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.catalogue.lists import NeighbourLists, merge_rows
from pipeline.catalogue.rule import Rule
from pipeline.catalogue.store import VectorStore
from pipeline.matching.candidates import Candidates, Gallery, build_candidates
from pipeline.matching.decide import decide, union_mask
from pipeline.matching.fusion import DENSE_SIGNALS, graph_blend
from pipeline.matching.neighbours import Neighbours, search
from pipeline.matching.pair_features import PairContext
from pipeline.matching.pair_model import PAIR_SIGNAL
from pipeline.matching.ranking import best_k

IdLists = dict[str, tuple[np.ndarray, np.ndarray]]  # signal -> ((R, k) ids, (R, k) similarities)


@dataclass
class Scored:
    """The batch's candidate pairs, scored and decided.

    Attributes:
        candidates: pairs over local positions; ``ids[c.query]`` are batch postings (the
            requeried ones when ``score_batch`` was given ``requery``).
        accepted: (P,) bool, the rule's decision.
        joins: (P,) bool, the accepted pairs that join groups (min-2's only with ``rule.min2_joins``).
        ids: (L,) posting id of each local position.
        probability: (P,) the pair model's probability, or the rule's score (:func:`rule_score`).
        context: what the pair model read, for :mod:`pipeline.catalogue.evidence`.
        updates: per signal, the catalogue postings' lists with the batch inserted (to keep).
        batch_lists: per signal, the batch postings' own lists (to keep).
    """

    candidates: Candidates
    accepted: np.ndarray
    joins: np.ndarray
    ids: np.ndarray
    probability: np.ndarray
    context: PairContext | None
    updates: IdLists
    batch_lists: IdLists
    settings: Any


def search_batch(
    store: VectorStore,
    rule: Rule,
    vectors: Mapping[str, Any],
    batch_ids: np.ndarray,
    within: bool = True,
    listed: Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> IdLists:
    """Per searched signal, each batch posting's top-k among the catalogue and, with ``within``, the
    batch itself; otherwise it lists itself alone besides the catalogue (a read-only query).

    Args:
        listed: the stored lists of catalogue ids, ``(signal, ids) -> (idx, sim)``: with an
            approximate dense index, each posting is also offered what its best finds list
            (:func:`grown_from_lists`).
    """
    k = rule.search.k
    out: IdLists = {}
    for s in rule.searched():
        sim_c, ids_c = store.search(s, vectors[s], k)
        if listed is not None and s in (*DENSE_SIGNALS, "concat") and store.approximate(s):
            ids_c, sim_c = grown_from_lists(
                lambda ids, s=s: store.fetch(s, ids), listed, s, vectors[s], ids_c, sim_c, rule.search
            )
        if within:
            # Among the batch as predict searches its gallery: the run's index (``auto``: exact up
            # to 30,000 rows, HNSW above), so an init of a big first batch is not quadratic.
            nb = search(s, vectors[s], k, rule.search)
            own_ids = np.where(nb.idx >= 0, batch_ids[np.maximum(nb.idx, 0)], -1)
            own_sim = nb.sim
        else:
            own_ids, own_sim = batch_ids[:, None], _self_similarity(s, vectors[s])[:, None]
            own_ids = np.where(np.isfinite(own_sim), own_ids, -1)
        out[s] = merge_rows(own_ids, own_sim, ids_c, sim_c, k)
    return out


def grown_from_lists(
    rows: Callable[[np.ndarray], np.ndarray],
    listed: Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray]],
    signal: str,
    q: np.ndarray,
    ids: np.ndarray,
    sim: np.ndarray,
    search: Any,
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """An approximate index's top-k of each query, with the best ``search.expand_width`` entries of
    the stored lists of its ``search.expand_sources`` best finds offered too, every candidate
    scored exactly: a neighbour's neighbour is likely a neighbour (as in
    :mod:`pipeline.matching.expansion`), and the catalogue's stored lists are already there.

    Args:
        rows: the stored float32 rows of catalogue ids; listed: their stored lists.
        q: (Q, D) the queries; ids, sim: (Q, k) the index's answer.
    """
    k, sources, width = ids.shape[1], search.expand_sources, search.expand_width
    out_ids, out_sim = np.empty_like(ids), np.empty_like(sim)
    for start in range(0, len(ids), block):
        found = ids[start : start + block]
        near = found[:, :sources]
        grown = listed(signal, np.maximum(near, 0).ravel())[0][:, :width].reshape(len(near), sources, -1)
        grown[near < 0] = -1
        cand = np.sort(np.concatenate([found, grown.reshape(len(near), -1)], 1), axis=1)
        cand[:, 1:][cand[:, 1:] == cand[:, :-1]] = -1
        x = np.zeros((*cand.shape, q.shape[1]), dtype=np.float32)
        x[cand >= 0] = rows(cand[cand >= 0])
        exact = np.einsum("qd,qcd->qc", q[start : start + block], x, optimize=False)
        out_ids[start : start + block], out_sim[start : start + block] = best_k(cand, exact, k)
    return out_ids, out_sim


def _self_similarity(signal: str, x: Any) -> np.ndarray:
    """How a gallery search lists a posting against itself: cosine 1 (0 norm: not at all)."""
    if signal == "phash":
        return np.ones(x.shape[0], np.float32)
    norms = (
        np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()) if hasattr(x, "multiply") else np.linalg.norm(x, axis=1)
    )
    return np.where(norms > 0, norms**2, -np.inf).astype(np.float32)


MERGE_BLOCK = 32_768  # catalogue lists merged at a time


def stored_rows(
    lists: NeighbourLists, signal: str, ids: np.ndarray, known: int, removed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Stored lists of ``ids``, removed postings left out."""
    idx, sim = lists.rows(signal, ids, known)
    if len(removed):
        gone = np.isin(idx, removed)
        idx, sim = np.where(gone, -1, idx), np.where(gone, -np.inf, sim)
    return idx, sim


def insert_batch(
    lists: NeighbourLists, batch: IdLists, first_id: int, known: int, k: int, removed: np.ndarray
) -> IdLists:
    """The lists of the catalogue postings the batch found, with the batch postings inserted; a
    list no batch posting enters (each less similar than its k-th) is left out, unchanged."""
    out: IdLists = {}
    for s, (idx, sim) in batch.items():
        q = np.broadcast_to(np.arange(first_id, first_id + len(idx))[:, None], idx.shape)
        old = (idx >= 0) & (idx < first_id)
        m, qq, ss = idx[old], q[old], sim[old]
        if not len(removed):  # removed entries free places that the stored k-th does not show
            enters = ss >= lists.last(s, m, known)
            m, qq, ss = m[enters], qq[enters], ss[enters]
        rows = np.unique(m)
        if not len(rows):
            out[s] = (rows, np.empty((0, k), np.int64), np.empty((0, k), np.float32))
            continue
        order = np.lexsort((-ss, m))
        m, qq, ss = m[order], qq[order], ss[order]
        starts = np.searchsorted(m, rows)
        rank = np.arange(len(m)) - np.repeat(starts, np.diff(np.r_[starts, len(m)]))
        keep = rank < k
        width = int(rank[keep].max()) + 1  # most rows take one or two batch postings: merge only those columns
        new_idx = np.full((len(rows), width), -1, np.int64)
        new_sim = np.full((len(rows), width), -np.inf, np.float32)
        at = np.searchsorted(rows, m[keep])
        new_idx[at, rank[keep]], new_sim[at, rank[keep]] = qq[keep], ss[keep]
        out[s] = (rows, *_merged_in_blocks(lists, s, rows, new_idx, new_sim, known, k, removed))
    return out


def _merged_in_blocks(
    lists: NeighbourLists,
    signal: str,
    rows: np.ndarray,
    new_idx: np.ndarray,
    new_sim: np.ndarray,
    known: int,
    k: int,
    removed: np.ndarray,
    block: int = MERGE_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """The stored lists of ``rows`` merged with the new entries, ``block`` rows at a time: the
    merge's temporaries are then reused from block to block instead of fresh pages (a batch of
    10,000 enters about 330,000 lists of a million-posting catalogue)."""
    idx = np.empty((len(rows), k), np.int64)
    sim = np.empty((len(rows), k), np.float32)
    for start in range(0, len(rows), block):
        part = slice(start, start + block)
        idx_old, sim_old = stored_rows(lists, signal, rows[part], known, removed)
        idx[part], sim[part] = merge_rows(idx_old, sim_old, new_idx[part], new_sim[part], k, disjoint=True)
    return idx, sim


def trims(rule: Rule) -> dict[str, float]:
    """Per searched signal, the similarity below which a list entry cannot matter (floors apply only
    without the pair model, which reads whole lists)."""
    floors = rule.floors()
    if floors is None:
        return {s: -math.inf for s in rule.searched()}
    s = rule.settings
    out = {name: floors.get(name, math.inf) for name in rule.searched()}
    if rule.blends:
        out[s.blend_signal] = min(out.get(s.blend_signal, math.inf), s.blend_threshold)
    return out


def _trimmed(idx: np.ndarray, sim: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    cut = sim < level
    return np.where(cut, -1, idx), np.where(cut, -np.inf, sim)


def local_lists(
    rule: Rule,
    lists: NeighbourLists,
    batch_ids: np.ndarray,
    batch: IdLists,
    updates: IdLists,
    known: int,
    removed: np.ndarray,
    requery: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Neighbours]]:
    """The local gallery: (L,) posting ids and, per searched signal, (L, k) lists over local positions.

    Rows with lists: the batch, the catalogue postings its lists hold (with the batch inserted),
    the ``requery`` postings, and for blending the blending neighbours of those; every other
    posting their lists name is a position without a list of its own.
    """
    level = trims(rule)
    blocks: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {s: [] for s in batch}
    for s, (idx, sim) in batch.items():
        blocks[s].append((batch_ids, *_trimmed(idx, sim, level[s])))
    for s, (ids, idx, sim) in updates.items():
        blocks[s].append((ids, *_trimmed(idx, sim, level[s])))
        # A requeried posting that no batch posting entered keeps its stored list.
        got = np.setdiff1d(requery, ids) if requery is not None else ids[:0]
        if len(got):
            blocks[s].append((got, *_trimmed(*stored_rows(lists, s, got, known, removed), level[s])))
    if rule.blends:
        b = rule.settings.blend_signal
        have = np.concatenate([blk[0] for blk in blocks[b]])
        listed = np.concatenate([blk[1][blk[2] >= rule.settings.blend_threshold] for blk in blocks[b]])
        extra = np.setdiff1d(np.unique(listed[listed >= 0]), have)
        for s in batch:
            if len(extra):
                got = np.setdiff1d(extra, np.concatenate([blk[0] for blk in blocks[s]]))
                blocks[s].append((got, *_trimmed(*stored_rows(lists, s, got, known, removed), level[s])))
    everything = [batch_ids]
    for s in blocks:
        for ids, idx, _ in blocks[s]:
            everything += [ids, idx[idx >= 0]]
    # Ids are dense (0 .. the batch's last): a table from id to position replaces sorting and
    # binary searches over the tens of millions of entries a big catalogue's lists name.
    size = int(max(part.max(initial=-1) for part in everything)) + 1
    named = np.zeros(size, bool)
    for part in everything:
        named[part] = True
    positions = np.flatnonzero(named)
    position = np.full(size + 1, -1, np.int64)  # the last entry: where -1 (no entry) points
    position[positions] = np.arange(len(positions))
    out = {}
    for s in blocks:
        width = _local_width(rule, s, [idx for _, idx, _ in blocks[s]])
        idx_l = np.full((len(positions), width), -1, np.int64)
        sim_l = np.full((len(positions), width), -np.inf, np.float32)
        for ids, idx, sim in blocks[s]:
            at = position[ids]
            idx_l[at] = position[idx[:, :width]]
            sim_l[at] = sim[:, :width]
        out[s] = Neighbours(idx_l, sim_l)
    return positions, out


def _local_width(rule: Rule, signal: str, idx: list[np.ndarray]) -> int:
    """Columns the local lists of ``signal`` need: k where whole lists are read (the pair model,
    blending), else up to the last column any trimmed list fills. The local gallery of a big
    catalogue names every posting: a million phash lists of 50 were 600 MB, filled to column 18."""
    k = rule.search.k
    if rule.uses_pair or (rule.blends and signal == rule.settings.blend_signal):
        return k
    filled = np.zeros(k, bool)
    for part in idx:
        filled[: part.shape[1]] |= (part >= 0).any(axis=0)
    return int(np.flatnonzero(filled).max(initial=0)) + 1


def score_batch(
    store: VectorStore,
    lists: NeighbourLists,
    rule: Rule,
    vectors: Mapping[str, Any],
    batch_ids: np.ndarray,
    batch_titles: np.ndarray,
    titles: Callable[[np.ndarray], list[str]],
    removed: np.ndarray,
    live: int,
    within: bool = True,
    threads: int = 1,
    requery: np.ndarray | None = None,
    searched: tuple[IdLists, IdLists] | None = None,
) -> Scored:
    """Search, score and decide the candidate pairs of a batch whose postings get ``batch_ids``.

    Args:
        vectors: per stored signal, the batch's rows.
        batch_titles: the batch's titles; titles: those of catalogue posting ids (both read by a
            pair model with title features).
        removed: the catalogue's removed ids (their stored list entries are dropped).
        live: the catalogue's live postings with the batch: the gallery size the thresholds move to.
        within: also search the batch among itself (an add); False: each query against the catalogue.
        requery: catalogue postings whose candidate pairs are scored instead of the batch's, from
            their lists with the batch inserted: a region's stored links, scored again as
            ``predict`` scores them in a gallery that holds the batch.
        searched: ``(batch_lists, updates)`` of an earlier call on the same batch (no search again).
    """
    first_id, known = int(batch_ids[0]), int(batch_ids[0])
    if searched is None:
        listed = functools.partial(stored_rows, lists, known=known, removed=removed)
        batch = search_batch(store, rule, vectors, batch_ids, within, listed)
        updates = insert_batch(lists, batch, first_id, known, rule.search.k, removed)
    else:
        batch, updates = searched
    positions, nb = local_lists(rule, lists, batch_ids, batch, updates, known, removed, requery)
    s = rule.settings
    queries = np.searchsorted(positions, batch_ids if requery is None else requery)
    if rule.blends:
        blended = nb[s.blend_signal]
        for round_ in range(s.blend_rounds):
            # The last round's lists are read for the batch's pairs only, unless the pair model
            # reads its candidates' own lists too.
            last = round_ == s.blend_rounds - 1 and not rule.uses_pair
            blended = graph_blend(blended, s.blend_threshold, threads=threads, rows=queries if last else None)
        nb["blend"] = blended
    gallery = Gallery(np.arange(len(positions)), queries, _local_vectors(store, rule, vectors, batch_ids, positions))
    c = build_candidates(gallery, nb, len(positions), floors=rule.floors())
    settings = rule.at_size(live)
    context = None
    pair = rule.pair(threads)
    if pair is not None:
        local_titles = None
        if pair.needs_titles:
            local_titles = _local_titles(titles, batch_titles, batch_ids, positions)
        context = PairContext.single(gallery, nb, len(positions), local_titles, threads) if pair.needs_context else None
        c.sims[PAIR_SIGNAL] = pair.predict(c, context)
    accepted = decide(c, settings)
    joins = accepted if rule.min2_joins else accepted & union_mask(c, settings.thresholds)
    prob = c.sims[PAIR_SIGNAL] if PAIR_SIGNAL in c.sims else rule_score(c, settings)
    return Scored(c, accepted, joins, positions, prob, context, updates, batch, settings)


def _local_vectors(
    store: VectorStore, rule: Rule, vectors: Mapping[str, Any], batch_ids: np.ndarray, positions: np.ndarray
) -> dict[str, Any]:
    """Every stored signal's rows of the local gallery, when the pair model compares raw vectors."""
    if not rule.uses_pair:
        return {}
    import scipy.sparse as sp

    is_new = np.isin(positions, batch_ids)
    out = {}
    for s in rule.stored():
        old = store.fetch(s, positions[~is_new])
        new = vectors[s][np.searchsorted(batch_ids, positions[is_new])]
        if sp.issparse(old) or sp.issparse(new):
            old, new = sp.csr_matrix(old), sp.csr_matrix(new)
            width = max(old.shape[1], new.shape[1])
            old.resize(old.shape[0], width)
            new.resize(new.shape[0], width)
            stacked = sp.vstack([old, new], format="csr")
        else:
            stacked = np.vstack([old, new])
        order = np.argsort(np.r_[np.flatnonzero(~is_new), np.flatnonzero(is_new)], kind="stable")
        out[s] = stacked[order]
    return out


def _local_titles(
    titles: Callable[[np.ndarray], list[str]], batch_titles: np.ndarray, batch_ids: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    is_new = np.isin(positions, batch_ids)
    out = np.empty(len(positions), dtype=object)
    out[~is_new] = titles(positions[~is_new])
    out[is_new] = np.asarray(batch_titles, dtype=object)[np.searchsorted(batch_ids, positions[is_new])]
    return out


def rule_score(c: Candidates, settings: Any) -> np.ndarray:
    """A pair's confidence when the rule has no pair model: 0.5 at the nearest threshold, rising
    to 1 at similarity 1 and falling to 0 at a similarity as far below it (min-2 pairs score below 0.5)."""
    score = np.zeros(len(c), np.float32)
    for name, t in settings.thresholds.items():
        if name in c.sims:
            s = c.sims[name]
            margin = np.where(s >= t, (s - t) / max(1.0 - t, 1e-6), (s - t) / max(t, 1e-6))
            score = np.maximum(score, np.where(np.isfinite(s), 0.5 + 0.5 * np.clip(margin, -1, 1), 0.0))
    return score
