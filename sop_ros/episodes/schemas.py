"""Message definitions as rosbag2 writes them into MCAP (schema encoding "ros2msg"): a type's .msg text, then
each type it uses. Read from the installed interface packages (ament index): needs a sourced ROS workspace."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

_PRIMITIVES = frozenset(
    "bool byte char float32 float64 int8 uint8 int16 uint16 int32 uint32 int64 uint64 string wstring".split()
)
_NAME = r"[A-Za-z][A-Za-z0-9_]*"
_TYPE_NAME = re.compile(rf"(?P<pkg>{_NAME})/(?:msg/)?(?P<name>{_NAME})")  # fullmatch
# A field's or constant's type: [pkg/[msg/]]Name, an optional bound (string<=N), an optional array suffix.
_FIELD_TYPE = re.compile(rf"^(?:(?P<pkg>{_NAME})/(?:msg/)?)?(?P<name>{_NAME})(?:<=\d+)?(?:\[(?:<=)?\d*\])?$")
_SEPARATOR = "=" * 80


@functools.cache
def message_definition(type_name: str) -> str:
    """The full definition of a message type ("pkg/msg/Type" or "pkg/Type") as rosbag2 writes it into MCAP.

    The type's own .msg text, then each type it uses, directly or not, exactly once: a line of 80 '=', a line
    `MSG: pkg/Type` and that type's .msg text. Raises ValueError for a malformed name or .msg line, LookupError
    when the package or its .msg file cannot be found.
    """
    root = _split_type_name(type_name)
    parts = [_msg_text(*root)]
    seen = {root}

    def append_dependencies(msg_type: tuple[str, str]) -> None:
        for dependency in _dependencies(*msg_type):
            if dependency not in seen:
                seen.add(dependency)
                parts.append(f"\n{_SEPARATOR}\nMSG: {dependency[0]}/{dependency[1]}\n{_msg_text(*dependency)}")
                append_dependencies(dependency)

    append_dependencies(root)
    return "".join(parts)


def schema_name(type_name: str) -> str:
    """The canonical "pkg/msg/Type" form of "pkg/Type" or "pkg/msg/Type" (what rosbag2 names schemas)."""
    package, name = _split_type_name(type_name)
    return f"{package}/msg/{name}"


def _split_type_name(type_name: str) -> tuple[str, str]:
    match = _TYPE_NAME.fullmatch(type_name)
    if match is None:
        raise ValueError(f"message type {type_name!r} is not of the form 'pkg/msg/Type' or 'pkg/Type'")
    return match["pkg"], match["name"]


@functools.cache
def _msg_text(package: str, name: str) -> str:
    try:
        share = Path(get_package_share_directory(package))
    except PackageNotFoundError:
        raise LookupError(
            f"message type {package}/msg/{name}: package {package!r} not found on AMENT_PREFIX_PATH="
            f"{os.environ.get('AMENT_PREFIX_PATH', '')!r}; source the workspace that provides it"
        ) from None
    path = share / "msg" / f"{name}.msg"
    if not path.is_file():
        raise LookupError(f"message type {package}/msg/{name}: no {path} (is the name spelled right?)")
    return path.read_text(encoding="utf-8")


@functools.cache
def _dependencies(package: str, name: str) -> tuple[tuple[str, str], ...]:
    """The message types a .msg file's fields use, in field order, each once."""
    found: dict[tuple[str, str], None] = {}
    for number, line in enumerate(_msg_text(package, name).splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        # The type is the first token; what follows (name, "= constant", default value, comment) names no type.
        type_token = stripped.split(None, 1)[0]
        match = _FIELD_TYPE.match(type_token)
        if match is None or len(stripped.split(None, 1)) < 2:
            raise ValueError(f"{package}/msg/{name}.msg line {number}: cannot read a field or constant: {line!r}")
        field_package, field_name = match["pkg"], match["name"]
        if field_package is None and field_name in _PRIMITIVES:
            continue
        if field_package is None:
            # A bare "Header" is ROS 1 style (invalid in ROS 2 .msg, but tools accept it); any other bare name
            # is a type of the same package.
            field_package = "std_msgs" if field_name == "Header" else package
        found[(field_package, field_name)] = None
    return tuple(found)
