"""Recovery of what a crash left in a recording root's .partial/ directory, at the recorder's next start.

Each partial becomes a finished episode file holding every message readable before the damage; a file
nothing can be read from is quarantined with the reason beside it, never deleted.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mcap.exceptions import EndOfFile
from mcap.reader import make_reader
from mcap.records import Channel, DataEnd, Footer, Header, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import Writer

from sop_ros.episodes.durable import disk_errors, fsync_dir, sync_file
from sop_ros.episodes.format import (
    EPISODE_METADATA,
    PARTIAL_DIR,
    QUARANTINE_DIR,
    START_METADATA,
    Outcome,
    is_episode_id,
)
from sop_ros.episodes.reader import episode_metadata

# Suffix of a recovery's output while it is written: never ends in .mcap, so it is never taken for a partial.
_RECOVERING = ".recovering"


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
    if not path.name.endswith(".mcap") or not is_episode_id(episode_id):
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
    with disk_errors("publish", final, root):
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
    with disk_errors("write", temp, temp.parent), open(temp, "wb") as out:
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
        merged["outcome"] = Outcome.UNKNOWN.value
    merged.setdefault("episode_id", source_name.removesuffix(".mcap"))
    merged["recovered"] = "true"
    merged["recovered_messages"] = str(salvage.messages)
    merged["recovered_from"] = source_name
    return merged


def _already_recovered(final: Path, source_name: str, messages: int) -> bool:
    try:
        with open(final, "rb") as file:
            metadata = episode_metadata(make_reader(file))
    except Exception:
        return False  # unreadable or not ours: certainly not this partial's recovery
    return (
        metadata.get("recovered") == "true"
        and metadata.get("recovered_from") == source_name
        and metadata.get("recovered_messages") == str(messages)
    )


def _remove(path: Path) -> None:
    with disk_errors("remove", path, path.parent):
        path.unlink()
        fsync_dir(path.parent)


def _quarantine(root: Path, path: Path, reason: str) -> Path:
    """Move `path` into <root>/quarantine/ beside a <name>.reason.txt; never overwrites an earlier one."""
    directory = root / QUARANTINE_DIR
    with disk_errors("quarantine", path, directory):
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
