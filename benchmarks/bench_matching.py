"""Cost of the predict path against N: runs ``pipeline bench`` for several N, each in a fresh
process (so peak RSS is its own), prints one JSON line per N and plots seconds and memory.

    python -m benchmarks.bench_matching --sizes 2500 5000 10000 20000 40000 70000 --dim 512 [--tfidf]
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
    parser.add_argument("--index", default="flat")
    parser.add_argument("--tfidf", action="store_true", help="add TF-IDF of synthetic titles (see pipeline bench)")
    parser.add_argument("--plot", type=Path, default=Path("runs/bench/matching_cost.png"))
    args = parser.parse_args(argv)

    rows = []
    for n in args.sizes:
        cmd = [sys.executable, "-m", "pipeline", "bench", "--n", str(n), "--dim", str(args.dim), "--k", str(args.k),
               "--index", args.index] + (["--tfidf"] if args.tfidf else [])
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    plot(rows, args.plot)
    print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def plot(rows: list[dict], path: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from pipeline.io import save_figure

    n = [r["n"] for r in rows]
    fig = Figure(figsize=(10, 3.8))
    ax_t, ax_m = fig.subplots(1, 2)
    steps = sorted({k for r in rows for k in r["seconds"]})
    ax_t.set_prop_cycle(color=colormaps["tab20"].colors)  # a colour per step (up to 20)
    for step in steps:
        ax_t.plot(n, [r["seconds"].get(step, 0.0) for r in rows], marker=".", label=step)
    ax_t.plot(n, [r["predict_seconds"] for r in rows], marker="o", c="k", lw=2, label="total")
    ax_t.set(xlabel="postings N", ylabel="seconds", title=f"predict path, dim {rows[0]['dim']}, k {rows[0]['k']}")
    ax_t.legend(fontsize=7)
    ax_m.plot(n, [r["peak_rss_mb"] for r in rows], marker="o", label="peak RSS")
    ax_m.plot(n, [r["input_mb"] for r in rows], marker=".", label="input embeddings")
    ax_m.set(xlabel="postings N", ylabel="MiB", title="memory")
    ax_m.legend(fontsize=7)
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
