"""A node's ROS parameters declared from its config dataclass: one place for names, defaults and rules."""

from __future__ import annotations

import dataclasses
import typing
from typing import TypeVar

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from sop_ros.configs import ConfigError, from_dict

T = TypeVar("T")

# Arrays are declared with their type: an empty default list carries none (rclpy would guess a byte array).
_ARRAY_TYPES = {
    str: Parameter.Type.STRING_ARRAY,
    float: Parameter.Type.DOUBLE_ARRAY,
    int: Parameter.Type.INTEGER_ARRAY,
    bool: Parameter.Type.BOOL_ARRAY,
}


def declare_config(node: Node, cls: type[T]) -> T:
    """Declare one parameter per field of `cls`, then validate the values given to the node.

    A field that is itself a config (e.g. `zenoh`) becomes dotted parameters (`zenoh.connect`), which is how
    ROS 2 reads a nested mapping in a parameters file.
    """
    values = _declare(node, cls, None, "")
    try:
        return from_dict(cls, values)
    except ConfigError as err:
        raise ConfigError(f"node {node.get_fully_qualified_name()}: parameter {err}") from None


def _field_default(f: dataclasses.Field) -> object:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _declare(node: Node, cls: type, defaults: object | None, prefix: str) -> dict:
    """Declare `cls`'s fields under `prefix`; defaults from the instance `defaults` (a nested config's
    defaults are its parent's default instance), else from the class."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        name = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = _declare(node, hints[f.name], default, f"{name}.")
        elif typing.get_origin(hints[f.name]) is tuple:
            array_type = _ARRAY_TYPES[typing.get_args(hints[f.name])[0]]
            descriptor = ParameterDescriptor(type=array_type.value)
            value = node.declare_parameter(name, list(default) or array_type, descriptor).value
            # rcl cannot type an empty YAML list, so an explicit `[]` arrives as "not set" (None).
            values[f.name] = [] if value is None else list(value)
        else:
            values[f.name] = node.declare_parameter(name, default).value
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
        elif hint is not None and typing.get_origin(hint) is tuple:
            if not value:
                if _field_default(defaults[name]):
                    raise ConfigError(f"{name}=[]: an empty list cannot be given to a node composed in one process")
                continue
            overrides.append(Parameter(prefix + name, _ARRAY_TYPES[typing.get_args(hint)[0]], list(value)))
        else:
            overrides.append(Parameter(prefix + name, value=value))
    return overrides
