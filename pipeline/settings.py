"""Typed settings: the checks each config section runs on itself, and building a section from a mapping.

Every config section is a dataclass defined in the module that reads it (``SearchConfig`` in
:mod:`pipeline.matching.neighbours`, ``TrainConfig`` in :mod:`pipeline.training.session` ...), and
:mod:`pipeline.config` composes them. This module is what they share: the error type, the checks
(:func:`require`), and :func:`build`, which turns a mapping (YAML, a saved file) into a section,
refusing unknown keys with the list of valid ones and values of the wrong type.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


class Invalid(ConfigError):
    """A value refused by a section's own checks; its key is relative to the section, and
    :func:`build` prefixes the section's path (``train.epochs`` -> ``image.train.epochs``)."""


def require(ok: bool, key: str, rule: str, value: Any) -> None:
    """Refuse ``value`` of ``key`` unless ``ok``; ``rule`` says what it must be."""
    if not ok:
        raise Invalid(f"{key} must be {rule}, got {value!r}")


def require_positive(section: Any, *keys: str) -> None:
    for key in keys:
        require(getattr(section, key) >= 1, key, ">= 1", getattr(section, key))


def build(cls: type, data: dict[str, Any], prefix: str = "", ignore_unknown: bool = False) -> Any:
    """A ``cls`` section from a mapping: nested sections merged onto their defaults, leaves checked.

    Args:
        prefix: the section's dotted path, for messages (``"image."``).
        ignore_unknown: drop keys ``cls`` does not have instead of refusing them (files written
            with more fields, such as an encoder saved with its training settings).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown and not ignore_unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if name not in fields:
            continue
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            merged = _merge(dataclasses.asdict(default), value, f"{prefix}{name}")
            kwargs[name] = build(type(default), merged, f"{prefix}{name}.", ignore_unknown)
        else:
            kwargs[name] = _coerce(value, hints.get(name, type(default)), f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except Invalid as e:
        raise ConfigError(f"{prefix}{e}") from None


def _merge(base: dict[str, Any], update: Any, where: str) -> dict[str, Any]:
    if not isinstance(update, dict):
        raise ConfigError(f"{where} must be a mapping, got {update!r}")
    out = dict(base)
    for key, value in update.items():
        # A mapping of names to numbers (fusion.weights) is a leaf, replaced whole.
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "weights":
            out[key] = _merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a leaf value against its field's type; ints are accepted where floats are."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return value
        hint = rest[0]
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if origin is float:
        return number(value, where)
    if origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of names, got {value!r}")
        return value
    if origin is dict:  # the only mappings are name -> weight
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where} must be a mapping of names to numbers, got {value!r}")
        return {k: number(v, f"{where}.{k}") for k, v in value.items()}
    if origin is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def number(value: Any, where: str) -> float:
    """A finite float from a YAML value (YAML 1.1 reads "3e-3", with no dot, as a string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)
