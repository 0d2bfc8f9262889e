"""Memory and time of the margin head against the number of classes: the full head and the
PartialFC-style sampled one (``head.sample_rate``); one JSON line per (classes, sample rate).

Run from the repository root::

    python -m benchmarks.bench_head                                    # 10k, 100k and 1M classes
    python -m benchmarks.bench_head --classes 1000000 --rates 1.0 0.1 --dim 512 --batch-size 64

Each configuration runs in a fresh process: the head (ArcFace, one centre per class) and AdamW
over it, fed a fixed (B, D) batch of "embeddings" that stands in for the encoder, for a few
steps of the training loop's arithmetic (margin logits, cross-entropy, backward, AdamW). Reported:

- ``params_mib``, ``grads_mib``, ``adam_state_mib``: the tensors themselves, summed over what the
  head and the optimiser hold after a step (the gradient stays allocated between steps: the
  loop frees it only just before the next backward);
- ``logits_mib``: one (B, S) float32 logits tensor, S the classes scored per step;
- ``step_extra_mib``: the process's peak RSS minus its RSS after the last step, i.e. what a step
  allocates on top of the resident tensors (logits, softmax, their gradients, the gathered rows);
- ``peak_rss_mib`` and ``step_s`` (mean over the timed steps, after one warm-up step).

Sampling shrinks the per-step part (logits, softmax, the B x C x D matmul); the parameters, their
gradient and AdamW's two moments still hold 16 bytes per class and dimension on every device.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import resource
import sys
import time
from typing import Any

MIB = 2**20


def bench_head(n_classes: int, rate: float, dim: int, batch_size: int, steps: int, threads: int) -> dict[str, Any]:
    import psutil
    import torch
    import torch.nn.functional as F

    from pipeline.models.heads import ArcFace, sample_classes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    head = ArcFace(dim, n_classes, margin_rad=0.5)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    embeddings = torch.randn(batch_size, dim, requires_grad=True)  # (B, D): the encoder's output
    labels = torch.randint(0, n_classes, (batch_size,), generator=torch.Generator().manual_seed(1))
    scored = []

    def step(i: int) -> None:
        classes = None
        if rate < 1.0:
            classes = sample_classes(labels, n_classes, rate, torch.Generator().manual_seed(i))
        logits = head(embeddings, labels, classes=classes)  # (B, C) or (B, S)
        targets = labels if classes is None else torch.searchsorted(classes, labels)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        embeddings.grad = None
        loss.backward()
        optimizer.step()
        scored.append(logits.shape[1])

    step(0)  # warm-up: AdamW allocates its moments
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    seconds = (time.perf_counter() - start) / steps
    rss_after = psutil.Process().memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def mib(tensors) -> float:
        return round(sum(t.numel() * t.element_size() for t in tensors) / MIB, 1)

    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0]
    return {
        "classes": n_classes,
        "sample_rate": rate,
        "classes_per_step": scored[-1],
        "dim": dim,
        "batch_size": batch_size,
        "threads": threads,
        "params_mib": mib(head.parameters()),
        "grads_mib": mib(p.grad for p in head.parameters() if p.grad is not None),
        "adam_state_mib": mib(state),
        "logits_mib": round(batch_size * scored[-1] * 4 / MIB, 1),
        "step_extra_mib": round(max(peak - rss_after, 0) / MIB, 1),
        "peak_rss_mib": round(peak / MIB, 1),
        "step_s": round(seconds, 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1], help="head.sample_rate values (1.0: full)")
    p.add_argument("--dim", type=int, default=512, help="embedding size (default 512, the image encoder's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spawn = multiprocessing.get_context("spawn")
    for n_classes in args.classes:
        for rate in args.rates:
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                result = pool.submit(
                    bench_head, n_classes, rate, args.dim, args.batch_size, args.steps, args.threads
                ).result()
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
