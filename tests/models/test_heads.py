"""Margin heads: per-sample oracles, pytorch-metric-learning agreement, low-precision safety."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss, SubCenterArcFaceLoss

from pipeline.models.heads import (
    HEADS,
    ArcFace,
    CosFace,
    MarginWarmup,
    build_head,
    sample_classes,
    size_margin_factors,
)

# Loss tolerance against the fp32 reference, by the dtype of the head's input. The fp16 and bf16
# bounds are ~10x the worst error seen over several seeds (embedding rounding, s = 30, B = 64).
LOSS_ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}

# name -> (input dtype, run under torch.autocast(bfloat16))
PRECISIONS = {
    "fp32": (torch.float32, False),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
    # The fp32 tolerance applies: it only holds if the head really leaves autocast.
    "fp32-autocast": (torch.float32, True),
    "bf16-autocast": (torch.bfloat16, True),
}


# --- slow references: plain Python floats, one sample and one class at a time ---


def _cos(a: list[float], b: list[float]) -> float:
    dot = math.fsum(p * q for p, q in zip(a, b))
    return dot / math.sqrt(math.fsum(p * p for p in a) * math.fsum(q * q for q in b))


def arcface_target(cos: float, margin_rad: float, easy_margin: bool) -> float:
    theta = math.acos(min(max(cos, -1.0), 1.0))
    if easy_margin and cos <= 0:
        return cos
    if theta + margin_rad <= math.pi:
        return math.cos(theta + margin_rad)
    return cos - margin_rad * math.sin(margin_rad)


def cosface_target(cos: float, margin: float) -> float:
    return cos - margin


def reference_logits(head, embeddings, labels, target_fn) -> torch.Tensor:
    """(B, C) float64 logits; ``labels=None`` leaves every class unpenalised."""
    emb = embeddings.double().tolist()
    weight = head.weight.detach().double().tolist()
    ys = [-1] * len(emb) if labels is None else labels.tolist()
    k = head.subcenters
    rows = []
    for x, y in zip(emb, ys):
        row = []
        for c in range(head.n_classes):
            cos = max(_cos(x, weight[c * k + j]) for j in range(k))
            row.append(head.scale * (target_fn(cos) if c == y else cos))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def reference_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        top = max(row)
        total += top + math.log(math.fsum(math.exp(v - top) for v in row)) - row[y]
    return total / len(labels)


def clustered_batch(head, n_rows: int, seed: int, flipped_frac: float = 0.3):
    """Set the head's weight to noisy copies of class centres; embeddings near +-their centre.

    Flipped rows point away from their class, which puts theta + m past pi for larger margins.
    """
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(head.n_classes, head.in_features, generator=g)
    noise = 0.5 * torch.randn(head.weight.shape, generator=g)
    with torch.no_grad():
        head.weight.copy_(centres.repeat_interleave(head.subcenters, dim=0) + noise)
    labels = torch.randint(0, head.n_classes, (n_rows,), generator=g)
    sign = torch.where(torch.rand(n_rows, generator=g) < flipped_frac, -1.0, 1.0)
    embeddings = sign[:, None] * centres[labels] + torch.randn(n_rows, head.in_features, generator=g)
    return embeddings, labels


def random_batch(n_rows: int, in_features: int, n_classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n_rows, in_features, generator=g)
    return embeddings, torch.randint(0, n_classes, (n_rows,), generator=g)


# --- oracle tests ---


@pytest.mark.parametrize("subcenters", [1, 3])
@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("margin_rad", [0.5, 1.0])
def test_arcface_matches_per_sample_reference(subcenters, easy_margin, margin_rad):
    torch.manual_seed(0)
    head = ArcFace(16, 5, margin_rad=margin_rad, subcenters=subcenters, easy_margin=easy_margin)
    embeddings, labels = clustered_batch(head, 40, seed=1)

    logits = head(embeddings, labels)
    expected = reference_logits(head, embeddings, labels, lambda c: arcface_target(c, margin_rad, easy_margin))

    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=1e-4)
    assert F.cross_entropy(logits, labels).item() == pytest.approx(reference_loss(expected, labels), abs=1e-5)
    if margin_rad == 1.0 and not easy_margin:
        target_cos = expected.gather(1, labels[:, None]) / head.scale
        theta = torch.acos(head.cosine(embeddings).gather(1, labels[:, None]).double())
        assert (theta + margin_rad > math.pi).any(), "the fallback region was not exercised"
        # In the fallback the target logit drops below -1, which cos(theta + m) never does.
        assert (target_cos < -1).any()


@pytest.mark.parametrize("subcenters", [1, 3])
def test_cosface_matches_per_sample_reference(subcenters):
    torch.manual_seed(0)
    head = CosFace(16, 5, cosine_margin=0.35, subcenters=subcenters)
    embeddings, labels = clustered_batch(head, 40, seed=2)

    logits = head(embeddings, labels)
    expected = reference_logits(head, embeddings, labels, lambda c: cosface_target(c, 0.35))

    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=1e-4)
    assert F.cross_entropy(logits, labels).item() == pytest.approx(reference_loss(expected, labels), abs=1e-5)


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("subcenters", [1, 3])
def test_no_labels_gives_scaled_cosine(kind, subcenters):
    torch.manual_seed(0)
    head = build_head(kind, 16, 5, subcenters=subcenters)
    embeddings, _ = random_batch(24, 16, 5, seed=3)

    expected = reference_logits(head, embeddings, None, target_fn=None)

    torch.testing.assert_close(head(embeddings).double(), expected, rtol=0, atol=1e-5)


# --- agreement with pytorch-metric-learning ---


def pml_arcface(head: ArcFace):
    """PML's loss holding a copy of the head's weight; PML takes degrees and a (D, C*K) weight."""
    kwargs = dict(
        num_classes=head.n_classes,
        embedding_size=head.in_features,
        margin=math.degrees(head.margin_rad),
        scale=head.scale,
    )
    if head.subcenters == 1:
        loss = ArcFaceLoss(**kwargs)
    else:
        loss = SubCenterArcFaceLoss(**kwargs, sub_centers=head.subcenters)
    loss.W.data = head.weight.detach().t().clone()
    return loss


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("subcenters", [1, 3])
def test_arcface_loss_matches_pml(precision, subcenters):
    # PML uses the same fallback past theta = pi - m, so any margin agrees in fp32; 0.5 rad on
    # random data keeps theta far from that switch, where a rounding error could flip the branch.
    dtype, autocast = PRECISIONS[precision]
    torch.manual_seed(0)
    head = ArcFace(32, 10, margin_rad=0.5, subcenters=subcenters)
    embeddings, labels = random_batch(64, 32, 10, seed=4)
    expected = pml_arcface(head)(embeddings, labels).item()

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        logits = head(embeddings.to(dtype), labels)
        loss = F.cross_entropy(logits, labels)

    assert logits.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=0, abs=LOSS_ATOL[dtype])


@pytest.mark.parametrize("subcenters", [1, 3])
def test_arcface_loss_and_grads_match_pml_past_pi(subcenters):
    torch.manual_seed(0)
    head = ArcFace(16, 5, margin_rad=1.0, subcenters=subcenters)
    embeddings, labels = clustered_batch(head, 40, seed=5)
    pml = pml_arcface(head)
    theta = torch.acos(head.cosine(embeddings).gather(1, labels[:, None]).clamp(-1, 1))
    assert (theta + head.margin_rad > math.pi).any(), "the fallback region was not exercised"

    ours_x = embeddings.clone().requires_grad_()
    ours = F.cross_entropy(head(ours_x, labels), labels)
    ours.backward()
    theirs_x = embeddings.clone().requires_grad_()
    theirs = pml(theirs_x, labels)
    theirs.backward()

    assert ours.item() == pytest.approx(theirs.item(), abs=LOSS_ATOL[torch.float32])
    torch.testing.assert_close(ours_x.grad, theirs_x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.weight.grad, pml.W.grad.t(), rtol=1e-4, atol=1e-5)


def test_cosface_loss_and_grads_match_pml():
    torch.manual_seed(0)
    head = CosFace(32, 10, cosine_margin=0.35)
    embeddings, labels = random_batch(64, 32, 10, seed=6)
    pml = CosFaceLoss(num_classes=10, embedding_size=32, margin=0.35, scale=head.scale)
    pml.W.data = head.weight.detach().t().clone()

    ours_x = embeddings.clone().requires_grad_()
    ours = F.cross_entropy(head(ours_x, labels), labels)
    ours.backward()
    theirs_x = embeddings.clone().requires_grad_()
    theirs = pml(theirs_x, labels)
    theirs.backward()

    assert ours.item() == pytest.approx(theirs.item(), abs=LOSS_ATOL[torch.float32])
    torch.testing.assert_close(ours_x.grad, theirs_x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.weight.grad, pml.W.grad.t(), rtol=1e-4, atol=1e-5)


# --- low precision at cos = +-1 ---


HEAD_CONFIGS = {
    "arcface": ("arcface", {}),
    "arcface-m1-k3": ("arcface", {"margin_rad": 1.0, "subcenters": 3}),
    "arcface-easy-k3": ("arcface", {"easy_margin": True, "subcenters": 3}),
    "cosface-k3": ("cosface", {"subcenters": 3}),
}


@pytest.mark.parametrize("kind,kwargs", HEAD_CONFIGS.values(), ids=HEAD_CONFIGS.keys())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mode", ["inputs", "inputs+head", "autocast"])
def test_finite_forward_and_backward_at_cos_plus_minus_one(kind, kwargs, dtype, mode):
    torch.manual_seed(0)
    head = build_head(kind, 8, 4, **kwargs)
    k = head.subcenters
    # Identical sub-centres, rounded to dtype, so a class's max cosine really is +-1 in dtype.
    centres = torch.randn(4, 8).to(dtype)
    with torch.no_grad():
        head.weight.copy_(centres.float().repeat_interleave(k, dim=0))
    if mode == "inputs+head":
        head.to(dtype)
    labels = torch.arange(4).repeat(2)
    embeddings = torch.cat([centres, -centres]).requires_grad_()  # (8, 8): cos +1 then -1

    target_cos = head.cosine(embeddings.detach()).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(target_cos, torch.tensor([1.0] * 4 + [-1.0] * 4), rtol=0, atol=1e-6)

    ctx = torch.autocast("cpu", dtype=dtype) if mode == "autocast" else contextlib.nullcontext()
    with ctx:
        logits = head(embeddings, labels)
        loss = F.cross_entropy(logits, labels)
    loss.backward()

    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()
    assert head.weight.grad.abs().sum() > 0


# --- margin warm-up ---


@pytest.mark.parametrize(
    "warmup,expected",
    [
        (MarginWarmup(0.0, 0.8, 4), {0: 0.0, 1: 0.2, 2: 0.4, 3: 0.6, 4: 0.8, 5: 0.8, 100: 0.8}),
        (MarginWarmup(0.2, 1.0, 8), {0: 0.2, 2: 0.4, 4: 0.6, 8: 1.0, 9: 1.0}),
        (MarginWarmup(0.3, 0.9, 0), {0: 0.9, 1: 0.9, 50: 0.9}),
    ],
)
def test_margin_warmup_ramps_linearly_then_holds(warmup, expected):
    assert {step: warmup(step) for step in expected} == pytest.approx(expected)


def test_margin_warmup_changes_only_the_target_logits():
    torch.manual_seed(0)
    head = ArcFace(16, 5, margin_rad=0.5)
    embeddings, labels = random_batch(32, 16, 5, seed=7)
    warmup = MarginWarmup(0.0, 0.8, 10)
    target = F.one_hot(labels, 5).bool()

    logits = {}
    for step in (0, 5, 10):
        assert warmup.apply(head, step) == pytest.approx(warmup(step))
        assert head.margin_rad == pytest.approx(warmup(step))
        logits[step] = head(embeddings, labels)

    # A zero margin leaves the plain scaled cosine (up to the clamp before acos).
    torch.testing.assert_close(logits[0], head(embeddings), rtol=0, atol=1e-4)
    torch.testing.assert_close(logits[5][~target], logits[0][~target])
    # Random data keeps theta near pi/2, short of pi - m, so a larger margin lowers every target.
    assert (logits[5][target] < logits[0][target] - 1.0).all()
    assert (logits[10][target] < logits[5][target] - 1.0).all()


def test_margin_warmup_ramps_each_heads_own_margin():
    arc, cos = ArcFace(4, 2), CosFace(4, 2)
    warmup = MarginWarmup(0.2, 0.6, 10)
    assert warmup.apply(arc, 5) == pytest.approx(0.4) and arc.margin_rad == pytest.approx(0.4)
    assert warmup.apply(cos, 10) == pytest.approx(0.6) and cos.cosine_margin == pytest.approx(0.6)
    with pytest.raises(TypeError, match="ArcFace or CosFace"):
        warmup.apply(torch.nn.Linear(2, 2), 3)


@pytest.mark.parametrize("margin_rad", [-0.1, math.pi, 4.0])
def test_arcface_rejects_margin_outside_zero_to_pi(margin_rad):
    with pytest.raises(ValueError, match="margin_rad"):
        ArcFace(4, 2, margin_rad=margin_rad)
    head = ArcFace(4, 2)
    with pytest.raises(ValueError, match="margin_rad"):
        head.margin_rad = margin_rad


# --- factory ---


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_build_head_builds_each_kind(kind):
    head = build_head(kind, 8, 3, scale=16.0, subcenters=2)
    assert type(head) is HEADS[kind]
    assert head.weight.shape == (3 * 2, 8)
    assert head.scale == 16.0
    assert head(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])).shape == (5, 3)


def test_build_head_rejects_unknown_kind_listing_valid_ones():
    with pytest.raises(ValueError, match="valid kinds: arcface, cosface"):
        build_head("sphereface", 8, 3)


def test_build_head_does_not_drop_unknown_kwargs():
    with pytest.raises(TypeError, match="margin_deg"):
        build_head("arcface", 8, 3, margin_deg=28.6)


# --- training sanity ---


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("subcenters", [1, 2])
def test_few_sgd_steps_reduce_loss_on_separable_toy_data(kind, subcenters):
    torch.manual_seed(0)
    labels = torch.arange(2).repeat(32)
    centres = torch.tensor([[3.0, 0.0, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0]])
    inputs = centres[labels] + torch.randn(64, 4)
    encoder = torch.nn.Linear(4, 8)
    head = build_head(kind, 8, 2, subcenters=subcenters)
    optimiser = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1, momentum=0.9)

    losses = []
    for _ in range(40):
        loss = F.cross_entropy(head(encoder(inputs), labels), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())

    assert losses[-1] < 0.25 * losses[0]
    with torch.no_grad():
        assert (head(encoder(inputs)).argmax(dim=1) == labels).all()


# --- class-size margins ---


def test_size_margin_factors_follow_the_formula_and_clip():
    sizes = np.array([1, 2, 4, 4, 8, 100])  # median 4
    factors = size_margin_factors(sizes, power=0.5, lo=0.5, hi=1.5)
    expected = np.clip((sizes / 4.0) ** -0.5, 0.5, 1.5)  # [2 -> 1.5, 1.414, 1, 1, 0.707, 0.2 -> 0.5]
    np.testing.assert_allclose(factors.numpy(), expected, rtol=1e-6)
    assert factors[0] == 1.5 and factors[-1] == 0.5  # the clips bite
    assert torch.equal(size_margin_factors(sizes, power=0.0), torch.ones(6))
    with pytest.raises(ValueError, match=">= 1"):
        size_margin_factors(np.array([0, 3]), power=0.5)


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("subcenters", [1, 3])
def test_per_class_margins_match_per_sample_reference(kind, subcenters):
    torch.manual_seed(0)
    head = build_head(kind, 16, 5, subcenters=subcenters)
    embeddings, labels = clustered_batch(head, 40, seed=8)
    factors = torch.tensor([0.5, 1.0, 1.5, 0.8, 1.2])
    head.set_margin_factors(factors)
    base = head.margin_rad if kind == "arcface" else head.cosine_margin

    logits = head(embeddings, labels)
    # Row by row: the reference head with the margin of that row's class.
    expected = torch.cat(
        [
            reference_logits(
                head,
                embeddings[i : i + 1],
                labels[i : i + 1],
                (lambda c, m=base * float(factors[labels[i]]): arcface_target(c, m, False))
                if kind == "arcface"
                else (lambda c, m=base * float(factors[labels[i]]): cosface_target(c, m)),
            )
            for i in range(len(labels))
        ]
    )
    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=1e-4)
    head.set_margin_factors(None)
    plain = head(embeddings, labels)
    assert not torch.allclose(plain, logits)
    with pytest.raises(ValueError, match="positive"):
        head.set_margin_factors(torch.ones(4))


def test_margin_factors_stay_out_of_the_state_dict():
    head = ArcFace(8, 3)
    keys = set(head.state_dict())
    head.set_margin_factors(torch.ones(3))
    assert set(head.state_dict()) == keys == {"weight"}


# --- sampled classes (PartialFC) ---


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("subcenters", [1, 3])
def test_sampled_head_at_rate_one_equals_the_full_head(kind, subcenters):
    torch.manual_seed(0)
    head = build_head(kind, 16, 7, subcenters=subcenters)
    embeddings, labels = clustered_batch(head, 30, seed=9)
    classes = sample_classes(labels, 7, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(classes, torch.arange(7))

    x_full, x_sampled = embeddings.clone().requires_grad_(), embeddings.clone().requires_grad_()
    full = F.cross_entropy(head(x_full, labels), labels)
    full.backward()
    grad_full, head.weight.grad = head.weight.grad.clone(), None
    sampled = F.cross_entropy(head(x_sampled, labels, classes=classes), torch.searchsorted(classes, labels))
    sampled.backward()

    assert sampled.item() == full.item()
    torch.testing.assert_close(x_sampled.grad, x_full.grad, rtol=0, atol=0)
    torch.testing.assert_close(head.weight.grad, grad_full, rtol=0, atol=0)


def test_sampled_head_is_the_softmax_over_the_sampled_classes():
    """At rate < 1: the loss of the sampled head is the per-sample reference's cross-entropy over
    the sampled columns only, and unsampled centres get no gradient."""
    torch.manual_seed(0)
    head = ArcFace(16, 40, margin_rad=0.5, subcenters=2)
    embeddings, labels = clustered_batch(head, 12, seed=10)
    classes = sample_classes(labels, 40, 0.3, torch.Generator().manual_seed(1))
    assert len(classes) == 12  # ceil(0.3 * 40), more than the batch's positives
    assert set(labels.tolist()) <= set(classes.tolist())

    logits = head(embeddings, labels, classes=classes)  # (B, S)
    targets = torch.searchsorted(classes, labels)
    loss = F.cross_entropy(logits, targets)
    loss.backward()

    full = reference_logits(head, embeddings, labels, lambda c: arcface_target(c, 0.5, False))  # (B, C)
    expected = full[:, classes]
    torch.testing.assert_close(logits.double(), expected, rtol=0, atol=1e-4)
    assert loss.item() == pytest.approx(reference_loss(expected, targets), abs=1e-5)
    unsampled = torch.ones(40, dtype=torch.bool)
    unsampled[classes] = False
    grad = head.weight.grad.view(40, 2, 16)
    assert (grad[unsampled] == 0).all() and (grad[~unsampled].abs().sum(dim=(1, 2)) > 0).all()


@pytest.mark.parametrize(
    ("n_classes", "rate", "n_labels", "expected"),
    [
        (1000, 0.1, 30, 100),  # ceil(0.1 * 1000) classes
        (1000, 0.01, 30, None),  # fewer than the positives: the positives alone
        (10, 0.55, 3, 6),
    ],
)
def test_sample_classes_keeps_every_positive_and_draws_the_rest(n_classes, rate, n_labels, expected):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, n_classes, (n_labels,), generator=g)
    classes = sample_classes(labels, n_classes, rate, torch.Generator().manual_seed(5))
    positives = set(labels.tolist())
    assert len(classes) == (expected if expected is not None else len(positives))
    assert positives <= set(classes.tolist())
    assert torch.equal(classes, classes.sort().values) and len(set(classes.tolist())) == len(classes)
    again = sample_classes(labels, n_classes, rate, torch.Generator().manual_seed(5))
    other = sample_classes(labels, n_classes, rate, torch.Generator().manual_seed(6))
    assert torch.equal(classes, again)
    assert expected is None or not torch.equal(classes, other)
    with pytest.raises(ValueError, match="sample rate"):
        sample_classes(labels, n_classes, 0.0, g)
