"""What a catalogue applies to each batch: a trained and tuned run's rule, copied at ``init``.

The rule is the run's tuned :class:`~pipeline.matching.decide.MatchSettings` (thresholds, min-2,
blending, fusion weights, size slopes), its search settings, its pair model and the TF-IDF settings;
the encoders stay in the run folder and are loaded from there when a batch is embedded. A copy
lives in the catalogue (``catalogue.json``), so re-tuning the run never changes how an existing
catalogue decides.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.catalogue.indexes import IndexConfig
from pipeline.matching.decide import MatchSettings, prediction_floors
from pipeline.matching.fusion import DENSE_SIGNALS
from pipeline.matching.groups import GroupSettings
from pipeline.matching.neighbours import SearchConfig
from pipeline.matching.pair_model import PAIR_SIGNAL, PairModel
from pipeline.matching.predict import uses_pair_model
from pipeline.matching.signals import TfidfConfig
from pipeline.settings import build

BASE_SIGNALS = ("image", "text", "tfidf", "phash")
KINDS = {"image": "dense", "text": "dense", "concat": "dense", "tfidf": "sparse", "phash": "binary"}


@dataclass
class Rule:
    """A run's tuned rule as a catalogue applies it.

    Attributes:
        settings: the tuned settings (``thresholds.json``).
        search: ``k`` (the lists' length) and ``threads``; the index is the catalogue's own
            (:class:`~pipeline.catalogue.indexes.IndexConfig`).
        modalities: the run's modalities.
        tfidf: the TF-IDF settings (the vocabulary itself is fitted at ``init``).
        phash_source: ``column`` or ``image`` (``phash.source``).
        pair_model: the run's pair model, as its JSON dict; None when the rule does not use it.
        run: the run folder whose encoders embed new postings; None for a catalogue of given vectors.
        size: the gallery size the thresholds are moved to: 0 = the catalogue's live postings at
            each batch (as ``predict`` moves them to its gallery), else that number.
        index: how dense signals are indexed.
        group: how new postings get groups (:mod:`pipeline.catalogue.assign`): ``run`` (the
            run's own group step, its batch's region clustered again: :mod:`pipeline.catalogue.region`),
            ``average`` (average linkage over accepted links, cut at ``group_cut``) or
            ``components`` (every accepted link joins, transitively). A run with a group step
            gets ``run`` unless another is asked for.
        group_cut: the mean link weight over two clusters' cross pairs that merges them.
        min2_joins: under ``components`` and ``average``, whether a pair that only min-2
            accepted joins groups (under ``run`` the group step weighs it as ``predict``'s does,
            and ``export`` lists a lone posting's best link at the step's min-2 floor). ``predict``'s min-2
            gives a lonely posting its nearest neighbour because Kaggle's test set has no
            singletons; a catalogue's new posting may be a new product, and one such pair would
            pull it (and, transitively, its batch) into a whole group. Off by default: the pair is
            kept, accepted, as evidence and for review, but does not join.
        rescore_region: under ``run``, the region's old postings have their candidate pairs
            scored again with the batch in the catalogue, and those scores, not the stored ones
            (scored when each posting arrived, in a smaller catalogue), weigh their pairs.
    """

    settings: MatchSettings
    search: SearchConfig = field(default_factory=SearchConfig)
    modalities: list[str] = field(default_factory=lambda: list(BASE_SIGNALS))
    tfidf: TfidfConfig = field(default_factory=TfidfConfig)
    phash_source: str = "column"
    pair_model: dict[str, Any] | None = None
    run: str | None = None
    size: int = 0
    index: IndexConfig = field(default_factory=IndexConfig)
    group: str = "components"
    group_cut: float = 0.5
    min2_joins: bool = False
    rescore_region: bool = True
    _pair: PairModel | None = field(default=None, repr=False, compare=False)

    @property
    def uses_pair(self) -> bool:
        return uses_pair_model(self.settings) and self.pair_model is not None

    def pair(self, threads: int) -> PairModel | None:
        if not self.uses_pair:
            return None
        if self._pair is None:
            self._pair = PairModel.from_dict(self.pair_model, "the catalogue's pair model", threads)
        return self._pair

    def read(self) -> set[str]:
        """The signals whose neighbour lists the rule reads: thresholded, min-2, blended, or the pair model's."""
        s = self.settings
        names = set(s.thresholds)
        if s.min2_on:
            names.add(s.min2_signal)
        if self.uses_pair:
            names |= set(self.pair_model["signals"])
        names.discard(PAIR_SIGNAL)
        if "blend" in names:
            names.discard("blend")
            names.add(s.blend_signal)
        return names

    @property
    def blends(self) -> bool:
        s = self.settings
        wanted = (
            "blend" in s.thresholds
            or s.min2_signal == "blend"
            or (self.uses_pair and "blend" in self.pair_model["signals"])
        )
        return wanted and s.blend_signal is not None and s.blend_rounds > 0 and not math.isinf(s.blend_threshold)

    def searched(self) -> list[str]:
        """Signals with an index and stored lists, in a fixed order."""
        read = self.read()
        return [s for s in (*BASE_SIGNALS, "concat") if s in read]

    def stored(self) -> list[str]:
        """Signals whose vectors are kept: the searched ones and those the pair model compares raw."""
        extra = set(self.pair_model.get("vector_signals", [])) if self.uses_pair else set()
        return [s for s in (*BASE_SIGNALS, "concat") if s in set(self.searched()) | extra]

    def learned(self) -> list[str]:
        """The learned modalities new postings are embedded with."""
        need = set(self.stored())
        if "concat" in need:
            need |= set(DENSE_SIGNALS)
        return [m for m in DENSE_SIGNALS if m in need]

    def floors(self) -> dict[str, float] | None:
        """Per signal, the lowest similarity that can decide a pair; None when the pair model reads
        whole lists (as ``predict``: no list is cut then)."""
        return None if self.uses_pair else prediction_floors(self.settings)

    def group_settings(self) -> GroupSettings:
        """The run's tuned group step (``rule: none`` when it has none)."""
        return GroupSettings.from_dict(self.settings.group)

    def at_size(self, live: int) -> MatchSettings:
        return self.settings.at_size(self.size or live)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "search": dataclasses.asdict(self.search),
            "modalities": list(self.modalities),
            "tfidf": dataclasses.asdict(self.tfidf),
            "phash_source": self.phash_source,
            "pair_model": self.pair_model if self.uses_pair else None,
            "run": self.run,
            "size": self.size,
            "index": dataclasses.asdict(self.index),
            "group": self.group,
            "group_cut": self.group_cut,
            "min2_joins": self.min2_joins,
            "rescore_region": self.rescore_region,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rule:
        return cls(
            settings=MatchSettings.from_dict(d["settings"]),
            search=build(SearchConfig, d["search"], "search."),
            modalities=list(d["modalities"]),
            tfidf=build(TfidfConfig, d["tfidf"], "tfidf."),
            phash_source=d["phash_source"],
            pair_model=d.get("pair_model"),
            run=d.get("run"),
            size=int(d.get("size", 0)),
            index=build(IndexConfig, d.get("index", {}), "index."),
            group=d.get("group", "components"),
            group_cut=float(d.get("group_cut", 0.5)),
            min2_joins=bool(d.get("min2_joins", False)),
            rescore_region=bool(d.get("rescore_region", False)),
        )


def rule_of_run(run_dir: str | Path, index: IndexConfig, size: int = 0, **options: Any) -> Rule:
    """The rule of a trained and tuned run folder (its thresholds.json, config and pair model)."""
    from pipeline.matching.predict import load_pair_model
    from pipeline.runs.folder import open_run

    run = open_run(run_dir)
    settings = run.tuned_settings()
    pair = load_pair_model(run.paths.pair_model, settings, run.cfg.threads)
    has_step = GroupSettings.from_dict(settings.group).on and pair is not None
    if options.get("group", "auto") == "auto":
        options["group"] = "run" if has_step else "components"
    elif options["group"] == "run" and not has_step:
        from pipeline.catalogue.schema import CatalogueError

        raise CatalogueError(f"{run_dir} has no group step (group.rule: none); use --group components or average")
    return Rule(
        settings=settings,
        search=run.cfg.search,
        modalities=list(run.cfg.modalities),
        tfidf=run.cfg.tfidf,
        phash_source=run.cfg.phash.source,
        pair_model=pair.to_dict() if pair is not None else None,
        run=str(Path(run_dir).resolve()),
        size=size,
        index=index,
        **options,
    )
