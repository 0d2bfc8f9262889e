"""Compute of the image training of a preset against another, measured side by side.

On a shared machine wall times swing with the load; the ratio of two configs' costs, timed
alternately in one process, does not swing as much. For each config this times a training step
(forward, ArcFace, backward, AdamW) with the backbone trained and with it frozen (the linear probe),
and an embedding pass, on random pixels at the config's size, and adds them up as one fold model
of ``rows`` training rows and ``eval_rows`` held-out rows would spend them::

    python -m benchmarks.image_cost --config demo -- image.backbone=tf_efficientnet_lite0 ...

prints one JSON line per config (the preset alone first) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def _costs(cfg, n_classes: int, batch: int, reps: int) -> dict[str, float]:
    """Seconds per image: a trained step, a probing step (backbone frozen) and an embedding."""
    import torch

    from pipeline.device import pick_device
    from pipeline.models.encoders import build_encoder
    from pipeline.models.heads import ArcFace
    from pipeline.training.loop import train_step
    from pipeline.training.session import build_optimizer, set_backbone_mode

    device = pick_device()
    model = build_encoder("image", cfg).to(device)
    head = ArcFace(cfg.embed_dim, n_classes).to(device)
    optimizer = build_optimizer(model, head, cfg.train)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, n_classes, (batch,), device=device)
    out = {}
    for name, epoch in (("train", cfg.train.linear_probe_epochs), ("probe", 0)):
        if name == "probe" and not cfg.train.linear_probe_epochs:
            continue
        model.train()
        set_backbone_mode(model, cfg.train, epoch)
        times = []
        for _ in range(reps + 1):
            t = time.perf_counter()
            train_step(model, head, x, y, optimizer, scaler, None, cfg.train.grad_clip).item()  # .item(): synced
            times.append(time.perf_counter() - t)
        out[name] = min(times[1:]) / batch
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(reps + 1):
            t = time.perf_counter()
            model(x).sum().item()
            times.append(time.perf_counter() - t)
    out["embed"] = min(times[1:]) / batch
    return out


def model_seconds(cfg, costs: dict[str, float], rows: int, eval_rows: int) -> float:
    """One fold model: its probe and trained epochs over ``rows``, and an embedding of
    ``eval_rows`` after every epoch (the held-out F1)."""
    tc = cfg.train
    probe = tc.linear_probe_epochs * rows * costs.get("probe", 0.0)
    trained = (tc.epochs - tc.linear_probe_epochs) * rows * costs["train"]
    return probe + trained + tc.epochs * eval_rows * costs["embed"]


def main(argv: list[str] | None = None) -> int:
    import torch

    from pipeline.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--rows", type=int, default=200, help="training rows of one fold model")
    parser.add_argument("--eval-rows", type=int, default=200)
    parser.add_argument("--classes", type=int, default=60)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="key=value: the config to compare with the preset")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = {"preset": load_config(args.config).image, "candidate": load_config(args.config, args.overrides).image}
    costs = {k: [] for k in configs}
    for _ in range(2):  # alternate, so both see the same load
        for name, cfg in configs.items():
            costs[name].append(_costs(cfg, args.classes, cfg.train.batch_size, args.reps))
    seconds = {}
    for name, cfg in configs.items():
        best = {k: min(c[k] for c in costs[name]) for k in costs[name][0]}
        seconds[name] = model_seconds(cfg, best, args.rows, args.eval_rows)
        print(
            json.dumps(
                {
                    "config": name,
                    "ms_per_image": {k: round(v * 1e3, 2) for k, v in best.items()},
                    "model_seconds": round(seconds[name], 1),
                    "loadavg": os.getloadavg()[0],
                }
            )
        )
    print(json.dumps({"ratio": round(seconds["candidate"] / seconds["preset"], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
