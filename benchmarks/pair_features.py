"""What each feature group of the pair model adds, with nested folds.

For each feature set, the whole rule (thresholds, union, min-2 and the pair model cross-fitted
inside) is tuned on K-1 folds and scored on the held-out fold (``cross_validated``): the pair model
that scores a fold never saw it, and neither did the thresholds. Sets: today's similarity features
alone (``sims``), ``sims`` plus each group, every group, and every group but one.

The default groups are chosen on the held-out scores of the first folds only (``--choose-folds``),
and the gain of that choice is reported on the other folds, which did not choose it.

    python -m benchmarks.pair_features --data /work/devdata/train.csv --modalities tfidf,phash
    python -m benchmarks.pair_features --run /work/runs/quality_text_copy   # a run's own OOF galleries
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import DEV_CSV
from pipeline.config import load_config
from pipeline.data.contract import read_postings
from pipeline.data.folds import make_folds
from pipeline.matching.oof import OofGalleries, oof_galleries
from pipeline.matching.pair_features import FEATURE_GROUPS
from pipeline.matching.signals import unsupervised_vectors
from pipeline.matching.tuning import TuneSetup, cross_validated

EXTRA = [g for g in FEATURE_GROUPS if g != "sims"]


def feature_sets(which: str) -> dict[str, list[str]]:
    sets = {"sims": ["sims"]}
    if which in ("add", "both"):
        sets.update({f"sims+{g}": ["sims", g] for g in EXTRA})
    sets["all"] = list(FEATURE_GROUPS)
    if which in ("drop", "both"):
        sets.update({f"all-{g}": [x for x in FEATURE_GROUPS if x != g] for g in EXTRA})
    return sets


def galleries_from_csv(
    path: Path, modalities: str, overrides: list[str]
) -> tuple[OofGalleries, np.ndarray, np.ndarray, dict]:
    cfg = load_config(None, [f"modalities=[{modalities}]", *overrides])
    if cfg.learned:
        raise SystemExit("learned modalities need --run (a run folder with out-of-fold embeddings)")
    df = read_postings(path, labelled=True)
    labels = df["label_group"].to_numpy()
    fold_of = make_folds(labels, cfg.folds.n_splits, cfg.folds.seed)
    search = {"search": cfg.search, "blend_method": cfg.fusion.blend_method}
    g = oof_galleries(
        fold_of,
        "all",
        lambda rows: unsupervised_vectors(cfg, df.iloc[rows]),
        None,
        search,
        titles=df["title"].to_numpy(),
    )
    return g, labels, fold_of, pair_setup(cfg)


def galleries_from_run(run_dir: Path) -> tuple[OofGalleries, np.ndarray, np.ndarray, dict]:
    from pipeline.runs.folder import open_run

    run = open_run(run_dir)
    df = run.train_df()
    fold_of = run.folds(df)
    return run.oof_galleries(df, fold_of), df["label_group"].to_numpy(), fold_of, pair_setup(run.cfg)


def pair_setup(cfg, groups=None) -> TuneSetup:
    """The run's tuning setup with the pair model on (``groups``: its feature groups), on one thread."""
    features = list(groups if groups is not None else cfg.pair.features)
    pair = dataclasses.replace(cfg.pair, enabled=True, features=features)
    return dataclasses.replace(TuneSetup.from_config(cfg), pair=pair, threads=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEV_CSV)
    parser.add_argument("--modalities", default="tfidf,phash")
    parser.add_argument("--run", type=Path, default=None, help="use this run folder's out-of-fold galleries instead")
    parser.add_argument(
        "--sets",
        default="add",
        choices=["add", "drop", "both"],
        help="sims plus each group (add), every group but one (drop), or both",
    )
    parser.add_argument("--only", nargs="+", default=None, help="run only these sets (names as printed)")
    parser.add_argument(
        "--extra",
        nargs="+",
        default=[],
        metavar="NAME=G1,G2",
        help="more sets to run, e.g. graph=sims,reciprocal,density",
    )
    parser.add_argument(
        "--choose-folds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="folds whose held-out F1 choose the default; the others report it",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    if args.run is not None:
        galleries, labels, fold_of, setup = galleries_from_run(args.run)
    else:
        galleries, labels, fold_of, setup = galleries_from_csv(args.data, args.modalities, args.overrides)
    rows = []
    sets = feature_sets(args.sets)
    for item in args.extra:
        name, _, groups = item.partition("=")
        sets[name] = groups.split(",")
    for name, groups in sets.items():
        if args.only is not None and name not in args.only:
            continue
        t0 = time.perf_counter()
        pair = dataclasses.replace(setup.pair, features=list(groups))
        cv = cross_validated(
            galleries.candidates, labels, fold_of, dataclasses.replace(setup, pair=pair), galleries.context
        )
        row = {
            "set": name,
            "f1": round(cv["f1"], 4),
            "precision": round(cv["precision"], 4),
            "recall": round(cv["recall"], 4),
            "per_fold_f1": cv["per_fold_f1"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = summarise(rows, fold_of, args.choose_folds)
    print(json.dumps(report), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "choice": report}, indent=1))
    return 0


def summarise(rows: list[dict], fold_of: np.ndarray, choose: list[int]) -> dict:
    """The set with the best row-weighted F1 on the ``choose`` folds, and its gain over ``sims``
    on the other folds (which did not choose it)."""
    folds = np.unique(fold_of)
    weight = np.array([(fold_of == f).sum() for f in folds], dtype=float)
    pick = np.isin(folds, choose)

    def mean(row: dict, mask: np.ndarray) -> float:
        f1 = np.array(row["per_fold_f1"])
        return float((f1[mask] * weight[mask]).sum() / weight[mask].sum())

    best = max(rows, key=lambda r: mean(r, pick))
    base = next(r for r in rows if r["set"] == "sims")
    return {
        "chosen": best["set"],
        "chosen_on_folds": sorted(int(f) for f in folds[pick]),
        "chosen_f1_other_folds": round(mean(best, ~pick), 4),
        "sims_f1_other_folds": round(mean(base, ~pick), 4),
        "gain_other_folds": round(mean(best, ~pick) - mean(base, ~pick), 4),
    }


if __name__ == "__main__":
    sys.exit(main())
