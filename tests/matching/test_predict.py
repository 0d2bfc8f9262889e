"""The one predict path: posting vectors, then matching, with clear errors for missing inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.matching.decide import MatchSettings
from pipeline.matching.predict import PredictError, match_postings, posting_vectors


def test_matching_without_a_signal_the_settings_use_is_refused(tmp_path):
    cfg = load_config(None, ["modalities=[text,tfidf]"])
    df = pd.DataFrame({"title": ["a b", "a c"]})
    vectors = posting_vectors(cfg, df, tmp_path, embeddings={"text": np.eye(2, dtype=np.float32)})
    del vectors["text"]
    settings = MatchSettings(thresholds={"text": 0.5, "tfidf": 0.5})
    with pytest.raises(PredictError, match=r"use \['text'\], but only \['tfidf'\] were given"):
        match_postings(vectors, np.array(["p0", "p1"]), settings, cfg.search)


def test_a_learned_modality_needs_embeddings_or_an_encoder(tmp_path):
    cfg = load_config(None, ["modalities=[text,tfidf]"])
    with pytest.raises(PredictError, match="no embeddings and no encoder given for the learned modality 'text'"):
        posting_vectors(cfg, pd.DataFrame({"title": ["a b", "a c"]}), tmp_path)


def test_pair_settings_without_the_pair_model_are_refused(tmp_path):
    cfg = load_config(None, ["modalities=[tfidf]"])
    vectors = posting_vectors(cfg, pd.DataFrame({"title": ["a b", "a c"]}), tmp_path)
    with pytest.raises(PredictError, match="use the pair model, but none was given"):
        match_postings(vectors, np.array(["p0", "p1"]), MatchSettings(thresholds={"pair": 0.5}), cfg.search)
