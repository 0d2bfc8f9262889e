"""Experiments on the real dev titles: one YAML file each in ``benchmarks/experiments/``, one command.

An experiment is a config diff from the defaults (as ``--config`` takes), so what it changes is the
file itself. Each runs the pipeline on the dev titles in a folder of its own (prepare, the training
its modalities need, embed, tune with the cross-validated estimate) and prints one JSON row: the
out-of-fold F1 (tuned on the same rows) and the cross-validated F1 (tuned on the other folds), with
precision, recall and seconds. ``--out`` writes the rows as CSV.

    python -m benchmarks.experiment dev_tfidf_phash tfidf_max_df_0.1 --out docs/results/experiments.csv
    python -m benchmarks.experiment --all threads=1
    python -m benchmarks.experiment --list

Trailing ``key=value`` pairs apply to every experiment (``threads=1`` on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks import DEV_CSV
from pipeline import io, stages
from pipeline.config import load_config

EXPERIMENTS = Path(__file__).resolve().parent / "experiments"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def dev_data(folder: Path, dev_csv: Path = DEV_CSV) -> Path:
    """A data folder in Kaggle's layout whose train.csv is the dev file (test.csv: its first 100
    postings without labels; the experiments never predict it)."""
    if not dev_csv.is_file():
        raise SystemExit(f"{dev_csv} not found: the dev titles sit beside the project, in ../shared/data")
    df = pd.read_csv(dev_csv, dtype=str, keep_default_na=False)
    folder.mkdir(parents=True, exist_ok=True)
    io.write_csv(df, folder / "train.csv")
    io.write_csv(df.drop(columns=["label_group"]).head(100), folder / "test.csv")
    return folder


def run_experiment(name: str, data: Path, out: Path, overrides: list[str]) -> dict[str, Any]:
    """Run one experiment into ``out``; its row of figures."""
    cfg = load_config(EXPERIMENTS / f"{name}.yaml", ["decision.cv_estimate=true", *overrides])
    t0 = time.perf_counter()
    run = stages.prepare(data, out, cfg)
    for modality in cfg.learned:
        stages.train(run.paths.root, modality, progress=False)
    if cfg.learned:
        stages.embed(run.paths.root, progress=False)
    report = stages.tune_stage(run.paths.root, progress=False)
    oof, cv = report["final"], report["final_cv"]
    return {
        "experiment": name,
        "oof_f1": round(oof["f1"], 4),
        "cv_f1": round(cv["f1"], 4),
        "cv_precision": round(cv["precision"], 4),
        "cv_recall": round(cv["recall"], 4),
        "per_fold_cv_f1": cv["per_fold_f1"],
        "seconds": round(time.perf_counter() - t0, 1),
        "overrides": " ".join(overrides),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="experiments (file names without .yaml), then key=value overrides")
    parser.add_argument("--all", action="store_true", help="every experiment in benchmarks/experiments")
    parser.add_argument("--list", action="store_true", help="list the experiments and their first comment line")
    parser.add_argument("--data", type=Path, default=DEV_CSV, help="the labelled postings (default: the dev titles)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="CSV file for the rows")
    args = parser.parse_args(argv)
    names = [n for n in args.names if "=" not in n]
    overrides = [n for n in args.names if "=" in n]
    if args.list:
        for name in experiment_names():
            print(f"{name}: {(EXPERIMENTS / f'{name}.yaml').read_text().splitlines()[0].lstrip('# ')}")
        return 0
    names = experiment_names() if args.all else names
    unknown = sorted(set(names) - set(experiment_names()))
    if unknown or not names:
        parser.error(
            f"unknown experiment(s) {unknown}; choose from {experiment_names()}"
            if unknown
            else "name an experiment, or --all"
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        data = dev_data(Path(tmp) / "data", args.data)
        for name in names:
            rows.append(run_experiment(name, data, root / name, overrides))
            print(json.dumps(rows[-1]), flush=True)
    if args.out is not None:
        io.write_csv(pd.DataFrame(rows), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
