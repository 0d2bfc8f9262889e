"""The benchmarks' own bookkeeping: how gallery_size splits the groups, how margin_table averages seeds."""

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.gallery_size import split_groups
from benchmarks.margin_table import rows_from_json


@pytest.mark.parametrize("share", [1 / 3, 0.25])
def test_rotated_parts_tune_on_every_group_once_and_never_split_one(share):
    labels = np.random.default_rng(0).integers(0, 40, 300)
    parts = [split_groups(labels, share, seed=5, part=r) for r in range(round(1 / share))]
    assert np.array_equal(np.sum(parts, axis=0), np.ones(len(labels)))  # each posting in exactly one part
    for part in parts:
        assert not set(labels[part]) & set(labels[~part])  # a group lies wholly in its part
    sizes = [len(set(labels[p])) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_the_random_split_draws_the_share_of_groups_asked():
    labels = np.repeat(np.arange(50), 3)
    part = split_groups(labels, 0.2, seed=1)
    assert len(set(labels[part])) == 10 and not set(labels[part]) & set(labels[~part])


def test_margin_rows_from_several_seeds_are_averaged_per_setting(tmp_path):
    def row(seed, f1, folds):
        return {"seed": seed, "f1": f1, "precision": f1, "recall": f1, "per_fold_f1": folds, "fold_rows": [3, 5]}

    for seed, (a, b) in {42: (0.8, 0.6), 43: (0.9, 0.7)}.items():
        rows = {"base": row(seed, a, [a, a]), "k3": row(seed, b, [b, 1.0])}
        (tmp_path / f"m{seed}.json").write_text(json.dumps({"rows": rows}))
    out = rows_from_json([tmp_path / "m42.json", tmp_path / "m43.json"])
    assert list(out) == ["base", "k3"]
    assert out["base"]["f1"] == pytest.approx(0.85) and out["base"]["seed_f1"] == [0.8, 0.9]
    assert out["k3"]["per_fold_f1"] == pytest.approx([0.65, 1.0]) and out["k3"]["seeds"] == [42, 43]


def test_every_experiment_is_a_valid_config_that_says_what_it_tries():
    from benchmarks.experiment import EXPERIMENTS, experiment_names
    from pipeline.config import load_config

    names = experiment_names()
    assert "dev_tfidf_phash" in names
    for name in names:
        load_config(EXPERIMENTS / f"{name}.yaml")
        assert (EXPERIMENTS / f"{name}.yaml").read_text().startswith("# ")


def test_image_branch_f1_counts_each_posting_in_its_own_set():
    from benchmarks.image_branch import f1_at, tuned_f1

    labels = np.array([0, 0, 1, 1, 2])
    same = labels[:, None] == labels[None, :]
    sims = np.where(same, 0.9, 0.1)
    assert f1_at(sims, same, 0.5) == pytest.approx(1.0)
    # At a threshold above every similarity each posting predicts itself alone: F1 2 / (1 + group size).
    assert f1_at(sims, same, 0.95) == pytest.approx(np.mean([2 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0]))
    result = tuned_f1((sims, same), (sims, same))
    assert result["test"] == result["val"] == pytest.approx(1.0) and 0.1 < result["threshold"] <= 0.9


def test_image_branch_rows_of_a_later_file_replace_the_same_method_and_seed(tmp_path):
    from benchmarks.image_branch import read_rows, table

    def row(method, seed, f1):
        scores = {"test": f1, "test_best": f1, "val": f1, "threshold": 0.5}
        return {"method": method, "seed": seed, "image": scores, "fused": {**scores, "weight": 0.5}, "seconds": 1}

    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in [row("naive", 0, 0.5), row("naive", 1, 0.6)]))
    (tmp_path / "b.jsonl").write_text(json.dumps(row("naive", 1, 0.7)) + "\n")
    rows = read_rows([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert sorted((r["seed"], r["image"]["test"]) for r in rows) == [(0, 0.5), (1, 0.7)]
    assert "| naive | 0.500 | 0.700 | 0.600 |" in table(rows)


def test_paired_f1_scores_each_posting_and_bootstraps_whole_groups(tmp_path):
    from benchmarks.paired_f1 import compare

    ids = [f"p{i}" for i in range(6)]
    pd.DataFrame({"posting_id": ids, "label_group": [0, 0, 1, 1, 2, 2]}).to_csv(tmp_path / "t.csv", index=False)
    right = [" ".join(ids[2 * (i // 2) : 2 * (i // 2) + 2]) for i in range(6)]
    wrong = [*right[:4], "p4", "p5"]  # group 2: p4 and p5 miss each other, F1 2/3 each
    pd.DataFrame({"posting_id": ids, "matches": right}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"posting_id": ids, "matches": wrong}).to_csv(tmp_path / "b.csv", index=False)
    r = compare(tmp_path / "t.csv", tmp_path / "a.csv", tmp_path / "b.csv", draws=500)
    assert r["f1_a"] == 1.0 and r["f1_b"] == pytest.approx(8 / 9)
    assert r["b_minus_a"] == pytest.approx(-1 / 9) and r["postings_changed"] == 2
    assert 0 < r["standard_error"] and r["low_95"] <= r["b_minus_a"] <= r["high_95"] <= 0
    same = compare(tmp_path / "t.csv", tmp_path / "a.csv", tmp_path / "a.csv", draws=50)
    assert same["b_minus_a"] == 0 and same["standard_error"] == 0
