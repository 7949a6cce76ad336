"""Configs as frozen dataclasses, built from YAML and validated on load.

Every error names where the bad value sits (`nodes.sim_robot.task`), the value, and what is allowed, so a
wrong key or value stops a robot or learner at start, not an hour into a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message says which and what is allowed."""


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise a ConfigError naming `key`, its `value` and what is `allowed` unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {allowed}")


def load_config(cls: type[T], path: str | Path) -> T:
    """Read and validate a YAML config file; errors start with the file's path."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return from_dict(cls, {} if data is None else data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build the dataclass `cls` from plain YAML data, checking keys, types and the class's own rules."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{prefix}{key}: unknown key{hint}; allowed keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _convert(hints[key], value, f"{prefix}{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain YAML-able data (tuples become lists) that `from_dict` turns back into the same config.

    None values are left out: in YAML an empty section means "with defaults", so an absent node must be absent.
    """
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:  # free-form YAML data (a plugin's keyword arguments): the plugin checks it
        return value
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        # A section written with no value (`teleop_arbiter:`) means "with defaults", not "absent".
        if value is None and not dataclasses.is_dataclass(inner):
            return None
        return _convert(inner, value, key)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, {} if value is None else value, key)
    if origin is Literal:
        require(value in args, key, value, f"must be one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        require(isinstance(value, (list, tuple)), key, value, f"must be a list of {args[0].__name__}")
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        require(isinstance(value, Mapping), key, value, "must be a mapping")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        require(ok, key, value, "must be a number")
        return float(value)
    if hint is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, value, "must be an integer")
        return value
    if hint in (bool, str):
        require(isinstance(value, hint), key, value, f"must be a {hint.__name__}")
        return value
    raise TypeError(f"{key}: config fields of type {hint!r} are not supported")
