"""Offline backbone weights mapped onto a timm model, checked: every tensor placed, or a clear refusal.

The file that ``image.weights`` names (:mod:`pipeline.models.weight_sources`) is mapped onto the timm
backbone:

1. by name, when the file is in timm's own key names;
2. else by order and shape: the i-th tensor of the file goes to the i-th tensor of the model, and
   every pair must have the same shape. A classifier at the end of the file (a Linear's weight and
   bias that the backbone, built without one, has no place for) is dropped and said so.

Every tensor of the backbone must be mapped; anything else is refused with a :class:`WeightsMismatch`
(a config error: ``prepare`` exits 2 with one line) that says how many matched, the first pair that
did not, and how to remap. ``partial=True`` (``image.weights_partial``) loads what matches by name and
leaves the rest at random init, with a warning in run.log. BatchNorm's ``num_batches_tracked``
counters are neither mapped nor required. ``python -m pipeline.models.weights SPEC [BACKBONE]``
prints the whole mapping.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn

from pipeline.models.weight_sources import PACKAGES, WEIGHT_SUFFIXES, package_of, resolve_weights
from pipeline.settings import ConfigError

log = logging.getLogger("pipeline")

_COUNTER = "num_batches_tracked"


class WeightsMismatch(ConfigError):
    """A weights file whose tensors do not all map onto the backbone."""


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` weights file, unwrapped, in file order.

    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is opened and ``module.`` prefixes
    (from DataParallel / DDP) are stripped. Pickled files are read with ``weights_only=True``, so a
    file holding arbitrary objects is refused rather than executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"weights file {path}: unsupported suffix {path.suffix!r}; expected one of {WEIGHT_SUFFIXES}")
    if path.suffix == ".safetensors":
        obj: Any = load_safetensors(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # the unpickler raises several types for a disallowed object
            raise ValueError(
                f"weights file {path} could not be read as a plain state dict ({e}); re-save it with "
                "torch.save(model.state_dict(), path)"
            ) from e
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


@dataclasses.dataclass
class WeightsMapping:
    """How a file's tensors were mapped onto a backbone; :meth:`summary` goes into run.json."""

    source: str  # what image.weights said
    backbone: str
    method: str  # "name" | "order" | "partial"
    pairs: list[tuple[str, str, tuple[int, ...]]]  # (file key, model key, shape), in model order
    dropped: list[str]  # file keys not loaded (a classifier, or what a partial load could not place)
    missing: list[str]  # model keys left at random init (partial loading only)
    n_model: int
    path: str = ""
    sha256: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": self.path,
            "sha256": self.sha256,
            "backbone": self.backbone,
            "method": self.method,
            "mapped": len(self.pairs),
            "of": self.n_model,
            "dropped": self.dropped,
            "missing": self.missing,
        }

    def describe(self) -> str:
        """The run.log line: ``weights loaded: N of M tensors from SOURCE ...``."""
        how = {"name": "by name", "order": "by order and shape", "partial": "by name, PARTIAL"}[self.method]
        where = f"{self.path}, " if self.path and self.path != self.source else ""
        text = (
            f"weights loaded: {len(self.pairs)} of {self.n_model} tensors from {self.source} "
            f"({where}sha256 {self.sha256[:12] or '?'}) into {self.backbone}, mapped {how}"
        )
        first = self.pairs[0] if self.pairs else None
        if first is not None and first[0] != first[1]:
            text += f" ({first[0]} -> {first[1]}, ...)"
        if self.dropped:
            text += f"; not loaded: {_few(self.dropped)}"
        if self.missing:
            text += f"; {len(self.missing)} left at random init: {_few(self.missing)}"
        return text

    def table(self) -> str:
        """The whole mapping, one ``file key<TAB>model key<TAB>shape`` line per tensor."""
        return "".join(f"{a}\t{b}\t{list(s)}\n" for a, b, s in self.pairs)


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def map_state_dict(
    state: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    source: str = "weights",
    partial: bool = False,
    path: str | os.PathLike | None = None,
) -> tuple[dict[str, torch.Tensor], WeightsMapping]:
    """Map ``state``'s tensors onto ``model``'s keys, checked.

    Args:
        state: the file's tensors, in the file's order.
        model: the timm backbone to load into.
        source: names the weights in messages (``image.weights``).
        partial: load the tensors that match by name and shape and leave the rest at random
            init, rather than refusing an incomplete mapping.
        path: the file, named in the refusal when ``source`` is a package name.

    Returns:
        A state dict in the model's key names (no ``num_batches_tracked``) and the mapping.

    Raises:
        WeightsMismatch: not every tensor of the model is mapped (and ``partial`` is off).
    """
    own = {k: v for k, v in model.state_dict().items() if not k.endswith(_COUNTER)}
    theirs = {k: v for k, v in state.items() if not k.endswith(_COUNTER)}
    name = backbone_name(model)
    by_name = [k for k, v in own.items() if k in theirs and theirs[k].shape == v.shape]
    if len(by_name) == len(own):
        return _mapped(theirs, [(k, k) for k in own], own, [k for k in theirs if k not in own], "name", source, name)

    own_keys, their_keys = list(own), list(theirs)
    agree = 0  # the length of the prefix on which the order-and-shape pairing holds
    for a, b in zip(their_keys, own_keys):
        if theirs[a].shape != own[b].shape:
            break
        agree += 1
    extra = their_keys[len(own_keys) :]
    if agree == len(own_keys) and _is_classifier(extra, theirs, model):
        return _mapped(theirs, list(zip(their_keys, own_keys)), own, extra, "order", source, name)

    if partial:
        dropped = [k for k in theirs if k not in by_name]
        return _mapped(theirs, [(k, k) for k in by_name], own, dropped, "partial", source, name)
    where = source if path is None or str(path) == source else f"{source} ({path})"
    raise WeightsMismatch(_mismatch_message(where, source, name, own, theirs, by_name, agree, extra))


def _mapped(theirs, pairs, own, dropped, method, source, name) -> tuple[dict[str, torch.Tensor], WeightsMapping]:
    placed = {b for _, b in pairs}
    mapping = WeightsMapping(
        source=source,
        backbone=name,
        method=method,
        pairs=[(a, b, tuple(own[b].shape)) for a, b in pairs],
        dropped=list(dropped),
        missing=[k for k in own if k not in placed],
        n_model=len(own),
    )
    return {b: theirs[a] for a, b in pairs}, mapping


def _is_classifier(extra: list[str], theirs: Mapping[str, torch.Tensor], model: nn.Module) -> bool:
    """Whether the file's tensors left over after the backbone's are a classifier on its features:
    nothing, or a (classes, features) weight with an optional (classes,) bias."""
    if not extra:
        return True
    if len(extra) > 2:
        return False
    weight = theirs[extra[0]]
    features = getattr(model, "num_features", None)
    if weight.ndim != 2 or (features is not None and weight.shape[1] != features):
        return False
    return len(extra) == 1 or tuple(theirs[extra[1]].shape) == (weight.shape[0],)


def _mismatch_message(
    where: str, source: str, name: str, own: Mapping, theirs: Mapping, by_name: list[str], agree: int, extra: list[str]
) -> str:
    own_keys, their_keys = list(own), list(theirs)
    text = (
        f"image.weights={where} does not fit image.backbone={name}: the model has {len(own)} tensors, the "
        f"file {len(theirs)}; {len(by_name)} match by name and shape, and by order and shape the first "
        f"{agree} agree"
    )
    if agree < min(len(own_keys), len(their_keys)):
        a, b = their_keys[agree], own_keys[agree]
        text += f", then file tensor #{agree} {a} {list(theirs[a].shape)} meets model tensor {b} {list(own[b].shape)}"
    elif len(their_keys) < len(own_keys):
        text += f", then the file ends where the model has {len(own_keys) - agree} more (from {own_keys[agree]})"
    else:
        text += f", then the file has {len(extra)} more that are not a classifier (from {extra[0]})"
    package = package_of(source)
    if package is not None and package.backbone.removeprefix("tf_") != name.removeprefix("tf_"):
        return text + (
            f". {source} holds {package.backbone} weights: set image.backbone={package.backbone} (or "
            f"{package.backbone.removeprefix('tf_')}, onto which they map by order and shape)"
        )
    return text + (
        ". The keys can be remapped: set image.backbone to the timm model the file was trained as (its tensors "
        "then map by order and shape), or re-save the file in that model's key names (torch.save(state_dict)); "
        "`python -m pipeline.models.weights FILE BACKBONE` prints the mapping. image.weights_partial=true "
        "loads only the tensors that match by name and leaves the rest at random init"
    )


def backbone_name(model: nn.Module) -> str:
    """The timm architecture name of a backbone (its class name for another model)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_backbone_weights(
    model: nn.Module, spec: str | os.PathLike, partial: bool = False, announce: bool = True
) -> WeightsMapping:
    """Load the weights ``spec`` names (a package name or a file) into a timm backbone, checked.

    Args:
        model: the backbone (timm, any ``num_classes``).
        spec: ``image.weights``.
        partial: see :func:`map_state_dict`.
        announce: log the mapping in one ``weights loaded:`` line (a warning when partial); off
            for a caller that logs it where it belongs.

    Returns:
        The mapping, with the file's path and digest.

    Raises:
        ConfigError: the weights cannot be found; WeightsMismatch: they do not fit.
    """
    path, _ = resolve_weights(spec)
    try:
        state = read_state_dict(path)
    except ValueError as e:
        raise ConfigError(f"image.weights={spec}: {e}") from None
    mapped, mapping = map_state_dict(state, model, source=str(spec), partial=partial, path=path)
    result = model.load_state_dict(mapped, strict=False)
    left = sorted(k for k in result.missing_keys if not k.endswith(_COUNTER))
    if left != sorted(mapping.missing) or result.unexpected_keys:
        raise AssertionError(f"mapping of {spec} broke: {left[:3]} missing, {result.unexpected_keys[:3]} unexpected")
    mapping.path, mapping.sha256 = str(path), sha256(path)
    if announce:
        (log.warning if mapping.missing else log.info)("[weights] %s", mapping.describe())
    return mapping


def check_backbone_weights(backbone: str, spec: str, partial: bool = False) -> WeightsMapping:
    """Build ``backbone`` (no hub) and load ``spec`` into it: what ``prepare`` runs, so weights that
    do not fit are refused before any training. The caller logs the mapping."""
    import timm

    model = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
    return load_backbone_weights(model, spec, partial=partial, announce=False)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.models.weights SPEC [BACKBONE]``: print the whole mapping as a table."""
    import argparse

    import timm

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("spec", help="a weights package (" + ", ".join(PACKAGES) + ") or a weights file")
    parser.add_argument("backbone", nargs="?", help="timm model (default: the package's own)")
    args = parser.parse_args(argv)
    package = package_of(args.spec)
    backbone = args.backbone or (package.backbone if package is not None else None)
    if backbone is None:
        parser.error("name the timm backbone of a weights file")
    model = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="")
    mapping = load_backbone_weights(model, args.spec)
    print(mapping.describe())
    print(mapping.table(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
