"""The robot's outbox, uploaded: finished episode files go to the cloud in pieces (sop_ros.bridge.protocol) and
leave the outbox only once the cloud answered "stored". No rclpy: the bridge node runs it on a thread.

Oldest first. While the cloud is away the uploader retries with a doubling backoff and the outbox grows; past
its quota it warns, and with `when_full: drop_oldest` deletes the oldest episodes, naming each. A file the cloud
refuses (malformed) moves to <outbox>/rejected/ with the reason beside it, and is not sent again.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import zenoh

from sop_ros.bridge.protocol import Piece, ProtocolError, Reply, episode_key
from sop_ros.checksums import file_sha256, recorded_sha256
from sop_ros.configs.bridge import BridgeConfig

REJECTED_DIR = "rejected"
UPLOADED_DIR = "uploaded"

Log = Callable[[str, str], None]  # (severity, message)


class CloudUnavailable(RuntimeError):
    """No usable reply from the cloud (away, timed out, or answering nonsense): try again later."""


@dataclass
class UploadStats:
    uploaded: int = 0  # stored by the cloud and removed here
    duplicates: int = 0  # of those, ones the cloud had already (a re-send after a restart)
    refused: int = 0
    dropped: int = 0  # deleted unsent because the outbox was over its quota
    bytes_sent: int = 0
    reachable: bool = False  # the last exchange with the cloud got an answer
    last_error: str = ""
    last_upload_time: float = 0.0  # unix time of the last "stored"
    dropped_ids: list[str] = field(default_factory=list)


class OutboxUploader:
    def __init__(self, session: zenoh.Session, robot_id: str, outbox: Path, config: BridgeConfig, log: Log) -> None:
        self.session = session
        self.robot_id = robot_id
        self.outbox = Path(outbox)
        self.config = config
        self.log = log
        self.archive = Path(config.archive_dir) if config.archive_dir else self.outbox / UPLOADED_DIR
        self.stats = UploadStats()
        self._lock = threading.Lock()  # guards stats against the status reader
        # sha256 of the file being sent and of the next one: the one the recorder left on the file, else hashed
        # on a thread while the current one goes up (hashlib lets go of the GIL): (name, size, mtime) -> future.
        self._hashes: dict[tuple[str, int, int], Future[str]] = {}
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-sha256")
        self._distrusted: set[str] = set()  # files whose recorded sha256 the cloud found wrong: hashed instead

    def pending(self) -> list[Path]:
        """Finished episode files waiting, oldest first (the recorder renames a file in only when complete)."""
        files = []
        for path in self.outbox.glob("*.mcap"):
            try:
                files.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:  # uploaded or dropped meanwhile
                continue
        return [path for _, _, path in sorted(files)]

    @staticmethod
    def outbox_bytes(files: list[Path]) -> int:
        total = 0
        for path in files:
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def run(self, stop: threading.Event) -> None:
        """Upload until `stop` is set; every wait ends early when it is."""
        backoff = self.config.retry_initial_s
        while not stop.is_set():
            files = self.enforce_quota(self.pending())
            if not files:
                stop.wait(self.config.scan_period_s)
                continue
            try:
                for i, path in enumerate(files):
                    if stop.is_set():
                        return
                    if i + 1 < len(files):
                        self._hash_later(files[i + 1])
                    self.upload(path)
                backoff = self.config.retry_initial_s
            except CloudUnavailable as err:
                with self._lock:
                    self.stats.last_error, self.stats.reachable = str(err), False
                if stop.is_set():  # the node stops: its session closed under this upload
                    return
                self.log("warn", f"cloud unavailable, {len(files)} episodes wait; retrying in {backoff:.1f} s: {err}")
                stop.wait(backoff)
                backoff = min(backoff * 2, self.config.retry_max_s)

    def enforce_quota(self, files: list[Path]) -> list[Path]:
        quota = self.config.outbox_quota_mb * 1024 * 1024
        total = self.outbox_bytes(files)
        if total <= quota:
            return files
        self.log("warn", f"outbox {self.outbox} holds {total / 2**20:.1f} MiB in {len(files)} episodes, over its "
                 f"quota of {self.config.outbox_quota_mb:g} MiB (is the cloud reachable?)")  # fmt: skip
        if self.config.when_full != "drop_oldest":
            return files
        kept = list(files)
        while kept and total > quota:
            oldest = kept.pop(0)
            size = oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            total -= size
            with self._lock:
                self.stats.dropped += 1
                self.stats.dropped_ids.append(oldest.stem)
            self.log("error", f"outbox over quota: deleted episode {oldest.stem} ({size} bytes) without uploading it")
        return kept

    def upload(self, path: Path) -> Reply:
        """Send one episode file until the cloud stores or refuses it; CloudUnavailable when it does not answer.

        Up to `window` pieces are in flight: the cloud handles one episode's pieces in order, so each is
        answered "partial" at its end, the last "stored". An answer at another offset (the cloud lost bytes,
        or restarted) drops the pieces in flight and goes on from the offset it names.
        """
        size = path.stat().st_size
        sha256 = self._sha256(path, size)
        key = episode_key(self.robot_id, path.stem)
        reply = self._answer(self._ask(key, Piece(size, sha256), None))
        stalled = 0
        with open(path, "rb") as f:
            while reply.status == "partial":
                before = reply.offset
                reply = self._send_from(f, key, Piece(size, sha256, before))
                if reply.status == "partial" and reply.offset == 0 and path.name not in self._distrusted:
                    # Asked from 0 after bytes went up: they do not hash to `sha256`. The file changed since it
                    # was recorded (or its recorded digest is wrong): from now on hash the file itself.
                    self._distrusted.add(path.name)
                    sha256 = self._sha256(path, size)
                stalled = stalled + 1 if reply.status == "partial" and reply.offset <= before else 0
                if stalled >= 3:
                    raise CloudUnavailable(f"{path.stem}: the cloud holds {reply.offset} bytes, takes no more")
        if reply.status == "stored":
            self._done(path, reply)
        else:
            self._reject(path, reply.reason)
        return reply

    def _send_from(self, f: BinaryIO, key: str, first: Piece) -> Reply:
        """Send the file from `first.offset` to its end, `window` pieces in flight; the first answer that is not
        "partial" at the end of its piece (stored, refused, or the cloud holds other bytes), else the last one.
        An empty file still sends its one empty piece: the cloud checks it then."""
        chunk = self.config.chunk_kb * 1024
        in_flight: deque[tuple[int, zenoh.Handler]] = deque()  # (end of the piece, its replies)
        reply = Reply("partial", offset=first.offset)  # nothing left to send: the cloud has not moved
        for offset in range(first.offset, max(first.size, 1), chunk):
            f.seek(offset)
            data = f.read(chunk)
            in_flight.append((offset + len(data), self._ask(key, replace(first, offset=offset), data)))
            with self._lock:
                self.stats.bytes_sent += len(data)
            while len(in_flight) >= self.config.window or in_flight and offset + chunk >= first.size:
                end, replies = in_flight.popleft()
                reply = self._answer(replies)
                if reply.status != "partial" or reply.offset != end:
                    return reply
        return reply

    def _ask(self, key: str, piece: Piece, data: bytes | None) -> zenoh.Handler:
        try:
            return self.session.get(key, payload=data, attachment=piece.encode(), timeout=self.config.reply_timeout_s)
        except zenoh.ZError as err:
            raise CloudUnavailable(f"{type(err).__name__}: {err}") from None

    def _answer(self, replies: zenoh.Handler) -> Reply:
        try:
            for answer in replies:
                if answer.ok is None:
                    raise CloudUnavailable(f"error reply: {answer.err.payload.to_bytes().decode(errors='replace')}")
                reply = Reply.decode(answer.ok.payload.to_bytes())
                with self._lock:
                    self.stats.reachable = True
                return reply
        except (zenoh.ZError, ProtocolError) as err:
            raise CloudUnavailable(f"{type(err).__name__}: {err}") from None
        raise CloudUnavailable(f"no reply within {self.config.reply_timeout_s:g} s")

    def _hash_later(self, path: Path) -> None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return
        key = (path.name, stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes = {k: v for k, v in self._hashes.items() if not v.done()}  # keep at most the pending
            self._hashes[key] = self._hash(path)

    def _sha256(self, path: Path, size: int) -> str:
        key = (path.name, size, path.stat().st_mtime_ns)
        if key not in self._hashes or path.name in self._distrusted:
            self._hashes = {key: self._hash(path)}
        return self._hashes[key].result()

    def _hash(self, path: Path) -> Future[str]:
        recorded = None if path.name in self._distrusted else recorded_sha256(path)
        if recorded is None:
            return self._hasher.submit(file_sha256, path)
        known: Future[str] = Future()
        known.set_result(recorded)
        return known

    def _done(self, path: Path, reply: Reply) -> None:
        if self.config.after_upload == "archive":
            self.archive.mkdir(parents=True, exist_ok=True)
            shutil.move(path, self.archive / path.name)
        else:
            path.unlink(missing_ok=True)
        with self._lock:
            self.stats.uploaded += 1
            self.stats.duplicates += reply.duplicate
            self.stats.last_upload_time = time.time()
        self.log("info", f"uploaded {path.stem}" + (" (the cloud had it already)" if reply.duplicate else ""))

    def _reject(self, path: Path, reason: str) -> None:
        rejected = self.outbox / REJECTED_DIR
        rejected.mkdir(parents=True, exist_ok=True)
        (rejected / f"{path.name}.reason.txt").write_text(reason + "\n")
        os.replace(path, rejected / path.name)
        with self._lock:
            self.stats.refused += 1
            self.stats.last_error = reason
        self.log("error", f"the cloud refused {path.stem}: {reason} (kept in {rejected})")

    def snapshot(self) -> UploadStats:
        with self._lock:
            return UploadStats(**{**vars(self.stats), "dropped_ids": list(self.stats.dropped_ids)})
