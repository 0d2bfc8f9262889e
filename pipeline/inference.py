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
from pipeline.matching import MatchSettings
from pipeline.submission import write_submission

log = logging.getLogger("pipeline")


def predict_from_package(package_dir: str | Path, data_dir: str | Path, out_csv: str | Path,
                         batch_size: int = 64, progress: bool = True) -> dict:
    """Embed test.csv with the packaged encoders, match it with the packaged settings, write the CSV.

    Returns:
        A summary: rows, mean matches per posting, seconds per step, the output path.
    """
    from pipeline.encoders import load_encoder
    from pipeline.stages import encoder_items, load_pair_model, match_submission, unsupervised_vectors
    from pipeline.train import embed_items

    package_dir, data = Path(package_dir), Dataset(Path(data_dir))
    cfg = load_config(package_dir / "config.yaml")
    settings = MatchSettings.from_dict(io.read_json(package_dir / "thresholds.json")["settings"])
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    test = data.read("test", check_images=cfg.needs_images)
    ids = test["posting_id"].to_numpy()
    vectors = unsupervised_vectors(cfg, test, data.images_dir("test"))
    timings["read_and_unsupervised"] = time.perf_counter() - t0
    for m in cfg.learned:
        t0 = time.perf_counter()
        text_dir = package_dir / "models" / "text" / "backbone" if m == "text" else None
        model = load_encoder(package_dir / "models" / m / "model.pt", text_model_dir=text_dir)
        vectors[m] = embed_items(model, encoder_items(data, m, test, "test"), batch_size=batch_size, progress=progress)
        timings[f"embed_{m}"] = time.perf_counter() - t0
    sub = match_submission(vectors, ids, settings, cfg, timings=timings,
                           pair_model=load_pair_model(package_dir, settings))
    path = write_submission(sub, out_csv, ids)
    summary = {
        "rows": len(sub),
        "mean_matches": float(np.mean(sub["matches"].str.count(" ") + 1)),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "submission": str(path),
    }
    log.info("[inference] %s", summary)
    return summary
