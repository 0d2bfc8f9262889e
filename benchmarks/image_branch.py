"""The image branch on photo-like postings: zero-shot ImageNet features, from scratch, naive
fine-tuning and fine-tuning recipes, for the same number of epochs, on held-apart product families.

Run from the repository root (one process per seed; two at once on 2 cores)::

    python -m benchmarks.image_branch --groups 160 --seeds 0 1 2 --out docs/results/image_branch_small.jsonl
    python -m benchmarks.image_branch --table docs/results/image_branch_small.jsonl --plot docs/image_branch.png

Each seed writes its own photo-like dataset (:mod:`pipeline.data.synth.photos`) with half the
groups in train and the other half split, by family, into a validation and a test half (siblings
always stay together, so no test product or sibling is seen in training). Every method trains on
the train half with the project's loop (ArcFace, the pipeline's augmentations) and is scored on the
test half by the F1 of one cosine threshold, tuned on the validation half (the competition's F1:
every posting's predicted set includes itself). The validation half also drives early stopping;
``test_best`` is the test F1 at the test set's own best threshold, an optimistic reference. The
fused score adds TF-IDF on titles: ``w * image + (1 - w) * tfidf``, weight and threshold tuned on
validation. Results go to a JSON-lines file, one line per (method, seed), as they finish.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

# name -> ImageConfig overrides on top of BASE; "zero_shot" trains nothing.
METHODS: dict[str, dict[str, Any]] = {
    "zero_shot": {},
    "scratch": {"weights": None, "train": {"lr": 3e-3, "head_lr": 3e-2}},
    "naive": {"train": {"lr": 3e-4, "head_lr": 3e-2}},
    "lp_only": {"train": {"lr": 1e-3, "head_lr": 3e-2, "linear_probe_epochs": -1, "freeze_bn": True}},
    "low_lr_frozen_bn": {"train": {"lr": 1e-3, "head_lr": 3e-2, "backbone_lr_mult": 0.1, "freeze_bn": True}},
    "lp_ft": {
        "train": {"lr": 1e-3, "head_lr": 3e-2, "backbone_lr_mult": 0.1, "freeze_bn": True, "linear_probe_epochs": 3}
    },
    "lp_ft_es": {
        "train": {
            "lr": 1e-3,
            "head_lr": 3e-2,
            "backbone_lr_mult": 0.1,
            "freeze_bn": True,
            "linear_probe_epochs": 3,
            "early_stopping_patience": 2,
        }
    },
    "naive_es": {"train": {"lr": 3e-4, "head_lr": 3e-2, "early_stopping_patience": 2}},
}
BASE = {
    "backbone": "tf_efficientnet_lite0",
    "weights": "efficientnet-lite0",
    "pretrained": False,
    "embed_dim": 128,
    "embed_batch_size": 64,
    "train": {"batch_size": 32, "num_workers": 0, "final": "fold0"},
}
THRESHOLDS = np.round(np.arange(0.0, 1.0001, 0.01), 2)
FUSION_WEIGHTS = (0.3, 0.5, 0.7)


def f1_at(sims: np.ndarray, same: np.ndarray, threshold: float) -> float:
    """Mean row F1 when each posting predicts every posting with similarity >= threshold, itself included."""
    pred = sims >= threshold
    np.fill_diagonal(pred, True)
    hits = (pred & same).sum(1)
    return float(np.mean(2.0 * hits / (pred.sum(1) + same.sum(1))))


def tuned_f1(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Threshold tuned on (sims, same) of validation, applied to test; and test's own best."""
    val_curve = [f1_at(*val, t) for t in THRESHOLDS]
    t = float(THRESHOLDS[int(np.argmax(val_curve))])
    test_curve = [f1_at(*test, u) for u in THRESHOLDS]
    return {"val": max(val_curve), "threshold": t, "test": f1_at(*test, t), "test_best": max(test_curve)}


def _split(data_dir: Path) -> dict[str, Any]:
    """Train rows, and the test.csv families halved into validation and test by a seeded draw of
    label groups' families (siblings share a title brand, and a family's groups share its rows)."""
    import pandas as pd

    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(data_dir / name, dtype={"image_phash": str, "title": str}, keep_default_na=False)

    train = read("train.csv")
    held = read("test.csv").merge(read("test_truth.csv"), on="posting_id")
    family = held["posting_id"].map(_families(data_dir))
    fams = np.unique(family)
    val_fams = set(np.random.default_rng(0).permutation(fams)[: len(fams) // 2].tolist())
    is_val = family.isin(val_fams).to_numpy()
    parts = {"train": train, "val": held[is_val].reset_index(drop=True), "test": held[~is_val].reset_index(drop=True)}
    out = {}
    for name, df in parts.items():
        split = "train" if name == "train" else "test"
        out[name] = {
            "paths": [str(data_dir / f"{split}_images" / f) for f in df["image"]],
            "labels": df["label_group"].to_numpy(),
            "titles": df["title"].tolist(),
        }
    return out


def _families(data_dir: Path) -> dict[str, int]:
    """posting_id -> family index, from the generator's own catalogue (written beside the data)."""
    return json.loads((data_dir / "families.json").read_text())


def make_data(root: Path, groups: int, seed: int, size: int) -> Path:
    """The seed's photo-like dataset (half its groups held out), with a posting -> family map."""
    from pipeline.data.synth import _make_postings
    from pipeline.data.synth.catalogue import make_families, make_group, split_families
    from pipeline.data.synth.photos import make_photo_synthetic

    out = root / f"photos_g{groups}_s{seed}_{size}px"
    if not (out / "families.json").exists():
        make_photo_synthetic(out, n_groups=groups, seed=seed, image_size=size, test_fraction=0.5, progress=False)
        families = make_families(groups, seed)
        all_groups = [make_group(f, i, seed) for f in families for i in range(len(f.variants))]
        posts = _make_postings(all_groups, split_families(families, 0.5, seed), seed)
        (out / "families.json").write_text(json.dumps({p["posting_id"]: p["group"].family.index for p in posts}))
    return out


def image_cfg(method: str, epochs: int, size: int):
    from pipeline.config import from_dict

    spec = json.loads(json.dumps(BASE))
    over = json.loads(json.dumps(METHODS[method]))
    spec.update({k: v for k, v in over.items() if k != "train"})
    spec["train"].update(over.get("train", {}), epochs=epochs)
    if spec["train"].get("linear_probe_epochs") == -1:
        spec["train"]["linear_probe_epochs"] = epochs
    spec["image_size"] = size
    return from_dict({"image": spec}).image


def zero_shot_embed(cfg, paths: list[str]) -> np.ndarray:
    """Average-pooled ImageNet features of the backbone, L2-normalised (no neck, no training)."""
    import torch
    import torch.nn.functional as F

    from pipeline.data.datasets import ImageDataset, eval_transform
    from pipeline.device import pick_device
    from pipeline.models.encoders import ImageEncoder

    device = pick_device()
    encoder = ImageEncoder(cfg).eval().to(device)
    loader = torch.utils.data.DataLoader(
        ImageDataset(paths, transform=eval_transform(encoder.data_config())), batch_size=64
    )
    out = []
    with torch.no_grad():
        for x in loader:
            out.append(F.normalize(encoder.backbone.forward_features(x.to(device)).mean((2, 3)), dim=1).cpu())
    return torch.cat(out).numpy()


def evaluate(embed, data: dict, tfidf: dict) -> dict[str, Any]:
    """Image-only and fused F1 of an embedding function on validation and test."""
    sims, same = {}, {}
    for part in ("val", "test"):
        x = embed(data[part]["paths"])
        sims[part] = x @ x.T
        labels = data[part]["labels"]
        same[part] = labels[:, None] == labels[None, :]
    result = {"image": tuned_f1((sims["val"], same["val"]), (sims["test"], same["test"]))}
    best = None
    for w in FUSION_WEIGHTS:
        fused = {p: w * sims[p] + (1 - w) * tfidf[p] for p in ("val", "test")}
        r = tuned_f1((fused["val"], same["val"]), (fused["test"], same["test"]))
        if best is None or r["val"] > best["val"]:
            best = {**r, "weight": w}
    result["fused"] = best
    return result


def title_sims(data: dict) -> dict[str, np.ndarray]:
    from pipeline.matching.signals import TfidfConfig, tfidf_vectors

    out = {}
    for part in ("val", "test"):
        v = tfidf_vectors(data[part]["titles"], TfidfConfig())
        out[part] = (v @ v.T).toarray()
    return out


def phash_f1(data_dir: Path, data: dict) -> dict[str, float]:
    """The phash signal alone, (64 - Hamming distance) / 64 as a similarity, for reference."""
    import imagehash
    from PIL import Image

    sims, same = {}, {}
    for part in ("val", "test"):
        bits = np.stack([imagehash.phash(Image.open(p)).hash.reshape(-1) for p in data[part]["paths"]])
        sims[part] = 1.0 - (bits[:, None, :] != bits[None, :, :]).mean(2)
        labels = data[part]["labels"]
        same[part] = labels[:, None] == labels[None, :]
    return tuned_f1((sims["val"], same["val"]), (sims["test"], same["test"]))


def run_one(method: str, seed: int, groups: int, epochs: int, size: int, root: Path) -> dict[str, Any]:
    import torch

    from pipeline.inference.embedding import embed_items
    from pipeline.models.encoders import load_encoder
    from pipeline.training.loop import train_encoder

    torch.set_num_threads(1)
    data_dir = make_data(root, groups, seed, size)
    data = _split(data_dir)
    tfidf = title_sims(data)
    cfg = image_cfg(method, epochs, size)
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "groups": groups,
        "epochs": epochs,
        "size": size,
        "train_rows": len(data["train"]["paths"]),
        "val_rows": len(data["val"]["paths"]),
        "test_rows": len(data["test"]["paths"]),
        "cfg": dataclasses.asdict(cfg.train),
        "weights": cfg.weights,
        "backbone": cfg.backbone,
    }
    if method == "zero_shot":
        row.update(evaluate(lambda p: zero_shot_embed(cfg, p), data, tfidf))
        row["phash"] = phash_f1(data_dir, data)
    else:

        def per_epoch(model) -> dict[str, float]:
            r = evaluate(lambda p: embed_items(model, p, batch_size=64, progress=False), data, tfidf)
            return {"val_f1": r["image"]["val"], "test_f1": r["image"]["test"]}

        with tempfile.TemporaryDirectory(dir=root) as tmp:
            result = train_encoder(
                "image",
                cfg,
                data["train"]["paths"],
                data["train"]["labels"],
                tmp,
                seed=seed,
                eval_fn=per_epoch,
                progress=False,
            )
            model = load_encoder(result["model_path"])
            row.update(evaluate(lambda p: embed_items(model, p, batch_size=64, progress=False), data, tfidf))
        row["history"] = [
            {k: h[k] for k in ("epoch", "loss", "val_f1", "test_f1", "seconds")} for h in result["history"]
        ]
        row["epochs_run"] = len(result["history"])
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["loadavg"] = os.getloadavg()[0]
    return row


def read_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Result rows of JSON-lines files; a (method, seed) in a later file replaces an earlier one."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["method"], row["seed"])] = row
    return list(rows.values())


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: test F1 (image-only, threshold tuned on validation) per seed and the mean, and fused."""
    seeds = sorted({r["seed"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = [
        "| method | " + " | ".join(f"image seed {s}" for s in seeds) + " | image mean | fused mean | "
        "test_best mean | epochs run | s/run |",
        "|---" * (len(seeds) + 6) + "|",
    ]
    for m in methods:
        by_seed = {r["seed"]: r for r in rows if r["method"] == m}
        img = [by_seed[s]["image"]["test"] if s in by_seed else float("nan") for s in seeds]
        fused = [r["fused"]["test"] for r in by_seed.values()]
        best = [r["image"]["test_best"] for r in by_seed.values()]
        ran = [str(r.get("epochs_run", 0)) for r in by_seed.values()]
        secs = [r["seconds"] for r in by_seed.values()]
        lines.append(
            f"| {m} | " + " | ".join("" if np.isnan(v) else f"{v:.3f}" for v in img) + f" | {np.nanmean(img):.3f} | "
            f"{np.mean(fused):.3f} | {np.mean(best):.3f} | {','.join(ran)} | {np.mean(secs):.0f} |"
        )
    ph = {r["seed"]: r["phash"]["test"] for r in rows if r["method"] == "zero_shot" and "phash" in r}
    if ph:
        cells = " | ".join(f"{ph[s]:.3f}" if s in ph else "" for s in seeds)
        lines.append(f"| phash | {cells} | {np.mean(list(ph.values())):.3f} | | | | |")
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], out: Path) -> None:
    """One line per (method, seed): test F1 image-only and fused, their validation-tuned settings."""
    import csv

    fields = ["method", "seed", "image_test_f1", "image_test_best_f1", "image_threshold", "fused_test_f1"]
    fields += ["fused_weight", "epochs_run", "seconds", "loadavg"]
    order = {m: i for i, m in enumerate(METHODS)}
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in sorted(rows, key=lambda r: (order[r["method"]], r["seed"])):
            image, fused = r["image"], r["fused"]
            writer.writerow(
                [r["method"], r["seed"], round(image["test"], 4), round(image["test_best"], 4), image["threshold"]]
                + [round(fused["test"], 4), fused["weight"], r.get("epochs_run", 0), r["seconds"]]
                + [round(r["loadavg"], 1)]
            )


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Image test F1 per method: one marker per seed, a bar at the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.6))
    for i, m in enumerate(methods):
        values = {r["seed"]: r["image"]["test"] for r in rows if r["method"] == m}
        ax.bar(i, np.mean(list(values.values())), color="0.85", width=0.6)
        for j, seed in enumerate(seeds):
            if seed in values:
                ax.plot(i - 0.15 + 0.15 * j, values[seed], "o", color=f"C{j}", label=f"seed {seed}" if i == 0 else None)
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    low = min(r["image"]["test"] for r in rows)
    ax.set_ylim(low - 0.03, None)
    ax.set_ylabel("image-only test F1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=160)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "image_branch")
    parser.add_argument("--out", type=Path, help="JSON-lines file to append results to")
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of results files and exit")
    parser.add_argument("--plot", type=Path, help="with --table: also draw the image F1 per method to this PNG")
    parser.add_argument("--csv", type=Path, help="with --table: also write the rows as CSV")
    args = parser.parse_args(argv)
    if args.table:
        rows = read_rows(args.table)
        print(table(rows))
        if args.plot:
            plot(rows, args.plot)
        if args.csv:
            write_csv(rows, args.csv)
        return 0
    args.root.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for method in args.methods:
            row = run_one(method, seed, args.groups, args.epochs, args.size, args.root)
            print(
                json.dumps({k: row[k] for k in ("method", "seed", "image", "fused", "seconds", "loadavg")}), flush=True
            )
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
