"""``report.json`` and ``report.md``: the run's figures in one place, led by the cross-validated F1,
with what every signal and step of the rule does, and the training logs behind them."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import io
from pipeline.ensemble.members import read_members
from pipeline.matching.decide import MatchSettings
from pipeline.matching.predict import ALL_SIGNALS
from pipeline.paths import ModelPaths
from pipeline.reporting.text import report_markdown
from pipeline.runs.folder import Run, open_run, stage

CV_MEANING = (
    "cross-validated: for each fold, every setting was tuned on the other folds and scored on this one; "
    "the figure to expect on unseen postings like these"
)
SAME_ROWS_MEANING = "tuned and scored on the same out-of-fold rows: optimistic by the tuning's own fit"
WHY_THRESHOLDS_DIFFER = (
    "Each signal's solo best threshold maximises F1 when that signal decides alone. The applied thresholds "
    "were tuned jointly (coordinate ascent over the F1 of the whole rule): in a union a pair needs only one "
    "signal, so a signal can afford a stricter threshold where others find its matches, and a looser one "
    "where it alone finds them; min-2 then rescues postings left alone."
)


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short digest of tuned match settings; a submission records the one it was made with."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Gather the run's figures into report.json and say them in words in report.md."""
    run = open_run(run_dir)
    run.tuned_settings()
    with stage(run, "report"):
        return _write_report(run)


def _write_report(run: Run) -> dict[str, Any]:
    tune_report = io.read_json(run.paths.tune_report)
    settings = io.read_json(run.paths.thresholds)["settings"]
    cv = tune_report.get("final_cv")
    report = {
        "f1_cross_validated": cv["f1"] if cv else None,
        "f1_cross_validated_means": CV_MEANING if cv else "not computed (decision.cv_estimate=false)",
        "oof_f1": tune_report["final"]["f1"],
        "oof_f1_means": SAME_ROWS_MEANING,
        "oof_cv": cv,
        "oof": tune_report["final"],
        "gallery": tune_report["gallery"],
        "per_modality": {k: v for k, v in tune_report["steps"].items() if k in ALL_SIGNALS},
        "rule": _rule(tune_report, settings),
        "by_group_size": tune_report.get("by_group_size"),
        "steps": _steps(tune_report["steps"], settings),
        "untrained": tune_report.get("untrained"),
        "training": _training_summary(run),
        "thresholds": settings,
        "gallery_size": gallery_size_shift(settings, run.manifest["test_rows"]),
        "timings": run.manifest.get("timings", {}),
        "data": {k: run.manifest[k] for k in ("data_dir", "train_rows", "train_groups", "test_rows")},
        "warnings": run.manifest.get("warnings", []),
        **_submission(run, settings),
        "leaderboard": io.read_json(run.paths.leaderboard) if run.paths.leaderboard.exists() else None,
        "ensemble": [{"run": str(r), "weight": w} for r, w in read_members(run.paths.root)] or None,
        "tune_overrides": tune_report.get("overrides") or None,
        "figures": sorted(p.name for p in run.paths.plots.glob("*.png")),
        "config": run.cfg.to_dict(),
        "code_version": io.code_version(),
    }
    io.write_json(report, run.paths.report)
    io.write_text(report_markdown(report, run.paths.root), run.paths.report_md)
    return report


def gallery_size_shift(settings: dict[str, Any], test_rows: int) -> dict[str, Any] | None:
    """How the thresholds move with the size of the gallery matched, and where they land on this
    run's test.csv; None without size calibration."""
    tuned = MatchSettings.from_dict(settings)
    if tuned.tuned_size <= 0 or not tuned.size_slopes:
        return None
    at_test = tuned.at_size(test_rows)
    return {
        "tuned_size": tuned.tuned_size,
        "per_doubling": dict(tuned.size_slopes),
        "test_rows": test_rows,
        "doublings_at_test": round(tuned.doublings(test_rows), 4),
        "thresholds_at_test": dict(at_test.thresholds),
        "min2_floor_at_test": at_test.min2_floor if tuned.min2_on else None,
    }


def _rule(tune_report: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The tuned rule explained: applied against solo-best thresholds, the union, min-2 in words."""
    steps = tune_report["steps"]
    applied = settings["thresholds"]
    floor, signal = settings.get("min2_floor"), settings.get("min2_signal")
    contributions = tune_report.get("contributions", {})
    return {
        "applied_thresholds": applied,
        "solo_best_thresholds": {k: v["threshold"] for k, v in steps.items() if k in ALL_SIGNALS and "threshold" in v},
        "why_they_differ": WHY_THRESHOLDS_DIFFER,
        "union": {
            "signals": sorted(applied),
            "count": len(applied),
            "in_words": "a pair is a match when any of " + ", ".join(sorted(applied)) + " reaches its threshold",
        },
        "min2": {"signal": signal, "floor": floor, "in_words": min2_in_words(signal, floor, contributions.get("min2"))},
        "contributions": contributions or None,
    }


def min2_in_words(signal: str | None, floor: float | None, counts: Mapping[str, int] | None) -> str:
    """One sentence on what the min-2 floor does."""
    if signal is None or floor is None or (isinstance(floor, float) and math.isinf(floor)):
        return "off: a posting the union leaves alone stays alone"
    text = (
        f"a posting that the union leaves with no match gets its nearest neighbour by {signal} when that "
        f"score is at least {floor:.4g}"
    )
    if counts:
        alone, given = counts["alone_after_union"], counts["given_a_match"]
        share = given / alone if alone else 0.0
        text += f"; on the tuned rows {given} of the {alone} postings left alone got one ({share:.0%})" + (
            ", so in effect every posting gets at least one match" if alone and share > 0.95 else ""
        )
    return text


def _steps(steps: dict[str, dict], settings: dict[str, Any]) -> dict[str, dict]:
    """The tuning steps; the union step's ``signals`` counts the thresholds the final rule applies
    (min-2's second pass of coordinate ascent can drop one the union step still had)."""
    out = {k: dict(v) for k, v in steps.items()}
    if "union" in out:
        out["union"]["thresholds_at_this_step"] = out["union"].get("signals")
        out["union"]["signals"] = len(settings["thresholds"])
    return out


def _submission(run: Run, settings: dict[str, Any]) -> dict[str, Any]:
    """Where the run's submission is, and whether it was made with the current tuning."""
    path = run.paths.submission
    if not path.exists():
        return {
            "submission": None,
            "submission_status": "none: run `python -m pipeline predict --run "
            f"{run.paths.root}` to make one with the current settings",
        }
    made_with = run.manifest.get("submission_settings")
    if made_with is not None and made_with != settings_digest(settings):
        return {
            "submission": None,
            "submission_status": f"stale: {path} was made with earlier settings; "
            f"run `python -m pipeline predict --run {run.paths.root}`",
        }
    return {"submission": str(path), "submission_status": "current: made with these settings"}


def training_logs(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Per-epoch log of every trained model, keyed ``modality/fold0`` ... ``modality/full``."""
    run = open_run(run_dir)
    logs = {}
    for m in run.cfg.learned:
        for model_dir in sorted(run.paths.models(m).glob("*")):
            log_csv = ModelPaths(model_dir).log_csv
            if log_csv.exists():
                logs[f"{m}/{model_dir.name}"] = pd.read_csv(log_csv)
    return logs


def _training_summary(run: Run) -> dict[str, Any]:
    """Each trained model: its last epoch's metrics, with ``seconds`` the total over its epochs."""
    out = {}
    for name, df in training_logs(run.paths.root).items():
        row = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in df.iloc[-1].to_dict().items()}
        if "seconds" in df:
            row["seconds_last_epoch"] = row.pop("seconds")
            row["seconds"] = round(float(df["seconds"].sum()), 2)
        row["epochs"] = len(df)
        out[name] = row
    return out
