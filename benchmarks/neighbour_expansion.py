"""Can neighbours of neighbours, rescored exactly, lift an IVF-PQ list's recall above the floor?

One round: each posting's candidates are its own list and the lists of its ``m`` nearest listed
neighbours, rescored by exact inner product, the best k kept (one step of NN-descent). On the
bench's image vectors, recall above the floor (0.3, the bench rule's fused floor) is checked
against exact search on 500 sampled queries, before and after one and two rounds:

    OMP_NUM_THREADS=1 python -m benchmarks.neighbour_expansion --n 200000 --sources 5 10
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pipeline.data.synth.postings import clustered_postings
from pipeline.matching.neighbours import Neighbours, SearchConfig, dense_knn, faiss_threads, rescore
from pipeline.matching.recall import recall_queries, search_recall


def expand(x: np.ndarray, nb: Neighbours, sources: int, block: int = 20000) -> Neighbours:
    """One round: each row's list joined with its first ``sources`` neighbours' lists, rescored exactly."""
    idx = nb.idx
    grown = np.concatenate([idx, idx[np.maximum(idx[:, :sources], 0)].reshape(len(idx), -1)], axis=1)
    grown.sort(axis=1)
    repeated = np.zeros_like(grown, bool)
    repeated[:, 1:] = grown[:, 1:] == grown[:, :-1]
    grown[repeated] = -1
    grown = -np.sort(-grown, axis=1)  # each row's -1s last: a FAISS list ends at its first -1
    out_idx, out_sim = np.empty_like(idx), np.empty_like(nb.sim)
    for start in range(0, len(idx), block):
        stop = start + block
        out_idx[start:stop], out_sim[start:stop] = rescore(x, grown[start:stop], idx.shape[1], start)
    return Neighbours(out_idx, out_sim)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--sources", type=int, nargs="+", default=[5, 10], help="neighbours whose lists join")
    parser.add_argument("--floor", type=float, default=0.3)
    args = parser.parse_args(argv)
    x = clustered_postings(args.n, 512, 0)[0]["image"]
    queries = recall_queries(args.n, 500, 0)

    def recall(nb: Neighbours) -> float:
        lists = {"image": Neighbours(nb.idx[queries], nb.sim[queries])}
        return search_recall({"image": x}, lists, {"image": args.floor}, queries=queries)["image"]["recall_above_floor"]

    with faiss_threads(1):
        t0 = time.perf_counter()
        nb = dense_knn(x, 50, SearchConfig(index="ivfpq", threads=1))
        rows = [{"step": "ivfpq", "seconds": round(time.perf_counter() - t0, 1), "recall_above_floor": recall(nb)}]
        for m in args.sources:
            grown = nb
            for round_ in (1, 2):
                t0 = time.perf_counter()
                grown = expand(x, grown, m)
                seconds = round(time.perf_counter() - t0, 1)
                rows.append({"step": f"m={m} round {round_}", "seconds": seconds, "recall_above_floor": recall(grown)})
    for row in rows:
        print(json.dumps({"n": args.n, **row}))


if __name__ == "__main__":
    main()
