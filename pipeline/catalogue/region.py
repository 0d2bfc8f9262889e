"""The run's group step on a catalogue (``group: run``): a batch's region, clustered again.

The region is the batch's new postings and every live member of each group one of them links to.
Its posting pairs are the batch's candidate links and, between region members, the candidate links
of the region's old postings scored again with the batch in the catalogue (``Rule.rescore_region``;
without it, the links stored when each arrived), weighted as the run's group step weighs them
(:class:`~pipeline.matching.groups.GroupSettings`, moved to the catalogue's size): the pair
model's calibrated probability, kept where the threshold rule accepted the pair (``weights:
accepted``), on every candidate (``prob``), or 1 per accepted pair (``density``). Known labels
and 'same' reviews bind pairs, 'different' reviews part them, and
:func:`~pipeline.catalogue.assign.regroup` clusters the region.
"""

from __future__ import annotations

import numpy as np

from pipeline.catalogue import schema
from pipeline.catalogue.assign import Assignment, Links, regroup
from pipeline.catalogue.catalogue import Catalogue
from pipeline.matching.groups import EDGE_FLOOR, Edges, GroupSettings


def link_weights(group: GroupSettings, prob: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Each pair's weight under the group step (see the module's docstring), from its calibrated
    probability and whether the threshold rule accepted it."""
    prob, accepted = np.asarray(prob, np.float64), np.asarray(accepted, bool)
    if group.weights == "prob":
        return np.where(prob >= EDGE_FLOOR, prob, 0.0)
    if group.weights == "accepted":
        return np.where(accepted, prob, 0.0)
    return accepted.astype(np.float64)


def region_of(cat: Catalogue, ids: np.ndarray, links: Links, accepted: np.ndarray, live: int) -> dict[int, int]:
    """Catalogue posting id -> group, for every live member of each group a batch posting links to
    under the run's group step (the region's old postings)."""
    group = cat.rule.group_settings().at_size(cat.rule.size or live)
    linking = link_weights(group, group.probability(links.probability), accepted) > 0
    reached = np.unique(links.b[linking & (links.b < ids[0])])
    return _members(cat, sorted(set(cat.groups_of(reached).values())))


def regroup_batch(
    cat: Catalogue,
    ids: np.ndarray,
    links: Links,
    accepted: np.ndarray,
    live: int,
    forbidden: list[tuple[int, int]],
    forced: list[tuple[int, int]],
    next_group: int,
    group_of: dict[int, int],
    fresh: Links | None = None,
) -> Assignment:
    """The batch's groups under the run's group step, its region's old groups re-formed.

    Args:
        ids: the batch's posting ids; links: its candidate links (``a`` new); accepted: (P,) the
            threshold rule's decision on each, min-2's included (as ``predict`` passes it).
        live: the catalogue's live postings with the batch (the size the cut moves to).
        group_of: the region's old postings and their groups (:func:`region_of`).
        fresh: the region's old postings' candidate links scored again with the batch in the
            catalogue (``a`` old; ``accepted`` the rule's decision): they stand in for the
            region's stored rule links, scored when their batch came.
    """
    group = cat.rule.group_settings().at_size(cat.rule.size or live)
    old = np.array(sorted(group_of), np.int64)
    a, b, kind, raw, acc = _stored_links(cat, old)
    inside = np.isin(b, old)
    a, b, kind, raw, acc = a[inside], b[inside], kind[inside], raw[inside], acc[inside]
    labelled = kind == "label"
    if fresh is None:
        rule = kind == "rule"
        a_r, b_r, raw_r, acc_r = a[rule], b[rule], raw[rule], acc[rule]
    else:
        a_r, b_r, raw_r, acc_r = fresh.a, fresh.b, fresh.probability, fresh.accepted
    # Each pair once, its links' mean probability, accepted when any link was (as predict joins a
    # pair scored from both sides); the batch's ids are the catalogue's largest.
    edges = Edges.of(
        np.r_[links.a, a_r],
        np.r_[links.b, b_r],
        np.r_[group.probability(links.probability), group.probability(raw_r)],
        int(ids.max()) + 1,
        np.r_[accepted, acc_r],
    )
    bound = [*forced, *zip(a[labelled].tolist(), b[labelled].tolist())]
    pairs = (edges.a, edges.b, link_weights(group, edges.prob, edges.accepted > 0))
    return regroup(ids, group_of, pairs, bound, forbidden, next_group, group.threshold)


def _members(cat: Catalogue, groups: list[int]) -> dict[int, int]:
    """Catalogue posting id -> group, for the live members of ``groups``."""
    out: dict[int, int] = {}
    for chunk, marks in schema.in_chunks(groups):
        out.update(
            cat.con.execute(f"SELECT id, group_id FROM postings WHERE group_id IN ({marks}) AND removed IS NULL", chunk)
        )
    return out


def _stored_links(cat: Catalogue, posts: np.ndarray) -> tuple[np.ndarray, ...]:
    """(a, b, kind, probability, accepted) of the stored links from ``posts``."""
    rows: list[tuple] = []
    for chunk, marks in schema.in_chunks(posts.tolist()):
        rows += cat.con.execute(f"SELECT a, b, kind, probability, accepted FROM links WHERE a IN ({marks})", chunk)
    if not rows:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, object), np.empty(0), np.empty(0, bool)
    a, b, kind, raw, acc = zip(*rows)
    return np.array(a, np.int64), np.array(b, np.int64), np.array(kind, object), np.array(raw), np.array(acc, bool)
