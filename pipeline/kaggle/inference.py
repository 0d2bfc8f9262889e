"""Offline inference from a ``pipeline package`` folder: what the Kaggle inference notebook calls.

It reads only the package folder and the competition's data folder, and never reaches a hub.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipeline import io
from pipeline.config import load_config
from pipeline.data import Dataset
from pipeline.matching.decide import MatchSettings
from pipeline.matching.pairs import threads_of
from pipeline.matching.predict import load_pair_model, match_postings, posting_vectors
from pipeline.paths import PackagePaths
from pipeline.submission import write_submission

log = logging.getLogger("pipeline")


def predict_from_package(package_dir: str | Path, data_dir: str | Path, out_csv: str | Path,
                         progress: bool = True) -> dict:
    """Embed test.csv with the packaged encoders, match it with the packaged settings, write the CSV.

    Returns:
        A summary: rows, mean matches per posting, seconds per step, the output path.
    """
    from pipeline.models.encoders import load_encoder  # torch and transformers: only for learned modalities

    package, data = PackagePaths(Path(package_dir)), Dataset(Path(data_dir))
    cfg = load_config(package.config)
    settings = MatchSettings.from_dict(io.read_json(package.thresholds)["settings"])
    pair_model = load_pair_model(package.pair_model, settings, threads_of(cfg))
    encoders = {m: load_encoder(package.model(m), text_model_dir=package.text_backbone() if m == "text" else None)
                for m in cfg.learned}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    test = data.read("test", check_images=cfg.needs_images)
    timings["read"] = time.perf_counter() - t0
    ids = test["posting_id"].to_numpy()
    vectors = posting_vectors(cfg, test, data.images_dir("test"), encoders=encoders, progress=progress,
                              timings=timings)
    sub = match_postings(vectors, ids, settings, cfg.match, pair_model=pair_model, timings=timings,
                         titles=test["title"].to_numpy())
    path = write_submission(sub, out_csv, ids)
    summary = {
        "rows": len(sub),
        "mean_matches": float(np.mean(sub["matches"].str.count(" ") + 1)),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "submission": str(path),
    }
    log.info("[inference] %s", summary)
    return summary
