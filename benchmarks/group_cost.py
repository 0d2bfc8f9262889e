"""Seconds and peak memory of the group decision, alone and in the whole predict path.

``rules``: N postings in groups of 4, k candidates each (a share of them the posting's own group),
scored as a pair model scores: true pairs high, most others near 0. Each rule runs on the same
candidates (no calibration knots: the scores are the probabilities).

``bench``: ``pipeline bench --tfidf --pair`` (the whole predict path, timed per step) with one group
rule after the pairs, or none; run it once per rule in one session to compare:

    python -m benchmarks.group_cost rules --n 70000 --k 50
    for rule in none average; do OMP_NUM_THREADS=1 python -m benchmarks.group_cost bench --n 70000 \\
        --rule $rule --out docs/groups/bench_70000_$rule.json threads=1; done
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.matching.groups import GroupConfig, GroupSettings, decide_groups, group_f1

RULES = {
    "average": GroupSettings("average", threshold=0.5, min2_floor=0.5),
    "accepted": GroupSettings("average", "accepted", threshold=0.5, min2_floor=0.5),
    "complete": GroupSettings("complete", threshold=0.5, min2_floor=0.5),
}


def candidates(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) // 4
    q = np.repeat(np.arange(n), k)
    m = np.where(rng.random(n * k) < 0.06, (q // 4) * 4 + rng.integers(0, 4, n * k), rng.integers(0, n, n * k))
    keep = q != m
    q, m = q[keep], m[keep]
    same = labels[q] == labels[m]
    score = np.where(same, rng.beta(8, 1.5, len(q)), rng.beta(0.3, 12, len(q)))
    return q, m, score, labels


def time_rules(n: int, k: int, rules: list[str]) -> dict:
    q, m, score, labels = candidates(n, k)
    accepted = score >= 0.5
    out: dict = {"n": n, "pairs": int(len(q)), "load_average": [round(x, 2) for x in os.getloadavg()]}
    for name in rules:
        t0 = time.perf_counter()
        cluster, lq, lm = decide_groups(q, m, score, n, accepted, RULES[name])
        seconds = time.perf_counter() - t0
        out[name] = {
            "seconds": round(seconds, 2),
            "f1": round(group_f1(cluster, labels, (lq, lm))["f1"], 4),
            "largest_group": int(np.bincount(cluster).max()),
        }
        print(name, out[name], file=sys.stderr, flush=True)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def time_bench(n: int, rule: str, weights: str, search: dict) -> dict:
    from pipeline.tools.bench import run_bench

    load = [round(x, 2) for x in os.getloadavg()]
    out = run_bench(
        n=n, pair=True, tfidf=True, recall_sample=0, search_overrides=search, group=GroupConfig(rule, weights, cut=None)
    )
    return {**out, "load_average_before": load, "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rules", help="the group step alone on synthetic candidates")
    r.add_argument("--n", type=int, default=70_000)
    r.add_argument("--k", type=int, default=50)
    r.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    b = sub.add_parser("bench", help="pipeline bench --tfidf --pair with a group rule (or none)")
    b.add_argument("--n", type=int, default=70_000)
    b.add_argument("--rule", default="average")
    b.add_argument("--weights", default="accepted")
    b.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    b.add_argument("search", nargs="*", metavar="key=value", help="search settings, e.g. threads=1")
    a = p.parse_args(argv)
    if a.command == "rules":
        out = time_rules(a.n, a.k, a.rules)
    else:
        search = {k: json.loads(v) if v[:1].isdigit() else v for k, _, v in (s.partition("=") for s in a.search)}
        out = time_bench(a.n, a.rule, a.weights, search)
        if a.out is not None:
            a.out.write_text(json.dumps(out) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
