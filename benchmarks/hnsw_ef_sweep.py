"""Recall of HNSW against exact search as efSearch grows, on the bench's synthetic embeddings.

The share of each sampled query's exact top-k pairs above a floor that HNSW's list holds, with
the index the predict path builds (``pipeline.matching.neighbours.build_index``: float16 storage
unless ``--fp32``). ``search.ef_search`` is the smallest value that keeps 0.99 above 0.3 on both
modalities at 70,000 postings:

    python -m benchmarks.hnsw_ef_sweep --n 70000 --ef 128 160 192 224 256
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def sweep(
    n: int, dim: int, k: int, queries: int, efs: list[int], floors: list[float], fp16: bool, threads: int, seed: int = 0
) -> list[dict]:
    import faiss

    from pipeline.data.synth.postings import clustered_postings
    from pipeline.matching.neighbours import SearchConfig, build_index, faiss_threads

    vectors, _ = clustered_postings(n, dim, seed)
    q = np.random.default_rng(seed + 7).choice(n, size=min(queries, n), replace=False)
    rows = []
    with faiss_threads(threads):
        for name in ("image", "text"):
            x = np.ascontiguousarray(vectors[name], dtype=np.float32)
            exact = faiss.IndexFlatIP(dim)
            exact.add(x)
            sim, idx = exact.search(x[q], k)
            del exact
            index = build_index(x, SearchConfig(index="hnsw", hnsw_fp16=fp16, gpu=False))
            for ef in efs:
                index.hnsw.efSearch = ef
                _, got = index.search(x[q], k)
                held = np.array([np.isin(a, b) for a, b in zip(idx, got)])
                for floor in floors:
                    above = sim >= floor
                    rows.append(
                        {
                            "modality": name,
                            "ef_search": ef,
                            "floor": floor,
                            "pairs": int(above.sum()),
                            "recall_above_floor": round(float(held[above].mean()), 4),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=70000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--ef", type=int, nargs="+", default=[128, 160, 192, 224, 256])
    parser.add_argument("--floors", type=float, nargs="+", default=[0.3, 0.4])
    parser.add_argument("--fp32", action="store_true", help="float32 storage instead of float16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sweep(args.n, args.dim, args.k, args.queries, args.ef, args.floors, not args.fp32, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
