"""Writing one crash-safe MCAP file per episode. No rclpy (message definitions come from the ament index).

Messages arrive already serialized (CDR bytes from a raw subscription) and go into compressed chunks. Each
completed chunk, and at least every flush period the chunk in progress, is flushed and fsynced, so a SIGKILL
or a power cut loses at most what came in since the last flush; `recovery.recover_partials` turns what a crash
left into finished files at the next start. Files are ROS 2 MCAP as rosbag2 writes them (profile "ros2",
schemas "ros2msg", messages "cdr"): Foxglove, the mcap tools and the learner read them as-is.
"""

from __future__ import annotations

import fcntl
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

from mcap.writer import CompressionType, Writer

from sop_ros.checksums import HashingWriter
from sop_ros.episodes.durable import RecordingError, disk_errors, fsync_dir, recording_error, sync_file
from sop_ros.episodes.format import EPISODE_METADATA, PARTIAL_DIR, START_METADATA, Outcome, validate_episode_id
from sop_ros.episodes.schemas import message_definition, schema_name

_COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}


class WriterState(Enum):
    OPEN = "open"  # -> FINISHED, or FAILED after a disk error
    FINISHED = "finished"
    FAILED = "failed"


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
        self._state = WriterState.OPEN
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
            size = self._file.tell()
            self._file.close()
            # Published: from here the bridge may upload and remove it at any moment, so nothing reads it back.
            os.replace(self.partial_path, self.final_path)
            fsync_dir(self.root)
            fsync_dir(self.partial_path.parent)
        self._state = WriterState.FINISHED
        self._flushed_messages = self._messages
        self._synced_bytes = size
        return self.final_path

    def abort(self, reason: str, metadata: Mapping[str, str] | None = None) -> Path:
        """Close an episode that did not end normally; everything recorded is kept and published."""
        return self.finish({**(metadata or {}), "outcome": Outcome.ABORT.value, "abort_reason": str(reason)})

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
        with disk_errors("create", directory, directory):
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
            raise recording_error("create", self.partial_path, directory, exc) from exc
        with disk_errors("create", self.partial_path, directory):
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
        if self._state == WriterState.FINISHED:
            raise RuntimeError(f"episode {self.episode_id} is already finished ({self.final_path})")
        if self._state == WriterState.FAILED:
            raise RecordingError(
                f"episode {self.episode_id} stopped recording after a disk error; what reached the disk is in "
                f"{self.partial_path} and recover_partials() will publish it at the next start",
                self.partial_path,
                None,
            )

    @contextmanager
    def _io(self, action: str) -> Iterator[None]:
        try:
            with disk_errors(action, self.partial_path, self.root):
                yield
        except RecordingError:
            self._state = WriterState.FAILED
            try:
                self._file.close()  # flushing what is buffered may fail again; the fd is closed regardless
            except OSError:
                pass
            raise


def _check_metadata(metadata: Mapping[str, str], what: str) -> dict[str, str]:
    bad = {k: v for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise TypeError(f"{what} must map str to str (MCAP metadata is strings); not: {bad!r}")
    return dict(metadata)
