"""The notebook's config choice: the Kaggle preset only on Kaggle with a GPU, and a loud title-model fallback."""

from __future__ import annotations

import logging

import torch

from pipeline.config import load_config
from pipeline.kaggle import presets


def test_kaggle_preset_needs_kaggle_and_a_gpu(monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert presets.default_preset() == "demo"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setattr(presets, "pick_device", lambda: torch.device("cpu"))
    assert presets.default_preset() == "demo"  # Kaggle without a GPU: the CPU-sized preset
    monkeypatch.setattr(presets, "pick_device", lambda: torch.device("cuda"))
    assert presets.default_preset() == "kaggle"


def test_the_kaggle_preset_is_gpu_sized_and_multilingual():
    cfg = load_config("kaggle")
    assert cfg.modalities == ["image", "text", "tfidf", "phash"]
    assert cfg.text.model == "xlm-roberta-base" and cfg.image.pretrained
    assert cfg.image.train.final == cfg.text.train.final == "folds"
    assert cfg.folds.n_splits == 5


def test_an_unreachable_title_model_falls_back_to_the_bundled_minilm_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as with the internet off
    with caplog.at_level(logging.INFO, logger="pipeline"):
        cfg, name, notes = presets.notebook_config("demo", ["text.model=some-owner/not-a-cached-model"])
    assert cfg.text.model is None and name == "demo"
    assert any("bundled all-MiniLM-L6-v2" in n for n in notes) and "bundled" in caplog.text


def test_a_local_title_model_is_kept(tiny_bert_dir):
    cfg, _, notes = presets.notebook_config("demo", [f"text.model={tiny_bert_dir}"])
    assert cfg.text.model == str(tiny_bert_dir) and len(notes) == 1
