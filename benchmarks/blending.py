"""Neighbourhood blending as the 1st place did it: several rounds, and more than one signal.

Cross-validated F1 (tuned on K-1 folds, scored on the held-out one) of the whole rule with
``fusion.blend_rounds`` = 1 (today: tuning tries one round) against 2 and 3 (tuning tries 1..N
rounds and keeps the best on the tuning folds), and with a second blended signal: besides the
signal tuning blends, each other blendable signal is blended too (``blend_<signal>``), its rounds
and threshold chosen on the tuning folds by its own F1.

    python -m benchmarks.blending --data /work/devdata/train.csv --modalities tfidf,phash
    python -m benchmarks.blending --run RUN   # a run folder (with the title encoder's OOF embeddings)
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
from pipeline.matching.candidates import Candidates, build_candidates
from pipeline.matching.decide import MatchSettings
from pipeline.matching.fusion import BLENDABLE_SIGNALS, gallery_neighbours
from pipeline.matching.oof import OofGalleries
from pipeline.matching.pair_model import PairModelConfig
from pipeline.matching.scoring import Scorer, threshold_grid
from pipeline.matching.tuning import TuneSetup, cross_validated, held_out_score


def second_blends(
    galleries: OofGalleries, labels: np.ndarray, rows: np.ndarray, first: str, max_rounds: int, n_thresholds: int = 41
) -> dict[str, MatchSettings]:
    """Per other blendable signal, the blending (rounds, threshold) with the best F1 of its blend
    alone on ``rows``' queries, tried around the signal's own best threshold."""
    base = galleries.candidates(MatchSettings()).subset(rows)
    scorer = Scorer(base, labels, rows)
    out = {}
    for name in BLENDABLE_SIGNALS:
        if name == first or name not in base.sims:
            continue
        t0, _ = scorer.curve(name, threshold_grid(base.sims[name], n_thresholds)).best
        best = None
        for rounds in range(1, max_rounds + 1):
            for dt in (-0.15, -0.1, -0.05, 0.0):
                s = MatchSettings(blend_signal=name, blend_rounds=rounds, blend_threshold=float(t0 + dt))
                c = galleries.candidates(s).subset(rows)
                _, f1 = Scorer(c, labels, rows).curve("blend", threshold_grid(c.sims["blend"], n_thresholds)).best
                if best is None or f1 > best[0]:
                    best = (f1, s)
        out[name] = best[1]
    return out


def with_second_blends(galleries: OofGalleries, extra: dict[str, MatchSettings]):
    """A build function whose candidates also carry ``blend_<signal>`` for each extra blending."""

    def build(settings: MatchSettings) -> Candidates:
        parts = []
        for g, cache in zip(galleries.galleries, galleries.caches):
            nb = dict(gallery_neighbours(g, settings, cache=cache, **galleries.search))
            for name, s in extra.items():
                nb[f"blend_{name}"] = gallery_neighbours(g, s, cache=cache, **galleries.search)["blend"]
            parts.append(build_candidates(g, nb, galleries.n))
        return Candidates.concat(parts)

    return build


def cv_second_blend(galleries: OofGalleries, labels: np.ndarray, folds: np.ndarray, setup: TuneSetup) -> dict:
    """Cross-validated F1 with second blends chosen inside each tuning split."""
    totals = {"f1": 0.0, "precision": 0.0, "recall": 0.0}
    per_fold, chosen = [], []
    first = _first_blend(galleries, labels, setup.decision.n_thresholds)
    for fold in np.unique(folds):
        held = folds == fold
        extra = second_blends(galleries, labels, ~held, first, setup.fusion.blend_rounds)
        chosen.append({k: (v.blend_rounds, round(v.blend_threshold, 3)) for k, v in extra.items()})
        one = held_out_score(with_second_blends(galleries, extra), labels, folds, int(fold), setup, galleries.context)
        per_fold.append(round(one["f1"], 4))
        for key in totals:
            totals[key] += one[key] * one["rows"]
    n = len(labels)
    return {**{k: v / n for k, v in totals.items()}, "per_fold_f1": per_fold, "second_blends": chosen}


def _first_blend(galleries: OofGalleries, labels: np.ndarray, n_thresholds: int) -> str:
    c = galleries.candidates(MatchSettings())
    scorer = Scorer(c, labels)
    names = [s for s in BLENDABLE_SIGNALS if s in c.sims]
    return max(names, key=lambda s: scorer.curve(s, threshold_grid(c.sims[s], n_thresholds)).best[1])


def with_rounds(setup: TuneSetup, rounds: int) -> TuneSetup:
    return dataclasses.replace(setup, fusion=dataclasses.replace(setup.fusion, blend_rounds=rounds))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.pair_features import galleries_from_csv, galleries_from_run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEV_CSV)
    parser.add_argument("--modalities", default="tfidf,phash")
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--second", action="store_true", help="also blend a second signal (at the largest rounds)")
    parser.add_argument("--pair-model", action="store_true", help="keep the pair model (sims features) in the rule")
    args = parser.parse_args(argv)

    if args.run is not None:
        galleries, labels, folds, setup = galleries_from_run(args.run)
    else:
        galleries, labels, folds, setup = galleries_from_csv(args.data, args.modalities, [])
    setup = dataclasses.replace(setup, pair=PairModelConfig(enabled=args.pair_model, features=["sims"]))
    for rounds in args.rounds:
        t0 = time.perf_counter()
        cv = cross_validated(galleries.candidates, labels, folds, with_rounds(setup, rounds), galleries.context)
        print(
            json.dumps(
                {
                    "blend_rounds": rounds,
                    "f1": round(cv["f1"], 4),
                    "precision": round(cv["precision"], 4),
                    "recall": round(cv["recall"], 4),
                    "per_fold_f1": cv["per_fold_f1"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            ),
            flush=True,
        )
    if args.second:
        t0 = time.perf_counter()
        cv = cv_second_blend(galleries, labels, folds, with_rounds(setup, max(args.rounds)))
        print(
            json.dumps(
                {
                    "blend_rounds": max(args.rounds),
                    "second_blend": True,
                    "f1": round(cv["f1"], 4),
                    "per_fold_f1": cv["per_fold_f1"],
                    "chosen": cv["second_blends"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
