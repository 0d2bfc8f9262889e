"""What the pair model's scoring costs per pair, its features apart from its trees, for tree shapes.

Fits the pair model on every out-of-fold candidate pair of the dev titles (TF-IDF and phash, one
gallery), once per shape, then times computing the pairs' features and the trees' scoring of them
(the features repeated ``--repeat`` times so the trees' time is not lost in noise), after one untimed
pass that fills the context's caches. One thread.

    python -m benchmarks.pair_trees
    python -m benchmarks.pair_trees --shape default num_leaves=7,min_data_in_leaf=200,lambda_l2=30,feature_fraction=0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import DEV_CSV
from benchmarks.gallery_size import tuning_galleries
from pipeline.config import load_config
from pipeline.data.contract import read_postings
from pipeline.data.folds import make_folds
from pipeline.matching.decide import MatchSettings
from pipeline.matching.pair_features import pair_features
from pipeline.matching.pair_model import PairModel

SMALL = "num_leaves=7,min_data_in_leaf=200,lambda_l2=30,feature_fraction=0.5"


def parse_shape(text: str) -> dict[str, float]:
    """``default`` or ``key=value,...`` over the keys of :data:`pipeline.matching.pair_model.DEFAULT_TREES`."""
    if text == "default":
        return {}
    shape = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        shape[key] = int(value) if key in ("num_leaves", "min_data_in_leaf") else float(value)
    return shape


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEV_CSV)
    p.add_argument("--shape", nargs="+", default=["default", SMALL], help="tree shapes: default or key=value,...")
    p.add_argument("--repeat", type=int, default=10, help="copies of the features the trees score")
    args = p.parse_args(argv)

    cfg = load_config(None, ["modalities=[tfidf,phash]", "threads=1"])
    df = read_postings(args.data, labelled=True)
    labels = df["label_group"].to_numpy()
    galleries = tuning_galleries(cfg, df, make_folds(labels, cfg.folds.n_splits, cfg.seed), None)
    c, context = galleries.candidates(MatchSettings()), galleries.context(MatchSettings())
    pair_features(c, PairModel(sorted(c.sims)).features, context)  # the context's caches, untimed
    for text in args.shape:
        model = PairModel(sorted(c.sims), threads=1, trees=parse_shape(text)).fit(c, labels, context)
        t0 = time.perf_counter()
        x = pair_features(c, model.features, context)
        features = time.perf_counter() - t0
        x = np.tile(x, (args.repeat, 1))
        t0 = time.perf_counter()
        model.booster.predict(x, num_threads=1)
        trees = time.perf_counter() - t0
        leaves = sum(t["num_leaves"] for t in model.booster.dump_model()["tree_info"])
        row = {
            "shape": model.trees,
            "pairs": len(c),
            "features_us_per_pair": round(1e6 * features / len(c), 2),
            "trees_us_per_pair": round(1e6 * trees / len(x), 2),
            "leaves": leaves,
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
