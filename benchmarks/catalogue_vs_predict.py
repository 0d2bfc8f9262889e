"""The catalogue's incremental groups against the run's one-shot ``predict``, on synthetic data.

For each data set: ``synth``, then ``run`` (TF-IDF, phash, blending, the pair model and its group
step), whose ``submission.csv`` is ``predict``'s answer on the test set. Then, per group mode and
batch size, a catalogue of the run's training postings, the test set added in batches (thresholds
moved to the test set's size, as ``predict`` moves them to its gallery), and the export of the
test postings, scored against the same truth (mode ``run_stored``: ``run`` without rescoring the
region's stored links). The catalogue starts from the run's training
postings, or from the test set's first batch (then it ends holding ``predict``'s gallery):

    python -m benchmarks.catalogue_vs_predict --groups 40 30 --seed 1 --batches 1 10 0 \\
        --modes components average run --out docs/results/catalogue_vs_predict.csv

``--data`` adds data folders, such as the dev titles split by groups (no images: TF-IDF and phash):

    python -m benchmarks.gallery_size split --tune-share 0.5 --seed 0 --out runs/dev_half
    python -m benchmarks.catalogue_vs_predict --groups --data runs/dev_half --batches 100 --modes run run_stored
"""

from __future__ import annotations

import argparse
import csv
import itertools
import tempfile
import time
from pathlib import Path

import pandas as pd

from pipeline.catalogue import add_postings, export_groups, init_from_run
from pipeline.data.contract import read_postings
from pipeline.metric import score_matches, true_sets_from_labels
from pipeline.submission import read_matches

FIELDS = ("data", "path", "group", "unseen", "batch", "f1", "precision", "recall", "seconds")


def trained_run(
    root: Path, groups: int, seed: int, image_size: int, modalities: str, data: Path | None = None
) -> tuple[Path, Path]:
    """A run on ``data`` (a folder with train.csv, test.csv and test_truth.csv), or on a synthetic
    data set of ``groups`` groups made first."""
    from pipeline.cli import main
    from pipeline.data.synth import make_synthetic

    run = root / "run"
    if data is None:
        data = root / "data"
        make_synthetic(data, n_groups=groups, seed=seed, image_size=image_size, progress=False)
    args = ["run", "--data", str(data), "--out", str(run), "--modalities", modalities]
    if main([*args, "folds.n_splits=3", "decision.cv_estimate=false"]) != 0:
        raise SystemExit(f"the run on {data} failed")
    return data, run


def catalogue_f1(
    run: Path,
    test: pd.DataFrame,
    truth: dict,
    out: Path,
    mode: str,
    batch: int,
    init: str,
    min2_joins: bool = False,
    unseen: str = "hashed",
) -> dict:
    """The F1 of the test postings' exported groups. ``init``: ``train``, a catalogue of the run's
    training postings (labelled groups, the test set's sibling products among them); ``test``, one
    that starts from the test set's first batch, so it ends holding what ``predict``'s gallery holds.
    ``unseen``: what a title term the run's titles never held weighs (``catalogue init --unseen-terms``)."""
    step = batch or len(test)
    options = {"size": len(test), "group": "run" if mode == "run_stored" else mode, "min2_joins": min2_joins}
    options["unseen_terms"] = unseen
    options["rescore_region"] = mode != "run_stored"
    if init == "train":
        cat, _ = init_from_run(run, out, **options)
        first = 0
    else:
        head = out.with_suffix(".first.csv")
        test.iloc[:step].to_csv(head, index=False)
        cat, _ = init_from_run(run, out, postings=head, **options)
        first = step
    for start in range(first, len(test), step):
        add_postings(cat, test.iloc[start : start + step].reset_index(drop=True), source="test.csv")
    sub = export_groups(cat, only=test["posting_id"].tolist())
    cat.close()
    matches = {pid: set(m.split()) for pid, m in zip(sub["posting_id"], sub["matches"])}
    return score_matches(matches, truth)


def _figures(score: dict) -> str:
    return f"F1 {score['f1']:.3f}  P {score['precision']:.3f}  R {score['recall']:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, nargs="*", default=[40, 30], help="synthetic data sets, by groups")
    parser.add_argument(
        "--data",
        type=Path,
        nargs="*",
        default=[],
        help="data folders (train.csv, test.csv, test_truth.csv) besides the synthetic sets, e.g. a dev "
        "split written by `python -m benchmarks.gallery_size split`",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--modalities", default="tfidf,phash", help="the run's modalities")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10, 0], help="batch sizes (0: one batch)")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["components", "average", "run"],
        help="group modes; run_stored: run weighing the region's stored links, not rescored ones",
    )
    parser.add_argument("--min2-joins", action="store_true", help="a pair only min-2 accepted joins groups")
    parser.add_argument("--init", nargs="+", default=["train", "test"], help="what the catalogue starts from")
    parser.add_argument(
        "--unseen", nargs="+", default=["hashed"], choices=["hashed", "ignored"], help="unseen title terms"
    )
    parser.add_argument("--out", type=Path, help="CSV to write the rows to")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = [(f"synth {g} groups seed {args.seed}", g, None) for g in args.groups]
        sets += [(f"data {d.name}", 0, d) for d in args.data]
        for name, groups, given in sets:
            root = Path(tmp) / (str(groups) if given is None else given.name)
            data, run = trained_run(root, groups, args.seed, args.image_size, args.modalities, given)
            test = read_postings(data / "test.csv", labelled=False)
            labels = pd.read_csv(data / "test_truth.csv")
            truth = true_sets_from_labels(labels["posting_id"].tolist(), labels["label_group"].tolist())
            rows.append({"data": name, "path": "predict", **score_matches(read_matches(run / "submission.csv"), truth)})
            print(f"{name:24} predict", _figures(rows[-1]))
            for unseen, init, mode, batch in itertools.product(args.unseen, args.init, args.modes, args.batches):
                t0 = time.perf_counter()
                out = root / f"C_{unseen}_{init}_{mode}_{batch}"
                score = catalogue_f1(run, test, truth, out, mode, batch, init, args.min2_joins, unseen)
                row = {"data": name, "path": f"catalogue from {init}", "group": mode, "unseen": unseen}
                row["batch"] = batch or len(test)
                rows.append({**row, **score, "seconds": round(time.perf_counter() - t0, 1)})
                print(f"{name:24} {row['path']:20} {mode:10} {unseen:8} {row['batch']:>4}", _figures(score))
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})


if __name__ == "__main__":
    main()
