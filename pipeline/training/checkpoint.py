"""What a training run leaves behind and how it is picked up again: identity, seeds, RNG states,
the full-state checkpoint and the per-epoch logs.

A run's *identity* is its modality, config, seed and a fingerprint of its data. A finished run with
the same identity is reused, an unfinished one resumes from ``last.pt``, and a folder holding a run
of another identity is refused with a message that says what differs.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.io import read_json, write_csv, write_json
from pipeline.paths import ModelPaths


class RunStateError(RuntimeError):
    """An output folder that holds another or an unfinished run; the message says what to do."""


# Config keys that change nothing in the weights a run produces: a resumed or finished run may
# differ from the current config in these.
RESUME_IGNORED = frozenset({"train.num_workers", "train.final", "train.keep_last", "embed_batch_size"})

# Config keys added after runs were saved without them, with the value that does what those runs
# did: a saved run that lacks such a key matches a config holding this value.
ADDED_KEYS = {
    "train.keep_last": False,
    "train.sample_weight_power": 0.0,
    "head.margin_size_power": 0.0,
    "head.margin_size_min": 0.5,
    "head.margin_size_max": 1.5,
    "head.sample_rate": 1.0,
}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every GPU) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers; unlike seed + epoch, (1, 0) and (0, 1) differ."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def data_fingerprint(modality: str, items: Sequence, y: np.ndarray, classes: np.ndarray) -> str:
    """A hash of the training rows: image file names (not their folder, which may move) or titles,
    with their class ids and classes."""
    h = hashlib.sha256()
    for item in items:
        h.update((Path(str(item)).name if modality == "image" else str(item)).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    h.update("\0".join(map(str, np.asarray(classes).tolist())).encode())
    return h.hexdigest()[:16]


def get_rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's generator states, as tensors and plain types (``weights_only`` loads them)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def existing_run(
    files: ModelPaths, identity: Mapping[str, Any], *, resume: bool, overwrite: bool, clear: bool = True
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """What a model folder already holds: (the log of a finished run to skip to, or the checkpoint
    to resume from); both None for a fresh start. Raises when it holds another run.

    ``overwrite`` empties the folder when ``clear`` (under torchrun, rank 0 alone clears it).
    """
    if overwrite:
        if clear:
            files.clear()
        return None, None
    if files.model.exists() and files.log_json.exists():
        log = read_json(files.log_json)
        if log.get("done"):
            check_same_run(log["run"], identity, files.log_json)
            return log, None
    if not files.last.exists():
        return None, None
    if not resume:
        raise RunStateError(
            f"{files.last} holds an unfinished run: pass resume=True to continue it or overwrite=True to start over"
        )
    ckpt = torch.load(files.last, map_location="cpu", weights_only=True)
    check_same_run(ckpt["run"], identity, files.last)
    return None, ckpt


def check_same_run(saved: Mapping[str, Any], now: Mapping[str, Any], where: Path) -> None:
    """Raise if a saved run differs from the requested one in anything that shapes the weights."""
    a, b = _flatten(saved), _flatten(now)
    for key, value in ADDED_KEYS.items():
        a.setdefault(f"cfg.{key}", value)
    diffs = [
        f"{k}: {a.get(k, '<absent>')!r} there, {b.get(k, '<absent>')!r} now"
        for k in sorted(set(a) | set(b))
        if k.removeprefix("cfg.") not in RESUME_IGNORED and a.get(k, "<absent>") != b.get(k, "<absent>")
    ]
    if diffs:
        raise RunStateError(
            f"{where} belongs to a different run ({'; '.join(diffs)}); use another output folder "
            "or overwrite=True to start over"
        )


def write_logs(files: ModelPaths, context: Mapping[str, Any], history: list[dict], done: bool) -> None:
    """``log.csv`` (one row per epoch) and ``log.json`` (the same rows, the run's context and ``done``)."""
    write_csv(pd.DataFrame(history), files.log_csv)
    write_json({**context, "done": done, "history": history}, files.log_json)


def run_summary(files: ModelPaths, history: list[dict], skipped: bool) -> dict[str, Any]:
    return {
        "model_path": str(files.model),
        "out_dir": str(files.root),
        "skipped": skipped,
        "epochs": len(history),
        "steps": history[-1]["steps"] if history else 0,
        "history": history,
        "final": history[-1] if history else {},
    }


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
