"""``python -m pipeline STAGE ...``: one command line for every stage.

The stage names and their flags are a contract with users' scripts and notebooks; keep them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline import stages
from pipeline.catalogue import CatalogueError
from pipeline.catalogue.commands import add_catalogue_parser
from pipeline.config import ConfigError, load_config
from pipeline.data import MODALITIES, DataError
from pipeline.io import WRITE_ERRNOS
from pipeline.kaggle.package import PackageError, package_run
from pipeline.matching.predict import PredictError
from pipeline.memory import settle_memory
from pipeline.runs.folder import StageError
from pipeline.submission import SubmissionError, score_submission

EPILOG_OVERRIDES = "Trailing key=value pairs override the config, e.g. text.train.epochs=3 search.k=30."
# What bad input, a busy run folder or a full disk raise: exit 2 with one line, not a traceback.
USER_ERRORS = (DataError, ConfigError, StageError, SubmissionError, PredictError, PackageError, CatalogueError)


# The stages that run under torchrun with several processes (every rank works, rank 0 writes).
TORCHRUN_STAGES = ("train-image", "train-text", "embed")
# torchrun's own parser reads a later --run as its --run-path, hence the second spelling.
RUN_DIR_HELP = "run folder; spell it --run-dir after torchrun ... -m pipeline, whose parser takes --run for --run-path"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _log_to_stderr()
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if torchrun and args.stage not in TORCHRUN_STAGES:
        print(
            f"error: under torchrun only {', '.join(TORCHRUN_STAGES)} run; run {args.stage} with "
            "`python -m pipeline` (one process)",
            file=sys.stderr,
        )
        return 2
    # A long-lived server returns freed memory to the kernel; a batch command keeps it (pipeline/memory.py).
    settle_memory(batch=getattr(args, "action", None) != "serve")
    try:
        return args.func(args) or 0
    except USER_ERRORS as e:
        return _fail(str(e))
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        # A full disk or a folder that is not writable; the atomic writers name the file.
        return _fail(str(e) if e.filename is None or str(e.filename) in str(e) else f"{e.filename}: {e.strerror}")
    finally:
        if torchrun:
            from pipeline.distributed import shutdown

            shutdown()


def _fail(message: str) -> int:
    """One line on stderr, whatever the message holds, and exit code 2."""
    print("error: " + " ".join(message.split("\n")), file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line, like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _log_to_stderr() -> None:
    """Progress lines of the stages on stderr; stdout stays for results (JSON lines, paths).
    Under torchrun, ranks other than 0 print warnings and errors only."""
    logger = logging.getLogger("pipeline")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipeline",
        description="Shopee-style product matching: synthetic data, training, tuning and submissions.",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def add(name: str, func: Callable, help: str, epilog: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=epilog)
        p.set_defaults(func=func)
        return p

    _add_run_stages(add)
    _add_tools(add)
    _add_package_and_ensembles(add)
    add_catalogue_parser(add)
    return parser


def _add_run_stages(add: Callable[..., argparse.ArgumentParser]) -> None:
    """run, and the stages it runs in order: prepare, train-image, train-text, embed, tune, predict."""
    p = add(
        "run", _run, "Run every stage: folds, training, out-of-fold tuning, test matching, report.", EPILOG_OVERRIDES
    )
    _data_and_config(p)
    once = p.add_mutually_exclusive_group()
    once.add_argument("--resume", action="store_true", help="continue killed trainings from their checkpoints")
    once.add_argument("--overwrite", action="store_true", help="retrain models the run folder already holds")

    p = add(
        "prepare", _prepare, "Validate the data, assign GroupKFold folds and write the run's config.", EPILOG_OVERRIDES
    )
    _data_and_config(p)

    for modality in ("image", "text"):
        p = add(
            f"train-{modality}",
            _train,
            f"Train the {modality} encoder with its ArcFace head, per fold and on all rows.",
        )
        p.add_argument("--run", "--run-dir", dest="run", required=True, type=Path, help=RUN_DIR_HELP)
        p.add_argument(
            "--fold",
            action="append",
            default=None,
            help="fold number, or 'full' for the model trained on every row; repeatable (default: all)",
        )
        once = p.add_mutually_exclusive_group()
        once.add_argument("--resume", action="store_true", help="continue from the last full-state checkpoint")
        once.add_argument("--overwrite", action="store_true", help="discard existing models and train again")
        p.set_defaults(modality=modality)

    p = add("embed", _embed, "Write the encoders' L2-normalised embeddings (out-of-fold galleries and test).")
    p.add_argument("--run", "--run-dir", dest="run", required=True, type=Path, help=RUN_DIR_HELP)
    p.add_argument("--modalities", default=None, help="comma list of learned modalities (default: those of the run)")

    p = add(
        "tune",
        _tune,
        "Tune thresholds and fusion on out-of-fold F1; writes thresholds.json, the report and plots.",
        "Trailing search.*, fusion.*, decision.*, pair.*, tfidf.* and phash.* key=value pairs re-tune with other "
        "settings, e.g. pair.enabled=false search.k=30; they are stored in the run's config.yaml once the tuning "
        "succeeds.",
    )
    p.add_argument("--run", required=True, type=Path, help="run folder")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="search.* / fusion.* / decision.* / pair.* / tfidf.* / phash.* overrides",
    )

    p = add("predict", _predict, "Match test.csv with the tuned settings and write submission.csv.")
    p.add_argument("--run", required=True, type=Path, help="tuned run folder")
    p.add_argument("--data", type=Path, default=None, help="data folder to use instead of the run's")
    p.add_argument("--out", type=Path, default=None, help="submission path (default RUN/submission.csv)")


def _add_tools(add: Callable[..., argparse.ArgumentParser]) -> None:
    """synth, score, demo and bench: data, scores and timings around the stages."""
    p = add("synth", _synth, "Write a synthetic dataset in Kaggle's layout (JPEGs, phash, hard sibling groups).")
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    p.add_argument("--groups", type=int, default=200, help="label groups over train and test (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument(
        "--photos",
        action="store_true",
        help="products cut from real photographs (bundled by scikit-image, scikit-learn and Matplotlib) and "
        "re-shot, instead of drawn ones: data on which a pretrained image backbone shows what it knows",
    )

    p = add("score", _score, "Score a submission against the truth; prints one JSON line.")
    p.add_argument("--submission", required=True, type=Path, help="posting_id,matches CSV")
    p.add_argument("--truth", required=True, type=Path, help="posting_id,label_group or posting_id,matches CSV")

    p = add(
        "demo", _demo, "Synthetic data then a full run with every modality, sized for 2 CPU cores.", EPILOG_OVERRIDES
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    p.add_argument("--data", type=Path, default=None, help="where to write the synthetic data (default data/synthetic)")
    p.add_argument("--groups", type=int, default=160, help="synthetic label groups (default 160)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides on top of the demo preset")

    p = add("bench", _bench, "Time the predict path on N random clustered embeddings; prints one JSON line.")
    _bench_arguments(p)


def _add_package_and_ensembles(add: Callable[..., argparse.ArgumentParser]) -> None:
    """package, ensemble and compare: the subcommands around Kaggle submissions."""
    p = add("package", _package, "Write a folder to upload as a Kaggle dataset for offline inference.")
    p.add_argument("--run", required=True, type=Path, help="trained and tuned run folder")
    p.add_argument("--out", required=True, type=Path, help="package folder to write")
    p.add_argument("--wheels", type=Path, default=None, help="folder of extra wheels to include (e.g. faiss-cpu)")
    p.add_argument("--title", default="shopee-pipeline-package", help="Kaggle dataset title/slug")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="store the encoders' weights in half precision (half the "
        "upload; the inference casts them back to float32)",
    )
    p.add_argument(
        "--assume-installed",
        default="",
        metavar="DIST[,DIST]",
        help="distributions the inference notebook has without a wheel here (e.g. faiss-cpu when "
        "another attached dataset installs it); recorded in the manifest",
    )

    p = add(
        "kaggle-code",
        _kaggle_code,
        "Write the code dataset for a Kaggle notebook: the project's wheel and every wheel Kaggle's image lacks.",
        "The wheels are those the stages and the offline inference import (read from the code), downloaded "
        "with pip at the versions installed here; upload the folder as a Kaggle dataset.",
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write (new or empty)")
    p.add_argument("--python-version", default=None, help="Python of Kaggle's image (default 3.11)")
    p.add_argument("--platform", default=None, help="pip platform tag for Kaggle (default manylinux_2_28_x86_64)")
    p.add_argument("--title", default="shopee-pipeline-code", help="Kaggle dataset title/slug")

    p = add(
        "ensemble",
        _ensemble,
        "Combine trained runs with the same folds into one run folder to tune, predict and package.",
        "Then: python -m pipeline tune --run OUT. Trailing key=value pairs override the first "
        "run's config (e.g. search.k=30).",
    )
    p.add_argument("--runs", required=True, nargs="+", type=Path, help="member run folders (trained and embedded)")
    p.add_argument("--out", required=True, type=Path, help="ensemble run folder to write")
    p.add_argument("--weights", nargs="+", type=float, default=None, help="one weight per run (default: equal)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")

    p = add(
        "compare",
        _compare,
        "Tuned runs side by side: cross-validated F1, each signal's F1 alone (tuned and scored on the same "
        "rows), time, the leaderboard score (flagged when the run was tuned again since), the config keys that differ.",
    )
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN", help="tuned run folders")
    p.add_argument(
        "--lb",
        action="append",
        default=[],
        metavar="RUN=SCORE",
        help="record a leaderboard score for a run (kept in RUN/leaderboard.json); repeatable",
    )


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, required=True, help="number of postings")
    p.add_argument("--dim", type=int, default=512, help="embedding size (default 512)")
    p.add_argument("--k", type=int, default=50, help="neighbours per posting (default 50)")
    p.add_argument(
        "--index",
        default="auto",
        choices=["auto", "flat", "bf16", "hnsw", "ivf", "ivfpq"],
        help="dense index (default auto: the cheapest by timed probes on this machine, see search.index)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--recall-sample",
        type=int,
        default=1000,
        help="queries whose lists are checked against exact search, untimed (default 1000; 0: none)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="search settings, e.g. nprobe=8 ef_search=64 threads=1 (or search.nprobe=8)",
    )
    p.add_argument("--pair", action="store_true", help="include the learned pair score in the timed path")
    p.add_argument("--tfidf", action="store_true", help="add TF-IDF of synthetic titles, fitted, searched and blended")
    p.add_argument(
        "--blend-method",
        default="graph",
        choices=["graph", "exact"],
        help="how blending finds the new neighbours (default graph; see fusion.blend_method)",
    )


def _data_and_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="folder with train.csv, test.csv and the image folders")
    p.add_argument("--out", required=True, type=Path, help="run folder to write")
    p.add_argument(
        "--modalities",
        default=None,
        help=f"comma list from {','.join(MODALITIES)} (default: the config's, all of them)",
    )
    p.add_argument("--config", default=None, help="YAML file (or preset name, e.g. demo) with the keys to change")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _config(args):
    overrides = list(args.overrides)
    if getattr(args, "modalities", None):
        overrides.append(f"modalities=[{args.modalities}]")
    return load_config(args.config, overrides)


def _synth(args) -> int:
    # Development tooling, absent from the Kaggle wheel.
    from pipeline.data.synth import make_synthetic
    from pipeline.data.synth.photos import make_photo_synthetic

    make = make_photo_synthetic if args.photos else make_synthetic
    summary = make(args.out, n_groups=args.groups, seed=args.seed, image_size=args.image_size)
    print(json.dumps(summary, default=str))
    return 0


def _run(args) -> int:
    report = stages.run_all(args.data, args.out, _config(args), resume=args.resume, overwrite=args.overwrite)
    cv = report["f1_cross_validated"]
    print(
        json.dumps(
            {
                "f1_cross_validated": round(cv, 4) if cv is not None else None,
                "oof_f1": round(report["oof_f1"], 4),
                "report": str(args.out / "report.md"),
                "submission": report["submission"],
            }
        )
    )
    return 0


def _prepare(args) -> int:
    stages.prepare(args.data, args.out, _config(args))
    return 0


def _train(args) -> int:
    folds = None
    if args.fold:
        try:
            folds = [None if f == "full" else int(f) for f in args.fold]
        except ValueError:
            raise ConfigError(f"--fold takes fold numbers or 'full', got {args.fold}") from None
    stages.train(args.run, args.modality, folds=folds, resume=args.resume, overwrite=args.overwrite)
    return 0


def _embed(args) -> int:
    stages.embed(args.run, modalities=args.modalities.split(",") if args.modalities else None)
    return 0


def _tune(args) -> int:
    report = stages.tune_stage(args.run, overrides=args.overrides)
    cv = report.get("final_cv")
    print(
        json.dumps(
            {
                "f1_cross_validated": round(cv["f1"], 4) if cv else None,
                "oof_f1": round(report["final"]["f1"], 4),
                "report": str(args.run / "report.md"),
            }
        )
    )
    return 0


def _ensemble(args) -> int:
    run = stages.make_ensemble(args.runs, args.out, weights=args.weights, overrides=args.overrides)
    print(run.paths.root)
    return 0


def _compare(args) -> int:
    from pipeline.reporting.compare import compare_runs, format_table, record_leaderboard

    for item in args.lb:
        run, sep, score = item.rpartition("=")
        try:
            value = float(score)
        except ValueError:
            value = None
        if not sep or not run or value is None:
            raise ConfigError(f"--lb takes RUN=SCORE, e.g. --lb runs/text=0.731, got {item!r}")
        record_leaderboard(Path(run), value)
    runs = list(dict.fromkeys([*args.runs, *(Path(i.rpartition("=")[0]) for i in args.lb)]))
    if not runs:
        raise ConfigError("compare needs at least one RUN (or --lb RUN=SCORE)")
    print(format_table(compare_runs(runs)))
    return 0


def _predict(args) -> int:
    print(stages.predict(args.run, out=args.out, data_dir=args.data))
    return 0


def _score(args) -> int:
    scores = score_submission(args.submission, args.truth)
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in scores.items()}))
    return 0


def _demo(args) -> int:
    from pipeline.tools.demo import demo

    report = demo(args.out, data=args.data, groups=args.groups, seed=args.seed, overrides=args.overrides)
    s = report["test_score"]
    cv = report["f1_cross_validated"]
    print(
        (f"cross-validated F1 {cv:.4f}; " if cv is not None else "")
        + f"out-of-fold F1 {report['oof_f1']:.4f} tuned on the same rows (per signal: "
        + ", ".join(f"{k} {v['f1']:.3f}" for k, v in report["per_modality"].items())
        + ")"
    )
    print(
        f"test F1 {s['f1']:.4f} (precision {s['precision']:.3f}, recall {s['recall']:.3f}) "
        f"in {report['demo_seconds']:.0f}s"
    )
    print(f"submission written to {report['submission_copy']}; report at {args.out / 'report.json'}")
    return 0


def _bench(args) -> int:
    from pipeline.tools.bench import run_bench

    search = load_config(None, [f"search.{o.removeprefix('search.')}" for o in args.overrides]).search
    overrides = {f: getattr(search, f) for f in (o.partition("=")[0].removeprefix("search.") for o in args.overrides)}
    print(
        json.dumps(
            run_bench(
                n=args.n,
                dim=args.dim,
                k=args.k,
                index=args.index,
                seed=args.seed,
                pair=args.pair,
                tfidf=args.tfidf,
                blend_method=args.blend_method,
                recall_sample=args.recall_sample,
                search_overrides=overrides,
            )
        )
    )
    return 0


def _kaggle_code(args) -> int:
    from pipeline.kaggle.code_dataset import KAGGLE_PLATFORM, KAGGLE_PYTHON, write_code_dataset

    done = write_code_dataset(
        args.out, args.python_version or KAGGLE_PYTHON, args.platform or KAGGLE_PLATFORM, title=args.title
    )
    wheels = [done["project_wheel"], *(f"{w['dist']}=={w['version']}" for w in done["wheels"])]
    print(json.dumps({"folder": done["folder"], "wheels": wheels}))
    return 0


def _package(args) -> int:
    assumed = [d.strip() for d in args.assume_installed.split(",") if d.strip()]
    print(
        package_run(args.run, args.out, wheels=args.wheels, title=args.title, fp16=args.fp16, assume_installed=assumed)
    )
    return 0
