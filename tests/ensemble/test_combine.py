"""Ensemble combinations against slow references: cosines of the weighted concatenation, fold averaging."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.ensemble.combine import EncoderMember, embed_members, mean_direction, weighted_concat


def unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.3, 0.7), (2.0, 1.0, 5.0)])
def test_concatenation_cosine_is_the_weighted_mean_of_member_cosines(weights):
    rng = np.random.default_rng(0)
    parts = [unit(rng, 20, d) for d in (8, 5, 3)[: len(weights)]]
    x = weighted_concat(parts, weights)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    w = np.asarray(weights) / sum(weights)
    reference = sum(wi * (p @ p.T) for wi, p in zip(w, parts))
    np.testing.assert_allclose(x @ x.T, reference, atol=1e-5)


def test_unnormalised_members_are_normalised_first_and_one_member_is_left_as_is():
    rng = np.random.default_rng(1)
    a, b = unit(rng, 6, 4), unit(rng, 6, 4)
    np.testing.assert_allclose(weighted_concat([a * 3, b], [1, 1]), weighted_concat([a, b], [1, 1]), atol=1e-6)
    assert weighted_concat([a], [0.2]) is not None
    np.testing.assert_array_equal(weighted_concat([a], [0.2]), a)  # bit for bit: a one-member ensemble is its member
    with pytest.raises(ValueError, match="weights"):
        weighted_concat([a, b], [1, -1])


def test_fold_average_is_the_renormalised_mean_direction():
    rng = np.random.default_rng(2)
    folds = [unit(rng, 10, 6) for _ in range(3)]
    mean = sum(folds) / 3
    np.testing.assert_allclose(mean_direction(folds), mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_array_equal(mean_direction(folds[:1]), folds[0])


def test_embed_members_averages_folds_then_concatenates_members():
    rng = np.random.default_rng(3)
    outputs = {name: unit(rng, 7, 4) for name in ("a0", "a1", "b")}
    members = [EncoderMember(["a0", "a1"], weight=1.0), EncoderMember(["b"], weight=3.0)]
    got = embed_members(members, lambda name: outputs[name])
    expected = weighted_concat([mean_direction([outputs["a0"], outputs["a1"]]), outputs["b"]], [1.0, 3.0])
    np.testing.assert_allclose(got, expected, atol=1e-6)
