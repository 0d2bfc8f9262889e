"""What each decision rests on, stored with it for ``explain``, the decisions CSV and the review page.

A link's evidence: every signal's similarity beside the threshold it was held to (moved to the
catalogue's size), the signals that passed, whether min-2 took it, the pair model's probability
and, when there is one, the features that moved that probability most (LightGBM's per-feature
contributions, in log-odds). A decision's evidence: the links that placed the posting, the groups
they merged, the links a review refused and the best candidate the rule turned down.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from pipeline.catalogue.assign import Assignment, Links
from pipeline.catalogue.rule import Rule
from pipeline.catalogue.scoring import Scored
from pipeline.matching.pair_features import pair_features
from pipeline.matching.pair_model import PAIR_SIGNAL

KEEP_REJECTED = 3  # per new posting, the best candidates the rule turned down are kept for review
TOP_FEATURES = 5


def kept_pairs(scored: Scored, links: Links) -> np.ndarray:
    """The candidate pairs stored as links: every accepted one and each query's best rejected ones."""
    rejected = np.flatnonzero(~links.accepted)
    order = rejected[np.lexsort((links.b[rejected], -links.probability[rejected], links.a[rejected]))]
    a = links.a[order]
    first = np.r_[True, a[1:] != a[:-1]] if len(a) else np.empty(0, bool)
    starts = np.flatnonzero(first)
    rank = np.arange(len(a)) - np.repeat(starts, np.diff(np.r_[starts, len(a)]))
    return np.sort(np.r_[np.flatnonzero(links.accepted), order[rank < KEEP_REJECTED]])


def link_rows(seq: int, scored: Scored, links: Links, rule: Rule) -> list[tuple]:
    """The ``links`` table rows of a batch (see :func:`kept_pairs`)."""
    rows = kept_pairs(scored, links)
    return [
        (
            seq,
            int(links.a[p]),
            int(links.b[p]),
            "rule",
            float(links.probability[p]),
            int(links.accepted[p]),
            json.dumps(ev),
        )
        for p, ev in zip(rows, pair_evidence(scored, rule, rows, scored.accepted))
    ]


def pair_evidence(scored: Scored, rule: Rule, rows: np.ndarray, accepted: np.ndarray) -> list[dict]:
    """Per candidate pair at ``rows``: similarities, thresholds, what passed, min-2, top features."""
    contributions = _contributions(scored, rule, rows)
    c, settings = scored.candidates, scored.settings
    out = []
    for j, p in enumerate(rows):
        sims = {name: round(float(v[p]), 4) for name, v in c.sims.items() if np.isfinite(v[p])}
        passed = [name for name, t in settings.thresholds.items() if sims.get(name, -np.inf) >= t]
        evidence = {
            "sims": sims,
            "thresholds": {name: round(float(t), 4) for name, t in settings.thresholds.items()},
            "passed": passed,
            "min2": bool(accepted[p] and not passed),
            "min2_floor": None if not settings.min2_on else round(float(settings.min2_floor), 4),
            "min2_signal": settings.min2_signal if settings.min2_on else None,
        }
        if contributions is not None:
            evidence["features"] = contributions[j]
        out.append(evidence)
    return out


def _contributions(scored: Scored, rule: Rule, rows: np.ndarray) -> list[list] | None:
    """Per kept pair, the features that moved the pair model's probability most: [name, value, log-odds]."""
    pair = rule.pair(1)
    if pair is None or PAIR_SIGNAL not in scored.candidates.sims or not len(rows):
        return None
    sub = scored.candidates.take(rows)
    x = pair_features(sub, pair.features, scored.context if pair.needs_context else None)
    contrib = pair.booster.predict(x, pred_contrib=True)[:, :-1]  # the last column is the bias
    out = []
    for i in range(len(rows)):
        top = np.argsort(-np.abs(contrib[i]), kind="stable")[:TOP_FEATURES]
        out.append(
            [
                [
                    pair.features[f],
                    None if np.isnan(x[i, f]) else round(float(x[i, f]), 4),
                    round(float(contrib[i, f]), 4),
                ]
                for f in top
            ]
        )
    return out


def decision_rows(
    seq: int, ids: np.ndarray, links: Links, result: Assignment, name_of: Callable[[np.ndarray], list[str]]
) -> list[tuple]:
    """The ``decisions`` table rows of a batch: one per new posting."""
    refused = set(result.refused)
    by_posting: dict[int, list[int]] = {}
    for i in range(len(links.a)):
        by_posting.setdefault(int(links.a[i]), []).append(i)
    every = np.unique(np.r_[links.b, ids]) if len(links.b) else ids
    names = dict(zip(every.tolist(), name_of(every)))
    out = []
    for p in ids.tolist():
        mine = by_posting.get(p, [])
        good = sorted(
            (i for i in mine if links.accepted[i] and (p, int(links.b[i])) not in refused),
            key=lambda i: -links.probability[i],
        )
        bad = sorted((i for i in mine if not links.accepted[i]), key=lambda i: -links.probability[i])
        confidence = (
            float(links.probability[good[0]]) if good else 1.0 - (float(links.probability[bad[0]]) if bad else 0.0)
        )
        evidence = {
            "matched": [[names[int(links.b[i])], round(float(links.probability[i]), 4)] for i in good[:5]],
            "merged_groups": result.merged_into(result.group[p]) if result.action[p] == "merge" else [],
            "refused_by_review": [names[b] for a, b in result.refused if a == p],
            "best_rejected": [names[int(links.b[bad[0]])], round(float(links.probability[bad[0]]), 4)] if bad else None,
        }
        out.append(
            (p, seq, result.group[p], result.action[p], round(max(0.0, min(1.0, confidence)), 6), json.dumps(evidence))
        )
    return out
