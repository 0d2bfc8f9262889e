"""``tune``: thresholds, fusion, blending, the pair model and min-2, on out-of-fold candidates only.

``tune --run R match.k=30 ...`` re-tunes with match or TF-IDF overrides; they are stored in the
run's config.yaml once the tuning succeeds, so ``predict`` and ``package`` apply what was tuned.
A submission made with the earlier settings is removed, never left looking current.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.config import Config, ConfigError, dump_config, load_config
from pipeline.matching.decide import MatchSettings
from pipeline.matching.predict import uses_pair_model
from pipeline.matching.tuning import Scorer, calibrate_size, cross_validated, threshold_grid, tune, tuned_match_rate
from pipeline.plots import plot_threshold_f1
from pipeline.stages.analysis import in_sample_by_group_size, rule_contributions, write_figures
from pipeline.stages.context import Run, log, open_run, stage
from pipeline.stages.report import settings_digest, write_report

# What a re-tune may change: everything it computes from the saved embeddings. Other sections
# (folds, encoders, seeds) need new models or embeddings, so a new run.
TUNE_OVERRIDE_SECTIONS = ("match.", "tfidf.")


def tune_stage(run_dir: str | Path, progress: bool = True, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Tune thresholds and fusion on out-of-fold candidates; write thresholds.json, tune.json, the figures.

    Args:
        overrides: ``section.key=value`` for the ``match`` and ``tfidf`` sections (and
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
    kwargs = dict(
        n_thresholds=cfg.match.n_thresholds, blend_rounds=cfg.match.blend_rounds, union=cfg.match.union,
        min2=cfg.match.min2, fusion_weights=cfg.match.fusion_weights or None,
        pair_model=cfg.match.pair_model, seed=cfg.seed, threads=cfg.threads, pair_groups=cfg.match.pair_features,
        rule_signals=cfg.match.rule_signals,
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
            if cfg.match.transductive:
                result.settings.match_rate = report["size_calibration"]["match_rate"] = tuned_match_rate(result)
        log.info("[tune] out-of-fold F1 %.4f (%s)", result.steps["final"]["f1"], _summary(result.steps))
        if cfg.match.cv_estimate:
            report["final_cv"] = cross_validated(build, labels, fold_of, **kwargs)
            log.info("[tune] cross-validated F1 (tuned on other folds) %.4f", report["final_cv"]["f1"])
        if cfg.baseline_untrained and cfg.learned:
            report["untrained"] = _untrained_scores(run, df, fold_of, labels)
        c = result.candidates
        report["contributions"] = rule_contributions(c, labels, result.settings)
        report["by_group_size"] = {"in_sample": in_sample_by_group_size(c, labels, result.settings),
                                   "cross_validated": report.get("final_cv", {}).get("by_group_size")}
        report["overrides"] = list(overrides)
        _write_tuning(run, result, report)
        write_figures(run, c, df, result.settings,
                      report["by_group_size"]["cross_validated"] or report["by_group_size"]["in_sample"])
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
        log.info("[tune] removed %s: it was made with the earlier settings; run `python -m pipeline predict "
                 "--run %s` for one that matches this tuning", run.paths.submission, run.paths.root)


def _overridden(run: Run, overrides: Sequence[str]) -> Config:
    """The run's config with tune overrides applied; refuses keys that would need new models or embeddings."""
    bad = [o for o in overrides
           if not o.partition("=")[0].strip().startswith(TUNE_OVERRIDE_SECTIONS) and o.partition("=")[0].strip() != "modalities"]
    if bad:
        raise ConfigError(
            f"tune takes overrides of match.* and tfidf.* (and modalities), not {bad}: those change the models "
            f"or embeddings; prepare a new run with them instead"
        )
    cfg = load_config(run.paths.config, overrides)
    new_learned = sorted(set(cfg.learned) - set(run.cfg.learned))
    if new_learned:
        raise ConfigError(f"modalities: {new_learned} has no trained encoder in {run.paths.root}; "
                          "tune can add or drop tfidf and phash, and drop learned modalities")
    return cfg


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
