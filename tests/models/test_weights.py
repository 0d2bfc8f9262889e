"""Offline backbone weights: the Lite packages map completely onto timm, are ImageNet's, and a
file that does not fit is refused with counts and a remap hint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from pipeline.cli import main
from pipeline.config import ConfigError, ImageConfig
from pipeline.models.encoders import ImageEncoder
from pipeline.models.weight_sources import PACKAGES, resolve_weights
from pipeline.models.weights import WeightsMismatch, load_backbone_weights, map_state_dict, read_state_dict
from pipeline.training.config import TrainConfig

skimage_data = pytest.importorskip("skimage.data")

# ImageNet classes: tabby 281, tiger cat 282, Egyptian cat 285; espresso 967; missile 657, projectile 744.
CATS = {281, 282, 285}


def _installed(name: str) -> bool:
    try:
        resolve_weights(name)
    except ConfigError:
        return False
    return True


PACKAGE_NAMES = [
    pytest.param(n, marks=pytest.mark.skipif(not _installed(n), reason=f"{n} not installed")) for n in PACKAGES
]


def _photo(pixels: np.ndarray, size: int) -> torch.Tensor:
    """(1, 3, size, size): shorter side resized to ``size``, centre crop, TF-Lite scaling (mean = std = 0.5)."""
    im = Image.fromarray(pixels[..., :3])
    scale = size / min(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((x - 0.5) / 0.5)[None]


@pytest.mark.parametrize("name", PACKAGE_NAMES)
@pytest.mark.parametrize("tf_padding", [True, False])
def test_package_maps_every_tensor(name, tf_padding):
    package = PACKAGES[name]
    backbone = package.backbone if tf_padding else package.backbone.removeprefix("tf_")
    headless = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
    mapping = load_backbone_weights(headless, name)
    assert mapping.method == "order" and len(mapping.pairs) == mapping.n_model
    assert mapping.dropped == ["_fc.weight", "_fc.bias"] and not mapping.missing
    assert mapping.pairs[0][:2] == ("_conv_stem.weight", "conv_stem.weight")

    # With its classifier the model takes every tensor of the file, _fc included.
    full = timm.create_model(backbone, pretrained=False)
    mapping = load_backbone_weights(full, name)
    assert not mapping.dropped and mapping.pairs[-1][:2] == ("_fc.bias", "classifier.bias")
    state = read_state_dict(mapping.path)
    assert torch.equal(full.classifier.weight, state["_fc.weight"])
    assert torch.equal(full.blocks[0][0].conv_dw.weight, state["_blocks.0._depthwise_conv.weight"])


@pytest.mark.parametrize("name", PACKAGE_NAMES)
def test_package_weights_are_imagenet(name):
    """Real photographs from scikit-image come out as their ImageNet classes."""
    package = PACKAGES[name]
    model = timm.create_model(package.backbone, pretrained=False).eval()
    load_backbone_weights(model, name)
    with torch.no_grad():
        cat = model(_photo(skimage_data.chelsea(), package.input_size))[0]
        coffee = model(_photo(skimage_data.coffee(), package.input_size))[0]
    assert int(cat.argmax()) in CATS
    assert int(coffee.argmax()) == 967
    if name == "efficientnet-lite0":
        with torch.no_grad():
            rocket = model(_photo(skimage_data.rocket(), package.input_size))[0]
        assert {657, 744} <= set(rocket.topk(3).indices.tolist())


@pytest.mark.parametrize("name", PACKAGE_NAMES)
def test_package_normalisation_fits_its_statistics(name):
    """The stem's BatchNorm statistics fit the package's mean/std (TF-Lite's 0.5) better than
    ImageNet's: the normalisation the encoder uses is the one the weights were trained with."""
    package = PACKAGES[name]
    model = timm.create_model(package.backbone, pretrained=False).eval()
    load_backbone_weights(model, name)
    raw = torch.cat(
        [
            _photo(f(), 160) * 0.5 + 0.5
            for f in (skimage_data.chelsea, skimage_data.coffee, skimage_data.astronaut, skimage_data.rocket)
        ]
    )

    def shift(mean, std) -> float:
        x = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.no_grad():
            h = model.conv_stem(x)  # (B, 32, H, W), the input of the first BatchNorm
        bn = model.bn1
        return float(((h.mean((0, 2, 3)) - bn.running_mean).abs() / (bn.running_var + bn.eps).sqrt()).median())

    assert shift(package.mean, package.std) < shift((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_encoder_uses_package_normalisation_and_starts_from_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local package wins over image.pretrained's hub
    cfg = ImageConfig(
        backbone="efficientnet_lite0",
        pretrained=True,
        weights="efficientnet-lite0",
        image_size=64,
        embed_dim=16,
        train=TrainConfig(num_workers=0),
    )
    if not _installed("efficientnet-lite0"):
        pytest.skip("efficientnet-lite0 not installed")
    encoder = ImageEncoder(cfg)
    assert encoder.data_config()["mean"] == (0.5, 0.5, 0.5)
    assert encoder.weights_mapping.summary()["mapped"] == 245
    state = read_state_dict(encoder.weights_mapping.path)
    assert torch.equal(encoder.backbone.conv_head.weight, state["_conv_head.weight"])
    # Rebuilt for our own weights (no file read), the normalisation is the same.
    assert ImageEncoder(cfg, load_weights=False).data_config()["mean"] == (0.5, 0.5, 0.5)


# --- files that do not fit ---------------------------------------------------------------------------


def _state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name).state_dict()


def test_foreign_names_in_the_same_order_map():
    state = _state("test_resnet")
    renamed = {
        f"net.{i:03d}" + (".num_batches_tracked" if k.endswith("num_batches_tracked") else ""): v
        for i, (k, v) in enumerate(state.items())
    }
    model = timm.create_model("test_resnet", num_classes=0)
    mapped, mapping = map_state_dict(renamed, model)
    assert mapping.method == "order" and len(mapping.dropped) == 2  # fc.weight, fc.bias
    for key in model.state_dict():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(mapped[key], state[key])


def test_another_architecture_is_refused_with_counts():
    model = timm.create_model("test_resnet", num_classes=0)
    with pytest.raises(
        WeightsMismatch,
        match=r"the model has \d+ tensors, the file \d+; 0 match by name.*"
        r"first 0 agree, then file tensor #0 conv_stem.weight",
    ):
        map_state_dict(_state("test_efficientnet"), model, source="other.pth")


def test_missing_tensors_are_refused_unless_partial():
    state = _state("test_resnet")
    dropped = [k for k in state if k.startswith("layer1.")]
    kept = {k: v for k, v in state.items() if k not in dropped}
    model = timm.create_model("test_resnet", num_classes=0)
    with pytest.raises(WeightsMismatch, match="image.weights_partial=true"):
        map_state_dict(kept, model)
    mapped, mapping = map_state_dict(kept, model, partial=True)
    assert mapping.method == "partial"
    assert set(mapping.missing) == {k for k in dropped if not k.endswith("num_batches_tracked")}
    assert "PARTIAL" in mapping.describe()


def test_unknown_name_and_missing_file():
    with pytest.raises(ConfigError, match="neither a weights package"):
        resolve_weights("efficientnet-lite9")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_weights("/nowhere/backbone.pth")


def test_prepare_refuses_a_mismatch_and_records_a_match(tiny_synth, tmp_path, capsys):
    if not _installed("efficientnet-lite0"):
        pytest.skip("efficientnet-lite0 not installed")
    data = str(tiny_synth["root"])
    common = ["--modalities", "image,phash", "image.weights=efficientnet-lite0", "folds.n_splits=2"]
    code = main(["prepare", "--data", data, "--out", str(tmp_path / "bad"), *common, "image.backbone=resnet18"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: image.weights=efficientnet-lite0 (")
    assert "efficientnet-lite0-57934424.pth) does not fit image.backbone=resnet18" in err[-1]
    assert "set image.backbone=tf_efficientnet_lite0" in err[-1]
    assert not (tmp_path / "bad" / "config.yaml").exists()

    assert (
        main(
            ["prepare", "--data", data, "--out", str(tmp_path / "ok"), *common, "image.backbone=tf_efficientnet_lite0"]
        )
        == 0
    )
    record = json.loads((tmp_path / "ok" / "run.json").read_text())["image_weights"]
    assert record["mapped"] == record["of"] == 245 and record["sha256"].startswith("57934424")
    assert "weights loaded: 245 of 245 tensors from efficientnet-lite0" in (tmp_path / "ok" / "run.log").read_text()


def test_a_package_file_named_by_path_gets_its_normalisation_and_hint():
    if not _installed("efficientnet-lite0"):
        pytest.skip("efficientnet-lite0 not installed")
    from pipeline.models.weight_sources import normalisation
    from pipeline.models.weights import check_backbone_weights

    path = str(resolve_weights("efficientnet-lite0")[0])
    assert normalisation(path) == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    assert normalisation("/elsewhere/backbone.pth") == {}
    with pytest.raises(WeightsMismatch, match="set image.backbone=tf_efficientnet_lite0"):
        check_backbone_weights("resnet18", path)
    assert check_backbone_weights("efficientnet_lite0", path).summary()["mapped"] == 245
