"""The loop's options for long-tailed groups: row weights by class size, class-size
margins, large ramped margins with the head's learning rate and gradient clipping; and their config
checks. Every option is off by default."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, load_config
from pipeline.models.config import HeadConfig
from pipeline.models.heads import ArcFace
from pipeline.training.config import TrainConfig
from pipeline.training.loop import train_encoder, train_step
from pipeline.training.session import build_optimizer, class_loss_weights
from tests.training.test_loop import items_of, make_cfg


def test_class_loss_weights_are_size_to_the_minus_p_with_mean_one_over_rows():
    y = np.array([0, 0, 0, 0, 1, 1, 2])  # sizes 4, 2, 1
    w = class_loss_weights(y, 4, 0.4)  # class 3 has no rows
    raw = np.array([4, 2, 1, 1], dtype=float) ** -0.4
    np.testing.assert_allclose(w.numpy(), raw / raw[y].mean(), rtol=1e-6)
    assert w[y].mean().item() == pytest.approx(1.0)
    assert torch.allclose(class_loss_weights(y, 3, 0.0), torch.ones(3))


class Tiny(torch.nn.Module):
    """A linear "encoder" over fixed features: the loop's step without a backbone."""

    def __init__(self, d_in: int = 6, d_out: int = 8):
        super().__init__()
        self.fc = torch.nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.fc(x)


def test_train_step_weighs_each_rows_cross_entropy():
    torch.manual_seed(0)
    x, labels = torch.randn(10, 6), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0])
    model, head = Tiny(), ArcFace(8, 4, margin_rad=0.3)
    with torch.no_grad():
        per_row = F.cross_entropy(head(model(x), labels), labels, reduction="none")
    # lr 0 leaves the weights as they are, so the second step sees the same per-row losses
    optimiser = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = train_step(model, head, x, labels, optimiser, scaler, None, 0.0, class_weights=weights)
    assert loss.item() == pytest.approx((per_row * weights[labels]).mean().item(), rel=1e-6)
    plain = train_step(model, head, x, labels, optimiser, scaler, None, 0.0)
    assert plain.item() == pytest.approx(per_row.mean().item(), rel=1e-6)


def test_gradient_clipping_covers_the_head_at_a_large_margin():
    """At 1.0 rad (past pi - m for the far rows) the step's gradients, head included, are clipped
    to the norm asked for, and the head keeps its own learning rate."""
    torch.manual_seed(0)
    x, labels = torch.randn(16, 6) * 5, torch.arange(4).repeat(4)
    model, head = Tiny(), ArcFace(8, 4, margin_rad=1.0)
    optimiser = build_optimizer(model, head, TrainConfig(lr=1e-4, head_lr=1e-2))
    loss = train_step(model, head, x, labels, optimiser, torch.amp.GradScaler("cpu", enabled=False), None, 0.05)
    params = [*model.parameters(), *head.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert math.isfinite(loss.item()) and norm.item() == pytest.approx(0.05, rel=1e-4)
    assert {g["name"]: g["lr"] for g in optimiser.param_groups}["head"] == 1e-2


@pytest.mark.parametrize("modality", ["image", "text"])
def test_large_ramped_margins_with_every_option_train(modality, tiny_synth, tiny_bert_dir, tmp_path):
    """A margin ramped from 0.2 to 1.0 rad, class-size margins up to 1.5x, row weights and sampled
    classes: the loss stays finite and the margin ends at 1.0. The title encoder's loss falls once
    the margin stops growing (epoch 3); the 32 px image CNN, from scratch through augmentations,
    learns too little in 18 steps at these margins for its loss to say anything."""
    cfg = make_cfg(modality, tiny_bert_dir, epochs=6, sample_weight_power=0.4, grad_clip=1.0)
    cfg.head = HeadConfig(
        margin_start_rad=0.2,
        margin_rad=1.0,
        margin_warmup_epochs=2.0,
        margin_size_power=0.5,
        margin_size_max=1.5,
        sample_rate=0.5,
    )
    items, labels = items_of(modality, tiny_synth), tiny_synth["train"]["label_group"].to_numpy()
    result = train_encoder(modality, cfg, items, labels, tmp_path, seed=1, progress=False)
    losses = [row["loss"] for row in result["history"]]
    assert all(math.isfinite(v) for v in losses), losses
    assert modality == "image" or losses[-1] < 0.8 * losses[2], losses
    assert result["final"]["margin"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("text.head.sample_rate=0", "head.sample_rate"),
        ("text.head.sample_rate=1.5", "head.sample_rate"),
        ("image.head.margin_size_power=-1", "head.margin_size_power"),
        ("image.head.margin_size_min=1.2", "margin_size_min"),
        ("text.train.sample_weight_power=-0.4", "train.sample_weight_power"),
        ("text.train.batch_size=0", "train.batch_size"),
    ],
)
def test_option_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_class_size_margins_must_stay_below_pi():
    with pytest.raises(ConfigError, match="below pi"):
        load_config(
            None, ["text.head.margin_rad=1.0", "text.head.margin_size_power=0.5", "text.head.margin_size_max=3.2"]
        )
    cfg = load_config(None, ["text.head.margin_rad=1.0", "text.head.margin_size_power=0.5"])
    assert cfg.text.head.margin_size_max == 1.5 and cfg.text.head.sample_rate == 1.0
