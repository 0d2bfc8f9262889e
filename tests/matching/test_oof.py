"""Out-of-fold galleries: queries, rows, and searches shared between folds by structure."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import Config
from pipeline.data.synth import synthetic_titles
from pipeline.data.synth.postings import clustered_postings
from pipeline.matching import fusion
from pipeline.matching.decide import MatchSettings
from pipeline.matching.neighbours import SearchConfig
from pipeline.matching.oof import oof_galleries
from pipeline.matching.signals import tfidf_vectors

SEARCH = {"search": SearchConfig(k=10, batch_size=64, index="flat"), "blend_method": "graph"}


@pytest.fixture()
def data():
    vectors, labels = clustered_postings(120, 16, seed=3)
    fold_of = labels % 3
    titles = synthetic_titles(labels, seed=3)
    return vectors, labels, fold_of, titles


def make(data, mode, learned=True):
    vectors, labels, fold_of, titles = data

    def unsupervised(rows):
        return {"tfidf": tfidf_vectors([titles[i] for i in rows], Config().tfidf), "phash": vectors["phash"][rows]}

    def fold_embeddings(fold, rows):
        # A different "model" per fold: each fold's vectors are rotated differently.
        return {"text": np.roll(vectors["text"][rows], fold, axis=1)}

    return oof_galleries(fold_of, mode, unsupervised, fold_embeddings if learned else None, SEARCH)


def test_each_fold_queries_its_own_rows_within_the_gallery(data):
    _, _, fold_of, _ = data
    for mode in ("all", "fold"):
        oof = make(data, mode)
        assert len(oof.galleries) == 3
        for fold, g in enumerate(oof.galleries):
            assert (fold_of[g.rows[g.queries]] == fold).all()
            assert len(g.queries) == (fold_of == fold).sum()
            assert len(g.rows) == (len(fold_of) if mode == "all" else (fold_of == fold).sum())


def test_unsupervised_searches_are_shared_by_every_fold_and_learned_ones_are_not(data, monkeypatch):
    calls = []
    search = fusion.search
    monkeypatch.setattr(fusion, "search", lambda name, *a, **kw: calls.append(name) or search(name, *a, **kw))
    oof = make(data, "all")
    settings = MatchSettings(blend_signal="tfidf", blend_rounds=1, blend_threshold=0.3)
    oof.candidates(settings)
    oof.candidates(settings)  # a second call searches nothing again
    assert sorted(calls) == ["phash", "text", "text", "text", "tfidf"]
    shared = [c.entries["tfidf"] for c in oof.caches]
    assert all(e is shared[0] for e in shared) and len(shared[0].blends) == 1
    assert len({id(c.entries["text"]) for c in oof.caches}) == 3


def test_without_learned_signals_every_fold_is_one_gallery(data):
    oof = make(data, "all", learned=False)
    assert len(oof.galleries) == 1 and len(oof.galleries[0].queries) == len(data[1])


@pytest.mark.parametrize("mode", ["all", "fold"])
def test_gallery_size_is_what_each_query_was_searched_among(data, mode):
    oof = make(data, mode)
    assert oof.gallery_size == (len(data[1]) if mode == "all" else round(len(data[1]) / 3))
