"""An ESTIMATE of how long a config trains in a Kaggle GPU notebook, for machines without a GPU.

Run from the repository root::

    python -m benchmarks.estimate_kaggle --config kaggle

Every stage of a run is in it: ``prepare`` (each image decoded once, to check it), each
encoder's training (with its held-out fold embedded after every epoch, for the per-epoch F1),
``embed`` (each fold model's gallery and the untrained baseline) and ``tune`` (CPU time, measured
on synthetic postings: ``--tune-minutes``). Three inputs, each printed so the arithmetic can be checked:

1. FLOPs per training item: the forward pass through the encoder and its ArcFace head, counted on
   the CPU with ``torch.utils.flop_counter`` on the config's own encoders (random weights; the title
   model is built from its architecture, no download), times 3 for forward plus backward.
2. JPEG decoding, resizing and augmenting per CPU core, and ``prepare``'s check of one image,
   measured here on synthetic photos saved as JPEGs the size Shopee's are (``--photo-size``);
   Kaggle's GPU notebooks have 4 logical cores.
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
# The tune stage (CPU only), an input (--tune-minutes): 570 s measured on 33,479 synthetic postings
# with TF-IDF and phash, decision.cv_estimate=false, 2 quiet cores (docs/kaggle.md). A floor: the
# preset's four signals and its cross-validated estimate cost more.
TUNE_S = 570.0


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
    import torch

    from pipeline.data.datasets import read_image, train_transform

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    config = {
        "input_size": (3, image_size, image_size),
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
        "interpolation": "bicubic",
    }
    transform = train_transform(config)
    with tempfile.TemporaryDirectory() as tmp:
        paths = _jpegs(Path(tmp), photo_size)
        return _best_rate(lambda i: transform(image=read_image(paths[i % len(paths)]))["image"], n)


def _best_rate(work, n: int, repeats: int = 3) -> float:
    """Items per second of ``work(i)`` for i < n, the best of ``repeats`` timings: on a shared
    machine the fastest run is the one least slowed by the others."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            work(i)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def _jpegs(folder: Path, photo_size: int, n: int = 8) -> list[Path]:
    """Smooth photo-like JPEGs (noise would compress badly and decode slowly), the size of Shopee's."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = cv2.resize(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), (photo_size, photo_size))
        path = folder / f"{i}.jpg"
        cv2.imwrite(str(path), base, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def check_rate(photo_size: int, n: int = 40) -> float:
    """Images per second on one core that ``prepare`` checks: each decoded in full (at 1/8 scale)."""
    from pipeline.data.contract import _image_problem

    with tempfile.TemporaryDirectory() as tmp:
        paths, root = _jpegs(Path(tmp), photo_size), Path(tmp).resolve()
        return _best_rate(lambda i: _image_problem(paths[i % len(paths)], root), n)


def modality_seconds(m: str, mcfg, cfg, flops: float, decode: float | None, peak_tflops: float, utilisation: float):
    """Seconds per stage that one learned modality costs: its training (with the held-out fold
    embedded after every epoch), and in ``embed`` the out-of-fold galleries and the untrained baseline."""
    k = cfg.folds.n_splits
    fold_models = k
    rows = SHOPEE_TRAIN * (k - 1) / k
    gpu_rate = peak_tflops * 1e12 * utilisation / flops
    rate = min(gpu_rate, decode) if decode else gpu_rate
    # Embedding (forward only, a third of the FLOPs) is bound by decoding all the same; flip TTA doubles it.
    embed_rate = min(3 * gpu_rate, decode) if decode else 3 * gpu_rate
    embed_rate /= 2 if getattr(mcfg, "tta_flip", False) else 1
    epochs = mcfg.train.epochs
    held_out = fold_models * epochs * (SHOPEE_TRAIN / k) / embed_rate  # the per-epoch val_f1
    train = fold_models * epochs * rows / rate + held_out
    if mcfg.train.final == "full":
        train += epochs * SHOPEE_TRAIN / rate
    gallery = SHOPEE_TRAIN if cfg.folds.gallery == "all" else SHOPEE_TRAIN / k
    embed = fold_models * gallery / embed_rate + (SHOPEE_TRAIN / embed_rate if cfg.baseline_untrained else 0.0)
    return {
        "items_per_s": round(rate, 1),
        "gpu_bound_items_per_s": round(gpu_rate, 1),
        "embed_items_per_s": round(embed_rate, 1),
        "epoch_min": round(rows / rate / 60, 1),
        "held_out_h": round(held_out / 3600, 2),
        f"train-{m}": train,
        "embed": embed,
    }


def estimate(
    config: str,
    utilisation: float,
    photo_size: int,
    tune_s: float = TUNE_S,
    decode_per_core: float | None = None,
    check_per_core: float | None = None,
) -> dict:
    """Hours per stage and in all for a config on each GPU, at ``utilisation`` of the GPU's peak.

    ``decode_per_core`` and ``check_per_core`` (images/s on one core) replace the measured rates,
    to reproduce a figure measured on a quieter machine.
    """
    from pipeline.config import load_config

    cfg = load_config(config)
    out = {"config": config, "utilisation_assumed": utilisation, "encoders": {}}
    stages = {gpu: dict.fromkeys(("prepare", "train-image", "train-text", "embed"), 0.0) for gpu in PEAK_TFLOPS}
    for st in stages.values():
        st["tune"] = tune_s
    if cfg.needs_images:
        prepare_s = SHOPEE_TRAIN / ((check_per_core or check_rate(photo_size)) * KAGGLE_CORES)
        for gpu in PEAK_TFLOPS:
            stages[gpu]["prepare"] = prepare_s
    for m in cfg.learned:
        mcfg = getattr(cfg, m)
        flops = training_flops(m, mcfg)
        decode = (decode_per_core or decode_rate(mcfg.image_size, photo_size)) * KAGGLE_CORES if m == "image" else None
        per_gpu = {}
        for gpu, peak in PEAK_TFLOPS.items():
            sec = modality_seconds(m, mcfg, cfg, flops, decode, peak, utilisation)
            stages[gpu][f"train-{m}"] += sec.pop(f"train-{m}")
            stages[gpu]["embed"] += sec.pop("embed")
            per_gpu[gpu] = sec
        out["encoders"][m] = {
            "gflop_per_training_item": round(flops / 1e9, 2),
            "decode_items_per_s_4_cores": round(decode, 1) if decode else None,
            "epochs": mcfg.train.epochs,
            **per_gpu,
        }
    out["stages_h"] = {gpu: {k: round(v / 3600, 2) for k, v in st.items()} for gpu, st in stages.items()}
    out["total_h"] = {gpu: round(sum(st.values()) / 3600, 2) for gpu, st in stages.items()}
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
    p.add_argument(
        "--tune-minutes", type=float, default=TUNE_S / 60, help=f"the tune stage's CPU time (default {TUNE_S / 60:.0f})"
    )
    p.add_argument(
        "--decode-per-core", type=float, default=None, help="training images/s on one core (default: measure)"
    )
    p.add_argument(
        "--check-per-core", type=float, default=None, help="prepare's checks/s on one core (default: measure)"
    )
    args = p.parse_args(argv)
    for u in args.utilisation:
        result = estimate(
            args.config, u, args.photo_size, args.tune_minutes * 60, args.decode_per_core, args.check_per_core
        )
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
