"""The margin table: what each ArcFace margin setting adds to the title encoder alone.

Each run folder holds the title encoder's fold models trained with one head setting (ramped margin,
sub-centres, ...) on the same folds, and their out-of-fold embeddings. For each, the text signal
alone (its threshold, neighbourhood blending and min-2; no pair model, no other signal) is tuned on
K-1 folds and scored on the held-out fold. A default is chosen on the held-out F1 of the first
folds (``--choose-folds``) and reported on the others, which did not choose it.

    python -m benchmarks.margin_table base=/work/runs/dev_text m08=/work/runs/quality_m08 ...
    python -m benchmarks.margin_table base=RUN_S42,RUN_S43 k3=RUN_K3_S42,RUN_K3_S43   # seeds averaged
    python -m benchmarks.margin_table --from-json margin_42.json margin_43.json       # the same, from --out files
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.matching.pair_model import PairModelConfig
from pipeline.matching.tuning import TuneSetup, cross_validated


def text_alone_cv(run_dir: Path) -> dict:
    from pipeline.runs.folder import open_run

    run = open_run(run_dir)
    cfg = dataclasses.replace(run.cfg, modalities=["text"])
    text_run = dataclasses.replace(run, cfg=cfg)
    df = text_run.train_df()
    fold_of = text_run.folds(df)
    galleries = text_run.oof_galleries(df, fold_of)
    setup = dataclasses.replace(TuneSetup.from_config(cfg), pair=PairModelConfig(enabled=False))
    cv = cross_validated(galleries.candidates, df["label_group"].to_numpy(), fold_of, setup)
    head = cfg.text.head
    return {
        "margin_rad": head.margin_rad,
        "margin_start_rad": head.margin_start_rad,
        "warmup_epochs": head.margin_warmup_epochs,
        "subcenters": head.subcenters,
        "head_lr": cfg.text.train.head_lr,
        "size_power": head.margin_size_power,
        "weight_power": cfg.text.train.sample_weight_power,
        "seed": cfg.seed,
        "f1": round(cv["f1"], 4),
        "precision": round(cv["precision"], 4),
        "recall": round(cv["recall"], 4),
        "per_fold_f1": cv["per_fold_f1"],
        "fold_rows": [int((fold_of == f).sum()) for f in np.unique(fold_of)],
    }


def mean_over_seeds(rows: list[dict]) -> dict:
    """One setting's runs with different seeds (same folds): F1, precision, recall and per-fold F1 averaged;
    ``seed_f1`` keeps each seed's CV F1."""
    out = dict(rows[0], seeds=[r.get("seed") for r in rows], seed_f1=[r["f1"] for r in rows])
    for key in ("f1", "precision", "recall"):
        out[key] = round(float(np.mean([r[key] for r in rows])), 4)
    out["per_fold_f1"] = np.mean([r["per_fold_f1"] for r in rows], axis=0).tolist()
    return out


def rows_from_json(paths: list[Path]) -> dict[str, dict]:
    """The rows of earlier ``--out`` files (one per seed, say), averaged per setting name."""
    runs: dict[str, list[dict]] = {}
    for path in paths:
        for name, row in json.loads(path.read_text())["rows"].items():
            runs.setdefault(name, []).append(row)
    return {name: mean_over_seeds(rows) for name, rows in runs.items()}


def print_table(rows: dict[str, dict], choose_folds: list[int]) -> str:
    """Prints the table; returns the setting chosen on ``choose_folds`` (its gain is read on the others)."""
    base = next(iter(rows))
    pick = np.isin(np.arange(len(rows[base]["per_fold_f1"])), choose_folds)

    def mean(row: dict, mask: np.ndarray) -> float:
        f1, w = np.array(row["per_fold_f1"]), np.array(row["fold_rows"], float)
        return float((f1[mask] * w[mask]).sum() / w[mask].sum())

    print(
        "run      | margin (start->end, warm-up) | K | size margin λ | weights 1/n^p | CV F1  | P      | R      | "
        f"F1 folds {choose_folds} (choose) | F1 other folds | gain other folds | CV F1 per seed"
    )
    for name, r in rows.items():
        seeds = " / ".join(f"{f:.4f}" for f in r.get("seed_f1", [r["f1"]]))
        print(
            f"{name:8} | {r['margin_start_rad']:.1f}->{r['margin_rad']:.1f} rad, {r['warmup_epochs']:.0f} ep | "
            f"{r['subcenters']} | {r.get('size_power', 0.0):g} | {r.get('weight_power', 0.0):g} | "
            f"{r['f1']:.4f} | {r['precision']:.4f} | {r['recall']:.4f} | "
            f"{mean(r, pick):.4f} | {mean(r, ~pick):.4f} | "
            f"{mean(r, ~pick) - mean(rows[base], ~pick):+.4f} | {seeds}"
        )
    chosen = max(rows, key=lambda k: mean(rows[k], pick))
    print(
        f"chosen on folds {choose_folds}: {chosen}; on the other folds it gains "
        f"{mean(rows[chosen], ~pick) - mean(rows[base], ~pick):+.4f} F1 over {base}"
    )
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="name=RUN_DIR[,RUN_DIR...]",
        help="the first one is the baseline; several folders (seeds of one setting) are averaged",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="instead of run folders: earlier --out files, averaged per setting (e.g. one per seed)",
    )
    parser.add_argument("--choose-folds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.from_json):
        parser.error("give either run folders or --from-json")

    if args.from_json:
        rows = rows_from_json(args.from_json)
    else:
        rows = {}
        for item in args.runs:
            name, _, path = item.partition("=")
            seeds = [text_alone_cv(Path(p)) for p in path.split(",")]
            for r in seeds:
                print(json.dumps({"run": name, **r}), flush=True)
            rows[name] = mean_over_seeds(seeds)
    chosen = print_table(rows, args.choose_folds)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "chosen": chosen}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
