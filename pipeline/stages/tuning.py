"""``tune``: thresholds, fusion, blending, the pair model and min-2, on out-of-fold candidates only.

``tune --run R search.k=30 ...`` re-tunes with overrides of the sections it computes from (search,
fusion, decision, pair, tfidf, phash); they are stored in the run's config.yaml once the tuning
succeeds, so ``predict`` and ``package`` apply what was tuned.
A submission made with the earlier settings is removed, never left looking current.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import Config, ConfigError, dump_config, load_config, new_key
from pipeline.matching.decide import MatchSettings
from pipeline.matching.predict import uses_pair_model
from pipeline.matching.scoring import Scorer, threshold_grid
from pipeline.matching.size_calibration import calibrate_size
from pipeline.matching.tuning import TuneSetup, cross_validated, tune
from pipeline.reporting.analysis import in_sample_by_group_size, rule_contributions, write_figures
from pipeline.reporting.plots import plot_threshold_f1
from pipeline.reporting.report import settings_digest, write_report
from pipeline.runs.folder import Run, log, open_run, stage

# What a re-tune may change: everything it computes from the saved embeddings. Other sections
# (folds, encoders, seeds) need new models or embeddings, so a new run.
TUNE_OVERRIDE_SECTIONS = ("search.", "fusion.", "decision.", "pair.", "group.", "tfidf.", "phash.")


def tune_stage(run_dir: str | Path, progress: bool = True, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Tune thresholds and fusion on out-of-fold candidates; write thresholds.json, tune.json, the figures.

    Args:
        overrides: ``section.key=value`` for the sections of :data:`TUNE_OVERRIDE_SECTIONS` (and
            ``modalities``, to drop signals or add unsupervised ones); stored in config.yaml when the
            tuning succeeds.
    """
    run = open_run(run_dir)
    if overrides:
        run = dataclasses.replace(run, cfg=_overridden(run, overrides), read_cfg=run.cfg)
    cfg = run.cfg
    df = run.train_df()
    fold_of = run.folds(df)
    labels = df["label_group"].to_numpy()
    setup = TuneSetup.from_config(cfg)
    with stage(run, "tune"):
        galleries = run.oof_galleries(df, fold_of)
        build, context = galleries.candidates, galleries.context
        result = tune(build, labels, fold_of, setup, context=context)
        report: dict[str, Any] = {"gallery": cfg.folds.gallery, "final": result.steps["final"], "steps": result.steps}
        if cfg.decision.size_calibration:
            result.settings, report["size_calibration"] = calibrate_size(
                result, labels, galleries.gallery_size, n_thresholds=cfg.decision.n_thresholds
            )
            log.info(
                "[tune] per doubling of the gallery, thresholds move by %s",
                ", ".join(f"{k} {v:+.4f}" for k, v in result.settings.size_slopes.items()),
            )
        log.info("[tune] out-of-fold F1 %.4f (%s)", result.steps["final"]["f1"], _summary(result.steps))
        if cfg.decision.cv_estimate:
            report["final_cv"] = cross_validated(build, labels, fold_of, setup, context)
            log.info("[tune] cross-validated F1 (tuned on other folds) %.4f", report["final_cv"]["f1"])
        if cfg.baseline_untrained and cfg.learned:
            report["untrained"] = _untrained_scores(run, df, fold_of, labels)
        c = result.candidates
        report["contributions"] = rule_contributions(c, labels, result.settings)
        report["by_group_size"] = {
            "in_sample": in_sample_by_group_size(c, labels, result.settings),
            "cross_validated": report.get("final_cv", {}).get("by_group_size"),
        }
        report["overrides"] = list(overrides)
        _write_tuning(run, result, report)
        write_figures(
            run,
            c,
            df,
            result.settings,
            report["by_group_size"]["cross_validated"] or report["by_group_size"]["in_sample"],
        )
    write_report(run.paths.root)  # so that report.json never shows an earlier tuning
    return report


def _write_tuning(run: Run, result, report: dict[str, Any]) -> None:
    """thresholds.json, tune.json, the pair model, the threshold plot and (with overrides) config.yaml;
    a submission made under other settings goes."""
    old = io.read_json(run.paths.thresholds)["settings"] if run.paths.thresholds.exists() else None
    run.paths.pair_model.unlink(missing_ok=True)
    if uses_pair_model(result.settings):
        result.pair_model.save(run.paths.pair_model)
    io.write_json({"settings": result.settings.to_dict(), "oof_f1": result.steps["final"]["f1"]}, run.paths.thresholds)
    new = io.read_json(run.paths.thresholds)["settings"]  # as predict and the report will read them
    io.write_json(report, run.paths.tune_report)
    if report["overrides"]:
        io.write_text(dump_config(run.cfg), run.paths.config)
        log.info("[tune] config.yaml updated with %s", " ".join(report["overrides"]))
    io.save_figure(plot_threshold_f1(result.curves, dict(result.settings.thresholds)), run.paths.threshold_plot)
    made_with = run.manifest.get("submission_settings")
    stale = made_with != settings_digest(new) if made_with else old is not None and old != new
    if run.paths.submission.exists() and stale:
        run.paths.submission.unlink()
        log.info(
            "[tune] removed %s: it was made with the earlier settings; run `python -m pipeline predict "
            "--run %s` for one that matches this tuning",
            run.paths.submission,
            run.paths.root,
        )


def _overridden(run: Run, overrides: Sequence[str]) -> Config:
    """The run's config with tune overrides applied; refuses keys that would need new models or embeddings."""
    keys = [new_key(o.partition("=")[0].strip()) for o in overrides]
    bad = [
        o
        for o, key in zip(overrides, keys)
        if not key.startswith(TUNE_OVERRIDE_SECTIONS) and key not in ("modalities", "threads")
    ]
    if bad:
        sections = ", ".join(f"{s}*" for s in TUNE_OVERRIDE_SECTIONS)
        raise ConfigError(
            f"tune takes overrides of {sections} (and modalities, threads), not {bad}: those change the models "
            f"or embeddings; prepare a new run with them instead"
        )
    cfg = load_config(run.paths.config, overrides)
    new_learned = sorted(set(cfg.learned) - set(run.cfg.learned))
    if new_learned:
        raise ConfigError(
            f"modalities: {new_learned} has no trained encoder in {run.paths.root}; "
            "tune can add or drop tfidf and phash, and drop learned modalities"
        )
    return cfg


def _summary(steps: dict[str, dict]) -> str:
    return ", ".join(
        f"{k} {v['f1']:.3f}" + (" (not kept)" if v.get("kept") is False else "")
        for k, v in steps.items()
        if k != "final" and "f1" in v
    )


def _untrained_scores(run: Run, df: pd.DataFrame, fold_of: np.ndarray, labels: np.ndarray) -> dict[str, dict]:
    """Each learned signal alone, tuned, with the untrained encoders' embeddings."""
    c = run.oof_galleries(df, fold_of, variant="untrained").candidates(MatchSettings())
    scorer = Scorer(c, labels)
    out = {}
    for m in run.cfg.learned:
        t, f1 = scorer.curve(m, threshold_grid(c.sims[m], run.cfg.decision.n_thresholds)).best
        out[m] = {"f1": f1, "threshold": t}
    return out
