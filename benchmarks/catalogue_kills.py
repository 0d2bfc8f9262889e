"""SIGKILL ``add`` at random moments, as Qdrant's crasher does; after each restart the catalogue must
pass its integrity check, and the same batch sent again must give what an uninterrupted add gives.

Run from the repository root::

    OMP_NUM_THREADS=1 python -m benchmarks.catalogue_kills --kills 20

A catalogue of ``--size`` postings of the bench's generator is made once. Each round copies it,
starts ``add`` of the same batch of ``--batch`` postings in a child process, waits until the child
has loaded the catalogue, sleeps a random time up to 1.2x the batch's uninterrupted duration, and
kills the child with SIGKILL (a child that finished first is not counted as a kill). Then it opens
the copy as the next writer would (repairing it), runs ``check``, sends the batch again and compares
the decisions with the uninterrupted ones. Prints one JSON line; exits 1 unless every round passed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_base(root: Path, size: int, batch: int, seed: int) -> Path:
    """The catalogue at ``root/base`` and the batch's rows at ``root/batch.npz``."""
    from benchmarks.catalogue_add import postings_frame
    from pipeline.catalogue import Rule, init_with_vectors
    from pipeline.data.synth.postings import clustered_postings
    from pipeline.matching.fusion import concat_embeddings
    from pipeline.matching.neighbours import SearchConfig
    from pipeline.tools.bench import bench_settings

    raw, labels = clustered_postings(size + batch, 32, seed=seed)
    settings = bench_settings(tfidf=False)
    vectors = {"concat": concat_embeddings(raw, settings.fusion_weights), "phash": raw["phash"]}
    rule = Rule(settings, SearchConfig(k=30), modalities=["image", "text", "phash"])
    df = postings_frame(labels[:size], raw["phash"][:size], 0)
    cat, _ = init_with_vectors(root / "base", rule, df, {k: v[:size] for k, v in vectors.items()}, labels=labels[:size])
    cat.close()
    np.savez(root / "batch.npz", labels=labels[size:], **{k: v[size:] for k, v in vectors.items()})
    return root / "base"


def batch_of(path: Path, first: int):
    from benchmarks.catalogue_add import postings_frame

    with np.load(path) as f:
        return postings_frame(f["labels"], f["phash"], first), {"concat": f["concat"], "phash": f["phash"]}


def child(root: Path, batch: Path, first: int) -> None:
    """The process that is killed: open the catalogue, say so, add the batch."""
    from pipeline.catalogue import add_postings, open_catalogue

    df, vectors = batch_of(batch, first)
    cat = open_catalogue(root, write=True)
    print("ready", flush=True)
    add_postings(cat, df, vectors=vectors)
    print("done", flush=True)


def run_child(root: Path, batch: Path, first: int, kill_after: float | None) -> tuple[bool, float]:
    """(killed, seconds from ready to done or kill)."""
    args = [sys.executable, "-m", "benchmarks.catalogue_kills", "--child", str(root), str(batch), str(first)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.readline().strip() == "ready", "the child did not start"
    start = time.perf_counter()
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    code = proc.wait()
    return code == -signal.SIGKILL, time.perf_counter() - start


def after_restart(root: Path, batch: Path, first: int, reference) -> dict:
    """Open as the next writer, check, send the batch again, compare with the uninterrupted run."""
    from pipeline.catalogue import add_postings, check, open_catalogue

    cat = open_catalogue(root, write=True)
    with cat.writer():
        problems = check(cat)
        committed = cat.live_count() > first
    df, vectors = batch_of(batch, first)
    same = add_postings(cat, df, vectors=vectors).equals(reference)
    problems += check(cat)
    cat.close()
    return {"problems": problems, "committed_before_kill": committed, "same_decisions": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return 0

    from pipeline.catalogue import open_catalogue
    from pipeline.catalogue.adding import decisions_of

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, batch = make_base(tmp, args.size, args.batch, args.seed), tmp / "batch.npz"
        shutil.copytree(base, tmp / "ref")
        _, duration = run_child(tmp / "ref", batch, args.size, None)
        ref = open_catalogue(tmp / "ref")
        reference = decisions_of(ref, 2)
        ref.close()
        rounds, tries = [], 0
        while len(rounds) < args.kills and tries < 3 * args.kills:
            tries += 1
            shutil.rmtree(tmp / "run", ignore_errors=True)
            shutil.copytree(base, tmp / "run")
            delay = rng.uniform(0, 1.2 * duration)
            killed, _ = run_child(tmp / "run", batch, args.size, delay)
            if killed:
                rounds.append({"after_s": round(delay, 3), **after_restart(tmp / "run", batch, args.size, reference)})
    passed = sum(not r["problems"] and r["same_decisions"] for r in rounds)
    out = {
        "kills": len(rounds), "passed": passed, "add_s": round(duration, 3), "tries": tries,
        "committed_before_kill": sum(r["committed_before_kill"] for r in rounds),
        "failures": [r for r in rounds if r["problems"] or not r["same_decisions"]],
    }  # fmt: skip
    print(json.dumps(out))
    return 0 if passed == len(rounds) == args.kills else 1


if __name__ == "__main__":
    raise SystemExit(main())
