"""Offline inference from a ``pipeline package`` folder: what the Kaggle inference notebook calls.

It reads only the package folder and the competition's data folder, and never reaches a hub. It
fails early or not at all: first every library the package's manifest lists is imported (and the
pair model's library checked for its version), then every artefact is loaded (config, settings,
pair model, every encoder), and only then is the test set read and embedded.

This module imports nothing beyond the standard library and the package's own light modules at
import time, so a missing library is reported by :func:`check_dependencies`, not by an import error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline import io
from pipeline.kaggle.requirements import check_installed
from pipeline.paths import PackagePaths

log = logging.getLogger("pipeline")


def check_dependencies(package_dir: str | Path) -> list[dict]:
    """Import every library the package's inference needs; raise one clear error listing what is missing.

    Raises:
        DependencyError: a library is missing (or fails to import), or the pair model's library is
            at another version than the one that saved it.
    """
    manifest = io.read_json(PackagePaths(Path(package_dir)).manifest)
    requires = manifest.get("requires", [])
    check_installed(requires)
    return requires


def predict_from_package(
    package_dir: str | Path, data_dir: str | Path, out_csv: str | Path, progress: bool = True
) -> dict:
    """Embed test.csv with the packaged encoders, match it with the packaged settings, write the CSV.

    Returns:
        A summary: rows, mean matches per posting, seconds per step, the output path.
    """
    t0 = time.perf_counter()
    check_dependencies(package_dir)
    timings: dict[str, float] = {"check_dependencies": time.perf_counter() - t0}
    # Only now the libraries that were just checked.
    from pipeline.config import load_config
    from pipeline.data import Dataset
    from pipeline.kaggle.package import read_recipe
    from pipeline.matching.decide import MatchSettings
    from pipeline.matching.predict import load_pair_model, match_postings, posting_vectors
    from pipeline.submission import write_submission

    t0 = time.perf_counter()
    package, data = PackagePaths(Path(package_dir)), Dataset(Path(data_dir))
    cfg = load_config(package.config)
    settings = MatchSettings.from_dict(io.read_json(package.thresholds)["settings"])
    pair_model = load_pair_model(package.pair_model, settings, cfg.threads)
    encoders = {}
    if cfg.learned:
        from pipeline.ensemble.members import load_members

        for m, members in read_recipe(package).items():
            encoders[m] = load_members([member for member, _ in members], [backbone for _, backbone in members])
    if set(cfg.learned) - set(encoders):
        raise ValueError(
            f"{package.encoders} has no encoder for {sorted(set(cfg.learned) - set(encoders))}; package the run again"
        )
    timings["load"] = time.perf_counter() - t0
    log.info(
        "[inference] loaded the settings%s and %s in %.0fs",
        " and the pair model" if pair_model is not None else "",
        ", ".join(f"{len(ms)} {m} member(s)" for m, ms in encoders.items()) or "no encoder",
        timings["load"],
    )
    t0 = time.perf_counter()
    test = data.read("test", check_images=cfg.needs_images)
    timings["read"] = time.perf_counter() - t0
    log.info(
        "[inference] %s: %s postings; embedding them (%s), then searching and matching",
        data.test_csv,
        f"{len(test):,}",
        ", ".join(cfg.modalities),
    )
    ids = test["posting_id"].to_numpy()
    t0 = time.perf_counter()
    vectors = posting_vectors(cfg, test, data.images_dir("test"), encoders=encoders, progress=progress, timings=timings)
    sub = match_postings(
        vectors,
        ids,
        settings,
        cfg.search,
        pair_model,
        blend_method=cfg.fusion.blend_method,
        timings=timings,
        titles=test["title"].to_numpy(),
    )
    log.info("[inference] embedded and matched in %.0fs", time.perf_counter() - t0)
    path = write_submission(sub, out_csv, ids)
    summary = {
        "rows": len(sub),
        "mean_matches": float((sub["matches"].str.count(" ") + 1).mean()),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "submission": str(path),
    }
    log.info("[inference] %s", summary)
    return summary
