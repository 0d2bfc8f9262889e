"""Throughput and peak memory of the image and title encoders; one JSON line per encoder.

Run from the repository root::

    python -m benchmarks.bench_encoders                       # small CPU-friendly defaults
    python -m benchmarks.bench_encoders --image-backbone tf_efficientnet_b3.ns_jft_in1k \\
        --image-size 512 --batch-size 32 --steps 50 --amp auto

It times the model alone on synthetic inputs already in memory (random pixels, random titles
tokenised up front), so data loading and JPEG decoding are excluded: ``train_items_per_s`` is
forward + margin head + backward + AdamW step, ``embed_items_per_s`` is inference under autocast.
Each encoder runs in a fresh process, so its peak memory is its own: the process's peak RSS on
CPU and MPS, ``torch.cuda.max_memory_allocated`` on CUDA.
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

WARMUP_STEPS = 2
_WORDS = (
    "kaos",
    "polos",
    "botol",
    "minum",
    "500ml",
    "stainless",
    "hp",
    "android",
    "64gb",
    "baru",
    "murah",
    "original",
    "premium",
    "import",
    "cod",
    "gratis",
    "ongkir",
    "tas",
    "ransel",
    "wanita",
    "pria",
    "xl",
)


def bench_encoder(modality: str, args: dict[str, Any]) -> dict[str, Any]:
    """Time ``args["steps"]`` training steps and as many inference batches of one encoder."""
    import torch

    from pipeline.config import ImageConfig, TextConfig, TrainConfig
    from pipeline.device import autocast_dtype, pick_device
    from pipeline.inference.embedding import autocast, forward, to_device
    from pipeline.models.encoders import build_encoder
    from pipeline.models.heads import ArcFace
    from pipeline.training.loop import train_step
    from pipeline.training.session import build_optimizer

    torch.manual_seed(0)
    device = pick_device()
    bs = args["batch_size"]
    train = TrainConfig(batch_size=bs, amp=args["amp"], lr=1e-4, head_lr=1e-2)
    if modality == "image":
        cfg = ImageConfig(
            backbone=args["image_backbone"], pretrained=args["pretrained"], image_size=args["image_size"], train=train
        )
    else:
        cfg = TextConfig(model=args["text_model"], train=train)
    model = build_encoder(modality, cfg).to(device)
    head = ArcFace(model.embed_dim, args["classes"]).to(device)
    optimizer = build_optimizer(model, head, train)
    amp_dtype = autocast_dtype(device, args["amp"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    labels = torch.randint(0, args["classes"], (bs,), generator=torch.Generator().manual_seed(1)).to(device)
    inputs = to_device(_inputs(model, bs), device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(step_fn, steps: int) -> float:
        for _ in range(WARMUP_STEPS):
            step_fn()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step_fn()
        sync()
        return steps * bs / (time.perf_counter() - start)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    train_ips = timed(lambda: train_step(model, head, inputs, labels, optimizer, scaler, amp_dtype, 1.0), args["steps"])
    model.eval()

    def infer() -> None:
        with torch.inference_mode(), autocast(device, amp_dtype):
            forward(model, inputs)

    embed_ips = timed(infer, args["steps"])
    if device.type == "cuda":
        peak_mib, peak_kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        peak_mib, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
    return {
        "encoder": modality,
        "model": cfg.backbone if modality == "image" else (cfg.model or "all-MiniLM-L6-v2 (bundled)"),
        "input": f"{cfg.image_size}px" if modality == "image" else f"{cfg.max_length} tokens max",
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "batch_size": bs,
        "steps": args["steps"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32",
        "train_items_per_s": round(train_ips, 2),
        "embed_items_per_s": round(embed_ips, 2),
        "peak_mem_mib": round(peak_mib, 1),
        "peak_mem_kind": peak_kind,
    }


def _inputs(model, bs: int):
    import torch

    if model.modality == "image":
        size = model.cfg.image_size
        return torch.randn(bs, 3, size, size, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    titles = [
        " ".join(_WORDS[int(i)] for i in torch.randint(len(_WORDS), (int(n),), generator=g))
        for n in torch.randint(6, 20, (bs,), generator=g)
    ]
    return model.tokenize(titles)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-backbone", default="resnet18", help="timm model name (default resnet18)")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--text-model", default=None, help="HF name or local dir (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=16, help="items per step (default 16)")
    p.add_argument("--steps", type=int, default=10, help="timed steps after 2 warm-up steps (default 10)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="autocast (default auto)")
    p.add_argument("--pretrained", action="store_true", help="image weights from the timm hub (needs internet)")
    p.add_argument("--classes", type=int, default=1000, help="margin-head classes (default 1000)")
    p.add_argument("--only", default="image,text", help="comma-separated encoders to run (default image,text)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k != "only"}
    spawn = multiprocessing.get_context("spawn")
    for modality in [m.strip() for m in args.only.split(",") if m.strip()]:
        if modality not in ("image", "text"):
            raise SystemExit(f"--only: unknown encoder {modality!r}; choose from image, text")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            result = pool.submit(bench_encoder, modality, settings).result()
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
