"""Match quality against gallery size, on groups the tuning never saw.

The protocol: split the labelled postings' groups in two parts (``--tune-share`` of the groups,
the rest). Tune on the first part's out-of-fold candidates (GroupKFold, as the tune stage does),
then match the second part with the one predict path (:func:`pipeline.matching.predict.match_postings`):
as one gallery, and as sub-galleries of 0.5x to 4x the tuning gallery's size made of sampled
groups (``--repeats`` draws each, the same draws for every variant). Prints one JSON line per
split seed and a table (F1, precision, recall per variant and size), and writes the plot.

Variants (``--variants``), each tuned on the same galleries:
  before    today's rule: the pair model on the similarity features only, no size calibration;
  pair      the pair model on every feature group, no size calibration;
  after     every feature group, thresholds moved with the gallery's size (``calibrate_size``);
  padded    pair, but tuned again for each gallery matched: the tuning part's out-of-fold queries are
            searched among the tuning part and as many of that gallery's postings, unlabelled, as make
            the tuning gallery as large as it (distractors: its groups are not the tuning part's), so
            thresholds and pair model meet the distractor density they will be used at. Its OOF
            figure is pair's (no padding at 1x). padded_learn: the pair model also learns from the
            pairs with those distractors (non-matches, as their groups are not the tuning part's).
  g_*       after, then a group decision (pipeline.matching.groups) tuned after its pairs: average
            linkage of the calibrated pair probabilities over every candidate pair (g_average), over
            after's accepted pairs only (g_accepted), or of those at 1 (g_density); complete linkage
            (g_complete). g_fixed: g_accepted with its cut fixed at 0.3 instead of tuned (the floor
            still tuned). The variants that differ only in their group rule share one pair tuning.
  padded_g_fixed, padded_learn_g_fixed: padded and padded_learn, then g_fixed's group decision, tuned
            among the same distractors.

    python -m benchmarks.gallery_size --modalities tfidf,phash --tune-share 0.2 --seeds 0 1 2 --out runs/gs/tp

``--sizes 1.0`` matches only the whole other part and the 1x draws (a padded variant then tunes again
only for the whole part).

With the title encoder: write the split as a data folder, train a run on its first part (the
test.csv of that folder is the other part), then point ``--text-run`` at it. The first part's
out-of-fold vectors come from the run's fold models, the other part's from its ``full`` model
(``--test-embed full``) or the mean of its fold models (``folds``, embedded here and cached):

    python -m benchmarks.gallery_size split --tune-share 0.333 --seed 0 --out runs/gs/split_s0
    python -m pipeline run --data runs/gs/split_s0 --out runs/gs/text_s0 --modalities text \\
        baseline_untrained=false decision.cv_estimate=false
    python -m benchmarks.gallery_size --modalities text --text-run runs/gs/text_s0 --tune-share 0.333 --seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from benchmarks import DEV_CSV
from benchmarks.gallery_report import table, write_results
from pipeline.config import Config, load_config
from pipeline.data.contract import read_postings
from pipeline.data.folds import make_folds
from pipeline.matching.groups import GroupConfig
from pipeline.matching.oof import OofGalleries, oof_galleries
from pipeline.matching.pair_model import DEFAULT_GROUPS
from pipeline.matching.predict import decide_lists, score_postings, uses_pair_model
from pipeline.matching.signals import unsupervised_vectors
from pipeline.matching.size_calibration import calibrate_size
from pipeline.matching.tuning import TuneResult, TuneSetup, add_groups, cross_validated, tune
from pipeline.metric import f1_from_sets, true_sets_from_labels
from pipeline.submission import build_submission

SIZES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
DEFAULT = list(DEFAULT_GROUPS)


class Variant(NamedTuple):
    groups: list[str]  # the pair model's feature groups
    calibrate: bool  # thresholds moved with the gallery's size (calibrate_size)
    padded: bool = False  # tuned again per gallery, among the gallery's own postings as distractors
    learn_padding: bool = False  # the pair model also learns from the pairs with those distractors
    group: GroupConfig = GroupConfig("none")  # the group decision after the pairs (rule none: the pairs decide)


VARIANTS = {
    "before": Variant(["sims"], False),
    "pair": Variant(DEFAULT, False),
    "after": Variant(DEFAULT, True),
    "padded": Variant(DEFAULT, False, padded=True),
    "padded_learn": Variant(DEFAULT, False, padded=True, learn_padding=True),
    "g_average": Variant(DEFAULT, True, group=GroupConfig("average", "prob", cut=None)),
    "g_complete": Variant(DEFAULT, True, group=GroupConfig("complete", "prob", cut=None)),
    "g_accepted": Variant(DEFAULT, True, group=GroupConfig("average", "accepted", cut=None)),
    "g_density": Variant(DEFAULT, True, group=GroupConfig("average", "density", cut=None)),
    "g_fixed": Variant(DEFAULT, True, group=GroupConfig("average", "accepted", cut=0.3)),
    "padded_g_fixed": Variant(DEFAULT, False, padded=True, group=GroupConfig("average", "accepted", cut=0.3)),
    "padded_learn_g_fixed": Variant(
        DEFAULT, False, padded=True, learn_padding=True, group=GroupConfig("average", "accepted", cut=0.3)
    ),
}


def split_groups(labels: np.ndarray, tune_share: float, seed: int, part: int | None = None) -> np.ndarray:
    """(N,) bool: the postings of the tuning part. ``part=None``: a ``tune_share`` of the groups drawn at
    random. ``part=r``: the r-th of ``round(1 / tune_share)`` equal shares of the groups in a seeded order;
    rotating r over them tunes on every group once and matches every group in the others' galleries, so
    the groups' own difficulty weighs the same on both sides of the comparison."""
    groups = np.unique(labels)
    rng = np.random.default_rng(seed)
    if part is None:
        chosen = rng.choice(groups, size=max(2, round(tune_share * len(groups))), replace=False)
    else:
        chosen = np.array_split(rng.permutation(groups), round(1 / tune_share))[part]
    return np.isin(labels, chosen)


def sample_groups(labels: np.ndarray, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices of whole groups, drawn in random order until about ``n_rows`` rows."""
    groups = rng.permutation(np.unique(labels))
    sizes = pd.Series(labels).value_counts().reindex(groups).to_numpy()
    stop = int(np.searchsorted(np.cumsum(sizes), n_rows)) + 1
    return np.flatnonzero(np.isin(labels, groups[:stop]))


def tuning_galleries(
    cfg: Config, df: pd.DataFrame, fold_of: np.ndarray, oof_text: Mapping[int, np.ndarray] | None
) -> OofGalleries:
    """The out-of-fold galleries of ``df``, as ``folds.gallery`` says (``all``: every fold searched among
    all of ``df``; ``fold``: among its own postings only, none of which its model saw)."""
    search = {"search": cfg.search, "blend_method": cfg.fusion.blend_method}

    def unsupervised(rows: np.ndarray) -> dict[str, Any]:
        return unsupervised_vectors(cfg, df.iloc[rows])

    def learned(fold: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"text": np.asarray(oof_text[fold])[rows]}

    return oof_galleries(
        fold_of,
        cfg.folds.gallery,
        unsupervised,
        learned if oof_text is not None else None,
        search,
        titles=df["title"].to_numpy(),
    )


def tune_variant(
    cfg: Config,
    galleries: OofGalleries,
    labels: np.ndarray,
    fold_of: np.ndarray,
    variant: Variant,
    seed: int,
    cv: bool,
    cache: dict | None = None,
) -> tuple[TuneResult, dict]:
    """Tune one variant; returns the result and its out-of-fold (and cross-validated) figures.

    Args:
        cache: the pairs' tuning by feature groups, shared by the variants that differ only in their
            group rule (tuned after the pairs, on the same candidates).
    """
    setup = variant_setup(cfg, variant, seed)
    cache = {} if cache is None else cache
    key = tuple(variant.groups)
    if key not in cache:
        pairs_only = dataclasses.replace(setup, group=GroupConfig("none"))
        cache[key] = tune(galleries.candidates, labels, fold_of, pairs_only, context=galleries.context)
    result = add_groups(dataclasses.replace(cache[key]), labels, variant.group)
    figures: dict[str, Any] = {"oof": _prf(result.steps["final"])}
    if cv:
        figures["cv"] = _prf(cross_validated(galleries.candidates, labels, fold_of, setup, galleries.context))
    if variant.calibrate:
        result.settings, fit = calibrate_size(
            result, labels, galleries.gallery_size, n_thresholds=cfg.decision.n_thresholds
        )
        figures["size_fit"] = {
            "tuned_size": fit["tuned_size"],
            "slopes": {k: round(v, 4) for k, v in fit["slopes"].items()},
        }
        if "groups" in fit:
            figures["size_fit"]["groups"] = {k: round(fit["groups"][k], 4) for k in ("threshold_slope", "floor_slope")}
    if result.settings.group:
        figures["groups"] = {k: v for k, v in result.settings.group.items() if k not in ("cal_x", "cal_y")}
        figures["ece"] = {k: round(result.steps["groups"][k], 4) for k in ("ece_raw", "ece_calibrated")}
    return result, figures


def variant_setup(cfg: Config, variant: Variant, seed: int) -> TuneSetup:
    """The run's tuning setup with the variant's pair-model features and group rule, on one thread."""
    pair = dataclasses.replace(cfg.pair, features=list(variant.groups))
    return dataclasses.replace(TuneSetup.from_config(cfg), pair=pair, seed=seed, threads=1, group=variant.group)


def match_part(
    cfg: Config, df: pd.DataFrame, result: TuneResult, text: np.ndarray | None, cache: dict | None = None
) -> dict[str, float]:
    """Match ``df`` as one gallery with the tuned rule; F1, precision and recall against its labels.

    Args:
        cache: scored candidates by pair model, settings (but the group rule) and gallery, shared by
            the variants that differ only in their group rule.
    """
    ids = df["posting_id"].to_numpy()
    pairs_only = json.dumps({**result.settings.to_dict(), "group": None}, sort_keys=True)
    key = (id(result.pair_model), uses_pair_model(result.settings), pairs_only, hash(tuple(ids.tolist())))
    cache = {} if cache is None else cache
    if key not in cache:
        vectors = unsupervised_vectors(cfg, df)
        if text is not None:
            vectors["text"] = text
        cache[key] = score_postings(
            vectors,
            ids,
            result.settings,
            cfg.search,
            result.pair_model,
            blend_method=cfg.fusion.blend_method,
            titles=df["title"].to_numpy(),
        )
    c, moved = cache[key]
    sub = build_submission(ids, decide_lists(c, dataclasses.replace(moved, group=result.settings.group), len(ids)))
    pred = [set(s.split()) for s in sub["matches"]]
    truth = true_sets_from_labels(ids, df["label_group"].to_numpy())
    return _prf(f1_from_sets(pred, [truth[i] for i in sub["posting_id"]]))


def _prf(d: Mapping[str, float]) -> dict[str, float]:
    return {k: round(float(d[k]), 4) for k in ("f1", "precision", "recall")}


def _oracles(cfg: Config, df: pd.DataFrame, seed: int, key: str, group: str | None) -> dict[str, dict]:
    """The ceilings at a gallery's size, under result key ``key``: the threshold rule (every feature
    group) tuned on that gallery's own out-of-fold candidates and scored on them, in-sample; with
    ``group``, that group variant's too (under ``group_`` + key), sharing the pairs' tuning."""
    labels = df["label_group"].to_numpy()
    fold_of = make_folds(labels, cfg.folds.n_splits, seed)
    galleries = tuning_galleries(cfg, df, fold_of, None)
    cache: dict = {}
    out = {key: tune_variant(cfg, galleries, labels, fold_of, VARIANTS["pair"], seed, False, cache)[1]["oof"]}
    if group is not None:
        variant = VARIANTS[group]._replace(calibrate=False)  # nothing to move: scored where tuned
        out[f"group_{key}"] = tune_variant(cfg, galleries, labels, fold_of, variant, seed, False, cache)[1]["oof"]
    return out


def padded_tune(
    cfg: Config, a: pd.DataFrame, fold_of: np.ndarray, gallery: pd.DataFrame, variant: Variant, seed: int
) -> TuneResult:
    """Tune on ``a``'s out-of-fold queries searched among ``a`` and ``len(gallery) - len(a)`` of
    ``gallery``'s postings (none when it is not larger), whose labels are never read: each is its own
    group, a distractor, as the tuning part's groups are not the gallery's."""
    n_pad = max(0, len(gallery) - len(a))
    pad = gallery.iloc[np.sort(np.random.default_rng(seed + 7).choice(len(gallery), n_pad, replace=False))]
    both = pd.concat([a, pad.assign(label_group=-1 - np.arange(n_pad))], ignore_index=True)
    labels = both["label_group"].to_numpy()
    folds = np.r_[fold_of, np.full(n_pad, -1)]
    galleries = tuning_galleries(cfg, both, folds, None)
    tuned = np.arange(len(both)) < len(a)
    learn = np.ones(len(both), bool) if variant.learn_padding else None
    return tune(
        galleries.candidates,
        labels,
        folds,
        variant_setup(cfg, variant, seed),
        rows=tuned,
        context=galleries.context,
        learn_rows=learn,
    )


def run_protocol(
    cfg: Config,
    df: pd.DataFrame,
    tune_share: float,
    seed: int,
    repeats: int,
    variants: list[str],
    text: TextVectors | None = None,
    cv: bool = False,
    oracle: bool = False,
    part: int | None = None,
    oracle_group: str | None = None,
    sizes: tuple[float, ...] = SIZES,
) -> dict[str, Any]:
    """Tune each variant on one part, match the other (whole, and at each of ``sizes``)."""
    labels = df["label_group"].to_numpy()
    part_a = split_groups(labels, tune_share, seed, part)
    a, b = df[part_a].reset_index(drop=True), df[~part_a].reset_index(drop=True)
    a_labels = a["label_group"].to_numpy()
    fold_of = make_folds(a_labels, cfg.folds.n_splits, seed)
    if text is not None:
        text.check(a, b)
        fold_of = text.folds  # the folds its fold models were trained on: out-of-fold means those
    galleries = tuning_galleries(cfg, a, fold_of, text.oof if text is not None else None)
    out: dict[str, Any] = {"seed": seed, "part": part, "tune_rows": len(a), "test_rows": len(b), "variants": {}}
    tuned, pairs, scored = {}, {}, {}  # scored: the galleries' candidates, shared as the pairs' tuning is
    for name in variants:
        t0 = time.perf_counter()
        tuned[name], figures = tune_variant(cfg, galleries, a_labels, fold_of, VARIANTS[name], seed, cv, pairs)
        out["variants"][name] = {**figures, "tune_seconds": round(time.perf_counter() - t0, 1)}
    b_text = text.test if text is not None else None

    def match(name: str, result: TuneResult, rows: np.ndarray) -> dict[str, float]:
        if VARIANTS[name].padded and len(rows) > len(a):  # not larger: the plain tuning is the padded one
            result = padded_tune(cfg, a, fold_of, b.iloc[rows], VARIANTS[name], seed)
        gallery = b.iloc[rows].reset_index(drop=True)
        return match_part(cfg, gallery, result, None if b_text is None else b_text[rows], scored)

    for name, result in tuned.items():
        out["variants"][name]["whole"] = {"size": round(len(b) / len(a), 2), **match(name, result, np.arange(len(b)))}
    if oracle and text is None:
        out.update(_oracles(cfg, b, seed, "oracle_whole", oracle_group))
    rng = np.random.default_rng(seed + 1)
    b_labels = b["label_group"].to_numpy()
    for mult in sizes:
        n_rows = int(round(mult * len(a)))
        if n_rows > len(b):
            continue
        draws = [sample_groups(b_labels, n_rows, rng) for _ in range(repeats)]
        if oracle and text is None and mult in (1.0, 2.0):
            out.update(_oracles(cfg, b.iloc[draws[0]].reset_index(drop=True), seed, f"oracle_{mult:g}x", oracle_group))
        for name, result in tuned.items():
            runs = [match(name, result, rows) for rows in draws]
            out["variants"][name].setdefault("sizes", []).append(
                {
                    "size": mult,
                    **{k: round(float(np.mean([r[k] for r in runs])), 4) for k in runs[0]},
                    "f1_std": round(float(np.std([r["f1"] for r in runs])), 4),
                }
            )
    return out


@dataclasses.dataclass
class TextVectors:
    """The title encoder's vectors from a run trained on the tuning part (see the module's doc).

    Attributes:
        oof: fold -> (A, D) the tuning part embedded by that fold's model (the run's OOF galleries).
        test: (B, D) the other part, embedded by the full model or the mean of the fold models.
        train_ids, test_ids: the postings those rows belong to, checked against the split.
    """

    oof: dict[int, np.ndarray]
    test: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    folds: np.ndarray  # (A,) the run's fold of each tuning-part posting

    def check(self, a: pd.DataFrame, b: pd.DataFrame) -> None:
        if not (
            np.array_equal(a["posting_id"].to_numpy(), self.train_ids)
            and np.array_equal(b["posting_id"].to_numpy(), self.test_ids)
        ):
            raise SystemExit("--text-run was trained on another split: use the same --tune-share and seed as `split`")


def load_text(run_dir: Path, test_embed: str) -> TextVectors:
    """The run's OOF text vectors and the test vectors by ``full`` or by the mean of the fold models."""
    from pipeline.runs.folder import open_run

    run = open_run(run_dir)
    train, test = run.train_df(), run.test_df()
    fold_of = run.folds(train)
    folds = np.unique(fold_of)
    train_ids, test_ids = train["posting_id"].to_numpy(), test["posting_id"].to_numpy()
    oof = {int(f): np.asarray(run.embeddings("text", f"oof_fold{f}", train_ids)) for f in folds}
    if test_embed == "full":
        vectors = np.asarray(run.embeddings("text", "test", test_ids))
    else:
        vectors = _fold_mean(run, test, folds, run_dir / "fold_mean_test.npy")
    return TextVectors(oof, vectors, train_ids, test_ids, fold_of)


def _fold_mean(run, test: pd.DataFrame, folds: np.ndarray, cache: Path) -> np.ndarray:
    """The test titles embedded by every fold model, averaged and L2-normalised."""
    total = sum(_fold_embeddings(run, test, folds, cache.parent / "fold_test"))
    return (total / np.linalg.norm(total, axis=1, keepdims=True)).astype(np.float32)


def _fold_embeddings(run, test: pd.DataFrame, folds: np.ndarray, cache_dir: Path) -> list[np.ndarray]:
    """The test titles embedded by each fold model (cached in ``cache_dir``)."""
    from pipeline.data.contract import encoder_inputs
    from pipeline.inference.embedding import embed_items
    from pipeline.models.encoders import load_encoder

    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for f in folds:
        path = cache_dir / f"fold{int(f)}.npy"
        if not path.exists():
            enc = load_encoder(run.model_file("text", int(f)))
            x = embed_items(
                enc, encoder_inputs("text", test, run.data.images_dir("test")), batch_size=64, progress=False
            )
            np.save(path, np.asarray(x, np.float32))
        out.append(np.load(path))
    return out


def write_split(data: Path, tune_share: float, seed: int, out: Path) -> None:
    """A data folder whose train.csv is the tuning part and test.csv the other part (labels apart)."""
    df = read_postings(data, labelled=True)
    part_a = split_groups(df["label_group"].to_numpy(), tune_share, seed)
    out.mkdir(parents=True, exist_ok=True)
    df[part_a].to_csv(out / "train.csv", index=False)
    df[~part_a].drop(columns="label_group").to_csv(out / "test.csv", index=False)
    df[~part_a][["posting_id", "label_group"]].to_csv(out / "test_truth.csv", index=False)
    print(f"{part_a.sum()} tuning rows, {(~part_a).sum()} other rows -> {out}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["split"]:
        p = argparse.ArgumentParser(prog="python -m benchmarks.gallery_size split")
        p.add_argument("--data", type=Path, default=DEV_CSV)
        p.add_argument("--tune-share", type=float, default=1 / 3)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", type=Path, required=True)
        a = p.parse_args(argv[1:])
        write_split(a.data, a.tune_share, a.seed, a.out)
        return 0
    if argv[:1] == ["merge"]:  # the results of several runs (seeds run in parallel, say): one table and plot
        p = argparse.ArgumentParser(prog="python -m benchmarks.gallery_size merge")
        p.add_argument("results", type=Path, nargs="+", help="results.json files")
        p.add_argument("--title", default="")
        p.add_argument("--out", type=Path, required=True)
        a = p.parse_args(argv[1:])
        write_results([r for path in a.results for r in json.loads(path.read_text())], a.out, a.title)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEV_CSV, help="labelled postings CSV")
    parser.add_argument("--modalities", default="tfidf,phash")
    parser.add_argument("--tune-share", type=float, default=0.2, help="share of the groups tuned on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one group split per seed")
    parser.add_argument("--repeats", type=int, default=3, help="sampled sub-galleries per size")
    parser.add_argument(
        "--sizes", type=float, nargs="+", default=list(SIZES), help="sub-gallery sizes, in tuning galleries"
    )
    parser.add_argument(
        "--rotate",
        action="store_true",
        help="per seed, tune on each of the round(1/tune-share) shares of the groups in turn",
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cv", action="store_true", help="also the cross-validated figure of the tuning part")
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="also tune on the first 1x and 2x draws and the whole other part themselves "
        "(in-sample: the ceiling at each size)",
    )
    parser.add_argument(
        "--oracle-group",
        default=None,
        choices=[v for v in VARIANTS if VARIANTS[v].group.rule != "none"],
        help="with --oracle, also the in-sample ceilings of this group variant",
    )
    parser.add_argument("--text-run", type=Path, default=None, help="run trained on the tuning part (see above)")
    parser.add_argument("--test-embed", default="full", choices=["full", "folds"])
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json, table.txt and the plot")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)

    cfg = load_config(None, [f"modalities=[{args.modalities}]", *args.overrides])
    df = read_postings(args.data, labelled=True)
    if ("text" in cfg.modalities) != (args.text_run is not None):
        parser.error("the text modality and --text-run go together")
    text = load_text(args.text_run, args.test_embed) if args.text_run is not None else None
    if text is not None and any(VARIANTS[v].padded for v in args.variants):
        parser.error("padded variants embed the gallery's postings with the tuning part's models: not with --text-run")
    if args.rotate and text is not None:
        parser.error("--rotate trains nothing: the title encoder's run is trained on one split (see above)")
    results = []
    parts = range(round(1 / args.tune_share)) if args.rotate else [None]
    for seed in args.seeds:
        for part in parts:
            results.append(
                run_protocol(
                    cfg,
                    df,
                    args.tune_share,
                    seed,
                    args.repeats,
                    args.variants,
                    text,
                    args.cv,
                    args.oracle,
                    part,
                    args.oracle_group,
                    tuple(args.sizes),
                )
            )
            print(json.dumps(results[-1]), flush=True)
    print(table(results))
    if args.out is not None:
        write_results(
            results,
            args.out,
            f"{args.modalities}: tuned on {args.tune_share:.0%} of the dev groups, "
            f"matched on the others (seeds {args.seeds}, {args.repeats} draws per size)",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
