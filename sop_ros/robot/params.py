"""A node's ROS parameters declared from its config dataclass: one place for names, defaults and rules.

A config class names the fields a running node applies when they change (its `LIVE` set: limits, rates, timeouts
read at each use). Those accept `ros2 param set`, validated by the same rules as the YAML, and the node is told;
every other parameter is declared read-only, so that setting it is refused with that reason instead of being
stored and silently changing nothing.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from typing import TypeVar

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from sop_ros.configs import ConfigError, from_dict, to_dict

T = TypeVar("T")

# Arrays are declared with their type: an empty default list carries none (rclpy would guess a byte array).
_ARRAY_TYPES = {
    str: Parameter.Type.STRING_ARRAY,
    float: Parameter.Type.DOUBLE_ARRAY,
    int: Parameter.Type.INTEGER_ARRAY,
    bool: Parameter.Type.BOOL_ARRAY,
}


def declare_config(node: Node, cls: type[T], on_change: Callable[[T], None] | None = None) -> T:
    """Declare one parameter per field of `cls`, then validate the values given to the node.

    A field that is itself a config (e.g. `zenoh`) becomes dotted parameters (`zenoh.connect`), which is how
    ROS 2 reads a nested mapping in a parameters file. Fields in `cls.LIVE` may be set at run time: the whole
    config, validated again, goes to `on_change` (required when there are such fields).
    """
    live = live_fields(cls)
    if live and on_change is None:
        raise TypeError(f"{cls.__name__} has live parameters ({', '.join(sorted(live))}): pass on_change")
    values = _declare(node, cls, None, "", live)
    try:
        config = from_dict(cls, values)
    except ConfigError as err:
        raise ConfigError(f"node {node.get_fully_qualified_name()}: parameter {err}") from None
    if live:
        current = [config]

        def check(params: list[Parameter]) -> SetParametersResult:
            try:
                updated(current[0], params)
            except ConfigError as err:
                return SetParametersResult(successful=False, reason=f"parameter {err}")
            return SetParametersResult(successful=True)

        def apply(params: list[Parameter]) -> None:
            current[0] = updated(current[0], params)
            mine = [p for p in params if p.name in live]
            if mine:
                node.get_logger().info("parameters set: " + ", ".join(f"{p.name}={p.value!r}" for p in mine))
                on_change(current[0])

        node.add_on_set_parameters_callback(check)
        node.add_post_set_parameters_callback(apply)
    return config


def live_fields(cls: type) -> frozenset[str]:
    """The fields of config `cls` that a running node applies when set."""
    return getattr(cls, "LIVE", frozenset())


def updated(config: T, params: list[Parameter]) -> T:
    """`config` with its live fields among `params` set, checked by the config's own rules (others, such as
    `use_sim_time`, are not the config's)."""
    values = to_dict(config)
    for param in params:
        if param.name not in live_fields(type(config)):
            continue
        value = param.value
        values[param.name] = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "tolist") else value
    return from_dict(type(config), values)


def _field_default(f: dataclasses.Field) -> object:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _declare(node: Node, cls: type, defaults: object | None, prefix: str, live: frozenset[str]) -> dict:
    """Declare `cls`'s fields under `prefix`, read-only unless `live`; defaults from the instance `defaults` (a
    nested config's defaults are its parent's default instance), else from the class."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        name = prefix + f.name
        read_only = name not in live
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = _declare(node, hints[f.name], default, f"{name}.", live)
        elif typing.get_origin(hints[f.name]) is dict:
            # A parameter cannot hold a mapping (a nested one in a parameters file becomes dotted names): JSON text.
            text = node.declare_parameter(name, json.dumps(default), ParameterDescriptor(read_only=read_only)).value
            try:
                values[f.name] = json.loads(text) if text else {}
            except json.JSONDecodeError as err:
                raise ConfigError(f"node {node.get_fully_qualified_name()}: parameter {name}={text!r}: must be a "
                                  f"JSON object ({err})") from None
        elif typing.get_origin(hints[f.name]) is tuple:
            array_type = _ARRAY_TYPES[typing.get_args(hints[f.name])[0]]
            descriptor = ParameterDescriptor(type=array_type.value, read_only=read_only)
            value = node.declare_parameter(name, list(default) or array_type, descriptor).value
            # rcl cannot type an empty YAML list, so an explicit `[]` arrives as "not set" (None).
            values[f.name] = [] if value is None else list(value)
        else:
            values[f.name] = node.declare_parameter(name, default, ParameterDescriptor(read_only=read_only)).value
    return values


def parameter_overrides(cls: type, values: dict, prefix: str = "") -> list[Parameter]:
    """Parameters for a node composed in-process (`parameter_overrides=`), typed from its config class.

    rclpy re-types an empty list override as a byte array when declaring it, so an empty list is left out
    where the default is empty too, and refused where it is not. Nested configs become dotted names.
    """
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    overrides = []
    for name, value in values.items():
        hint = hints.get(name)
        if hint is not None and dataclasses.is_dataclass(hint):
            overrides += parameter_overrides(hint, value, f"{prefix}{name}.")
        elif hint is not None and typing.get_origin(hint) is dict:
            text = value if isinstance(value, str) else json.dumps(value)  # a plan's values are JSON already
            overrides.append(Parameter(prefix + name, value=text))
        elif hint is not None and typing.get_origin(hint) is tuple:
            if not value:
                if _field_default(defaults[name]):
                    raise ConfigError(f"{name}=[]: an empty list cannot be given to a node composed in one process")
                continue
            overrides.append(Parameter(prefix + name, _ARRAY_TYPES[typing.get_args(hint)[0]], list(value)))
        else:
            overrides.append(Parameter(prefix + name, value=value))
    return overrides
