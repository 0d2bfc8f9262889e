"""``pipeline bench``: the whole predict path on N random clustered postings, timed per step.

The postings have two dense modalities (image and text, ``dim`` each) and a phash, grouped like
Kaggle's label groups (2 to 50 postings, most of them small). The path is the one ``predict``
runs: a FAISS search per signal, the fused image+text cosine scored on their lists, neighbourhood
blending, the union and min-2 decision, then building, validating and writing the submission. With
``tfidf``, synthetic seller titles add the TF-IDF fit, its sparse search and its blending.

Beside the time and F1 it reports the recall of the neighbour lists against exact search, on a
sample of queries (untimed): the share of the exact pairs above each signal's floor that the lists
hold is what decides whether an approximate index loses F1. It also says what machine it ran on
(:func:`pipeline.machine.machine_facts`: cores, CPU features, BLAS and its threads, the load
average) and which index and TF-IDF search ``auto`` took, with the figures behind the choice.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipeline.config import Config
from pipeline.data.synth import synthetic_titles
from pipeline.data.synth.postings import clustered_postings
from pipeline.machine import load_average, machine_facts
from pipeline.matching.candidates import Gallery, build_candidates
from pipeline.matching.decide import MatchSettings
from pipeline.matching.fusion import DENSE_SIGNALS, FusionConfig, gallery_neighbours
from pipeline.matching.groups import GroupConfig, GroupSettings
from pipeline.matching.neighbours import Neighbours, SearchConfig
from pipeline.matching.pair_features import PairContext
from pipeline.matching.pair_model import PairModel
from pipeline.matching.predict import match_postings, search_floors
from pipeline.matching.recall import recall_queries, search_recall
from pipeline.matching.signals import tfidf_vectors
from pipeline.metric import score_matches, true_sets_from_labels
from pipeline.settings import build
from pipeline.submission import write_submission

# The search settings each result records beside its figures.
SEARCH_KEYS = (
    "nprobe",
    "ef_search",
    "hnsw_fp16",
    "threads",
    "required_recall",
    "reduced_dims",
    "tfidf_search",
    "tfidf_candidates",
    "tfidf_dense_terms",
    "tfidf_rare_floor",
    "expand_rounds",
    "expand_sources",
    "expand_width",
)


def bench_settings(tfidf: bool) -> MatchSettings:
    """The tuned rule the bench applies: thresholds that suit its synthetic postings."""
    settings = MatchSettings(
        thresholds={"concat": 0.55, "blend": 0.6, "phash": 0.85},
        min2_signal="concat",
        min2_floor=0.3,
        blend_signal="concat",
        blend_rounds=1,
        blend_threshold=0.5,
        fusion_weights={"image": 0.5, "text": 0.5},
    )
    if tfidf:
        # The synthetic titles are closer to each other than real ones: a blending threshold of 0.6
        # keeps about 7 neighbours a posting here, against 2 to 3 at the one tuned on the dev titles.
        settings.thresholds.update(tfidf=0.65, blend=0.7)
        settings.blend_signal, settings.blend_threshold = "tfidf", 0.6
    return settings


def run_bench(
    n: int,
    dim: int = 512,
    k: int = 50,
    index: str = "auto",
    seed: int = 0,
    pair: bool = False,
    tfidf: bool = False,
    blend_method: str = "graph",
    recall_sample: int = 1000,
    search_overrides: dict | None = None,
    pair_fit_n: int = 3000,
    group: GroupConfig | None = None,
) -> dict:
    """Time the predict path; returns seconds per step, peak RSS, the F1 on the known groups and recall.

    Args:
        pair: also score every candidate with a pair model (fitted first on ``pair_fit_n`` other
            postings, not timed), as a tuned rule that uses the ``pair`` signal does.
        tfidf: add TF-IDF of synthetic seller titles (:func:`pipeline.data.synth.synthetic_titles`), fitted
            inside the timed path as ``predict`` does, and blend it instead of the concatenation, as
            tuning on the dev titles chose.
        blend_method: see ``fusion.blend_method``.
        recall_sample: queries whose lists are checked against exact search (0: no check).
        search_overrides: other ``search`` settings (``nprobe``, ``ef_search``, ``threads`` ...).
        group: with ``pair``, the group rule after the pairs at a fixed cut and floor (default: the
            config's ``group``), timed as the step ``groups``.
    """
    load_before = load_average()
    t0 = time.perf_counter()
    vectors, labels = clustered_postings(n, dim, seed)
    titles = synthetic_titles(labels, seed) if tfidf or pair else None
    ids = np.array([f"p{i}" for i in range(n)], dtype=object)
    t_data = time.perf_counter() - t0
    rss_inputs = _peak_rss_mb()

    search = build(SearchConfig, {"k": k, "index": index, **(search_overrides or {})}, prefix="search.")
    cfg = Config(
        modalities=["image", "text", "phash"] + (["tfidf"] if tfidf else []),
        search=search,
        fusion=FusionConfig(blend_method=blend_method),
    )
    settings, pair_model = _bench_rule(cfg, tfidf, pair, pair_fit_n, dim, seed, group)
    # Only the rows whose recall is checked are kept: whole lists would outlive the path they time.
    queries = recall_queries(n, recall_sample, seed) if recall_sample else np.empty(0, np.int64)
    lists: dict[str, Neighbours] = {}

    def keep_checked_rows(name: str, nb: Neighbours) -> None:
        lists[name] = Neighbours(nb.idx[queries], nb.sim[queries])

    with search_log() as choices:
        sub, timings, total = _timed_predict(cfg, vectors, ids, settings, pair_model, titles, keep_checked_rows)
    truth = true_sets_from_labels(ids.tolist(), labels.tolist())
    pred = {pid: set(m.split()) for pid, m in zip(sub["posting_id"], sub["matches"])}
    out = {
        "n": n,
        "dim": dim,
        "k": k,
        "index": index,
        **{key: getattr(search, key) for key in SEARCH_KEYS},
        "pair_model": pair,
        "group": settings.group.get("rule", "none"),
        "tfidf": tfidf,
        "blend_method": blend_method,
        "seconds": {key: round(v, 3) for key, v in timings.items()},
        "predict_seconds": round(total, 2),
        "data_seconds": round(t_data, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_after_inputs_mb": round(rss_inputs, 1),
        "input_mb": round(sum(_nbytes(v) for v in vectors.values()) / 2**20, 1),
        "f1": round(score_matches(pred, truth)["f1"], 4),
        "search_choices": choices,
        "machine": machine_facts(),
        "load_average_before": load_before,
    }
    if recall_sample:
        out.update(_checked_recall(vectors, lists, settings, queries))
    return out


def _bench_rule(
    cfg: Config, tfidf: bool, pair: bool, pair_fit_n: int, dim: int, seed: int, group: GroupConfig | None
) -> tuple[MatchSettings, PairModel | None]:
    """The decision bench times: fixed thresholds, and with ``pair`` a pair model fitted on other
    postings (untimed) at a threshold of 0.5, then the group rule (``group``, default the config's)
    at a fixed cut and floor."""
    settings = bench_settings(tfidf)
    if not pair:
        return settings, None
    settings.thresholds["pair"] = 0.5
    pair_model = _fit_pair_model(pair_fit_n, dim, settings, seed + 1, cfg)
    rule = cfg.group if group is None else group
    if rule.rule != "none":
        settings.group = GroupSettings(rule.rule, rule.weights, threshold=0.5, min2_floor=0.5).to_dict()
    return settings, pair_model


def _checked_recall(vectors: dict, lists: dict[str, Neighbours], settings: MatchSettings, queries: np.ndarray) -> dict:
    """Recall of the checked rows' lists against exact search, and the seconds the check took (untimed path)."""
    t0 = time.perf_counter()
    # 20 queries at a time: each signal's exact similarities are (20, N) float32 (80 MB at a million).
    recall = search_recall(
        vectors, lists, recall_floors(settings, vectors), settings.fusion_weights, queries=queries, chunk=20
    )
    return {"recall": recall, "recall_seconds": round(time.perf_counter() - t0, 2)}


@contextlib.contextmanager
def search_log() -> Iterator[list[str]]:
    """The "[search]" lines the block logs (the index and TF-IDF search ``auto`` took, and the
    figures behind each choice), collected in the list it yields."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("[search]"):
                lines.append(record.getMessage())

    logger, handler = logging.getLogger("pipeline"), Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _timed_predict(
    cfg: Config,
    vectors: dict[str, Any],
    ids: np.ndarray,
    settings: MatchSettings,
    pair_model: PairModel | None,
    titles: list[str] | None,
    observe,
) -> tuple[Any, dict, float]:
    """The timed path: the TF-IDF fit (when on), :func:`match_postings` and writing the submission;
    (submission frame, seconds per step, total seconds)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if "tfidf" in cfg.modalities:
        vectors["tfidf"] = tfidf_vectors(titles, cfg.tfidf)
        timings["fit_tfidf"] = time.perf_counter() - t0
    sub = match_postings(
        vectors,
        ids,
        settings,
        cfg.search,
        pair_model,
        blend_method=cfg.fusion.blend_method,
        timings=timings,
        lists=observe,
        titles=titles,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        write_submission(sub, Path(tmp) / "submission.csv", ids)
        timings["write_submission"] = time.perf_counter() - t1
    return sub, timings, time.perf_counter() - t0


def recall_floors(settings: MatchSettings, vectors: dict) -> dict[str, float]:
    """The floors recall is measured above: the searches' floors, the blending threshold for the
    blended signal, and the fused floor for the image and text lists the fused cosine is drawn from."""
    floors = search_floors(settings)
    target = settings.blend_signal
    if target is not None and settings.blend_rounds > 0:
        floors[target] = min(floors.get(target, np.inf), settings.blend_threshold)
    for m in DENSE_SIGNALS:
        if m in vectors and "concat" in floors:
            floors.setdefault(m, floors["concat"])
    return floors


def _fit_pair_model(n: int, dim: int, settings: MatchSettings, seed: int, cfg: Config):
    vectors, labels = clustered_postings(n, dim, seed)
    if "tfidf" in cfg.modalities:
        vectors["tfidf"] = tfidf_vectors(synthetic_titles(labels, seed), cfg.tfidf)
    everything = np.arange(len(labels))
    g = Gallery(everything, everything, vectors)
    nb = gallery_neighbours(g, settings, cfg.search, cfg.fusion.blend_method)
    c = build_candidates(g, nb, len(labels))
    context = PairContext.single(g, nb, len(labels), synthetic_titles(labels, seed))
    # Fitted on one thread (the fit is not timed, and OpenMP threads crawl on a busy machine); the
    # timed scoring uses the run's threads.
    model = PairModel(sorted(c.sims), seed=seed, threads=1).fit(c, labels, context)
    model.threads = cfg.threads
    return model


def _nbytes(x) -> int:
    if sp.issparse(x):
        return x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    return x.nbytes


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
