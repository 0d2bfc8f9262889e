"""The pair score as a probability: isotonic against scikit-learn's, the size shift, the ECE."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.matching.calibration import EPS, ece, fit_isotonic, reliability, size_shift


@pytest.mark.parametrize("seed", range(6))
def test_isotonic_matches_scikit_learn(seed):
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 2000))
    score = np.round(rng.random(n), int(rng.integers(1, 4)))  # ties, as tree scores have
    same = rng.random(n) < score**2
    ours = fit_isotonic(score, same)
    theirs = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip").fit(score, same)
    probe = np.r_[score, rng.random(300), -0.5, 1.5]
    np.testing.assert_allclose(ours(probe), theirs.predict(probe), atol=1e-9)


def test_without_knots_the_map_is_the_identity():
    p = np.array([0.0, 0.3, 1.0])
    np.testing.assert_array_equal(fit_isotonic(np.empty(0), np.empty(0, bool))(p), p)


def test_size_shift_divides_the_odds():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(size_shift(p, 1.0), p)

    def odds(x):
        return x / (1 - x)

    np.testing.assert_allclose(odds(size_shift(p, 4.0)), odds(p) / 4)
    assert np.all(np.diff(size_shift(np.linspace(0.01, 0.99, 50), 2.0)) > 0)  # order kept


def test_ece_is_small_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    same = rng.random(len(p)) < p
    assert ece(p, same) < 0.01
    assert ece(np.clip(p + 0.3, 0, 1), same) > 0.2
    r = reliability(p, same)
    assert r["count"].sum() == len(p) and np.all(np.abs(r["match_share"] - r["mean_prob"]) < 0.02)
