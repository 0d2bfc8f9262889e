"""The dense index chosen by measured cost on the machine that runs, not by a fixed N.

At start-up (``search.index=auto``) a few small timed probes on the gallery's own vectors give the
machine's rates, each search's seconds at N are predicted from them, and the cheapest index whose
recall above the floors is known to reach ``required_recall`` is taken. The choice, the predicted
seconds and the measured rates are logged and returned, so a run says why it searched as it did.

- ``flat``: FAISS's exact search (BLAS float32 products and a heap per query). Probe: 1,024 queries
  against up to 8,192 rows; seconds ~ N² · (seconds per pair).
- ``bf16``: exact search as bfloat16 products shortlisting k + 14, rescored in float32
  (:mod:`pipeline.matching.gemm_search`); only where torch is installed. Probe as flat's, timing
  apart the product and chunk maxima (per pair) and the selection and rescoring (per query):
  seconds ~ N² · (per pair) + N · (per query).
- ``hnsw``: float16 HNSW, efSearch ``ef_search``, rescored. Probe (only where its recall
  qualifies): build on 600 rows and search 128 of them; seconds ~ N · (per-row build + per-query
  search) · (N / 600)^0.37.
- ``ivfpq``: never probed (its k-means alone exceeds the budget): predicted from bench's
  measured seconds per million rows, scaled by N and by nprobe.

Recall: exact indexes reach 1.0. An approximate index is a candidate only where a recall table
(bench's measurements: index, parameter, N, recall above the floors) holds an entry at this N or
above that reaches ``required_recall``; HNSW's recall falls as N grows at a fixed efSearch, so an
entry measured at a smaller N is not taken as evidence. So beyond the largest N of the table
(70,000) ``auto`` searches exactly: at a million postings that is about an hour per modality on
2 cores; set ``search.index=ivfpq`` (or hnsw) there by hand, knowing its recall. A hand-set index
(``search.index`` other than ``auto``) is never overridden.

The probes cost about 1 s, more where bf16's is the process's first use of torch (its import and
oneDNN's first call, several seconds on a busy machine, are then paid by the probe rather than by
the search). Galleries whose predicted exact cost is under ``EXACT_BELOW_S`` seconds by the first
probe are searched exactly without the others.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.matching.neighbours import faiss_threads

log = logging.getLogger("pipeline")

EXACT_BELOW_S = 2.0
PROBE_ROWS = 8192
PROBE_QUERIES = 1024  # large blocks: small products run far below the BLAS rate
HNSW_PROBE_ROWS = 600
# HNSW's seconds per row grow as N^0.37 beyond the probe (graph walks leave the caches): a float16
# HNSW (efSearch 224) on 70,000 bench vectors took 362 s, 4.2 times the probe's per-row cost at
# 1,500 rows times 70,000 (2 threads, load 7; a 600-row probe reads about the same per row). A
# calibration file from bench can replace it.
HNSW_GROWTH = 0.37
# Recall above the floors measured by bench (README "Speed"; bench's synthetic postings, 512 dims):
# (index, parameter) -> {N: recall}. A calibration file from bench replaces it.
RECALL_TABLE: dict[tuple[str, int], dict[int, float]] = {
    ("hnsw", 224): {70_000: 0.9909},
    ("hnsw", 64): {20_000: 0.9995, 70_000: 0.981},
    ("ivfpq", 16): {1_000_000: 0.61},
}
# IVF-PQ seconds per modality at a million rows, 2 threads, nprobe 16 (bench, README: 95 s).
IVFPQ_SECONDS_PER_MILLION = 95.0


@dataclass
class IndexChoice:
    """The index taken and why.

    Attributes:
        index: the name :func:`pipeline.matching.neighbours.dense_knn` searches with.
        predicted_s: predicted seconds per candidate index.
        recall: expected recall above the floors per candidate (None: no evidence).
        figures: the probes' measurements.
        probe_s: seconds the probes took.
    """

    index: str
    predicted_s: dict[str, float] = field(default_factory=dict)
    recall: dict[str, float | None] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    probe_s: float = 0.0

    def as_dict(self) -> dict:
        return {
            "index": self.index,
            "predicted_s": {k: round(v, 2) for k, v in self.predicted_s.items()},
            "recall": self.recall,
            "figures": self.figures,
            "probe_s": round(self.probe_s, 3),
        }


_CHOICES: dict[tuple, IndexChoice] = {}  # one choice per shape and settings in a process


def choose_index(
    x: np.ndarray,
    k: int,
    threads: int,
    ef_search: int = 224,
    nprobe: int = 16,
    required_recall: float = 0.99,
    recall_table: dict | None = None,
) -> IndexChoice:
    """Time the probes on ``x`` and return the cheapest index that reaches ``required_recall``.

    The choice is kept for the process: the next gallery of the same shape and settings (the text
    embeddings after the image ones) reuses it without probing.
    """
    key = (x.shape, k, threads, ef_search, nprobe, required_recall, id(recall_table))
    if key in _CHOICES:
        return _CHOICES[key]
    _CHOICES[key] = choice = _choose(x, k, threads, ef_search, nprobe, required_recall, recall_table)
    return choice


def _choose(
    x: np.ndarray, k: int, threads: int, ef_search: int, nprobe: int, required_recall: float, recall_table: dict | None
) -> IndexChoice:
    t0 = time.perf_counter()
    n, d = x.shape
    table = RECALL_TABLE if recall_table is None else recall_table
    figures: dict[str, float] = {}
    predicted: dict[str, float] = {}
    recall: dict[str, float | None] = {}
    with faiss_threads(threads):
        figures["flat_s_per_pair"] = _probe_flat(x, k)
        predicted["flat"] = n * n * figures["flat_s_per_pair"]
        recall["flat"] = 1.0
        if predicted["flat"] > EXACT_BELOW_S:
            if _bf16_available():
                figures["bf16_s_per_pair"], figures["bf16_s_per_query"] = _probe_bf16(x, k, threads)
                predicted["bf16"] = n * n * figures["bf16_s_per_pair"] + n * figures["bf16_s_per_query"]
                recall["bf16"] = 1.0
            recall["hnsw"] = _known_recall(table, ("hnsw", ef_search), n)
            if (recall["hnsw"] or 0.0) >= required_recall:  # its probe costs seconds: only where it may be taken
                build, query = _probe_hnsw(x, ef_search)
                figures.update(hnsw_build_s_per_row=build, hnsw_query_s=query)
                predicted["hnsw"] = n * (build + query) * (n / min(n, HNSW_PROBE_ROWS)) ** HNSW_GROWTH
            predicted["ivfpq"] = IVFPQ_SECONDS_PER_MILLION * (n / 1e6) * (nprobe / 16) * max(1.0, math.log10(n) - 5)
            recall["ivfpq"] = _known_recall(table, ("ivfpq", nprobe), n)
    # Exact indexes always qualify, so there is always one.
    eligible = [name for name in predicted if (recall.get(name) or 0.0) >= required_recall]
    index = min(eligible, key=predicted.__getitem__)
    choice = IndexChoice(
        index, predicted, recall, {key: float(f"{v:.4g}") for key, v in figures.items()}, time.perf_counter() - t0
    )
    log.info(
        "[search] N=%d D=%d: index %s (predicted seconds %s; recall above floors %s; probes %.2f s)",
        n,
        d,
        index,
        {key: round(v, 1) for key, v in predicted.items()},
        recall,
        choice.probe_s,
    )
    return choice


def _known_recall(table: dict, key: tuple[str, int], n: int) -> float | None:
    """The recall measured at the smallest N >= n for this index and parameter (None if none)."""
    sizes = sorted(size for size in table.get(key, {}) if size >= n)
    return table[key][sizes[0]] if sizes else None


def _bf16_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _sample(x: np.ndarray, rows: int) -> np.ndarray:
    step = max(1, len(x) // rows)
    return np.ascontiguousarray(x[::step][:rows], dtype=np.float32)


def _probe_flat(x: np.ndarray, k: int) -> float:
    """Seconds per (query, row) pair of FAISS's exact search, products and heaps included."""
    import faiss

    base = _sample(x, PROBE_ROWS)
    queries = base[:PROBE_QUERIES]
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    index.search(queries[:64], min(k, len(base)))  # warm-up
    t0 = time.perf_counter()
    index.search(queries, min(k, len(base)))
    return (time.perf_counter() - t0) / (len(queries) * len(base))


def _probe_bf16(x: np.ndarray, k: int, threads: int) -> tuple[float, float]:
    """The bfloat16 search: (seconds per pair: product and chunk maxima; seconds per query:
    selection among the best chunks and rescoring, which do not grow with N). torch's import and
    oneDNN's first call are untimed."""
    import torch

    from pipeline.matching.gemm_search import MARGIN, _rescore_ip, chunk_maxima, shortlist, torch_threads

    base = _sample(x, PROBE_ROWS)
    q = min(PROBE_QUERIES, len(base))
    m = min(len(base), k + MARGIN)
    with torch_threads(threads), torch.inference_mode():
        xb = torch.from_numpy(base).to(torch.bfloat16)
        xt = xb.T.contiguous()  # as the search lays it out
        shortlist(xb[:64] @ xt, m)  # warm-up
        t0 = time.perf_counter()
        scores = xb[:q] @ xt
        maxima = chunk_maxima(scores)
        t1 = time.perf_counter()
        _rescore_ip(base, shortlist(scores, m, maxima), min(k, len(base)), 0)
        t2 = time.perf_counter()
    return (t1 - t0) / (q * len(base)), (t2 - t1) / q


def _probe_hnsw(x: np.ndarray, ef_search: int) -> tuple[float, float]:
    """(build seconds per row, search seconds per query) of float16 HNSW on a sample."""
    import faiss

    base = _sample(x, HNSW_PROBE_ROWS)
    index = faiss.IndexHNSWSQ(base.shape[1], faiss.ScalarQuantizer.QT_fp16, 32, faiss.METRIC_INNER_PRODUCT)
    index.train(base[:1])
    t0 = time.perf_counter()
    index.add(base)
    build = (time.perf_counter() - t0) / len(base)
    index.hnsw.efSearch = ef_search
    queries = base[:128]
    t0 = time.perf_counter()
    index.search(queries, 50)
    return build, (time.perf_counter() - t0) / len(queries)
