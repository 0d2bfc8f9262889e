"""A competent hand-written matching path, timed beside ``pipeline bench`` on the same postings.

The hand-written path (the yardstick of the predict path's speed): exact FAISS flat search for the image, the text and
their weighted concatenation, FAISS binary search for phash, sparse_dot_topn's top-n product for
TF-IDF, then a union of per-signal thresholds. It does no blending and no min-2, so its F1 is
printed for reference only; the comparison that counts is time at equal F1 between ``bench``
with approximate settings and ``bench --index flat``.

    python -m benchmarks.handwritten_path --n 70000 --tfidf --threads 2 -- --index ivf nprobe=16

runs, each in a fresh process (so peak RSS is its own), the hand-written path, ``bench --index
flat tfidf_search=exact`` (exact everywhere) and ``bench`` with the arguments after ``--``; it
prints one JSON line per run (each with the machine's facts and the load average before and after
it), then a summary with each run's steps, the time ratios, the recall above the floors and the
choices ``auto`` made.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def handwritten(n: int, dim: int, k: int, tfidf: bool, seed: int, threads: int) -> dict:
    """Time the hand-written path; returns seconds per step, peak RSS and F1."""
    import faiss
    import scipy.sparse as sp
    from sparse_dot_topn import sp_matmul_topn

    from pipeline.config import TfidfConfig
    from pipeline.data.synth import synthetic_titles
    from pipeline.data.synth.postings import clustered_postings
    from pipeline.machine import load_average, machine_facts
    from pipeline.matching.fusion import concat_embeddings
    from pipeline.matching.signals import tfidf_vectors
    from pipeline.metric import score_matches, true_sets_from_labels
    from pipeline.tools.bench import bench_settings

    faiss.omp_set_num_threads(threads)
    load_before = load_average()
    vectors, labels = clustered_postings(n, dim, seed)
    titles = synthetic_titles(labels, seed) if tfidf else None
    thresholds = {s: t for s, t in bench_settings(tfidf).thresholds.items() if s in ("concat", "phash", "tfidf")}
    seconds: dict[str, float] = {}
    pairs = []

    def timed(step: str):
        seconds[step] = time.perf_counter()
        return step

    def done(step: str) -> None:
        seconds[step] = round(time.perf_counter() - seconds[step], 3)

    t0 = time.perf_counter()
    dense = {"image": vectors["image"], "text": vectors["text"]}
    for name in ("image", "text", "concat"):
        done_step = timed(f"search_{name}")
        x = (
            concat_embeddings(dense, {"image": 0.5, "text": 0.5})
            if name == "concat"
            else np.ascontiguousarray(dense[name])
        )
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sim, idx = index.search(x, k)
        if name in thresholds:
            pairs.append(_pairs(idx, sim >= thresholds[name]))
        done(done_step)
    step = timed("search_phash")
    binary = faiss.IndexBinaryFlat(64)
    binary.add(vectors["phash"])
    dist, idx = binary.search(vectors["phash"], k)
    pairs.append(_pairs(idx, 1.0 - dist / 64.0 >= thresholds["phash"]))
    done(step)
    if tfidf:
        step = timed("fit_tfidf")
        x = tfidf_vectors(titles, TfidfConfig())
        done(step)
        step = timed("search_tfidf")
        top = sp_matmul_topn(x, sp.csr_matrix(x.T), top_n=k, threshold=thresholds["tfidf"], n_threads=threads)
        coo = top.tocoo()
        pairs.append((coo.row.astype(np.int64), coo.col.astype(np.int64)))
        done(step)
    step = timed("union")
    q = np.concatenate([p[0] for p in pairs])
    m = np.concatenate([p[1] for p in pairs])
    ids = np.array([f"p{i}" for i in range(n)], dtype=object)
    pred = {pid: {pid} for pid in ids}
    for a, b in zip(q.tolist(), m.tolist()):
        pred[ids[a]].add(ids[b])
    done(step)
    total = time.perf_counter() - t0
    f1 = score_matches(pred, true_sets_from_labels(ids.tolist(), labels.tolist()))["f1"]
    return {
        "path": "handwritten",
        "n": n,
        "dim": dim,
        "k": k,
        "tfidf": tfidf,
        "threads": threads,
        "seconds": seconds,
        "predict_seconds": round(total, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "f1": round(f1, 4),
        "machine": machine_facts(),
        "load_average_before": load_before,
    }


def _pairs(idx: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = keep & (idx >= 0)
    rows = np.nonzero(keep)[0]
    return rows.astype(np.int64), idx[keep].astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=70000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tfidf", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="threads of FAISS and sparse_dot_topn in every run")
    parser.add_argument("--only-handwritten", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only_handwritten:
        print(json.dumps(handwritten(args.n, args.dim, args.k, args.tfidf, args.seed, args.threads)), flush=True)
        return 0
    common = ["--n", str(args.n), "--dim", str(args.dim), "--k", str(args.k), "--seed", str(args.seed)]
    common += ["--tfidf"] if args.tfidf else []
    runs = {
        "handwritten": [
            sys.executable,
            "-m",
            "benchmarks.handwritten_path",
            *common,
            "--threads",
            str(args.threads),
            "--only-handwritten",
        ],
        "bench_flat": [
            sys.executable,
            "-m",
            "pipeline",
            "bench",
            *common,
            "--index",
            "flat",
            "--recall-sample",
            "0",
            "tfidf_search=exact",  # exact everywhere: the yardstick of F1
            f"threads={args.threads}",
        ],
        "bench": [sys.executable, "-m", "pipeline", "bench", *common, *bench_args, f"threads={args.threads}"],
    }
    rows = {}
    for name, cmd in runs.items():
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({"run": name, **rows[name]}), flush=True)
    summary = {
        name: {
            "seconds": r["predict_seconds"],
            "steps": r["seconds"],
            "f1": r["f1"],
            "peak_rss_mb": r["peak_rss_mb"],
            "load_average": [r["load_average_before"], r["machine"]["load_average"]],
        }
        for name, r in rows.items()
    }
    summary["bench"]["recall_above_floors"] = (
        rows["bench"].get("recall", {}).get("candidates", {}).get("recall_above_floor")
    )
    summary["bench"]["search_choices"] = rows["bench"].get("search_choices")
    summary["machine"] = {
        key: rows["handwritten"]["machine"].get(key) for key in ("cores", "cpu", "cpu_features", "env")
    }
    summary["bench_over_handwritten"] = round(
        rows["bench"]["predict_seconds"] / rows["handwritten"]["predict_seconds"], 3
    )
    summary["bench_f1_equals_flat"] = rows["bench"]["f1"] == rows["bench_flat"]["f1"]
    print(json.dumps({"summary": summary}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
