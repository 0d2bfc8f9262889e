"""Embedding without a progress bar (a notebook cell, a Kaggle log) still says how far it is."""

from __future__ import annotations

import logging

import numpy as np

from pipeline.config import TextConfig
from pipeline.inference import embedding
from pipeline.models.encoders import build_encoder


def test_a_long_embedding_logs_how_far_it_is_without_a_progress_bar(tiny_bert_dir, monkeypatch, caplog):
    model = build_encoder("text", TextConfig(model=str(tiny_bert_dir), embed_dim=8))
    titles = [f"title number {i}" for i in range(12)]
    monkeypatch.setattr(embedding, "HEARTBEAT_S", 0.0)  # every batch counts as a minute
    with caplog.at_level(logging.INFO, logger="pipeline"):
        x = embedding.embed_items(model, titles, batch_size=4, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("embedding:")]
    assert len(lines) == 2  # after the first and second batches; the last one needs no line: it is done
    assert lines[0].startswith("embedding: 4 of 12 items, ") and lines[1].startswith("embedding: 8 of 12 items, ")
    assert "/s, about " in lines[1] and lines[1].endswith(" left")
    assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        embedding.embed_items(model, titles, batch_size=4, progress=True)  # the bar says it instead
    assert not [r for r in caplog.records if r.getMessage().startswith("embedding:")]
