"""Error analysis of a tuned run: every out-of-fold candidate pair, why it was decided, the hardest
mistakes, what each part of the rule adds, and the figures the tune stage writes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import io
from pipeline.matching.candidates import Candidates
from pipeline.matching.decide import MatchSettings, Min2, decide, union_mask
from pipeline.matching.pair_model import PAIR_SIGNAL, cross_fit
from pipeline.matching.predict import ALL_SIGNALS, load_pair_model, uses_pair_model
from pipeline.matching.scoring import Scorer
from pipeline.metric import f1_by_group_size, f1_from_pairs
from pipeline.reporting.plots import plot_f1_by_group_size, plot_pairs, plot_training_logs
from pipeline.reporting.report import training_logs
from pipeline.runs.folder import Run, log, open_run


def oof_pairs(run_dir: str | Path) -> pd.DataFrame:
    """Every out-of-fold candidate pair under the tuned settings, for error analysis.

    Recomputes the candidates (and the cross-fitted pair scores) from the run's files; the tune
    stage itself uses :func:`pairs_frame` on the candidates it already holds. Columns: see
    :func:`pairs_frame`.
    """
    run = open_run(run_dir)
    settings = run.tuned_settings()
    df = run.train_df()
    fold_of = run.folds(df)
    galleries = run.oof_galleries(df, fold_of)
    c = galleries.candidates(settings)
    labels = df["label_group"].to_numpy()
    if uses_pair_model(settings):
        saved = load_pair_model(run.paths.pair_model, settings, run.cfg.threads)
        c.sims[PAIR_SIGNAL], _, _ = cross_fit(
            c,
            labels,
            fold_of,
            saved.signals,
            galleries.context(settings),
            run.cfg.seed,
            saved.groups,
            run.cfg.threads,
            trees=saved.trees,
        )
    return pairs_frame(c, df, settings)


def decision_margins(c: Candidates, settings: MatchSettings) -> tuple[np.ndarray, np.ndarray]:
    """(P,) margin of each pair on the score that decided it, and (P,) the name of that score.

    A pair's margin is its similarity minus the threshold, on the signal of the union that it
    passes by most (or, for a pair that passes none, misses by least): each signal is measured
    against its own threshold, never against another signal's scale. A pair that min-2 added is
    measured against the min-2 floor (``min2:<signal>``). Positive margins are matches.
    """
    margin = np.full(len(c), -np.inf)
    by = np.full(len(c), "none", dtype=object)
    for name, t in settings.thresholds.items():
        if name in c.sims:
            m = c.sims[name].astype(np.float64) - t
            better = m > margin
            margin[better], by[better] = m[better], name
    if settings.min2_on and settings.min2_signal in c.sims:
        added = Min2(c, settings.min2_signal).pairs(union_mask(c, settings.thresholds), settings.min2_floor)
        margin[added] = c.sims[settings.min2_signal][added] - settings.min2_floor
        by[added] = f"min2:{settings.min2_signal}"
    return margin, by


def pairs_frame(c: Candidates, df: pd.DataFrame, settings: MatchSettings) -> pd.DataFrame:
    """The candidate pairs as a table: query and match ids, titles, images and label groups,
    ``same`` (a true match), ``predicted``, ``margin`` and ``decided_by`` (see
    :func:`decision_margins`) and one similarity column per signal (-inf where it did not list the pair)."""
    margin, by = decision_margins(c, settings)
    out = pd.DataFrame(
        {
            "same": df["label_group"].to_numpy()[c.query] == df["label_group"].to_numpy()[c.match],
            "predicted": decide(c, settings),
            "margin": margin,
            "decided_by": by,
        }
    )
    for side, idx in (("query", c.query), ("match", c.match)):
        for col, src in (("id", "posting_id"), ("title", "title"), ("image", "image"), ("group", "label_group")):
            out[f"{side}_{col}"] = df[src].to_numpy()[idx]
    for name, sims in c.sims.items():
        out[name] = sims
    return out


def hardest_errors(pairs: pd.DataFrame, n: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(false positives, false negatives), most confident first, one row per pair.

    Both are ranked by the margin of the score the decision used (:func:`decision_margins`): the
    false positives that passed a threshold by most, and the true matches that missed one by least.
    """
    fp = pairs[pairs["predicted"] & ~pairs["same"]].sort_values("margin", ascending=False)
    fn = pairs[~pairs["predicted"] & pairs["same"]].sort_values("margin", ascending=False)

    # Each pair appears from both ends; keep one.
    def one_end(d: pd.DataFrame) -> pd.DataFrame:
        return d[d["query_id"] < d["match_id"]]

    return one_end(fp).head(n), one_end(fn).head(n)


def rule_contributions(c: Candidates, labels: np.ndarray, settings: MatchSettings) -> dict[str, dict[str, Any]]:
    """What each part of the tuned rule adds: the F1 of the whole rule, and without each threshold or min-2.

    Returns:
        ``{"rule": {"f1": ..}, "without <signal>": {"f1": .., "adds": ..}, "without min2": ...,
        "min2": {"alone_after_union": .., "given_a_match": ..}}`` (``adds`` is the rule's F1 minus
        the F1 without that part; in-sample, on the tuned rows).
    """
    scorer = Scorer(c, labels)
    full = scorer.f1(decide(c, settings))
    out: dict[str, dict[str, Any]] = {"rule": {"f1": full}}
    for name in settings.thresholds:
        rest = dataclasses.replace(settings, thresholds={k: v for k, v in settings.thresholds.items() if k != name})
        f1 = scorer.f1(decide(c, rest))
        out[f"without {name}"] = {"f1": f1, "adds": full - f1}
    if settings.min2_on:
        f1 = scorer.f1(decide(c, dataclasses.replace(settings, min2_floor=math.inf)))
        out["without min2"] = {"f1": f1, "adds": full - f1}
        _, sim = Min2(c, settings.min2_signal).lonely(union_mask(c, settings.thresholds))
        out["min2"] = {"alone_after_union": int(len(sim)), "given_a_match": int((sim >= settings.min2_floor).sum())}
    return out


def in_sample_by_group_size(c: Candidates, labels: np.ndarray, settings: MatchSettings) -> dict[str, dict]:
    """F1 by true group size of the tuned rule on the rows it was tuned on."""
    scorer = Scorer(c, labels)
    mask = decide(c, settings)
    per_posting = f1_from_pairs(c.query[mask], scorer.same[mask], scorer.group_size, per_posting=True)
    return f1_by_group_size(np.asarray(per_posting, dtype=np.float64), scorer.group_size)


def _error_candidates(c: Candidates, labels: np.ndarray, settings: MatchSettings, n: int) -> np.ndarray:
    """Indices of the ``n`` most confident false positives and ``n`` nearest false negatives (both ends of a pair)."""
    margin, _ = decision_margins(c, settings)
    predicted, same = decide(c, settings), labels[c.query] == labels[c.match]
    out = []
    for rows in (np.flatnonzero(predicted & ~same), np.flatnonzero(~predicted & same)):
        out.append(rows[np.argsort(-margin[rows], kind="stable")[: 2 * n]])
    return np.concatenate(out)


def write_figures(
    run: Run,
    c: Candidates | None,
    df: pd.DataFrame,
    settings: MatchSettings,
    by_group_size: dict[str, dict] | None,
    n_errors: int = 6,
) -> list[Path]:
    """The tune stage's figures beside threshold_f1.png: training curves, F1 by group size, and
    the galleries of the hardest false positives and false negatives (with images when the run reads them)."""
    written = []
    logs = training_logs(run.paths.root)
    if logs:
        written.append(io.save_figure(plot_training_logs(logs), run.paths.plot("training")))
    if by_group_size:
        written.append(io.save_figure(plot_f1_by_group_size(by_group_size), run.paths.plot("f1_by_group_size")))
    if c is not None:
        images = run.data.images_dir("train") if run.cfg.needs_images else None
        signals = [s for s in ALL_SIGNALS if s in c.sims]
        # Only the pairs worth drawing become a table: the candidates can number millions.
        keep = _error_candidates(c, df["label_group"].to_numpy(), settings, 4 * n_errors)
        pairs = pairs_frame(c.take(keep), df, settings)
        pairs["predicted"] = decide(c, settings)[keep]  # decided among all the query's pairs (min-2)
        pairs["margin"], pairs["decided_by"] = (a[keep] for a in decision_margins(c, settings))
        for name, errors in zip(("false_positives", "false_negatives"), hardest_errors(pairs, n_errors)):
            path = run.paths.plot(name)
            path.unlink(missing_ok=True)  # an earlier tuning's gallery must not stay beside this one's
            if len(errors):
                title = f"hardest {name.replace('_', ' ')} (out-of-fold), ranked by the deciding margin"
                written.append(io.save_figure(plot_pairs(errors, images, title, signals), path))
    log.info("[tune] figures: %s", ", ".join(p.name for p in written))
    return written
