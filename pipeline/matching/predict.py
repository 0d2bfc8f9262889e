"""The one predict path: from a gallery's postings to its submission.

:func:`posting_vectors` gives every signal's vectors of a set of postings (fitting TF-IDF on their
titles, reading or computing phashes, embedding with trained encoders), and :func:`match_postings`
searches, fuses, blends, scores pairs and decides. ``predict``, the Kaggle inference and ``bench``
all call these two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from pipeline.data.contract import LEARNED_MODALITIES, MODALITIES, encoder_inputs
from pipeline.ensemble.combine import EncoderMember, embed_members
from pipeline.matching.candidates import Candidates, Gallery, build_candidates
from pipeline.matching.decide import MatchSettings, decide, match_lists, prediction_floors
from pipeline.matching.fusion import FUSED_SIGNALS, gallery_neighbours
from pipeline.matching.groups import GroupSettings, group_lists
from pipeline.matching.neighbours import Neighbours, SearchConfig
from pipeline.matching.pair_features import PairContext
from pipeline.matching.pair_model import DEFAULT_THREADS, PAIR_SIGNAL, PairModel, PairModelError
from pipeline.matching.signals import SignalsConfig, unsupervised_vectors
from pipeline.submission import build_submission
from pipeline.training.config import TrainConfig

# Every signal a candidate pair can carry: the modalities, the fused ones and the pair score.
ALL_SIGNALS = (*MODALITIES, *FUSED_SIGNALS, PAIR_SIGNAL)


class EmbeddingConfig(Protocol):
    """What embedding with a trained encoder reads of its modality's section."""

    embed_batch_size: int
    train: TrainConfig  # its workers and mixed precision


class PostingsConfig(SignalsConfig, Protocol):
    """What :func:`posting_vectors` reads of a run's config: the signals' settings and, per learned
    modality, how to embed."""

    image: EmbeddingConfig
    text: EmbeddingConfig


class PredictError(ValueError):
    """Inputs that do not fit the tuned settings (a signal they use is missing, or the pair model)."""


def uses_pair_model(settings: MatchSettings) -> bool:
    """Whether the settings read the pair score: as a threshold, for min-2, or in a group rule."""
    return (
        PAIR_SIGNAL in settings.thresholds
        or settings.min2_signal == PAIR_SIGNAL
        or GroupSettings.from_dict(settings.group).on
    )


def load_pair_model(path: str | Path, settings: MatchSettings, threads: int = DEFAULT_THREADS) -> PairModel | None:
    """The saved pair model, when the settings use it (a JSON file; pickles are never loaded)."""
    if not uses_pair_model(settings):
        return None
    path = Path(path)
    if not path.exists():
        legacy = path.with_suffix(".pkl")
        why = f" ({legacy.name} is a pickle from an older version, which is never loaded)" if legacy.exists() else ""
        raise PredictError(f"{path} missing{why}: the tuned settings use the pair model; rerun the tune stage")
    try:
        return PairModel.load(path, threads=threads)
    except PairModelError as e:
        raise PredictError(str(e)) from None


def signals_needed(settings: MatchSettings, pair_model: PairModel | None) -> set[str]:
    """The base signals (modalities) that the tuned settings read."""
    names = set(settings.thresholds) | set(settings.fusion_weights)
    names |= {s for s in (settings.blend_signal, settings.min2_signal) if s}
    if pair_model is not None and uses_pair_model(settings):
        names |= set(pair_model.signals)
    return names - set(FUSED_SIGNALS) - {PAIR_SIGNAL}


def posting_vectors(
    cfg: PostingsConfig,
    df: pd.DataFrame,
    images_dir: Path,
    encoders: Mapping[str, Any] | None = None,
    embeddings: Mapping[str, np.ndarray] | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Every signal's vectors of ``df``'s postings, for the modalities of ``cfg``.

    Args:
        encoders: per learned modality, a trained encoder that embeds the postings, or a list of
            :class:`~pipeline.ensemble.combine.EncoderMember` (an ensemble, fold models to average):
            each encoder embeds the postings and the embeddings combine as in tuning.
        embeddings: per learned modality, embeddings already computed (they win over ``encoders``).
        timings: when given, seconds per step are added to it.
    """
    timings = {} if timings is None else timings
    encoders, embeddings = dict(encoders or {}), dict(embeddings or {})
    t0 = time.perf_counter()
    vectors = unsupervised_vectors(cfg, df, images_dir)
    timings["unsupervised"] = time.perf_counter() - t0
    for m in (m for m in cfg.modalities if m in LEARNED_MODALITIES):
        if m in embeddings:
            vectors[m] = np.asarray(embeddings[m])
            continue
        if m not in encoders:
            raise PredictError(f"no embeddings and no encoder given for the learned modality {m!r}")
        from pipeline.inference.embedding import embed_items  # torch: only when something is embedded

        t0 = time.perf_counter()
        section: EmbeddingConfig = getattr(cfg, m)
        items = encoder_inputs(m, df, images_dir)

        def embed(encoder, items=items, section=section):
            return embed_items(
                encoder,
                items,
                batch_size=section.embed_batch_size,
                progress=progress,
                num_workers=section.train.num_workers,
                amp=section.train.amp,
            )

        members = encoders[m]
        if isinstance(members, (list, tuple)) and all(isinstance(e, EncoderMember) for e in members):
            vectors[m] = embed_members(members, embed)
        else:
            vectors[m] = embed(members)
        timings[f"embed_{m}"] = time.perf_counter() - t0
    return vectors


def search_floors(settings: MatchSettings) -> dict[str, float]:
    """Per signal, the lowest similarity that ``settings`` can turn into a match, for the searches.

    The blended signal's whole lists are kept: graph blending reads the similarities among a
    posting's neighbours, whatever they are.
    """
    floors = prediction_floors(settings)
    if settings.blend_signal is not None and settings.blend_rounds > 0:
        floors.pop(settings.blend_signal, None)
    return floors


def match_postings(
    vectors: Mapping[str, Any],
    ids: np.ndarray,
    settings: MatchSettings,
    search: SearchConfig,
    pair_model: PairModel | None = None,
    *,
    blend_method: str = "graph",
    timings: dict[str, float] | None = None,
    lists: Callable[[str, Neighbours], None] | None = None,
    titles: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Neighbours, fusion, blending, pair scores and the decision on one gallery; the submission frame.

    Args: as :func:`score_postings`.
    """
    timings = {} if timings is None else timings
    c, moved = score_postings(
        vectors,
        ids,
        settings,
        search,
        pair_model,
        blend_method=blend_method,
        timings=timings,
        lists=lists,
        titles=titles,
    )
    matched = decide_lists(c, moved, len(ids), timings)
    t0 = time.perf_counter()
    sub = build_submission(ids, matched)
    timings["build_submission"] = time.perf_counter() - t0
    return sub


def score_postings(
    vectors: Mapping[str, Any],
    ids: np.ndarray,
    settings: MatchSettings,
    search: SearchConfig,
    pair_model: PairModel | None = None,
    *,
    blend_method: str = "graph",
    timings: dict[str, float] | None = None,
    lists: Callable[[str, Neighbours], None] | None = None,
    titles: Sequence[str] | None = None,
) -> tuple[Candidates, MatchSettings]:
    """Neighbours, fusion, blending and pair scores on one gallery: its candidate pairs and the
    settings moved to its size (ready for :func:`decide_lists`).

    Args:
        vectors: per signal, one row per posting (see :func:`posting_vectors`).
        search: the index, its parameters, ``k`` and ``threads``, and whether to search above floors.
        pair_model: needed when the settings use the ``pair`` signal.
        blend_method: how blending finds its neighbours (``fusion.blend_method``).
        timings: when given, seconds per step are added to it.
        lists: when given, called with each signal's name and neighbour lists as they are made
            (``pipeline bench`` keeps the rows whose recall it checks).
        titles: the postings' titles, in ``ids`` order; read by a pair model with title features.
    """
    timings = {} if timings is None else timings
    _check_inputs(vectors, settings, pair_model, titles)
    n = len(ids)
    settings = settings.at_size(n)  # thresholds tuned on galleries of another size, moved by the size
    c = _candidates(vectors, n, settings, search, pair_model, blend_method, timings, lists, titles)
    return c, settings


def decide_lists(
    c: Candidates, settings: MatchSettings, n: int, timings: dict[str, float] | None = None
) -> list[np.ndarray]:
    """Per posting of a gallery of ``n``, its matches (best first) on the candidates of
    :func:`score_postings`: the threshold rule's pairs, then the group decision when the settings hold one."""
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    mask = decide(c, settings)
    matched = match_lists(c, mask, n, score=next(iter(settings.thresholds), None))
    timings["decide"] = time.perf_counter() - t0
    group = GroupSettings.from_dict(settings.group)
    if group.on:
        t0 = time.perf_counter()
        matched = group_lists(c.query, c.match, c.sims[PAIR_SIGNAL], mask, group.at_size(n), matched)
        timings["groups"] = time.perf_counter() - t0
    return matched


def _check_inputs(
    vectors: Mapping[str, Any], settings: MatchSettings, pair_model: PairModel | None, titles: Sequence[str] | None
) -> None:
    missing = sorted(signals_needed(settings, pair_model) - set(vectors))
    if missing:
        raise PredictError(
            f"the tuned settings use {missing}, but only {sorted(vectors)} were given: "
            "turn those modalities on, or tune again without them"
        )
    if uses_pair_model(settings) and pair_model is None:
        raise PredictError("the tuned settings use the pair model, but none was given")
    if uses_pair_model(settings) and pair_model.needs_titles and titles is None:
        raise PredictError(f"the pair model reads the titles (features {pair_model.groups}), but none were given")


def _candidates(
    vectors: Mapping[str, Any],
    n: int,
    settings: MatchSettings,
    search: SearchConfig,
    pair_model: PairModel | None,
    blend_method: str,
    timings: dict[str, float],
    lists: Callable[[str, Neighbours], None] | None,
    titles: Sequence[str] | None,
) -> Candidates:
    """The gallery's candidate pairs with every signal's similarity, and the pair score when used."""
    everything = np.arange(n)
    gallery = Gallery(everything, everything, dict(vectors))
    # The pair model reads every signal's features (ranks among whole top-k lists included), so
    # no signal's pairs can be dropped early when it is used.
    floors = None if uses_pair_model(settings) else prediction_floors(settings)
    # Lists that no threshold reads are let go once fusion and blending are done with them.
    nb = gallery_neighbours(
        gallery,
        settings,
        search,
        blend_method,
        timings=timings,
        floors=search_floors(settings) if floors is not None and search.floors else None,
        keep=None if floors is None else set(floors),
        observe=lists,
    )
    t0 = time.perf_counter()
    c = build_candidates(gallery, nb, n, floors=floors)
    timings["candidates"] = time.perf_counter() - t0
    if uses_pair_model(settings):
        t0 = time.perf_counter()
        context = PairContext.single(gallery, nb, n, titles) if pair_model.needs_context else None
        c.sims[PAIR_SIGNAL] = pair_model.predict(c, context)
        timings["pair_model"] = time.perf_counter() - t0
    return c
