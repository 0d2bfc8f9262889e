import numpy as np
import pytest

from pipeline.metric import f1_from_pairs, f1_from_sets, group_sizes, score_matches, true_sets_from_labels


def test_perfect_and_self_only():
    true = [{"a", "b"}, {"a", "b"}, {"c"}]
    assert f1_from_sets(true, true)["f1"] == 1.0
    # Predicting only itself: F1 = 2*1/(1+2) for a and b, 1 for c.
    pred = [{"a"}, {"b"}, {"c"}]
    assert f1_from_sets(pred, true)["f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_hand_made_case():
    # a's truth {a,b,c}; it predicts {a,b,d}: hits 2, |P| 3, |T| 3 -> F1 2/3, P 2/3, R 2/3.
    out = f1_from_sets([{"a", "b", "d"}], [{"a", "b", "c"}])
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    # Over-prediction: {a,b,c,d,e} vs {a,b}: F1 = 2*2/(5+2).
    assert f1_from_sets([{"a", "b", "c", "d", "e"}], [{"a", "b"}])["f1"] == pytest.approx(4 / 7)


def test_score_matches_requires_every_posting():
    truth = true_sets_from_labels(["a", "b", "c"], [1, 1, 2])
    assert truth["a"] == {"a", "b"} and truth["c"] == {"c"}
    with pytest.raises(ValueError, match="no prediction"):
        score_matches({"a": {"a"}}, truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_f1_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 60
    labels = rng.integers(0, 15, size=n)
    pairs = {(int(i), int(j)) for i, j in rng.integers(0, n, size=(300, 2)) if i != j}
    rows = np.array([p[0] for p in pairs])
    cols = np.array([p[1] for p in pairs])
    same = (labels[rows] == labels[cols]).astype(float)
    fast = f1_from_pairs(rows, same, group_sizes(labels))
    pred = [{i} | {j for (a, j) in pairs if a == i} for i in range(n)]
    true = [set(np.flatnonzero(labels == labels[i]).tolist()) for i in range(n)]
    slow = f1_from_sets(pred, true)
    for key in ("f1", "precision", "recall"):
        assert fast[key] == pytest.approx(slow[key], abs=1e-12)
    subset = np.arange(n) % 2 == 0
    part = f1_from_pairs(rows, same, group_sizes(labels), subset=subset)
    ref = f1_from_sets([pred[i] for i in range(0, n, 2)], [true[i] for i in range(0, n, 2)])
    assert part["f1"] == pytest.approx(ref["f1"], abs=1e-12)
    assert part["rows"] == subset.sum()
