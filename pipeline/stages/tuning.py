"""``tune``: thresholds, fusion, blending, the pair model and min-2, on out-of-fold candidates only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.matching.decide import MatchSettings
from pipeline.matching.pairs import threads_of
from pipeline.matching.predict import uses_pair_model
from pipeline.matching.tuning import Scorer, calibrate_size, cross_validated, threshold_grid, tune
from pipeline.plots import plot_threshold_f1
from pipeline.stages.report import write_report
from pipeline.stages.context import Run, log, open_run, stage


def tune_stage(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Tune thresholds and fusion on out-of-fold candidates; write thresholds.json, tune.json, the plot."""
    run = open_run(run_dir)
    cfg = run.cfg
    df = run.train_df()
    fold_of = run.folds(df)
    labels = df["label_group"].to_numpy()
    kwargs = dict(
        n_thresholds=cfg.match.n_thresholds, blend_rounds=cfg.match.blend_rounds, union=cfg.match.union,
        min2=cfg.match.min2, fusion_weights=cfg.match.fusion_weights or None,
        pair_model=cfg.match.pair_model, seed=cfg.seed, threads=threads_of(cfg), pair_groups=cfg.match.pair_features,
    )
    with stage(run, "tune"):
        galleries = run.oof_galleries(df, fold_of)
        build = galleries.candidates
        kwargs["context"] = galleries.context
        result = tune(build, labels, folds=fold_of, **kwargs)
        report: dict[str, Any] = {"gallery": cfg.folds.gallery, "final": result.steps["final"], "steps": result.steps}
        if cfg.match.size_calibration:
            result.settings, report["size_calibration"] = calibrate_size(result, labels, galleries.gallery_size,
                                                                         n_thresholds=cfg.match.n_thresholds)
            log.info("[tune] per doubling of the gallery, thresholds move by %s",
                     ", ".join(f"{k} {v:+.4f}" for k, v in result.settings.size_slopes.items()))
        log.info("[tune] out-of-fold F1 %.4f (%s)", result.steps["final"]["f1"], _summary(result.steps))
        if cfg.match.cv_estimate:
            report["final_cv"] = cross_validated(build, labels, fold_of, **kwargs)
            log.info("[tune] cross-validated F1 (tuned on other folds) %.4f", report["final_cv"]["f1"])
        if cfg.baseline_untrained and cfg.learned:
            report["untrained"] = _untrained_scores(run, df, fold_of, labels)
        run.paths.pair_model.unlink(missing_ok=True)
        if uses_pair_model(result.settings):
            result.pair_model.save(run.paths.pair_model)
        io.write_json({"settings": result.settings.to_dict(), "oof_f1": result.steps["final"]["f1"]},
                      run.paths.thresholds)
        io.write_json(report, run.paths.tune_report)
        plot_threshold_f1(result.curves, dict(result.settings.thresholds), run.paths.plots / "threshold_f1.png")
    write_report(run.paths.root)  # so that report.json never shows an earlier tuning
    return report


def _summary(steps: dict[str, dict]) -> str:
    return ", ".join(f"{k} {v['f1']:.3f}" for k, v in steps.items() if k != "final" and "f1" in v)


def _untrained_scores(run: Run, df: pd.DataFrame, fold_of: np.ndarray, labels: np.ndarray) -> dict[str, dict]:
    """Each learned signal alone, tuned, with the untrained encoders' embeddings."""
    c = run.oof_galleries(df, fold_of, variant="untrained").candidates(MatchSettings())
    scorer = Scorer(c, labels)
    out = {}
    for m in run.cfg.learned:
        t, f1 = scorer.curve(m, threshold_grid(c.sims[m], run.cfg.match.n_thresholds)).best
        out[m] = {"f1": f1, "threshold": t}
    return out
