"""Step 5 of a batch: each new posting's group, under the reviews' constraints.

A group is a connected component of accepted links, with two kinds of review in force:
'different' between two postings forbids any component holding both (a cannot-link), and 'same'
links them before anything else (a must-link). Links are taken strongest first; a link that would
join two components a cannot-link keeps apart is refused, and the refusal is part of the
decision's evidence.

For a batch, each existing group is one node and each new posting another; a new posting that
links to no group starts one (``new``), to one group joins it (``join``), to several merges them
(``merge``: the group with the smallest id survives). Everything is deterministic: links are
ordered by probability, then ids, and new groups are numbered by their smallest posting id.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np


class ConstrainedUnion:
    """Union-find whose unions are refused when a cannot-link holds between the two sides."""

    def __init__(self, forbidden: Iterable[tuple[Hashable, Hashable]] = ()):
        self.parent: dict[Hashable, Hashable] = {}
        self.apart: dict[Hashable, set[Hashable]] = {}
        for a, b in forbidden:
            ra, rb = self.find(a), self.find(b)
            if ra != rb:
                self.apart.setdefault(ra, set()).add(rb)
                self.apart.setdefault(rb, set()).add(ra)

    def find(self, x: Hashable) -> Hashable:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: Hashable, b: Hashable) -> bool:
        """Join the components of ``a`` and ``b``; False (and nothing done) when kept apart."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if rb in self.apart.get(ra, ()):
            return False
        keep, gone = (ra, rb) if _key(ra) <= _key(rb) else (rb, ra)
        self.parent[gone] = keep
        moved = self.apart.pop(gone, set())
        for other in moved:
            self.apart[other].discard(gone)
            self.apart[other].add(keep)
        self.apart.setdefault(keep, set()).update(moved)
        return True

    def components(self, members: Iterable[Hashable]) -> dict[Hashable, list[Hashable]]:
        out: dict[Hashable, list[Hashable]] = {}
        for m in members:
            out.setdefault(self.find(m), []).append(m)
        return out


def _key(node: Hashable) -> tuple:
    return (0, node[1]) if isinstance(node, tuple) and node[0] == "g" else (1, node)


@dataclass
class Links:
    """Candidate links of a batch: new posting ``a`` to posting ``b`` (new or in the catalogue)."""

    a: np.ndarray
    b: np.ndarray
    probability: np.ndarray
    accepted: np.ndarray

    def order(self) -> np.ndarray:
        """The accepted links, strongest first, ties by ids."""
        acc = np.flatnonzero(self.accepted)
        return acc[np.lexsort((self.b[acc], self.a[acc], -self.probability[acc]))]


@dataclass
class Assignment:
    """Groups of a batch's new postings, and what happened to existing groups."""

    group: dict[int, int]  # new posting id -> its group id
    action: dict[int, str]  # new | join | merge
    merged: dict[int, list[int]]  # surviving group -> the groups merged into it
    new_groups: list[int] = field(default_factory=list)
    refused: list[tuple[int, int]] = field(default_factory=list)  # links a review kept apart
    moved: dict[int, int] = field(default_factory=dict)  # catalogue posting id -> its new group (regroup)
    emptied: list[int] = field(default_factory=list)  # groups a regroup left with no posting
    absorbed: dict[int, list[int]] = field(default_factory=dict)  # regroup: group -> old groups it took members of

    def merged_into(self, group: int) -> list[int]:
        """The old groups whose postings ``group`` took in this batch."""
        return self.merged.get(group, []) or self.absorbed.get(group, [])


def assign(
    new_ids: np.ndarray,
    links: Links,
    group_of: dict[int, int],
    forbidden: Iterable[tuple[int, int]],
    next_group: int,
) -> Assignment:
    """Groups for the new postings.

    Args:
        new_ids: the batch's posting ids.
        links: its candidate links; ``b`` is new or a key of ``group_of``.
        group_of: the group of every catalogue posting a link reaches or a review names.
        forbidden: posting pairs a 'different' review keeps apart.
        next_group: the id the first new group gets.
    """
    new = set(int(i) for i in new_ids)

    def node(p: int) -> Hashable:
        return p if p in new else ("g", group_of[p])

    pairs = [(node(a), node(b)) for a, b in forbidden if (a in new or a in group_of) and (b in new or b in group_of)]
    uf = ConstrainedUnion(pairs)
    for i in links.order():
        uf.union(node(int(links.a[i])), node(int(links.b[i])))
    refused = _refused(links, node, uf)
    return _assignment(uf, new, refused, next_group)


def _assignment(uf: ConstrainedUnion, new: set[int], refused: list[tuple[int, int]], next_group: int) -> Assignment:
    """The new postings' groups from the union-find's components (existing groups as ``("g", id)``
    nodes): none, a new group; one, join it; several, merge into the smallest id."""
    for p in sorted(new):
        uf.find(p)
    comps = [ms for ms in uf.components(list(uf.parent)).values() if any(not isinstance(m, tuple) for m in ms)]
    out = Assignment({}, {}, {}, refused=refused)
    for members in sorted(comps, key=lambda ms: min(m for m in ms if not isinstance(m, tuple))):
        posts = sorted(m for m in members if not isinstance(m, tuple))
        groups = sorted(m[1] for m in members if isinstance(m, tuple))
        if groups:
            target, action = groups[0], ("join" if len(groups) == 1 else "merge")
            if len(groups) > 1:
                out.merged[target] = groups[1:]
        else:
            target, action = next_group, "new"
            out.new_groups.append(target)
            next_group += 1
        for p in posts:
            out.group[p], out.action[p] = target, action
    return out


def partition(
    members: np.ndarray,
    links: Links,
    forced: Iterable[tuple[int, int]],
    forbidden: Iterable[tuple[int, int]],
) -> list[list[int]]:
    """A group's postings split into the components of its links under the reviews (after a
    'different' review); the first part holds the smallest posting id.

    Args:
        links: the group's accepted links (rule and label links), both ends members.
        forced: member pairs a 'same' review links; forbidden: pairs a 'different' review parts.
    """
    inside = set(int(m) for m in members)
    uf = ConstrainedUnion((a, b) for a, b in forbidden if a in inside and b in inside)
    for a, b in forced:
        if a in inside and b in inside:
            uf.union(a, b)
    for i in links.order():
        a, b = int(links.a[i]), int(links.b[i])
        if a in inside and b in inside:
            uf.union(a, b)
    parts = [sorted(p) for p in uf.components(sorted(inside)).values()]
    return sorted(parts, key=lambda p: p[0])


def assign_average(
    new_ids: np.ndarray,
    links: Links,
    weight: np.ndarray,
    group_of: dict[int, int],
    group_size: dict[int, int],
    forbidden: Iterable[tuple[int, int]],
    next_group: int,
    cut: float,
) -> Assignment:
    """Groups for the new postings by average linkage over weighted links, as
    :func:`pipeline.matching.groups.agglomerate` clusters a snapshot.

    Each existing group is one cluster of its size, each new posting one of size 1. A posting pair
    weighs the mean ``weight`` of its links (a pair scored from both sides has two), and two
    clusters merge, best first, while the sum of their cross pairs' weights over the number of
    cross pairs reaches ``cut``: a pair without a link weighs 0, and two existing groups were kept
    apart before, so the pairs between them weigh 0. A new posting therefore joins a group when it
    is linked to enough of its members, and two groups merge only when the new postings bind them
    as densely. Cannot-links from reviews are never merged across.

    Args:
        weight: (P,) each link's weight (0: it does not link).
    """
    new = set(int(i) for i in new_ids)

    def node(p: int) -> Hashable:
        return p if p in new else ("g", group_of[p])

    pair_total: dict[tuple[int, int], float] = {}
    pair_count: dict[tuple[int, int], int] = {}
    for i in np.flatnonzero(np.asarray(weight) > 0):
        a, b = int(links.a[i]), int(links.b[i])
        key = (min(a, b), max(a, b))
        pair_total[key] = pair_total.get(key, 0.0) + float(weight[i])
        pair_count[key] = pair_count.get(key, 0) + 1
    size = {p: 1 for p in new}
    adj: dict[Hashable, dict[Hashable, float]] = {p: {} for p in new}
    for (a, b), total in pair_total.items():
        x, y = node(a), node(b)
        if x == y:
            continue
        for n in (x, y):
            if n not in size:
                size[n] = group_size.get(n[1], 1)
                adj[n] = {}
        v = total / pair_count[(a, b)]
        adj[x][y] = adj[x].get(y, 0.0) + v
        adj[y][x] = adj[y].get(x, 0.0) + v
    uf = ConstrainedUnion(
        (node(a), node(b)) for a, b in forbidden if (a in new or a in group_of) and (b in new or b in group_of)
    )
    _agglomerate(adj, size, uf, cut)
    return _assignment(uf, new, _refused(links, node, uf), next_group)


def regroup(
    new_ids: np.ndarray,
    group_of: dict[int, int],
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    forced: Iterable[tuple[int, int]],
    forbidden: Iterable[tuple[int, int]],
    next_group: int,
    cut: float,
) -> Assignment:
    """The new postings and the groups they reach, clustered again from scratch, as ``predict``
    clusters a snapshot (the touched groups only, as S2AND re-clusters the clusters a new record touches).

    Average linkage over the posting pairs' weights: every posting starts alone, except those a
    forced pair (a known label, a 'same' review) binds; two clusters merge, best first, while the
    sum of their cross pairs' weights over the number of cross pairs reaches ``cut``; cannot-links
    are never merged across. Adding postings one at a time then gives the groups that adding them at
    once would: an early posting's wrong link is undone when its true group arrives.

    Each resulting cluster keeps the id of the old group it holds most members of (ties: the
    smaller id), each old id going to one cluster; the others get new ids. Old postings whose
    cluster took another id move (``moved``), and an old group no cluster took is ``emptied``.

    Args:
        new_ids: the batch's posting ids.
        group_of: the group of every old posting of the region (the groups the batch reaches, whole).
        pairs: (a, b, weight) of the region's posting pairs, each pair once (0: no link).
        forced, forbidden: posting pairs bound, or kept apart, by labels and reviews.
    """
    new = [int(i) for i in new_ids]
    region = set(new) | set(group_of)
    uf = ConstrainedUnion((a, b) for a, b in forbidden if a in region and b in region)
    for a, b in forced:
        if a in region and b in region:
            uf.union(a, b)
    size: dict[Hashable, int] = {}
    for p in region:
        root = uf.find(p)
        size[root] = size.get(root, 0) + 1
    adj: dict[Hashable, dict[Hashable, float]] = {root: {} for root in size}
    for a, b, w in zip(*pairs):
        if w <= 0 or int(a) not in region or int(b) not in region:
            continue
        x, y = uf.find(int(a)), uf.find(int(b))
        if x != y:
            adj[x][y] = adj[x].get(y, 0.0) + float(w)
            adj[y][x] = adj[y].get(x, 0.0) + float(w)
    _agglomerate(adj, size, uf, cut)
    clusters = sorted((sorted(ms) for ms in uf.components(sorted(region)).values()), key=lambda ms: ms[0])
    ids = _cluster_ids(clusters, group_of)
    out = Assignment({}, {}, {})
    for k, members in enumerate(clusters):
        if ids[k] is None:
            ids[k] = next_group
            out.new_groups.append(next_group)
            next_group += 1
        olds = sorted({group_of[m] for m in members if m in group_of})
        for m in members:
            if m in group_of:
                if group_of[m] != ids[k]:
                    out.moved[m] = ids[k]
            else:
                out.group[m] = ids[k]
                out.action[m] = "new" if not olds else "join" if len(olds) == 1 else "merge"
        if len(olds) > 1:
            out.absorbed[ids[k]] = [g for g in olds if g != ids[k]]
    out.emptied = sorted(set(group_of.values()) - set(ids))
    return out


def _cluster_ids(clusters: list[list[int]], group_of: dict[int, int]) -> list[int | None]:
    """Per cluster, the old group id it keeps: largest share first, then the smaller group id and
    the cluster of the smaller posting id; each old id goes to one cluster at most."""
    shares = []
    for k, members in enumerate(clusters):
        counts: dict[int, int] = {}
        for m in members:
            if m in group_of:
                counts[group_of[m]] = counts.get(group_of[m], 0) + 1
        shares += [(-c, g, k) for g, c in counts.items()]
    ids: list[int | None] = [None] * len(clusters)
    taken: set[int] = set()
    for _, g, k in sorted(shares):
        if ids[k] is None and g not in taken:
            ids[k] = g
            taken.add(g)
    return ids


def _refused(links: Links, node, uf: ConstrainedUnion) -> list[tuple[int, int]]:
    """The accepted links whose two sides a review keeps apart."""
    out = []
    for i in np.flatnonzero(links.accepted):
        a, b = int(links.a[i]), int(links.b[i])
        ra, rb = uf.find(node(a)), uf.find(node(b))
        if ra != rb and rb in uf.apart.get(ra, ()):
            out.append((a, b))
    return out


def _agglomerate(
    adj: dict[Hashable, dict[Hashable, float]], size: dict[Hashable, int], uf: ConstrainedUnion, cut: float
) -> None:
    """Merge clusters (keyed by their union-find root) by the best average link while it reaches ``cut``;
    a merge a cannot-link forbids is skipped."""
    import heapq

    heap = [
        (-v / (size[x] * size[y]), _key(x), _key(y), x, y) for x in adj for y, v in adj[x].items() if _key(x) < _key(y)
    ]
    heapq.heapify(heap)
    while heap:
        neg, _, _, x, y = heapq.heappop(heap)
        if -neg < cut:
            break
        if x not in adj or y not in adj or y not in adj[x] or abs(adj[x][y] / (size[x] * size[y]) + neg) > 1e-12:
            continue  # stale: a side was merged or the link changed since it was pushed
        if not uf.union(x, y):
            adj[x].pop(y, None)
            adj[y].pop(x, None)
            continue
        keep, gone = (x, y) if uf.find(x) == x else (y, x)
        size[keep] += size.pop(gone)
        for z, v in adj.pop(gone).items():
            adj[z].pop(gone, None)
            if z == keep:
                continue
            adj[keep][z] = adj[keep].get(z, 0.0) + v
            adj[z][keep] = adj[keep][z]
        for z, v in adj[keep].items():
            a, b = (keep, z) if _key(keep) < _key(z) else (z, keep)
            heapq.heappush(heap, (-v / (size[keep] * size[z]), _key(a), _key(b), a, b))
