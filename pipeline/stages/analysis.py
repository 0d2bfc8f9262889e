"""Error analysis of a tuned run: every out-of-fold candidate pair, and the hardest mistakes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.matching.decide import decide
from pipeline.matching.pairs import PAIR_SIGNAL, cross_fit, threads_of
from pipeline.matching.predict import ALL_SIGNALS, load_pair_model, uses_pair_model
from pipeline.stages.context import open_run


def oof_pairs(run_dir: str | Path) -> pd.DataFrame:
    """Every out-of-fold candidate pair under the tuned settings, for error analysis.

    Columns: query and match posting ids, titles and images, ``same`` (true match), ``predicted``,
    and one similarity column per signal (-inf where that signal did not list the pair).
    """
    run = open_run(run_dir)
    settings = run.tuned_settings()
    df = run.train_df()
    fold_of = run.folds(df)
    galleries = run.oof_galleries(df, fold_of)
    c = galleries.candidates(settings)
    labels = df["label_group"].to_numpy()
    if uses_pair_model(settings):
        saved = load_pair_model(run.paths.pair_model, settings, threads_of(run.cfg))
        c.sims[PAIR_SIGNAL], _, _ = cross_fit(c, labels, fold_of, saved.signals, galleries.context(settings),
                                              run.cfg.seed, saved.groups, threads_of(run.cfg))
    out = pd.DataFrame({
        "query_id": df["posting_id"].to_numpy()[c.query],
        "match_id": df["posting_id"].to_numpy()[c.match],
        "query_title": df["title"].to_numpy()[c.query],
        "match_title": df["title"].to_numpy()[c.match],
        "query_image": df["image"].to_numpy()[c.query],
        "match_image": df["image"].to_numpy()[c.match],
        "same": labels[c.query] == labels[c.match],
        "predicted": decide(c, settings),
    })
    for name, sims in c.sims.items():
        out[name] = sims
    return out


def hardest_errors(pairs: pd.DataFrame, n: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(false positives with the highest similarity, false negatives with the highest similarity).

    The score used to rank is the best similarity over the signals, so the rows shown are the
    confident mistakes and the near misses.
    """
    signal_cols = [c for c in pairs.columns if c in ALL_SIGNALS]
    score = pairs[signal_cols].max(axis=1)
    fp = pairs[pairs["predicted"] & ~pairs["same"]].assign(score=score).sort_values("score", ascending=False)
    fn = pairs[~pairs["predicted"] & pairs["same"]].assign(score=score).sort_values("score", ascending=False)
    # Each pair appears from both ends; keep one.
    dedup = lambda d: d[d["query_id"] < d["match_id"]]  # noqa: E731
    return dedup(fp).head(n), dedup(fn).head(n)
