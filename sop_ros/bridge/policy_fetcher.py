"""The robot's side of weight distribution: from an announcement to the policy node running the new version.

    announcement (put, or the answer to sop/policies/latest)
      -> signature checked against the fleet's public key, and newer than the newest accepted (no replays)
      -> a canary that names other robots is left to them: this robot keeps the incumbent (sop_ros.cloud.canary)
      -> artifact downloaded in ranges into <cache>/<version>.onnx.part, resuming from the bytes held
      -> size and sha256 checked against the signed announcement, renamed to <cache>/<version>.onnx
      -> the policy node asked to load it (it checks the sha256 again, loads, warms, swaps)

An announcement or file that fails a check is refused with the reason and never handed on: the robot keeps
running what it runs. The policy node's running version is watched, so a policy node that restarts is given
the newest verified version again. No rclpy: the bridge node runs this on a thread of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zenoh
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sop_ros.bridge.artifacts import PolicyAnnouncement, VerificationError, verify
from sop_ros.bridge.protocol import (
    POLICY_ANNOUNCE,
    POLICY_ARTIFACTS,
    POLICY_LATEST,
    STREAM,
    ArtifactRange,
    ProtocolError,
    artifact_key,
)
from sop_ros.bridge.uploader import CloudUnavailable, Log
from sop_ros.checksums import BackgroundSha256, file_sha256
from sop_ros.configs.bridge import PolicyDownloadConfig
from sop_ros.episodes.durable import atomic_file
from sop_ros.host import return_free_memory

STREAM_GAP_S = 0.5  # no streamed piece for this long: the stream is over or lost, ask for the rest
NEWEST = "newest.json"  # the newest announcement accepted: older ones are refused, even after a restart
WAKE = b""  # put among the offers to wake the loop early

# Ask the policy node to load (path, announcement): None when it accepted, else its reason for refusing;
# TimeoutError when it does not answer (asked again later).
LoadRequest = Callable[[Path, PolicyAnnouncement], str | None]
# The policy node's (running, pending) versions, "" for none or unknown.
PolicyVersions = Callable[[], tuple[str, str]]


class Seen:
    """What was met lately, the least recently met forgotten past `capacity`: "once each" for a bridge that meets
    a new version every few seconds for days, where a set of every one would grow for as long as it runs."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def first_time(self, key: str) -> bool:
        """Whether `key` was not met lately; it is met now either way."""
        known = key in self._keys
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return not known

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class FetchStats:
    newest: str = ""  # newest verified announcement's version: what the robot should run
    stage: str = ""  # its rollout stage: canary (this robot is one), promoted, rolled back, or "" (none)
    held: str = ""  # newest version whose artifact is here, verified
    requested: str = ""  # last version handed to the policy node
    downloaded_bytes: int = 0
    streamed_bytes: int = 0  # of those, taken from the cloud's stream rather than asked for
    refused: int = 0
    last_error: str = ""


class PolicyFetcher:
    def __init__(self, session: zenoh.Session, cache: Path, public_key: Ed25519PublicKey,
                 config: PolicyDownloadConfig, load: LoadRequest, policy_versions: PolicyVersions, log: Log,
                 reply_timeout_s: float = 10.0, robot_id: str = "") -> None:  # fmt: skip
        self.session = session
        self.robot_id = robot_id
        self.cache = Path(cache)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.public_key = public_key
        self.config = config
        self.load = load
        self.policy_versions = policy_versions
        self.log = log
        self.reply_timeout_s = reply_timeout_s
        self.stats = FetchStats()
        self._lock = threading.Lock()
        self._offers: queue.Queue[bytes] = queue.Queue()
        # The cloud streams a new artifact to every robot right after announcing it; its pieces are kept here for
        # the version last announced (set by the announcement's callback, which Zenoh runs before the pieces').
        self._streamed: queue.Queue[tuple[str, int, bytes]] = queue.Queue()
        self._stream_version = ""
        self._refused: dict[str, str] = {}  # version -> why (never tried again)
        self._refused_offers = Seen()  # sha256 of announcements refused (asked again every period)
        self._ignored = Seen()  # signatures of announcements passed over (logged once each)
        self._wanted, self._wanted_before = "", Seen()  # a cached version the policy node waits for (once each)
        self._stages_told: dict[str, str] = {}  # version -> the rollout stage the policy node was given ("" unsaid)
        self._target = self._read_newest()
        if self._target is not None:
            self.stats.newest, self.stats.stage = self._target.version, self._target.stage
            if self._holds(self._target):
                self.stats.held = self._target.version

    # -- the loop --------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: take announcements as they come, ask for the latest every check_period_s."""
        subscribers = [
            self.session.declare_subscriber(POLICY_ANNOUNCE, self._on_announcement),
            self.session.declare_subscriber(f"{POLICY_ARTIFACTS}/*/{STREAM}", self._on_streamed),
        ]
        try:
            self.ask_latest()
            while not stop.is_set():
                self._drain_offers()
                self.step(stop)
                try:  # an announcement ends the wait early, and is taken at once: its artifact is streaming
                    self._offers.put(self._offers.get(timeout=self.config.check_period_s))
                except queue.Empty:
                    self.ask_latest()
        finally:
            for subscriber in subscribers:
                subscriber.undeclare()

    def _on_announcement(self, sample: zenoh.Sample) -> None:
        data = sample.payload.to_bytes()
        self._offers.put(data)
        try:  # only to know which streamed pieces to keep: the fetcher's thread checks the announcement
            version = json.loads(data).get("version", "")
        except (ValueError, AttributeError):
            return
        if isinstance(version, str) and version != self.stats.held:
            self._stream_version = version

    def _on_streamed(self, sample: zenoh.Sample) -> None:
        version = str(sample.key_expr).split("/")[-2]
        if version != self._stream_version or sample.attachment is None:
            return
        try:
            piece = ArtifactRange.decode(sample.attachment.to_bytes())
        except ProtocolError:
            return
        self._streamed.put((version, piece.offset, sample.payload.to_bytes()))

    def ask_latest(self) -> None:
        try:
            # Not consolidated: during a canary the cloud answers twice on this key (the incumbent, the candidate).
            replies = self.session.get(POLICY_LATEST, timeout=self.reply_timeout_s,
                                       consolidation=zenoh.ConsolidationMode.NONE)  # fmt: skip
            for answer in replies:
                if answer.ok is not None:
                    self._offers.put(answer.ok.payload.to_bytes())
        except zenoh.ZError as err:
            self._note_error(f"asking for the latest policy: {err}")

    def _drain_offers(self) -> None:
        while True:
            try:
                data = self._offers.get_nowait()
            except queue.Empty:
                return
            if data != WAKE:
                self.offer(data)

    def wake(self) -> None:
        """End the loop's wait for announcements now (its `stop` was just set)."""
        self._offers.put(WAKE)

    def want(self, version: str) -> None:
        """The policy node waits for `version` (an episode is scheduled to run it): hand it over from the cache.

        The newest version is fetched anyway; an older one is one this robot held before (a new robot process
        whose episode is scheduled to run the version before the newest)."""
        with self._lock:
            if not self._wanted_before.first_time(version):
                return
            self._wanted = version
        self._offers.put(WAKE)

    def _hand_over_wanted(self) -> None:
        with self._lock:
            version, self._wanted = self._wanted, ""
        newest = self._target.version if self._target else ""
        if not version or version == newest or version in self.policy_versions():
            return  # the newest is fetched and handed over anyway
        try:
            announcement = self._cached_announcement(f"{version}.json")
        except FileNotFoundError:
            self._note_error(f"an episode is scheduled to run {version}, which this robot does not hold")
            return
        except (ProtocolError, VerificationError) as err:
            self._note_error(f"an episode is scheduled to run {version}; its cached announcement is refused: {err}")
            return
        if not self._holds(announcement):
            return
        try:
            reason = self.load(self.artifact(version), announcement)
        except TimeoutError as err:
            self._note_error(f"policy node did not take {version}: {err}")
            return
        if reason is not None:
            self._refuse(version, f"the policy node refused {version}: {reason}")

    def offer(self, data: bytes) -> PolicyAnnouncement | None:
        """Take an announcement if it is well formed, signed by the fleet's key and newer than the newest taken."""
        try:
            announcement = PolicyAnnouncement.decode(data)
            verify(announcement, self.public_key)
        except (ProtocolError, VerificationError) as err:
            digest = hashlib.sha256(data).hexdigest()
            if self._refused_offers.first_time(digest):  # one error per bad announcement, not one per period
                self._refuse("", f"announcement refused: {err}")
            return None
        target = self._target
        if target is not None and announcement.created <= target.created:
            # Once per announcement: during a canary the cloud answers every period with the incumbent too.
            if announcement.version != target.version and self._ignored.first_time(announcement.signature):
                self.log("warn", f"ignored policy {announcement.version}: not newer than {target.version}")
            return None
        if announcement.robots and self.robot_id not in announcement.robots:
            if self._ignored.first_time(announcement.signature):
                self.log("info", f"policy {announcement.version} is on canary with {', '.join(announcement.robots)}: "
                         f"this robot keeps {target.version if target else 'what it runs'}")  # fmt: skip
            return None
        self._target = announcement
        self._write_newest(announcement)
        with self._lock:
            self.stats.newest, self.stats.stage = announcement.version, announcement.stage
        stage = f", {announcement.stage}" if announcement.stage else ""
        self.log("info", f"policy {announcement.version} announced (parent {announcement.parent or 'none'}, "
                 f"{announcement.size} bytes, metrics {announcement.metrics}{stage})")  # fmt: skip
        return announcement

    def step(self, stop: threading.Event | None = None) -> None:
        """Bring the robot to the newest accepted version: download it if needed, then ask the policy node."""
        self._hand_over_wanted()
        target = self._target
        if target is None or target.version in self._refused:
            return
        path = self.artifact(target.version)
        if not path.exists():
            try:
                self.download(target, stop)
            except CloudUnavailable as err:
                self._note_error(f"download of {target.version} paused (resumes): {err}")
                return
            except VerificationError as err:
                self._refuse(target.version, str(err))
                return
            if not path.exists():  # stopped midway
                return
        held = target.version in self.policy_versions()  # running, or loaded and waiting for the episode boundary
        if held and self._stages_told.get(target.version, "") == target.stage:
            return
        try:  # to load it, or (held) to tell its new stage: the episodes it runs from now on carry that one
            reason = self.load(path, target)
        except TimeoutError as err:
            self._note_error(f"policy node did not take {target.version} (asked again): {err}")
            return
        with self._lock:
            self.stats.requested = target.version
        self._stages_told[target.version] = target.stage
        if reason is not None:
            self._refuse(target.version, f"the policy node refused {target.version}: {reason}")

    # -- download --------------------------------------------------------------------------------------------

    def artifact(self, version: str) -> Path:
        return self.cache / f"{version}.onnx"

    def download(self, announcement: PolicyAnnouncement, stop: threading.Event | None = None) -> Path:
        """Fetch the artifact into the cache; VerificationError when its bytes are not the signed ones."""
        part = self.cache / f"{announcement.version}.onnx.part"
        held = part.stat().st_size if part.exists() else 0
        if held > announcement.size:
            part.unlink()
            held = 0
        digest = BackgroundSha256()
        with open(part, "ab+") as f:
            f.seek(0)
            for block in iter(lambda: f.read(1 << 20), b""):  # resuming: the bytes held count toward the sha256
                digest.update(block)
            for data in self._pieces(announcement, held, stop):
                f.write(data)
                digest.update(data)
                held += len(data)
                with self._lock:
                    self.stats.downloaded_bytes += len(data)
            if held < announcement.size:  # stopped: the .part file is kept for the next attempt
                return part
        # No fsync: what a crash leaves is checked again at the next start (_holds), and by the policy node.
        if digest.hexdigest() != announcement.sha256:
            part.unlink()
            raise VerificationError(f"policy {announcement.version}: downloaded bytes have sha256 "
                                    f"{digest.hexdigest()[:16]}..., the signed announcement says "
                                    f"{announcement.sha256[:16]}... (tampered or damaged: not loaded)")  # fmt: skip
        path = self.artifact(announcement.version)
        os.replace(part, path)
        (self.cache / f"{announcement.version}.json").write_bytes(announcement.encode())
        with self._lock:
            self.stats.held = announcement.version
        self.log("info", f"policy {announcement.version} downloaded and verified ({announcement.size} bytes; "
                 f"{self.stats.streamed_bytes} bytes streamed so far)")  # fmt: skip
        self._prune(keep=announcement.version)
        return_free_memory()  # the artifact's pieces passed through this thread's arena: gone back to the system
        return path

    def _pieces(self, announcement: PolicyAnnouncement, offset: int, stop: threading.Event | None):
        """The artifact's bytes from `offset` in order: streamed while the stream continues them, then queried."""
        for data in self._stream(announcement, offset):
            offset += len(data)
            yield data
        yield from self._ranges(announcement, offset, stop)

    def _stream(self, announcement: PolicyAnnouncement, offset: int):
        """The streamed pieces that continue the bytes held, while they come in order."""
        while offset < announcement.size:
            try:
                version, start, data = self._streamed.get(timeout=STREAM_GAP_S)
            except queue.Empty:
                break
            if version != announcement.version or start + len(data) <= offset:
                continue  # another version's, or bytes held already
            if start != offset or start + len(data) > announcement.size:
                break  # a piece is missing (joined the stream late): ask for the rest
            offset += len(data)
            with self._lock:
                self.stats.streamed_bytes += len(data)
            yield data
        self._stream_version = ""
        while not self._streamed.empty():
            self._streamed.get_nowait()

    def _ranges(self, announcement: PolicyAnnouncement, offset: int, stop: threading.Event | None):
        """The artifact's bytes from `offset` in order, with `window` range queries in flight."""
        key, size, chunk = artifact_key(announcement.version), announcement.size, self.config.chunk_kb * 1024
        in_flight: deque[tuple[int, int, zenoh.Handler]] = deque()
        asked = offset
        while offset < size and not (stop is not None and stop.is_set()):
            while len(in_flight) < self.config.window and asked < size:
                length = min(chunk, size - asked)
                header = ArtifactRange(asked, length).encode()
                try:
                    replies = self.session.get(key, attachment=header, timeout=self.reply_timeout_s)
                except zenoh.ZError as err:  # e.g. the session closed: the node is stopping
                    raise CloudUnavailable(f"range at {asked}: {err}") from None
                in_flight.append((asked, length, replies))
                asked += length
            start, length, replies = in_flight.popleft()
            data = self._range_reply(replies, announcement.version, start)
            if len(data) != length:  # the cloud's file is shorter than the signed size
                raise VerificationError(f"policy {announcement.version}: the cloud sent {len(data)} bytes at "
                                        f"{start}, expected {length} (truncated artifact: not loaded)")  # fmt: skip
            offset += length
            yield data

    @staticmethod
    def _range_reply(replies: zenoh.Handler, version: str, start: int) -> bytes:
        try:
            for answer in replies:
                if answer.ok is None:
                    reason = answer.err.payload.to_bytes().decode(errors="replace")
                    raise CloudUnavailable(f"range at {start}: {reason}")
                return answer.ok.payload.to_bytes()
        except zenoh.ZError as err:
            raise CloudUnavailable(f"range at {start}: {err}") from None
        raise CloudUnavailable(f"no reply for {version} at byte {start}")

    def _prune(self, keep: str) -> None:
        """Keep the newest keep_versions artifacts, and always the one running."""
        running, pending = self.policy_versions()
        artifacts = sorted(self.cache.glob("*.onnx"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for path in artifacts[self.config.keep_versions :]:
            if path.stem not in (keep, running, pending):
                path.unlink(missing_ok=True)
                (self.cache / f"{path.stem}.json").unlink(missing_ok=True)
                self._stages_told.pop(path.stem, None)

    # -- state -----------------------------------------------------------------------------------------------

    def _holds(self, announcement: PolicyAnnouncement) -> bool:
        """Whether the cache holds this version's artifact intact: downloads are not fsynced, so after a crash
        the file may be short or torn. One that fails is removed (downloaded again)."""
        path = self.artifact(announcement.version)
        if not path.exists():
            return False
        if path.stat().st_size == announcement.size and file_sha256(path) == announcement.sha256:
            return True
        self.log("warn", f"{path}: not the signed bytes of {announcement.version} (a crash while it was written?): "
                 "downloading it again")  # fmt: skip
        path.unlink()
        return False

    def _cached_announcement(self, name: str) -> PolicyAnnouncement:
        """An announcement kept in the cache, checked again against the fleet's key."""
        announcement = PolicyAnnouncement.decode((self.cache / name).read_bytes())
        verify(announcement, self.public_key)
        return announcement

    def _read_newest(self) -> PolicyAnnouncement | None:
        try:
            return self._cached_announcement(NEWEST)
        except FileNotFoundError:
            return None
        except (ProtocolError, VerificationError) as err:  # e.g. the fleet's key changed: start afresh
            self.log("warn", f"ignoring {self.cache / NEWEST}: {err}")
            return None

    def _write_newest(self, announcement: PolicyAnnouncement) -> None:
        with atomic_file(self.cache / NEWEST, durable=False) as f:  # a lost write is fetched again
            f.write(announcement.encode())

    def _refuse(self, version: str, reason: str) -> None:
        if version:
            self._refused[version] = reason
        with self._lock:
            self.stats.refused += 1
            self.stats.last_error = reason
        self.log("error", reason)

    def _note_error(self, message: str) -> None:
        with self._lock:
            self.stats.last_error = message
        self.log("warn", message)

    def snapshot(self) -> FetchStats:
        with self._lock:
            return FetchStats(**vars(self.stats))
