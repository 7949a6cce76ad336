"""Reading finished episode files: their metadata, their message counts, every message decoded, or the streams
a learner uses (joint states, executed commands, who was in control, JPEG frames per camera). The stock MCAP
reader, messages decoded from the definitions stored in the file: no ROS needed.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from mcap.exceptions import EndOfFile
from mcap.reader import McapReader, make_reader
from mcap.summary import Summary
from mcap.writer import Writer
from mcap_ros2.decoder import DecoderFactory

from sop_ros.episodes.format import (
    CAMERA_COMPRESSED,
    CAMERA_IMAGE,
    COMMAND_TYPE,
    EPISODE_METADATA,
    EXECUTED_COMMAND,
    INTERVENTION_STATE,
    JOINT_STATE_TYPE,
    JOINT_STATES,
    ROBOT_COMMAND,
    SKIPPED_DIRS,
    START_METADATA,
)


def episode_files(root: Path | str) -> list[Path]:
    """Every .mcap file under `root`, recursively, except in .partial/ and quarantine/ directories, sorted."""
    root = Path(root)
    return sorted(
        path
        for path in root.rglob("*.mcap")
        if path.is_file() and not set(path.relative_to(root).parts[:-1]) & set(SKIPPED_DIRS)
    )


def episode_metadata(reader: McapReader) -> dict[str, str]:
    """The finished episode's metadata; a file without it (never finished) falls back to what its start said."""
    records = {record.name: dict(record.metadata) for record in reader.iter_metadata()}  # the last of each name
    return records.get(EPISODE_METADATA) or records.get(START_METADATA) or {}


# ---------------------------------------------------------------------------------------------------------
# Summaries: metadata and counts, nothing decoded
# ---------------------------------------------------------------------------------------------------------


def episode_counts(path: Path | str) -> tuple[dict[str, str], dict[str, int]]:
    """The episode metadata and the message count per topic, from the file's summary: nothing is decoded."""
    with open(path, "rb") as file:
        reader = make_reader(file)
        summary = reader.get_summary()
        if summary is None or summary.statistics is None:
            raise ValueError(f"{path}: no summary section; is it a finished episode file?")
        return episode_metadata(reader), _message_counts(summary)


def _message_counts(summary: Summary) -> dict[str, int]:
    """Messages per topic, from a file's summary statistics."""
    return {summary.channels[c].topic: n for c, n in summary.statistics.channel_message_counts.items()}


def check_episode_file(path: Path | str) -> tuple[dict[str, str], dict[str, int]]:
    """`episode_counts` of a file that must be a finished ROS 2 episode as the recorder writes it.

    Raises ValueError saying what is wrong: not MCAP, no summary, another profile or encoding, no messages.
    """
    try:
        with open(path, "rb") as file:
            reader = make_reader(file)
            header, summary = reader.get_header(), reader.get_summary()
            metadata = episode_metadata(reader) if summary is not None else {}
    except (EndOfFile, ValueError, struct.error) as err:
        raise ValueError(f"not a finished MCAP file: {type(err).__name__}: {err}") from None
    except Exception as err:  # the mcap reader raises its own exception types for damaged records
        raise ValueError(f"not a readable MCAP file: {type(err).__name__}: {err}") from None
    if summary is None or summary.statistics is None:
        raise ValueError("no summary section: not a finished episode file")
    if header.profile != "ros2":
        raise ValueError(f"MCAP profile {header.profile!r}, expected 'ros2'")
    for schema in summary.schemas.values():
        if schema.encoding != "ros2msg":
            raise ValueError(f"schema {schema.name!r} is encoded {schema.encoding!r}, expected 'ros2msg'")
    for channel in summary.channels.values():
        if channel.message_encoding != "cdr":
            raise ValueError(f"topic {channel.topic!r} is encoded {channel.message_encoding!r}, expected 'cdr'")
        if channel.schema_id not in summary.schemas:
            raise ValueError(f"topic {channel.topic!r} has no schema")
    if summary.statistics.message_count == 0:
        raise ValueError("no messages")
    return metadata, _message_counts(summary)


def recorded_cameras(path: Path | str) -> tuple[str, ...]:
    """The cameras an episode file holds JPEG frames of, in the order its recorder listed them."""
    try:
        with open(path, "rb") as file:
            summary = make_reader(file).get_summary()
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror or err}") from None
    except Exception as err:  # the mcap reader's errors for a damaged file have no common base class
        raise ValueError(f"{path}: not a readable MCAP episode file: {type(err).__name__}: {err}") from None
    if summary is None:
        raise ValueError(f"{path}: no MCAP summary section: not a finished episode file (unfinished or cut off)")
    counts = summary.statistics.channel_message_counts if summary.statistics else None
    cameras = []
    for channel in sorted(summary.channels.values(), key=lambda c: c.id):  # ids in the order it opened them
        name = channel.topic.partition("/cameras/")[2].partition("/")[0]
        framed = counts is None or counts.get(channel.id, 0) > 0
        if name and framed and channel.topic.endswith("/" + CAMERA_COMPRESSED.format(camera=name)):
            cameras.append(name)
    if not cameras:
        raise ValueError(f"{path}: no camera's JPEG frames (cameras/<name>/image_raw/compressed)")
    return tuple(cameras)


def common_recorded_cameras(paths: Sequence[Path]) -> tuple[str, ...]:
    """The cameras most of `paths` were recorded with, in their recorder's order (empty: no file names any); a
    file that lacks one of them is then refused by name rather than deciding what every sample holds."""
    found: Counter[tuple[str, ...]] = Counter()
    for path in paths:
        try:
            found[recorded_cameras(path)] += 1
        except Exception:  # noqa: BLE001 - an unreadable file is reported when it is indexed
            continue
    return found.most_common(1)[0][0] if found else ()


# ---------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------


class EpisodeMessage(NamedTuple):
    topic: str
    type_name: str  # schema name, "pkg/msg/Type"
    log_time_ns: int
    publish_time_ns: int
    message: Any  # decoded by mcap_ros2: fields as attributes, named as in the .msg


def read_episode(path: Path | str) -> tuple[dict[str, str], list[EpisodeMessage]]:
    """The episode metadata and every message, decoded, in log time order, of a finished episode file."""
    with open(path, "rb") as file:
        reader = make_reader(file, decoder_factories=[DecoderFactory()])
        metadata = episode_metadata(reader)
        messages = [
            EpisodeMessage(channel.topic, schema.name, message.log_time, message.publish_time, decoded)
            for schema, channel, message, decoded in reader.iter_decoded_messages()
        ]
    return metadata, messages


@dataclass
class RecordedStreams:
    """What a learner reads of one episode file, each list in time order (file order breaking ties)."""

    metadata: dict[str, str]
    topics: dict[str, str]  # role (JOINT_STATES, ROBOT_COMMAND, EXECUTED_COMMAND, ...) -> full topic ("": absent)
    states: list[tuple[int, tuple[str, ...], list[float]]]  # (log time, joint names, positions)
    commands: list[tuple[int, list[float]]]  # (log time, values)
    executed: list[tuple[int, list[float]]]  # (stamp of the state it ran from, values); empty if not reported
    interventions: list[tuple[int, int, int]]  # (header stamp, since, controller)
    frames: dict[str, list[tuple[int, bytes]]]  # camera -> (log time, JPEG)


def read_streams(path: Path | str, cameras: Sequence[str]) -> RecordedStreams:
    """The learner's streams of a finished episode file, with `cameras`' JPEG frames; ValueError naming the file
    and what is missing or unreadable."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            return _read_streams(path, make_reader(file, decoder_factories=[DecoderFactory()]), cameras)
    except ValueError:
        raise
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror or err}") from None
    except Exception as err:  # the mcap reader's errors for a damaged file have no common base class
        raise ValueError(f"{path}: not a readable MCAP episode file: {type(err).__name__}: {err}") from None


def _read_streams(path: Path, reader: McapReader, cameras: Sequence[str]) -> RecordedStreams:
    summary = reader.get_summary()
    if summary is None:
        raise ValueError(f"{path}: no MCAP summary section: not a finished episode file (unfinished or cut off)")
    metadata = episode_metadata(reader)
    if not metadata.get("task"):
        raise ValueError(f"{path}: the episode metadata names no task")
    channels = {}  # topic -> (schema name, messages; 1 if the file does not count them)
    for channel in summary.channels.values():
        schema = summary.schemas.get(channel.schema_id)
        count = summary.statistics.channel_message_counts.get(channel.id, 0) if summary.statistics else 1
        channels[channel.topic] = (schema.name if schema else "", count)
    topics = _topics(path, _namespace(path, channels), channels, cameras)

    role = {topic: key for key, topic in topics.items() if topic}
    states, commands, executed, interventions = [], [], [], []
    frames: dict[str, list] = {camera: [] for camera in cameras}
    # File order, then a stable sort by time: one topic's messages are written in the order they came.
    for _, channel, message, decoded in reader.iter_decoded_messages(topics=list(role), log_time_order=False):
        key = role[channel.topic]
        if key == JOINT_STATES:
            states.append((message.log_time, tuple(decoded.name), list(decoded.position)))
        elif key == ROBOT_COMMAND:
            commands.append((message.log_time, list(decoded.data)))
        elif key == EXECUTED_COMMAND:
            executed.append((_stamp_ns(decoded.header.stamp), list(decoded.position)))
        elif key == INTERVENTION_STATE:
            interventions.append((_stamp_ns(decoded.header.stamp), _stamp_ns(decoded.since), decoded.controller))
        else:
            frames[key].append((message.log_time, bytes(decoded.data)))
    by_time = itemgetter(0)
    for items in (states, commands, executed, *frames.values()):
        items.sort(key=by_time)
    return RecordedStreams(metadata, topics, states, commands, executed, interventions, frames)


def _namespace(path: Path, channels: dict[str, tuple[str, int]]) -> str:
    """The robot's namespace ("/robot_0/"), from the one topic holding its joint states."""
    found = [
        topic
        for topic, (schema, count) in channels.items()
        if topic.rsplit("/", 1)[-1] == JOINT_STATES and schema == JOINT_STATE_TYPE and count
    ]
    if not found:
        raise ValueError(f"{path}: no joint states (no {JOINT_STATE_TYPE} on a .../{JOINT_STATES} topic)")
    if len(found) > 1:
        raise ValueError(f"{path}: joint states on several topics ({', '.join(sorted(found))}): which robot is it?")
    return found[0][: -len(JOINT_STATES)]


def _topics(path: Path, ns: str, channels: dict[str, tuple[str, int]], cameras: Sequence[str]) -> dict[str, str]:
    """Role (JOINT_STATES, ROBOT_COMMAND, EXECUTED_COMMAND, INTERVENTION_STATE or a camera name) -> full topic
    ("" if absent)."""
    command = ns + ROBOT_COMMAND
    schema, count = channels.get(command, ("", 0))
    if not count:
        raise ValueError(f"{path}: no executed commands on {command}")
    if schema != COMMAND_TYPE:
        raise ValueError(f"{path}: commands on {command} are {schema}; only {COMMAND_TYPE} is read")
    topics = {JOINT_STATES: ns + JOINT_STATES, ROBOT_COMMAND: command}
    topics[INTERVENTION_STATE] = ns + INTERVENTION_STATE if ns + INTERVENTION_STATE in channels else ""
    executed = ns + EXECUTED_COMMAND
    topics[EXECUTED_COMMAND] = executed if channels.get(executed, ("", 0))[0] == JOINT_STATE_TYPE else ""
    missing = []
    for camera in cameras:
        compressed, raw = ns + CAMERA_COMPRESSED.format(camera=camera), ns + CAMERA_IMAGE.format(camera=camera)
        if channels.get(compressed, ("", 0))[1]:
            topics[camera] = compressed
        elif channels.get(raw, ("", 0))[1]:
            missing.append(f"{camera!r} (recorded uncompressed on {raw}; the dataset reads JPEG frames)")
        else:
            missing.append(repr(camera))
    if missing:
        recorded = sorted({t.split("/cameras/", 1)[1].split("/", 1)[0] for t in channels if "/cameras/" in t})
        raise ValueError(
            f"{path}: no frames of camera {', '.join(missing)}; the file has cameras: {', '.join(recorded) or 'none'}"
        )
    return topics


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


# ---------------------------------------------------------------------------------------------------------
# Copies
# ---------------------------------------------------------------------------------------------------------


def copy_episode(source: Path | str, target: Path | str, drop_topic: str | None = None,
                 rewrite: Callable[[str, bytes], bytes] | None = None, **metadata: str) -> Path:  # fmt: skip
    """A copy of an episode file with its episode metadata changed (e.g. a new episode_id), without the topics
    ending in `drop_topic`, each message's bytes passed through `rewrite(topic, data)` if given: test and benchmark
    data from real recordings."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as f, open(target, "wb") as out:
        reader = make_reader(f)
        summary = reader.get_summary()
        writer = Writer(out)
        writer.start(profile="ros2")
        schemas = {i: writer.register_schema(s.name, s.encoding, s.data) for i, s in summary.schemas.items()}
        channels = {
            i: writer.register_channel(c.topic, c.message_encoding, schemas[c.schema_id])
            for i, c in summary.channels.items()
            if not (drop_topic and c.topic.endswith(drop_topic))
        }
        for _, channel, message in reader.iter_messages(log_time_order=False):
            if channel.id in channels:
                data = rewrite(channel.topic, message.data) if rewrite else message.data
                writer.add_message(channels[channel.id], message.log_time, data, message.publish_time)
        for record in reader.iter_metadata():
            extra = metadata if record.name == EPISODE_METADATA else {}
            writer.add_metadata(record.name, {**record.metadata, **extra})
        writer.finish()
    return target
