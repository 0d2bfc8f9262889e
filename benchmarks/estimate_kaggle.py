"""An ESTIMATE of how long a config trains in a Kaggle GPU notebook, for machines without a GPU.

Run from the repository root::

    python -m benchmarks.estimate_kaggle --config kaggle

Three inputs, each printed so the arithmetic can be checked:

1. FLOPs per training item: the forward pass through the encoder and its ArcFace head, counted on
   the CPU with ``torch.utils.flop_counter`` on the config's own encoders (random weights; the title
   model is built from its architecture, no download), times 3 for forward plus backward.
2. JPEG decoding, resizing and augmenting per CPU core, measured here on synthetic photos saved as
   JPEGs the size Shopee's are (``--photo-size``); Kaggle's GPU notebooks have 4 logical cores.
3. The GPUs' published peak throughput (T4: 65 TFLOP/s fp16 with tensor cores; P100: 18.7 TFLOP/s
   fp16), times an assumed share of it reached in practice (``--utilisation``, default 0.03, 0.10
   and 0.25: depthwise convolutions, as in EfficientNet, sit at the low end, transformers higher);
   nothing here measures that share.

An encoder's seconds per epoch are the larger of the GPU time and, for images, the decoding time.
The result is an estimate with that assumption in it, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

PEAK_TFLOPS = {"T4": 65.0, "P100": 18.7}  # fp16, published by NVIDIA (T4 with tensor cores)
KAGGLE_CORES = 4
SHOPEE_TRAIN = 34_250


def training_flops(modality: str, cfg, n_classes: int = 11_014) -> float:
    """FLOPs of one training item: 3x the counted forward of the encoder and its margin head (batch of 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.models.heads import ArcFace

    model = _encoder(modality, cfg).train()
    head = ArcFace(model.embed_dim, n_classes)
    labels = torch.tensor([0, 1])
    if modality == "image":
        inputs = {"images": torch.randn(2, 3, cfg.image_size, cfg.image_size)}
    else:
        ids = torch.randint(5, 1000, (2, cfg.max_length))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    counter = FlopCounterMode(display=False)
    with counter:
        torch.nn.functional.cross_entropy(head(model(**inputs), labels), labels)
    # Backward costs about twice the forward (gradients for inputs and for weights). It is not
    # counted directly: the counter's formula for grouped (depthwise) convolutions' backward
    # overstates EfficientNet's by about 40x.
    return 3 * counter.get_total_flops() / 2


def _encoder(modality: str, cfg):
    """The config's encoder with random weights, built without any download."""
    import dataclasses

    from pipeline.models.encoders import build_encoder

    if modality == "image":
        return build_encoder("image", dataclasses.replace(cfg, pretrained=False, weights=None), load_weights=False)
    if cfg.model != "xlm-roberta-base":
        return build_encoder("text", cfg, load_weights=False)
    # Its published architecture beside the bundled tokenizer (token ids are random here anyway).
    from transformers import AutoTokenizer, XLMRobertaConfig

    from pipeline.models.encoders import resolve_text_model

    folder = Path(tempfile.mkdtemp(prefix="xlmr_arch_"))
    XLMRobertaConfig(
        vocab_size=250_002,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_text_model(None), local_files_only=True).save_pretrained(folder)
    return build_encoder("text", dataclasses.replace(cfg, model=str(folder)), load_weights=False)


def decode_rate(image_size: int, photo_size: int, n: int = 40) -> float:
    """Training images per second on one core: read a JPEG, resize and augment it as the loader does."""
    import cv2
    import numpy as np
    import torch

    from pipeline.data.datasets import read_image, train_transform

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    config = {
        "input_size": (3, image_size, image_size),
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "interpolation": "bicubic",
    }
    transform = train_transform(config)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(8):
            # A smooth photo-like picture (noise would compress badly and decode slowly).
            base = cv2.resize(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), (photo_size, photo_size))
            path = Path(tmp) / f"{i}.jpg"
            cv2.imwrite(str(path), base, [cv2.IMWRITE_JPEG_QUALITY, 90])
            paths.append(path)
        t0 = time.perf_counter()
        for i in range(n):
            transform(image=read_image(paths[i % len(paths)]))["image"]
        return n / (time.perf_counter() - t0)


def estimate(config: str, utilisation: float, photo_size: int) -> dict:
    from pipeline.config import load_config

    cfg = load_config(config)
    k = cfg.folds.n_splits
    trainings = k + (1 if cfg.text.train.final == "full" else 0)
    rows = SHOPEE_TRAIN * (k - 1) / k
    out = {"config": config, "utilisation_assumed": utilisation, "encoders": {}}
    total = {gpu: 0.0 for gpu in PEAK_TFLOPS}
    for m in cfg.learned:
        mcfg = getattr(cfg, m)
        flops = training_flops(m, mcfg)
        decode = decode_rate(mcfg.image_size, photo_size) * KAGGLE_CORES if m == "image" else None
        per_model = {}
        for gpu, peak in PEAK_TFLOPS.items():
            gpu_rate = peak * 1e12 * utilisation / flops
            rate = min(gpu_rate, decode) if decode else gpu_rate
            # Embedding (forward only, a third of the FLOPs) is bound by decoding all the same.
            embed_rate = min(3 * gpu_rate, decode) if decode else 3 * gpu_rate
            epoch_s = rows / rate
            # Each model trains, then embeds its fold's gallery: every train posting.
            seconds = trainings * (mcfg.train.epochs * epoch_s + SHOPEE_TRAIN / embed_rate)
            per_model[gpu] = {
                "items_per_s": round(rate, 1),
                "gpu_bound_items_per_s": round(gpu_rate, 1),
                "epoch_min": round(epoch_s / 60, 1),
                "all_trainings_h": round(seconds / 3600, 2),
            }
            total[gpu] += seconds
        out["encoders"][m] = {
            "gflop_per_training_item": round(flops / 1e9, 2),
            "decode_items_per_s_4_cores": round(decode, 1) if decode else None,
            "trainings": trainings,
            "epochs": mcfg.train.epochs,
            **per_model,
        }
    out["total_h"] = {gpu: round(s / 3600, 2) for gpu, s in total.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="kaggle", help="preset name or YAML file (default kaggle)")
    p.add_argument(
        "--utilisation",
        type=float,
        nargs="+",
        default=[0.03, 0.10, 0.25],
        help="assumed shares of the GPU's peak fp16 throughput (default 0.03 0.10 0.25)",
    )
    p.add_argument("--photo-size", type=int, default=1024, help="side of the JPEGs decoded (default 1024)")
    args = p.parse_args(argv)
    for u in args.utilisation:
        print(json.dumps(estimate(args.config, u, args.photo_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
