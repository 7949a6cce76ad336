"""Episode files: one crash-safe MCAP file per episode, and recovery of what a crash left behind. No rclpy.

Layout under the recording root:

    <root>/<episode_id>.mcap           finished episodes; a file appears here only complete (atomic rename)
    <root>/.partial/<episode_id>.mcap  the episode being recorded, or one a crash interrupted
    <root>/quarantine/<name>           partials nothing could be read from, each with <name>.reason.txt

Messages arrive already serialized (CDR bytes from a raw subscription) and go into compressed chunks. Each
completed chunk, and at least every flush period the chunk in progress, is flushed and fsynced, so a SIGKILL
or a power cut loses at most what came in since the last flush. `recover_partials` turns what a crash left in
.partial/ into complete episode files at the next start. Files are ROS 2 MCAP as rosbag2 writes them
(profile "ros2", schemas "ros2msg", messages "cdr"): Foxglove, the mcap tools and the learner read them as-is.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import math
import os
import re
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from mcap.exceptions import EndOfFile
from mcap.reader import McapReader, make_reader
from mcap.records import Channel, DataEnd, Footer, Header, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.summary import Summary
from mcap.writer import CompressionType, Writer
from mcap_ros2.decoder import DecoderFactory

from sop_ros.checksums import HashingWriter

PARTIAL_DIR = ".partial"
QUARANTINE_DIR = "quarantine"
# Metadata record names: the caller's start metadata is written first so that a crash does not lose it; the
# "episode" record is written by finish() and holds everything known about the episode.
START_METADATA = "episode_start"
EPISODE_METADATA = "episode"
# Suffix of a recovery's output while it is written: never ends in .mcap, so it is never taken for a partial.
_RECOVERING = ".recovering"

_EPISODE_ID = re.compile(r"[A-Za-z0-9._-]+")  # fullmatch: "$" would let a trailing newline through
_COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}


# ---------------------------------------------------------------------------------------------------------
# Message definitions (.msg text concatenated as rosbag2 stores it: MCAP schema encoding "ros2msg")
# ---------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------
# Disk errors
# ---------------------------------------------------------------------------------------------------------


class RecordingError(OSError):
    """A disk problem stopped a recording: no space, read-only, no permission, no such directory, ...

    A subclass of OSError, so `except OSError` catches it too; `errno` is the cause's errno and `path` the
    file or directory concerned. The message names the path, the cause and what to do. Finished episode files
    are never touched by the failed operation; what had reached the partial file stays there for
    `recover_partials`.
    """

    def __init__(self, message: str, path: Path, cause_errno: int | None) -> None:
        super().__init__(message)
        self.errno = cause_errno
        self.path = path


def _advice(code: int | None, directory: Path) -> str:
    if code == errno.ENOSPC:
        return f"free space on the disk holding {directory}, or record to another disk"
    if code == errno.EDQUOT:
        return f"free space in, or raise, the disk quota for {directory}"
    if code == errno.EROFS:
        return f"{directory} is on a read-only file system: remount it read-write or record to another directory"
    if code in (errno.EACCES, errno.EPERM):
        return f"make {directory} writable for this user (uid {os.getuid()}) or record to another directory"
    if code in (errno.ENOTDIR, errno.ENOENT, errno.EEXIST):
        blocker = _first_non_directory(directory)
        if blocker is not None:
            return f"{blocker} is a file, not a directory: choose a recording directory that can be created"
        return f"create {directory} or choose a recording directory that can be created"
    return f"check the disk holding {directory}"


def _first_non_directory(path: Path) -> Path | None:
    for candidate in reversed([path, *path.parents]):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def _recording_error(action: str, path: Path, directory: Path, exc: OSError) -> RecordingError:
    cause = exc.strerror or str(exc)
    return RecordingError(f"cannot {action} {path}: {cause}; {_advice(exc.errno, directory)}", path, exc.errno)


@contextmanager
def _disk_errors(action: str, path: Path, directory: Path) -> Iterator[None]:
    """Turn an OSError from the file system into a RecordingError that says what to do about it."""
    try:
        yield
    except RecordingError:
        raise
    except OSError as exc:
        raise _recording_error(action, path, directory, exc) from exc


def fsync_dir(directory: Path) -> None:
    """Make a new, renamed or removed directory entry durable (fsync of the file alone does not)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(file: IO[Any]) -> None:
    file.flush()
    os.fsync(file.fileno())


class BackgroundSync:
    """A file being written in pieces has its dirty pages flushed to disk on a thread every `every` bytes, so the
    fsync that makes it durable at the end has little left: writing and flushing overlap instead of taking turns
    (an upload acknowledged only once durable waited for its whole file's flush). One thread for the process."""

    _thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fdatasync")

    def __init__(self, file: IO[bytes], every: int = 8 << 20) -> None:
        self.file, self.every = file, every
        self._flushed_to = file.tell()
        self._last: Future[None] | None = None

    def wrote(self) -> None:
        """After each write: start a flush when `every` more bytes are written and none is running."""
        if self.file.tell() - self._flushed_to < self.every or (self._last is not None and not self._last.done()):
            return
        self.file.flush()  # Python's buffer, on this thread; the kernel's pages then on the other
        self._flushed_to = self.file.tell()
        self._last = self._thread.submit(os.fdatasync, self.file.fileno())

    def wait(self) -> None:
        """Wait for the flush in progress (before the final fsync, or before the file is closed)."""
        if self._last is not None:
            self._last.result()


def _check_metadata(metadata: Mapping[str, str], what: str) -> dict[str, str]:
    bad = {k: v for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise TypeError(f"{what} must map str to str (MCAP metadata is strings); not: {bad!r}")
    return dict(metadata)


def validate_episode_id(episode_id: str) -> str:
    """The id names files, so only [A-Za-z0-9._-] and never '.' or '..'; ValueError otherwise."""
    if not _is_episode_id(episode_id):
        raise ValueError(
            f"episode id {episode_id!r} is not allowed: use only letters, digits, '.', '_' and '-' "
            "(e.g. 'robot_0-20261103T101500Z-3')"
        )
    return episode_id


def _is_episode_id(name: object) -> bool:
    return isinstance(name, str) and _EPISODE_ID.fullmatch(name) is not None and name not in (".", "..")


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriterOptions:
    compression: str = "zstd"  # "zstd", "lz4" or "none"; per chunk
    chunk_size: int = 1024 * 1024  # bytes of uncompressed messages per chunk
    # Wall-clock seconds between fsyncs at most: the most a crash can lose. Shorter costs compression ratio.
    flush_period_s: float = 1.0

    def __post_init__(self) -> None:
        if self.compression not in _COMPRESSION:
            raise ValueError(f"compression {self.compression!r} is not one of {', '.join(_COMPRESSION)}")
        if not isinstance(self.chunk_size, int) or self.chunk_size <= 0:
            raise ValueError(f"chunk_size {self.chunk_size!r} must be a positive number of bytes")
        if not (isinstance(self.flush_period_s, int | float) and math.isfinite(self.flush_period_s)) or (
            self.flush_period_s <= 0
        ):
            raise ValueError(f"flush_period_s {self.flush_period_s!r} must be a positive number of seconds")


@dataclass(frozen=True)
class EpisodeStats:
    messages: int  # written so far
    flushed_messages: int  # of those, known to be on disk (fsynced): what a crash now would keep at least
    bytes: int  # size of the file so far (the chunk in progress is not in it yet)
    topics: Mapping[str, int]  # messages per topic


class EpisodeWriter:
    """Records one episode into <root>/.partial/<episode_id>.mcap; finish() or abort() publishes it.

    Not thread-safe: call it from one thread (a ROS node's callbacks on a single-threaded executor, or under
    a lock). Every disk problem raises RecordingError; after one, the writer refuses further writes and the
    partial file is left for `recover_partials`.
    """

    def __init__(
        self,
        root: Path | str,
        episode_id: str,
        options: WriterOptions | None = None,
        metadata: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`metadata` (robot, task, instruction, ...) is written at once, so it survives a crash."""
        self.episode_id = validate_episode_id(episode_id)
        self.options = options or WriterOptions()
        self.root = Path(root)
        self.partial_path = self.root / PARTIAL_DIR / f"{episode_id}.mcap"
        self.final_path = self.root / f"{episode_id}.mcap"
        self._start_metadata = _check_metadata(metadata or {}, "start metadata")
        self._clock = clock
        self._last_sync = clock()
        self._state = "open"  # "open" -> "finished" | "failed"
        self._messages = 0
        self._flushed_messages = 0
        self._synced_bytes = 0
        self._topics: dict[str, tuple[int, str]] = {}  # topic -> (channel id, schema name)
        self._counts: dict[str, int] = {}
        self._schemas: dict[str, int] = {}
        self._refuse_existing()
        # Hashed as written: the finished file carries its sha256 (the uploader need not read it twice).
        self._file = HashingWriter(self._create_partial())
        try:
            with self._io("start"):
                self._writer = Writer(
                    self._file,
                    chunk_size=self.options.chunk_size,
                    compression=_COMPRESSION[self.options.compression],
                )
                self._writer.start(profile="ros2")
                if self._start_metadata:
                    self._writer.add_metadata(START_METADATA, self._start_metadata)
                self._sync()
        except RecordingError:
            # Nothing was recorded yet: the empty file would only block a retry.
            self.partial_path.unlink(missing_ok=True)
            raise

    def add_topic(self, topic: str, type_name: str) -> None:
        """Register a topic once (again with the same type is a no-op); its schema is written with it."""
        self._check_open()
        name = schema_name(type_name)
        if topic in self._topics:
            if self._topics[topic][1] != name:
                raise ValueError(f"topic {topic!r} is already recorded as {self._topics[topic][1]}, not {name}")
            return
        definition = message_definition(name)  # before touching the file: an unknown type changes nothing
        with self._io("write to"):
            if name not in self._schemas:
                self._schemas[name] = self._writer.register_schema(name, "ros2msg", definition.encode())
            channel_id = self._writer.register_channel(topic, "cdr", self._schemas[name])
        self._topics[topic] = (channel_id, name)
        self._counts[topic] = 0

    def write(self, topic: str, data: bytes, log_time_ns: int, publish_time_ns: int | None = None) -> None:
        """Record one serialized (CDR) message; the topic must have been added."""
        self._check_open()
        if topic not in self._topics:
            raise KeyError(f"topic {topic!r} was not added to episode {self.episode_id}: call add_topic() first")
        channel_id = self._topics[topic][0]
        with self._io("write to"):
            self._writer.add_message(
                channel_id=channel_id,
                log_time=log_time_ns,
                data=bytes(data),
                publish_time=log_time_ns if publish_time_ns is None else publish_time_ns,
                sequence=self._counts[topic] & 0xFFFFFFFF,
            )
            self._messages += 1
            self._counts[topic] += 1
            # The MCAP writer writes to the file only when a chunk is complete: then that chunk goes to disk.
            if self._file.tell() > self._synced_bytes or self._due():
                self._sync()

    def flush_if_due(self) -> bool:
        """Flush the chunk in progress if the flush period has passed; call it from a timer when topics go quiet."""
        self._check_open()
        if not self._due() or self._flushed_messages == self._messages:
            return False
        with self._io("flush"):
            self._sync()
        return True

    def flush(self) -> None:
        """Put everything written so far on disk now (ends the chunk in progress)."""
        self._check_open()
        with self._io("flush"):
            self._sync()

    def finish(self, metadata: Mapping[str, str]) -> Path:
        """Close the episode with its metadata (outcome, interventions, ...) and publish it; returns its path.

        The "episode" metadata record holds the start metadata updated with `metadata`. FileExistsError if a
        finished file of this id appeared meanwhile: nothing is overwritten and the recording stays open.
        """
        self._check_open()
        merged = {**self._start_metadata, **_check_metadata(metadata, "episode metadata")}
        merged.setdefault("episode_id", self.episode_id)
        self._refuse_existing()
        with self._io("finish"):
            self._writer.add_metadata(EPISODE_METADATA, merged)
            self._writer.finish()
            self._file.record_sha256()
            sync_file(self._file)
            self._file.close()
            os.replace(self.partial_path, self.final_path)
            fsync_dir(self.root)
            fsync_dir(self.partial_path.parent)
        self._state = "finished"
        self._flushed_messages = self._messages
        self._synced_bytes = self.final_path.stat().st_size
        return self.final_path

    def abort(self, reason: str, metadata: Mapping[str, str] | None = None) -> Path:
        """Close an episode that did not end normally; everything recorded is kept and published."""
        return self.finish({**(metadata or {}), "outcome": "abort", "abort_reason": str(reason)})

    def stats(self) -> EpisodeStats:
        size = self._synced_bytes if self._file.closed else self._file.tell()
        return EpisodeStats(self._messages, self._flushed_messages, size, dict(self._counts))

    def _refuse_existing(self) -> None:
        if self.final_path.exists():
            raise FileExistsError(
                f"episode {self.episode_id} is already recorded in {self.final_path}; "
                "a finished episode is never overwritten: use a new episode id"
            )

    def _create_partial(self) -> IO[bytes]:
        directory = self.partial_path.parent
        with _disk_errors("create", directory, directory):
            created = not directory.exists()
            directory.mkdir(parents=True, exist_ok=True)
        try:
            # "x": an unrecovered partial of the same id holds data a crash left; never clobber it.
            file = open(self.partial_path, "xb")
        except FileExistsError:
            raise FileExistsError(
                f"an unfinished recording of episode {self.episode_id} is in {self.partial_path}; run "
                "recover_partials() on the recording root first, or use a new episode id"
            ) from None
        except OSError as exc:
            raise _recording_error("create", self.partial_path, directory, exc) from exc
        with _disk_errors("create", self.partial_path, directory):
            try:
                # Held until the file is closed (also by a crash): recover_partials() skips files in use.
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                fsync_dir(directory)
                if created:
                    fsync_dir(self.root)
            except OSError:
                file.close()
                self.partial_path.unlink(missing_ok=True)  # empty: it would only block a retry
                raise
        return file

    def _due(self) -> bool:
        return self._clock() - self._last_sync >= self.options.flush_period_s

    def _sync(self) -> None:
        self._writer.flush()  # ends the chunk in progress, if it has messages
        sync_file(self._file)
        self._synced_bytes = self._file.tell()
        self._flushed_messages = self._messages
        self._last_sync = self._clock()

    def _check_open(self) -> None:
        if self._state == "finished":
            raise RuntimeError(f"episode {self.episode_id} is already finished ({self.final_path})")
        if self._state == "failed":
            raise RecordingError(
                f"episode {self.episode_id} stopped recording after a disk error; what reached the disk is in "
                f"{self.partial_path} and recover_partials() will publish it at the next start",
                self.partial_path,
                None,
            )

    @contextmanager
    def _io(self, action: str) -> Iterator[None]:
        try:
            with _disk_errors(action, self.partial_path, self.root):
                yield
        except RecordingError:
            self._state = "failed"
            try:
                self._file.close()  # flushing what is buffered may fail again; the fd is closed regardless
            except OSError:
                pass
            raise


# ---------------------------------------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryResult:
    path: Path  # the file found in .partial/
    action: str  # "recovered", "quarantined", or "skipped" (still open by a running writer)
    messages: int  # messages recovered
    reason: str  # what was found: why it was incomplete, quarantined or skipped
    output: Path | None = None  # the episode file written, or where the file was quarantined


@dataclass
class _Salvage:
    messages: int = 0
    header: bool = False
    complete: bool = False  # the data end was read: the writer finished the file
    damage: str = ""
    metadata: list[Metadata] = field(default_factory=list)


def recover_partials(root: Path | str) -> list[RecoveryResult]:
    """Publish what crashed recordings left in <root>/.partial/; call it when the recorder starts.

    Each partial becomes <root>/<episode_id>.mcap holding every message readable before the damage, with its
    metadata and recovered="true", outcome "unknown" unless the writer had written its final metadata, and
    recovered_messages. A file with no MCAP header or no readable message is moved to <root>/quarantine/ with
    a reason file, never deleted. Idempotent, and a crash during recovery loses nothing: the output is written
    beside the partial and renamed into place before the partial is removed.
    """
    root = Path(root)
    partial_dir = root / PARTIAL_DIR
    if not partial_dir.is_dir():
        return []
    results = []
    for path in sorted(partial_dir.iterdir()):
        if not path.is_file() or path.name.endswith(_RECOVERING):
            continue
        results.append(_recover_one(root, path))
    for orphan in sorted(partial_dir.glob(f"*{_RECOVERING}")):
        # Its source is gone only if something else removed it: keep the output for a person to look at.
        if orphan.is_file() and not (partial_dir / orphan.name.removesuffix(_RECOVERING)).exists():
            reason = "output of an interrupted recovery whose source file is gone"
            results.append(RecoveryResult(orphan, "quarantined", 0, reason, _quarantine(root, orphan, reason)))
    return results


def _recover_one(root: Path, path: Path) -> RecoveryResult:
    episode_id = path.name.removesuffix(".mcap")
    if not path.name.endswith(".mcap") or not _is_episode_id(episode_id):
        reason = f"{path.name} is not named <episode_id>.mcap, so it is no recording of this recorder"
        return RecoveryResult(path, "quarantined", 0, reason, _quarantine(root, path, reason))
    with open(path, "rb") as source:
        try:
            fcntl.flock(source.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return RecoveryResult(path, "skipped", 0, "a running writer still has it open")
        temp = path.with_name(path.name + _RECOVERING)
        try:
            salvage = _copy_readable(source, path.name, temp)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    if not salvage.header or salvage.messages == 0:
        temp.unlink(missing_ok=True)
        what = "no MCAP header" if not salvage.header else "no readable message"
        reason = f"{what}: {salvage.damage or 'the file ends there'}"
        return RecoveryResult(path, "quarantined", 0, reason, _quarantine(root, path, reason))
    state = "complete file" if salvage.complete else f"unfinished file ({salvage.damage})"
    final = root / f"{episode_id}.mcap"
    if final.exists():
        temp.unlink()
        if _already_recovered(final, path.name, salvage.messages):
            # A previous recovery got as far as publishing, then stopped before removing the partial.
            _remove(path)
            return RecoveryResult(path, "recovered", salvage.messages, f"already recovered into {final}", final)
        reason = f"{state}, but a different finished episode {final} exists: kept here, nothing overwritten"
        return RecoveryResult(path, "quarantined", salvage.messages, reason, _quarantine(root, path, reason))
    with _disk_errors("publish", final, root):
        os.replace(temp, final)
        fsync_dir(root)
    _remove(path)
    return RecoveryResult(path, "recovered", salvage.messages, state, final)


def _copy_readable(source: IO[bytes], source_name: str, temp: Path) -> _Salvage:
    """Copy every message readable from `source` into a new complete MCAP file `temp` (fsynced)."""
    salvage = _Salvage()
    size = os.fstat(source.fileno()).st_size
    # A record cannot be longer than the file: a damaged length field must not make the reader allocate GiBs.
    records = iter(StreamReader(source, validate_crcs=True, record_size_limit=max(size, 1)).records)
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    with _disk_errors("write", temp, temp.parent), open(temp, "wb") as out:
        writer = Writer(out)
        writer.start(profile="ros2")
        new_schemas: dict[int, int] = {}
        new_channels: dict[int, int] = {}
        while True:
            # Reading stops at the first damage: a truncated last chunk (SIGKILL), a bad CRC, garbage. Only
            # reading is guarded here, so a problem writing the output still raises.
            try:
                record = next(records)
            except StopIteration:
                break
            except Exception as exc:
                salvage.damage = f"unreadable from about byte {source.tell()} of {size}: {_describe(exc)}"
                break
            if isinstance(record, Header):
                salvage.header = True
            elif isinstance(record, Schema):
                schemas[record.id] = record
            elif isinstance(record, Channel):
                channels[record.id] = record
            elif isinstance(record, Metadata):
                salvage.metadata.append(record)
            elif isinstance(record, DataEnd | Footer):
                salvage.complete = True
            elif isinstance(record, Message) and record.channel_id in channels:
                channel = channels[record.channel_id]
                if channel.id not in new_channels:
                    schema = schemas.get(channel.schema_id)
                    if schema is not None and schema.id not in new_schemas:
                        new_schemas[schema.id] = writer.register_schema(schema.name, schema.encoding, schema.data)
                    schema_id = new_schemas[schema.id] if schema is not None else 0
                    new_channels[channel.id] = writer.register_channel(
                        channel.topic, channel.message_encoding, schema_id, dict(channel.metadata)
                    )
                writer.add_message(
                    new_channels[channel.id], record.log_time, record.data, record.publish_time, record.sequence
                )
                salvage.messages += 1
        if salvage.messages:
            for record in salvage.metadata:
                if record.name not in (START_METADATA, EPISODE_METADATA):
                    writer.add_metadata(record.name, dict(record.metadata))
            writer.add_metadata(EPISODE_METADATA, _recovered_metadata(salvage, source_name))
        writer.finish()
        sync_file(out)
    return salvage


def _describe(exc: Exception) -> str:
    if isinstance(exc, EndOfFile):
        return "the file ends in the middle of a record, without the MCAP footer (the writer was stopped)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _recovered_metadata(salvage: _Salvage, source_name: str) -> dict[str, str]:
    records = salvage.metadata
    merged: dict[str, str] = {}
    for record in records:
        if record.name == START_METADATA:
            merged.update(record.metadata)
    finished = [record for record in records if record.name == EPISODE_METADATA]
    for record in finished:
        merged.update(record.metadata)
    if not finished:
        merged["outcome"] = "unknown"
    merged.setdefault("episode_id", source_name.removesuffix(".mcap"))
    merged["recovered"] = "true"
    merged["recovered_messages"] = str(salvage.messages)
    merged["recovered_from"] = source_name
    return merged


def _already_recovered(final: Path, source_name: str, messages: int) -> bool:
    try:
        with open(final, "rb") as file:
            metadata = _episode_metadata(make_reader(file))
    except Exception:
        return False  # unreadable or not ours: certainly not this partial's recovery
    return (
        metadata.get("recovered") == "true"
        and metadata.get("recovered_from") == source_name
        and metadata.get("recovered_messages") == str(messages)
    )


def _remove(path: Path) -> None:
    with _disk_errors("remove", path, path.parent):
        path.unlink()
        fsync_dir(path.parent)


def _quarantine(root: Path, path: Path, reason: str) -> Path:
    """Move `path` into <root>/quarantine/ beside a <name>.reason.txt; never overwrites an earlier one."""
    directory = root / QUARANTINE_DIR
    with _disk_errors("quarantine", path, directory):
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / path.name
        counter = 0
        while target.exists():
            counter += 1
            target = directory / f"{path.name}.{counter}"
        # The reason first: a crash in between leaves the file where it was, to be quarantined again.
        with open(target.with_name(target.name + ".reason.txt"), "w", encoding="utf-8") as note:
            note.write(f"{path}\n{reason}\n")
            sync_file(note)
        os.replace(path, target)
        fsync_dir(directory)
        fsync_dir(path.parent)
    return target


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


class EpisodeMessage(NamedTuple):
    topic: str
    type_name: str  # schema name, "pkg/msg/Type"
    log_time_ns: int
    publish_time_ns: int
    message: Any  # decoded by mcap_ros2: fields as attributes, named as in the .msg


def read_episode(path: Path | str) -> tuple[dict[str, str], list[EpisodeMessage]]:
    """The "episode" metadata and every message, decoded, in log time order, of a finished episode file."""
    with open(path, "rb") as file:
        reader = make_reader(file, decoder_factories=[DecoderFactory()])
        metadata = _episode_metadata(reader)
        messages = [
            EpisodeMessage(channel.topic, schema.name, message.log_time, message.publish_time, decoded)
            for schema, channel, message, decoded in reader.iter_decoded_messages()
        ]
    return metadata, messages


def _episode_metadata(reader: McapReader) -> dict[str, str]:
    records = [record for record in reader.iter_metadata() if record.name == EPISODE_METADATA]
    return dict(records[-1].metadata) if records else {}


def episode_counts(path: Path | str) -> tuple[dict[str, str], dict[str, int]]:
    """The "episode" metadata and the message count per topic, from the file's summary: nothing is decoded."""
    with open(path, "rb") as file:
        reader = make_reader(file)
        summary = reader.get_summary()
        if summary is None or summary.statistics is None:
            raise ValueError(f"{path}: no summary section; is it a finished episode file?")
        return _episode_metadata(reader), _message_counts(summary)


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
            metadata = _episode_metadata(reader) if summary is not None else {}
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
