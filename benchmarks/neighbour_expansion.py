"""How much of exact search's lists do IVF-PQ's lists hold, round by round of neighbour expansion?

The bench's postings (image, text, phash) are searched as ``bench --index ivfpq`` searches them,
then :func:`pipeline.matching.expansion.expand_lists` runs one round at a time: image and text
pooled together, phash on its own. After each round the recall above the floors (the bench rule's:
0.3 for image, text and their fused cosine, 0.85 for phash) is checked against exact search on
500 sampled queries, and each round's seconds are printed:

    python -m benchmarks.neighbour_expansion --n 200000 --rounds 3 --sources 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

from pipeline.data.synth.postings import clustered_postings
from pipeline.matching.expansion import expand_lists
from pipeline.matching.fusion import fused_neighbours
from pipeline.matching.neighbours import Neighbours, SearchConfig, faiss_threads, search
from pipeline.matching.recall import recall_queries, search_recall

FLOORS = {"image": 0.3, "text": 0.3, "concat": 0.3, "phash": 0.85}
WEIGHTS = {"image": 0.5, "text": 0.5}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sources", type=int, default=5, help="nearest neighbours whose lists each row is offered")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    vectors = clustered_postings(args.n, 512, 0)[0]
    queries = recall_queries(args.n, 500, 0)
    settings = SearchConfig(index="ivfpq", threads=args.threads, expand_rounds=0)

    def recall(lists: dict[str, Neighbours]) -> dict[str, float]:
        with faiss_threads(args.threads):
            fused = fused_neighbours(vectors, lists, WEIGHTS, settings.k, FLOORS["concat"])
        checked = {
            name: Neighbours(nb.idx[queries], nb.sim[queries]) for name, nb in {**lists, "concat": fused}.items()
        }
        found = search_recall(vectors, checked, FLOORS, WEIGHTS, queries=queries, chunk=20)
        return {name: r["recall_above_floor"] for name, r in found.items()}

    lists, seconds = {}, {}
    for name in ("image", "text", "phash"):
        t0 = time.perf_counter()
        lists[name] = search(name, vectors[name], settings.k, settings)
        seconds[name] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"n": args.n, "step": "ivfpq", "seconds": seconds, "recall_above_floor": recall(lists)}))
    for round_ in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        expand_lists(vectors, {m: lists[m] for m in ("image", "text")}, 1, args.sources, args.threads)
        t1 = time.perf_counter()
        expand_lists(vectors, {"phash": lists["phash"]}, 1, args.sources, args.threads)
        seconds = {"image_text": round(t1 - t0, 1), "phash": round(time.perf_counter() - t1, 1)}
        row = {"n": args.n, "step": f"round {round_}", "sources": args.sources, "seconds": seconds}
        print(json.dumps({**row, "recall_above_floor": recall(lists)}), flush=True)


if __name__ == "__main__":
    main()
