"""Seconds to add a batch to a catalogue of synthetic postings, and a single posting's match latency.

Run from the repository root::

    OMP_NUM_THREADS=1 python -m benchmarks.catalogue_add                       # 50,000 + a batch of 1,000
    OMP_NUM_THREADS=1 python -m benchmarks.catalogue_add --size 200000 --batch 10000

The postings are the bench's generator (``pipeline.data.synth.postings.clustered_postings``): image
and text vectors near group centres and a phash, so no encoder runs; the figures are the
catalogue's own cost (search, lists, scoring, grouping, SQLite and the files), not the encoders'.
The catalogue is made with ``init`` from the first ``--size`` postings and their labels, as from a
run's training postings (or copied from ``--keep``, which an earlier run with the same arguments
left); the next ``--batch`` postings are then added as one batch (their groups are the rule's).
The rule is ``pipeline bench``'s (concat and phash thresholds, min-2, blending), with a flat
(exact) index. Prints one JSON line, with the recall of the batch postings' stored
lists against exact search above the bench rule's floors (``--recall-sample`` of them, untimed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def postings_frame(labels: np.ndarray, phash: np.ndarray, first: int) -> pd.DataFrame:
    ids = [f"p{first + i}" for i in range(len(labels))]
    hexes = [row.tobytes().hex() for row in phash]
    return pd.DataFrame({"posting_id": ids, "image": [f"{i}.jpg" for i in ids], "image_phash": hexes, "title": ids})


def grouping_f1(cat, labels: np.ndarray) -> float:
    """F1 of every posting's group (the catalogue's and the batch's) against the generator's labels."""
    from pipeline.metric import score_matches, true_sets_from_labels

    ids = [f"p{i}" for i in range(len(labels))]
    groups = dict(cat.con.execute("SELECT posting_id, group_id FROM postings"))
    members: dict[int, set] = {}
    for pid in ids:
        members.setdefault(groups[pid], set()).add(pid)
    return score_matches({pid: members[groups[pid]] for pid in ids}, true_sets_from_labels(ids, labels.tolist()))["f1"]


def batch_recall(cat, raw: dict, settings, batch_rows: np.ndarray, n: int, sample: int, seed: int) -> dict:
    """Recall of the batch postings' stored lists against exact search over the catalogue and the
    batch, above the bench rule's floors (catalogue ids are the generator's rows)."""
    from pipeline.matching.neighbours import Neighbours
    from pipeline.matching.recall import search_recall
    from pipeline.tools.bench import recall_floors

    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(batch_rows, size=min(sample, len(batch_rows)), replace=False))
    gallery = {s: v[:n] for s, v in raw.items()}
    lists = {s: Neighbours(*cat.lists.rows(s, queries)) for s in ("concat", "phash")}
    floors = recall_floors(settings, gallery)
    return search_recall(gallery, lists, floors, settings.fusion_weights, queries=queries, chunk=20)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000, help="postings in the catalogue before the batch")
    parser.add_argument("--batch", type=int, default=1_000, help="postings added as one batch")
    parser.add_argument("--dim", type=int, default=64, help="width of each dense modality")
    parser.add_argument("--queries", type=int, default=200, help="single-posting matches timed")
    parser.add_argument("--index", default="flat", choices=["auto", "flat", "ivf", "ivfsq", "hnsw"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recall-sample", type=int, default=500, help="batch postings whose lists are checked")
    parser.add_argument(
        "--keep",
        type=Path,
        help="a copy of the catalogue after init, made here on the first run and copied from on the next "
        "(same arguments): a million postings take 40 minutes to init",
    )
    args = parser.parse_args(argv)

    from pipeline.catalogue import IndexConfig, Rule, add_postings, init_with_vectors, match_postings, open_catalogue
    from pipeline.device import bound_threads
    from pipeline.machine import machine_facts
    from pipeline.matching.fusion import concat_embeddings
    from pipeline.matching.neighbours import SearchConfig
    from pipeline.memory import settle_memory
    from pipeline.tools.bench import bench_settings

    bound_threads(args.threads)
    settle_memory()  # as `python -m pipeline catalogue add` does
    from pipeline.data.synth.postings import clustered_postings

    n = args.size + args.batch + args.queries
    raw, labels = clustered_postings(n, args.dim, seed=args.seed)
    settings = bench_settings(tfidf=False)
    vectors = {"concat": concat_embeddings(raw, settings.fusion_weights), "phash": raw["phash"]}
    rule = Rule(settings, SearchConfig(k=50), modalities=["image", "text", "phash"], index=IndexConfig(kind=args.index))
    parts = np.split(np.arange(n), [args.size, args.size + args.batch])

    def part(i: int) -> tuple[pd.DataFrame, dict]:
        rows = parts[i]
        return postings_frame(labels[rows], raw["phash"][rows], int(rows[0])), {k: v[rows] for k, v in vectors.items()}

    with tempfile.TemporaryDirectory() as tmp:
        df, x = part(0)
        start = time.perf_counter()
        if args.keep is not None and args.keep.exists():
            shutil.copytree(args.keep, Path(tmp) / "C")
            os.sync()  # the copy's pages written out, so that the batch's fsyncs do not wait on them
            cat, init_s = open_catalogue(Path(tmp) / "C", write=True, threads=args.threads), None
        else:
            cat, _ = init_with_vectors(Path(tmp) / "C", rule, df, x, labels=labels[parts[0]], threads=args.threads)
            init_s = round(time.perf_counter() - start, 2)
            if args.keep is not None:
                cat.close()
                shutil.copytree(Path(tmp) / "C", args.keep)
                cat = open_catalogue(Path(tmp) / "C", write=True, threads=args.threads)

        df, x = part(1)
        start = time.perf_counter()
        decisions = add_postings(cat, df, vectors=x)
        add_s = time.perf_counter() - start

        f1_after = grouping_f1(cat, labels[: args.size + args.batch])
        recall = batch_recall(cat, raw, settings, parts[1], args.size + args.batch, args.recall_sample, args.seed)

        df, x = part(2)
        latencies = []
        for i in range(len(df)):
            start = time.perf_counter()
            match_postings(cat, df.iloc[i : i + 1], vectors={k: v[i : i + 1] for k, v in x.items()})
            latencies.append(time.perf_counter() - start)
        cat.close()

    ms = 1000 * np.array(latencies)
    out = {
        "catalogue": args.size, "batch": args.batch, "dim": args.dim, "index": args.index, "threads": args.threads,
        "init_s": init_s, "add_s": round(add_s, 2), "add_per_posting_ms": round(1000 * add_s / args.batch, 2),
        "actions": decisions["action"].value_counts().to_dict(), "f1_after": round(f1_after, 4),
        "match_p50_ms": round(float(np.percentile(ms, 50)), 1), "match_p99_ms": round(float(np.percentile(ms, 99)), 1),
        "recall": recall,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": machine_facts(),
    }  # fmt: skip
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
