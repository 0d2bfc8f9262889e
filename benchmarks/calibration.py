"""Reliability of the pair model's probability, raw and calibrated, on the dev titles.

Two checks, one figure (two panels) and one JSON:

1. Out-of-fold, all dev rows: the tune stage's cross-fitted pair scores (5 GroupKFold folds, each
   fold searched among all postings). The isotonic map is itself cross-fitted: fold f's pairs are
   calibrated by the map fitted on the other folds' pairs, so the calibrated diagram is honest.
2. Unseen galleries twice the tuning size (the rotated gallery-size protocol): the pair model and
   the isotonic map fitted on a third of the groups, scored on the other two thirds; raw, calibrated,
   and calibrated then shifted to the gallery's size (prior odds divided by r = its size over the
   tuning gallery's).

    python -m benchmarks.calibration --seeds 2 3 --out docs/calibration threads=1 search.threads=1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks import DEV_CSV
from benchmarks.gallery_size import VARIANTS, split_groups, tune_variant, tuning_galleries
from pipeline.config import Config, load_config
from pipeline.data.contract import read_postings
from pipeline.data.folds import make_folds
from pipeline.matching.calibration import ece, fit_isotonic, reliability, size_shift
from pipeline.matching.pair_model import PAIR_SIGNAL
from pipeline.matching.predict import score_postings
from pipeline.matching.signals import unsupervised_vectors


def out_of_fold(cfg: Config, df) -> dict[str, np.ndarray]:
    """Cross-fitted pair scores of all rows, and the same calibrated by maps that never saw their fold."""
    labels = df["label_group"].to_numpy()
    folds = make_folds(labels, cfg.folds.n_splits, cfg.seed)
    galleries = tuning_galleries(cfg, df, folds, None)
    result, _ = tune_variant(cfg, galleries, labels, folds, VARIANTS["pair"], cfg.seed, False)
    c = result.candidates
    score, same, fold = c.sims[PAIR_SIGNAL].astype(np.float64), labels[c.query] == labels[c.match], folds[c.query]
    calibrated = np.empty_like(score)
    for f in np.unique(fold):
        calibrated[fold == f] = fit_isotonic(score[fold != f], same[fold != f])(score[fold == f])
    return {"same": same, "raw": score, "calibrated": calibrated}


def unseen(cfg: Config, df, seeds: list[int]) -> dict[str, np.ndarray]:
    """Pair scores of the other two thirds' gallery under the model tuned on one third, every split."""
    labels = df["label_group"].to_numpy()
    parts: dict[str, list] = {"same": [], "raw": [], "calibrated": [], "shifted": []}
    for seed in seeds:
        for part in range(3):
            in_a = split_groups(labels, 1 / 3, seed, part)
            a, b = df[in_a].reset_index(drop=True), df[~in_a].reset_index(drop=True)
            al, bl = a["label_group"].to_numpy(), b["label_group"].to_numpy()
            fold_of = make_folds(al, cfg.folds.n_splits, seed)
            galleries = tuning_galleries(cfg, a, fold_of, None)
            result, _ = tune_variant(cfg, galleries, al, fold_of, VARIANTS["after"], seed, False)
            tc = result.candidates
            iso = fit_isotonic(tc.sims[PAIR_SIGNAL], al[tc.query] == al[tc.match])
            ids = b["posting_id"].to_numpy()
            c, _ = score_postings(
                unsupervised_vectors(cfg, b),
                ids,
                result.settings,
                cfg.search,
                result.pair_model,
                blend_method=cfg.fusion.blend_method,
                titles=b["title"].to_numpy(),
            )
            raw = c.sims[PAIR_SIGNAL].astype(np.float64)
            parts["same"].append(bl[c.query] == bl[c.match])
            parts["raw"].append(raw)
            parts["calibrated"].append(iso(raw))
            parts["shifted"].append(size_shift(iso(raw), len(b) / galleries.gallery_size))
            print(f"seed {seed} part {part}: {len(c)} pairs", file=sys.stderr, flush=True)
    return {k: np.concatenate(v) for k, v in parts.items()}


def summary(scores: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per score: ECE over every pair and over the pairs of probability 0.05 and above (the
    uncertain ones; most candidate pairs sit at 0), and the reliability bins."""
    same, out = scores["same"], {}
    for name, p in scores.items():
        if name == "same":
            continue
        some = p >= 0.05
        r = reliability(p, same)
        out[name] = {
            "ece": round(ece(p, same), 5),
            "ece_above_0.05": round(ece(p[some], same[some]), 4),
            "pairs": int(len(p)),
            "pairs_above_0.05": int(some.sum()),
            "bins": {k: np.round(v, 4).tolist() for k, v in r.items()},
        }
    return out


def plot(results: dict[str, dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    from pipeline.io import save_figure

    fig = Figure(figsize=(10, 4.6), layout="constrained")
    axes = fig.subplots(1, len(results))
    for ax, (title, scores) in zip(np.atleast_1d(axes), results.items()):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
        for name, s in scores.items():
            b = s["bins"]
            seen = np.array(b["count"]) > 0
            ax.plot(
                np.array(b["mean_prob"])[seen],
                np.array(b["match_share"])[seen],
                marker="o",
                label=f"{name}: ECE {s['ece']:.4f} ({s['ece_above_0.05']:.3f} above 0.05)",
            )
        ax.set_xlabel("mean predicted probability (bins of 0.1)")
        ax.set_ylabel("share of true matches")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    save_figure(fig, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEV_CSV)
    parser.add_argument("--modalities", default="tfidf,phash")
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[2], help="split seeds of the unseen check (none: skip)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    cfg = load_config(None, [f"modalities=[{args.modalities}]", *args.overrides])
    df = read_postings(args.data, labelled=True)
    results = {
        f"out-of-fold pairs, all {len(df)} dev rows (isotonic cross-fitted by fold)": summary(out_of_fold(cfg, df))
    }
    if args.seeds:
        title = f"unseen 2x galleries, {3 * len(args.seeds)} rotated splits (seeds {args.seeds})"
        results[title] = summary(unseen(cfg, df, args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(results, indent=1))
    for title, scores in results.items():
        print(title)
        for name, s in scores.items():
            above = f"{s['ece_above_0.05']:.4f} ({s['pairs_above_0.05']} pairs)"
            print(f"  {name:10} ECE {s['ece']:.5f}   above 0.05: {above}")
    print(f"plot: {plot(results, args.out / 'reliability.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
