"""Provenance: what every artefact of a run folder was built from, so the folder cannot lie.

When a stage finishes, ``run.json`` gets a record for it under ``provenance``::

    "tune": {"config": {...the config keys tune reads...}, "data": "<fingerprint of train/test.csv>",
             "inputs": {"prepare": "<id>", "embed": "<id>"}, "files": {"thresholds.json": "<sha256>", ...},
             "finished": "...", "id": "<hash of config, data, inputs and files>"}

A stage starts only if every stage it reads is recorded, was built with the config keys the
folder's config has now, from the current records of its own inputs, and left its files as they
are. Otherwise it names the stage to rerun. When a record changes (``prepare`` with other data or
config, a stage run again with different results, a stage that died after rewriting its files),
every record built on the old one is dropped and its files removed, so no old thresholds, report
or submission stays beside new data. Trained models are kept (hours of work; the training checks
its folder's identity itself and offers ``--resume`` or ``--overwrite``).

The rules are data: :data:`STAGES` in order, :func:`required` (the DAG), :func:`config_slice`
(the keys each stage reads) and :meth:`pipeline.paths.RunPaths.stage_files` (what each writes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.data import Dataset
from pipeline.matching.pair_model import LEGACY_TREES
from pipeline.paths import RunPaths

log = logging.getLogger("pipeline")

STAGES = ("prepare", "train-image", "train-text", "embed", "tune", "predict", "report")
# Encoder keys that change nothing in the trained weights; the same set as
# pipeline.training.checkpoint.RESUME_IGNORED (not imported: it would load torch).
MODEL_IGNORED = frozenset({"train.num_workers", "train.final", "embed_batch_size"})
# The sections tuning and prediction compute from (what ``tune`` overrides may change).
MATCHING_SECTIONS = ("tfidf", "phash", "search", "fusion", "decision", "pair", "group")
# Keys added after runs were recorded without them, each with the value that does what those runs
# did: a record that lacks one reads as made with that value, so adding a key sweeps no run.
ADDED_KEYS = {f"pair.{k}": v for k, v in LEGACY_TREES.items()}


def required(stage: str, cfg: Config) -> list[str]:
    """The stages whose outputs ``stage`` reads."""
    if stage == "prepare":
        return []
    if stage.startswith("train-"):
        return ["prepare"]
    embed = ["embed"] if cfg.learned else []
    return {
        "embed": ["prepare"] + [f"train-{m}" for m in cfg.learned],
        "tune": ["prepare"] + embed,
        "predict": ["tune"] + embed,
        "report": ["tune"],
    }[stage]


def _optional(stage: str) -> list[str]:
    """Stages read when they have run: the report names the submission."""
    return ["predict"] if stage == "report" else []


def config_slice(stage: str, cfg: Config) -> dict[str, Any]:
    """The config keys ``stage``'s outputs depend on (``threads``, worker counts and batch sizes
    for embedding change no result, so they are left out)."""
    d = cfg.to_dict()
    if stage == "prepare":
        return {
            "folds.n_splits": d["folds"]["n_splits"],
            "folds.seed": d["folds"]["seed"],
            "needs_images": cfg.needs_images,
        }
    if stage.startswith("train-"):
        m = stage.removeprefix("train-")
        return {**_flat(d[m], f"{m}.", MODEL_IGNORED), "seed": d["seed"]}
    if stage == "embed":
        out = {"seed": d["seed"], "folds.gallery": d["folds"]["gallery"], "baseline_untrained": d["baseline_untrained"]}
        for m in cfg.learned:
            out.update(_flat(d[m], f"{m}.", MODEL_IGNORED - {"train.final"}))
        return out
    if stage in ("tune", "predict"):
        return {
            "modalities": d["modalities"],
            "seed": d["seed"],
            "folds.gallery": d["folds"]["gallery"],
            "baseline_untrained": d["baseline_untrained"],
            **{k: v for section in MATCHING_SECTIONS for k, v in _flat(d[section], f"{section}.").items()},
        }
    return {}


def _flat(d: dict[str, Any], prefix: str, ignored: frozenset[str] = frozenset(), path: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{prefix + "train.lr": 1}``, leaving out ``ignored`` (keys
    relative to ``d``); a weight mapping stays one value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{path}{k}"
        if isinstance(v, dict) and k != "weights":
            out.update(_flat(v, prefix, ignored, f"{key}."))
        elif key not in ignored:
            out[f"{prefix}{key}"] = v
    return out


def data_fingerprint(data: Dataset, images: bool) -> str:
    """A hash of train.csv and test.csv and, when images are read, of the image folders' file
    names and sizes (decoding every image again at every stage would cost minutes)."""
    h = hashlib.sha256()
    for csv_path in (data.train_csv, data.test_csv):
        h.update(_file_sha(csv_path).encode() if csv_path.is_file() else b"-")
    if images:
        for split in ("train", "test"):
            folder = data.images_dir(split)
            if folder.is_dir():
                with os.scandir(folder) as it:  # hidden files (.DS_Store ...) are no images
                    for name, size in sorted((e.name, e.stat().st_size) for e in it if not e.name.startswith(".")):
                        h.update(f"{split}/{name}\0{size}\0".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def digest(data: bytes) -> str:
    """The digest a record keeps of a file holding ``data``."""
    return hashlib.sha256(data).hexdigest()[:16]


def build_record(
    stage: str, cfg: Config, data_fp: str, prov: dict[str, Any], paths: RunPaths, files: dict[str, str] | None = None
) -> dict[str, Any]:
    """The record of a finished stage; ``files`` (relative path -> digest) defaults to the
    digests of :meth:`RunPaths.stage_files` as they are now."""
    inputs = {u: prov[u]["id"] for u in required(stage, cfg) + _optional(stage) if u in prov}
    if files is None:
        files = {_rel(paths, p): _file_sha(p) for p in paths.stage_files(stage)}
    rec = {"config": config_slice(stage, cfg), "data": data_fp, "inputs": inputs, "files": files}
    rec["id"] = hashlib.sha256(json.dumps(rec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    rec["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return rec


def problem(
    prov: dict[str, Any], paths: RunPaths, cfg: Config, stage: str, data_fp: str, rerun: dict[str, str]
) -> str | None:
    """Why ``stage`` cannot use what the folder holds, naming what to rerun; None when it can.

    Args:
        rerun: the command that reruns each stage, for the message.
    """
    if stage != "prepare":
        prep = prov.get("prepare")
        if prep is not None and prep["data"] != data_fp:
            return (
                f"the data ({paths.root}'s train.csv, test.csv or images) changed since prepare: "
                f"rerun {rerun['prepare']}"
            )
    for u in required(stage, cfg):
        why = _upstream_problem(prov, paths, cfg, u, rerun, check_files=True)
        if why:
            return why
    return None


def _upstream_problem(
    prov: dict[str, Any], paths: RunPaths, cfg: Config, u: str, rerun: dict[str, str], check_files: bool
) -> str | None:
    rec = prov.get(u)
    if rec is None:
        return f"{u} has not run for this config (or its outputs were invalidated): run {rerun[u]} first"
    diff = _diff(rec["config"], config_slice(u, cfg))
    if diff:
        return f"{u} ran with {diff}: rerun {rerun[u]}"
    for v, vid in rec["inputs"].items():
        if prov.get(v, {}).get("id") != vid:
            return f"{u} was built from an earlier {v}: rerun {rerun[u]}"
    for v in required(u, cfg):
        why = _upstream_problem(prov, paths, cfg, v, rerun, check_files=False)
        if why:
            return why
    if check_files:
        for rel, digest in rec["files"].items():
            path = paths.root / rel
            if not path.is_file():
                return f"{path} is missing: rerun {rerun[u]}"
            if _file_sha(path) != digest:
                return f"{path} changed since {u} wrote it: rerun {rerun[u]}"
    return None


def _diff(then: dict[str, Any], now: dict[str, Any]) -> str:
    """``key=old (now new)`` for the first few keys that differ (a key of :data:`ADDED_KEYS` that
    ``then`` lacks counts as its value there); empty when none does."""
    then = {**{k: v for k, v in ADDED_KEYS.items() if k in now}, **then}
    keys = sorted(k for k in set(then) | set(now) if then.get(k, "<absent>") != now.get(k, "<absent>"))
    shown = [f"{k}={then.get(k, '<absent>')!r} (now {now.get(k, '<absent>')!r})" for k in keys[:3]]
    return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def sweep(prov: dict[str, Any], paths: RunPaths, cfg: Config) -> list[str]:
    """Drop every record that no longer holds (other config keys, or built from a record that has
    changed or gone), in stage order so that it cascades, and remove its outputs."""
    removed = []
    for s in STAGES:
        rec = prov.get(s)
        if rec is None:
            continue
        stale = _diff(rec["config"], config_slice(s, cfg)) or any(
            prov.get(v, {}).get("id") != vid for v, vid in rec["inputs"].items()
        )
        if stale:
            invalidate(prov, paths, s)
            removed.append(s)
    return removed


def forget_unrecorded(prov: dict[str, Any], paths: RunPaths) -> list[str]:
    """Remove the outputs of every stage without a record (left by a failed attempt, or by a
    version that kept no records): nothing vouches for them."""
    gone = [s for s in STAGES if s not in prov and any(p.exists() for p in paths.stage_outputs(s))]
    for s in gone:
        invalidate(prov, paths, s)
    return gone


def invalidate(prov: dict[str, Any], paths: RunPaths, stage: str) -> None:
    """Forget ``stage``'s record and remove its outputs (see :meth:`RunPaths.stage_outputs`)."""
    prov.pop(stage, None)
    for p in paths.stage_outputs(stage):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        log.info("[provenance] removed %s (built by an earlier %s)", p, stage)


def snapshot(paths: RunPaths, stage: str) -> dict[str, tuple[int, int, int]]:
    """(size, mtime, inode) of a stage's files: a failed attempt that changed any is detected."""
    out = {}
    for p in paths.stage_files(stage):
        st = p.stat()
        out[_rel(paths, p)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def _rel(paths: RunPaths, p: Path) -> str:
    return p.relative_to(paths.root).as_posix()
