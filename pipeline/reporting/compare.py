"""``compare``: tuned runs side by side, and the leaderboard scores a user records for them.

One row per run: the cross-validated F1 (the figure to compare by), the F1 tuned and scored on the
same rows, each signal's F1 alone (at its own best threshold, tuned and scored on the same rows:
no cross-validated figure exists per signal), the total stage time, the leaderboard score recorded
with ``compare --lb RUN=SCORE`` (kept in the run folder; flagged when the run was tuned again
after it was recorded), and the config keys whose values differ.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import io
from pipeline.config import ConfigError
from pipeline.matching.predict import ALL_SIGNALS
from pipeline.reporting.report import settings_digest
from pipeline.runs.folder import StageError, log, open_run, run_log


def record_leaderboard(run_dir: str | Path, score: float, note: str = "") -> dict[str, Any]:
    """Append a leaderboard score to the run's leaderboard.json (the latest one is shown by compare)."""
    run = open_run(run_dir)
    if not 0.0 <= score <= 1.0:
        raise ConfigError(f"--lb {run_dir}={score}: a leaderboard F1 lies between 0 and 1")
    path = run.paths.leaderboard
    entries = io.read_json(path)["entries"] if path.exists() else []
    entry = {
        "score": float(score),
        "note": note,
        "recorded": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "submission_settings": run.manifest.get("submission_settings"),
        # The tuning the score belongs to: a later re-tune makes it a score of other settings.
        "tuned_settings": _tuned_digest(run.paths.thresholds),
    }
    io.write_json({"latest": entry["score"], "entries": [*entries, entry]}, path)
    with run_log(run.paths):
        log.info("[compare] leaderboard score %.4f recorded for %s", score, run.paths.root)
    return entry


def compare_runs(runs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run (see the module doc); columns ``f1_cv``, ``f1_same_rows``, ``f1 <signal>``
    (same rows), ``seconds`` (an ensemble's include its members' training), ``lb``, ``lb_stale``
    (the run was tuned again since the score was recorded) and ``config`` (the differing keys as
    ``key=value``)."""
    reports = {}
    for r in runs:
        run = open_run(r)
        if not run.paths.report.exists():
            raise StageError(f"{run.paths.report} missing: run `python -m pipeline tune --run {r}` first")
        reports[str(r)] = io.read_json(run.paths.report)
    differing = differing_keys({name: rep["config"] for name, rep in reports.items()})
    signals = [s for s in ALL_SIGNALS if any(s in rep["per_modality"] for rep in reports.values())]
    rows = []
    for name, rep in reports.items():
        row = {
            "run": name,
            "f1_cv": rep.get("f1_cross_validated", (rep.get("oof_cv") or {}).get("f1")),
            "f1_same_rows": rep["oof_f1"],
        }
        row.update({f"f1 {s}": rep["per_modality"].get(s, {}).get("f1") for s in signals})
        row["seconds"] = int(round(_seconds(rep)))
        entry = ((_leaderboard(name) or {}).get("entries") or [None])[-1]
        row["lb"] = entry["score"] if entry else None
        row["lb_stale"] = bool(entry) and _recorded_under(entry) not in (None, settings_digest(rep["thresholds"]))
        members = "+".join(f"{Path(m['run']).name}*{m['weight']:g}" for m in rep.get("ensemble") or [])
        row["config"] = " ".join(
            ([f"ensemble={members}"] if members else []) + [f"{k}={differing[k][name]}" for k in differing]
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _seconds(report: Mapping[str, Any]) -> float:
    """Every stage's seconds; an ensemble adds its members' preparing, training and embedding."""
    total = sum(report.get("timings", {}).values())
    for member in report.get("ensemble") or []:
        timings = open_run(member["run"]).manifest.get("timings", {})
        total += sum(v for k, v in timings.items() if k.startswith(("prepare", "train", "embed")))
    return total


def _tuned_digest(thresholds: Path) -> str | None:
    return settings_digest(io.read_json(thresholds)["settings"]) if thresholds.exists() else None


def _recorded_under(entry: Mapping[str, Any]) -> str | None:
    """The digest of the tuned settings a leaderboard entry was recorded under (older entries: its submission's)."""
    return entry.get("tuned_settings") or entry.get("submission_settings")


def _leaderboard(run_dir: str) -> dict | None:
    path = open_run(run_dir).paths.leaderboard
    return io.read_json(path) if path.exists() else None


def differing_keys(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Dotted config keys whose values differ between the runs: key -> {run: value}."""
    flat = {name: _flatten(cfg) for name, cfg in configs.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values())))
    out = {}
    for key in keys:
        values = {name: f.get(key, "-") for name, f in flat.items()}
        if len({repr(v) for v in values.values()}) > 1:
            out[key] = {name: _short(v) for name, v in values.items()}
    return out


def format_table(table: pd.DataFrame) -> str:
    """The comparison as fixed-width text, best cross-validated F1 first; blanks where a figure is missing."""
    shown = table.sort_values("f1_cv", ascending=False, na_position="last")
    stale = shown.pop("lb_stale") if "lb_stale" in shown else pd.Series(False, index=shown.index)
    cells = shown.map(
        lambda v: (
            ""
            if v is None or (isinstance(v, float) and pd.isna(v))
            else f"{v:.4f}"
            if isinstance(v, float) and not float(v).is_integer()
            else str(v)
        )
    )
    cells.loc[stale.astype(bool), "lb"] += " (earlier tuning)"
    signals = {c: f"{c.removeprefix('f1 ')} alone (same rows)" for c in cells.columns if c.startswith("f1 ")}
    cells = cells.rename(
        columns={
            **signals,
            "f1_cv": "F1 (cross-validated)",
            "f1_same_rows": "F1 (same rows)",
            "seconds": "time s",
            "lb": "leaderboard",
            "config": "config keys that differ",
        }
    )
    return cells.to_string(index=False, justify="left")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v and k != "weights":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)
