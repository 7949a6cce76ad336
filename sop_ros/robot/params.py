"""A node's ROS parameters declared from its config dataclass: one place for names, defaults and rules."""

from __future__ import annotations

import dataclasses
import typing
from typing import TypeVar

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node

from sop_ros.configs import ConfigError, from_dict

T = TypeVar("T")

# Empty list defaults carry no type, so array parameters declare theirs explicitly.
_ARRAY_TYPES = {
    str: ParameterType.PARAMETER_STRING_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY,
    int: ParameterType.PARAMETER_INTEGER_ARRAY,
    bool: ParameterType.PARAMETER_BOOL_ARRAY,
}


def declare_config(node: Node, cls: type[T]) -> T:
    """Declare one parameter per field of `cls`, then validate the values given to the node."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if typing.get_origin(hints[f.name]) is tuple:
            descriptor = ParameterDescriptor(type=_ARRAY_TYPES[typing.get_args(hints[f.name])[0]])
            value = node.declare_parameter(f.name, list(default), descriptor).value
            # rcl cannot type an empty YAML list, so an explicit `[]` arrives as "not set" (None).
            values[f.name] = [] if value is None else list(value)
        else:
            values[f.name] = node.declare_parameter(f.name, default).value
    try:
        return from_dict(cls, values)
    except ConfigError as err:
        raise ConfigError(f"node {node.get_fully_qualified_name()}: parameter {err}") from None
