"""Cost of the predict path against N: runs ``pipeline bench`` for several N, each in a fresh
process (so peak RSS is its own), prints one JSON line per N and plots seconds, memory and the
recall of the lists against exact search.

    python -m benchmarks.bench_matching --sizes 10000 30000 100000 300000 1000000 --index hnsw
    python -m benchmarks.bench_matching --sizes 2500 5000 10000 20000 40000 70000 --tfidf

Exact TF-IDF search grows as N squared, so the runs to a million postings leave it out (image,
text and phash). Lines are also appended to ``--out`` as they come, so a long run can be stopped
and plotted from what it has (``--plot-only``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000, 20000, 40000, 70000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--index", default="auto")
    parser.add_argument("--tfidf", action="store_true", help="add TF-IDF of synthetic titles (see pipeline bench)")
    parser.add_argument("--recall-sample", type=int, default=500, help="queries checked against exact search")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/matching_cost.jsonl"))
    parser.add_argument("--plot", type=Path, default=Path("runs/bench/matching_cost.png"))
    parser.add_argument("--plot-only", action="store_true", help="plot the lines already in --out")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="MatchConfig fields passed to bench")
    args = parser.parse_args(argv)

    if not args.plot_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for n in args.sizes:
            cmd = [
                sys.executable,
                "-m",
                "pipeline",
                "bench",
                "--n",
                str(n),
                "--dim",
                str(args.dim),
                "--k",
                str(args.k),
                "--index",
                args.index,
                "--recall-sample",
                str(args.recall_sample),
                *(["--tfidf"] if args.tfidf else []),
                *args.overrides,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            line = done.stdout.strip().splitlines()[-1]
            print(line, flush=True)
            with args.out.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
    rows = [json.loads(line) for line in args.out.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = sorted(rows, key=lambda r: r["n"])
    plot(rows, args.plot)
    print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def plot(rows: list[dict], path: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from pipeline.io import save_figure

    n = [r["n"] for r in rows]
    fig = Figure(figsize=(14, 3.8))
    ax_t, ax_m, ax_r = fig.subplots(1, 3)
    steps = sorted({k for r in rows for k in r["seconds"]})
    ax_t.set_prop_cycle(color=colormaps["tab20"].colors)  # a colour per step (up to 20)
    for step in steps:
        ax_t.plot(n, [max(r["seconds"].get(step, 0.0), 1e-3) for r in rows], marker=".", label=step)
    ax_t.plot(n, [r["predict_seconds"] for r in rows], marker="o", c="k", lw=2, label="total")
    ax_t.set(
        xlabel="postings N",
        ylabel="seconds",
        xscale="log",
        yscale="log",
        title=f"predict path, dim {rows[0]['dim']}, k {rows[0]['k']}, index {rows[0]['index']}",
    )
    ax_t.legend(fontsize=6)
    ax_m.plot(n, [r["peak_rss_mb"] for r in rows], marker="o", label="peak RSS")
    ax_m.plot(n, [r["input_mb"] for r in rows], marker=".", label="input embeddings")
    ax_m.set(xlabel="postings N", ylabel="MiB", xscale="log", yscale="log", title="memory")
    ax_m.legend(fontsize=7)
    for key, style in (("recall_above_floor", "o-"), ("recall_at_k", ".--")):
        ax_r.plot(
            n,
            [r.get("recall", {}).get("candidates", {}).get(key, float("nan")) for r in rows],
            style,
            label=f"candidates, {key}",
        )
    ax_r.set(
        xlabel="postings N",
        ylabel="recall against exact search",
        xscale="log",
        title="recall of the lists (sampled queries)",
    )
    ax_r.legend(fontsize=7)
    for ax in (ax_t, ax_m, ax_r):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
