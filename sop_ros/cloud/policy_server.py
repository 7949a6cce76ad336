"""The cloud's side of weight distribution, and its view of the fleet.

- Announces each new version of the registry (sop_ros.cloud.policy_registry) on `sop/policies/announce`.
- Answers `sop/policies/latest` with the latest signed announcement, and the candidate's on canary if one is:
  a robot that starts or reconnects late asks for them (a put is not kept for peers that were away).
- Serves artifacts in byte ranges on `sop/policies/artifacts/<version>`: robots download with several ranges in
  flight and resume from the bytes they hold.
- Keeps the fleet table from robots' reports on `sop/fleet/robots/<robot id>` and answers `sop/fleet/table`
  (`sop fleet status`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import zenoh
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sop_ros.bridge.artifacts import PolicyAnnouncement
from sop_ros.bridge.protocol import (
    FLEET_ROBOTS,
    FLEET_TABLE,
    POLICY_ANNOUNCE,
    POLICY_ARTIFACTS,
    POLICY_LATEST,
    STREAM,
    ArtifactRange,
    ProtocolError,
    artifact_key,
    decode_robot_report,
)
from sop_ros.bridge.zenoh_session import QueryWorkers
from sop_ros.cloud.policy_registry import CANARY, LATEST, PolicyRegistry
from sop_ros.configs.bridge import PolicyServingConfig

log = logging.getLogger("sop.policies")


class PolicyServer:
    def __init__(self, session: zenoh.Session, config: PolicyServingConfig) -> None:
        self.session = session
        self.config = config
        self.registry = PolicyRegistry(config.registry_dir)
        self.latest = self.registry.latest()
        self.canary = self.registry.canary()  # a candidate that only the robots it names run
        self.robots: dict[str, dict] = {}  # robot id -> its last report, with the time it arrived
        self._lock = threading.Lock()
        self._announcing = threading.Lock()  # one announcement per version, from publish() or the registry watch
        self.artifacts = ArtifactFiles(self.registry, config.max_range_kb)
        # Ranges are read from disk on threads of ours; the other answers come from memory, in Zenoh's callback.
        self._readers = QueryWorkers("policy-ranges", config.range_workers, self._answer_range)
        self._declared = [
            session.declare_queryable(POLICY_LATEST, self._answer_latest),
            session.declare_queryable(f"{POLICY_ARTIFACTS}/*", self._readers.submit),
            session.declare_queryable(FLEET_TABLE, self._answer_fleet_table),
            session.declare_subscriber(f"{FLEET_ROBOTS}/*", self._on_report),
        ]
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_registry, name="policy-announcer", daemon=True)
        self._watch.start()

    def publish(self, onnx_path: str | Path, private_key: Ed25519PrivateKey, metrics: dict[str, float] | None = None,
                parent: str | None = None, canary: list[str] | None = None) -> PolicyAnnouncement:  # fmt: skip
        """A learner in this process: add a version to the registry (on canary with `canary` robots) and announce
        it at once (no polling)."""
        with self._announcing:
            announcement = self.registry.publish(onnx_path, private_key, metrics, parent, canary)
            with self._lock:
                if canary:
                    self.canary = announcement
                else:
                    self.latest = announcement
            self.announce(announcement)
        return announcement

    def announce(self, announcement: PolicyAnnouncement | None = None) -> None:
        """Put an announcement (the latest), then stream its artifact once to every robot connected."""
        announcement = announcement or self.latest
        if announcement is None:
            return
        self.session.put(POLICY_ANNOUNCE, announcement.encode(), congestion_control=zenoh.CongestionControl.BLOCK)
        robots = ", ".join(announcement.robots) or "every robot"
        stage = f", {announcement.stage} with {robots}" if announcement.stage else ""
        log.info("announced policy %s (%d bytes, parent %s%s)", announcement.version, announcement.size,
                 announcement.parent or "none", stage)  # fmt: skip
        if announcement.stage in ("promoted", "rolled back"):
            return  # its artifact went out when it was first announced; a robot that lacks it asks for ranges
        threading.Thread(target=self.stream, args=(announcement.version, announcement.size), name="policy-stream",
                         daemon=True).start()  # fmt: skip

    def stream(self, version: str, size: int) -> None:
        """Put the artifact in pieces on sop/policies/artifacts/<version>/stream: Zenoh copies each piece to every
        robot connected, where range queries would read and send it once per robot. Blocking congestion control
        (measured here: dropping pieces for a busy robot and letting it query them was 1.5-2x slower to verify on
        every robot). A robot that misses the stream (starts late, reconnects) asks for the ranges it lacks."""
        key = f"{artifact_key(version)}/{STREAM}"
        publisher = self.session.declare_publisher(key, congestion_control=zenoh.CongestionControl.BLOCK)
        chunk = self.config.stream_chunk_kb * 1024
        try:
            with open(self.registry.artifact_path(version), "rb") as f:
                for offset in range(0, size, chunk):
                    data = f.read(chunk)
                    publisher.put(data, attachment=ArtifactRange(offset, len(data)).encode())
        finally:
            publisher.undeclare()

    def _watch_registry(self) -> None:
        """A new latest.json or canary.json (written by the learner, possibly in another process) is announced:
        a new version, a candidate's promotion, or the incumbent announced again to roll a candidate back."""
        seen = self._mtimes()
        while not self._stop.wait(self.config.poll_s):
            mtimes = self._mtimes()
            if mtimes == seen:
                continue
            seen = mtimes
            try:
                latest, canary = self.registry.latest(), self.registry.canary()
            except ValueError as err:
                log.error("not announcing: %s", err)
                continue
            with self._announcing:
                with self._lock:
                    pairs = ((latest, self.latest), (canary, self.canary))
                    news = [a for a, had in pairs if a is not None and a != had]
                    self.latest, self.canary = latest, canary
                for announcement in sorted(news, key=lambda a: a.created):
                    self.announce(announcement)

    def _mtimes(self) -> tuple[int, int]:
        def mtime(name: str) -> int:
            try:
                return (self.registry.directory / name).stat().st_mtime_ns
            except FileNotFoundError:
                return 0

        return mtime(LATEST), mtime(CANARY)

    def _answer_latest(self, query: zenoh.Query) -> None:
        with self._lock:
            latest, canary = self.latest, self.canary
        if latest is None and canary is None:
            query.reply_err(b"no policy published yet")
            return
        for announcement in filter(None, (latest, canary)):  # the older first: robots take only newer ones
            query.reply(POLICY_LATEST, announcement.encode())

    def _answer_range(self, query: zenoh.Query) -> None:
        try:
            attachment = query.attachment
            data = self.artifacts.read(str(query.key_expr).rsplit("/", 1)[-1],
                                       attachment.to_bytes() if attachment is not None else None)  # fmt: skip
        except (ProtocolError, ValueError, OSError) as err:
            query.reply_err(str(err).encode())
            return
        query.reply(query.key_expr, data)

    def _on_report(self, sample: zenoh.Sample) -> None:
        try:
            report = decode_robot_report(sample.payload.to_bytes())
        except ProtocolError as err:
            log.warning("ignored a report on %s: %s", sample.key_expr, err)
            return
        robot = str(sample.key_expr).rsplit("/", 1)[-1]
        with self._lock:
            self.robots[robot] = {**report, "robot": robot, "received": time.time()}

    def fleet_table(self) -> dict:
        with self._lock:
            latest = self.latest.version if self.latest else ""
            canary = {"version": self.canary.version, "robots": self.canary.robots} if self.canary else None
            robots = [dict(r) for _, r in sorted(self.robots.items())]
        now = time.time()
        for robot in robots:
            robot["report_age_s"] = round(now - robot.pop("received"), 3)
        return {"latest_version": latest, "canary": canary, "rollouts": self.registry.rollouts(last=5), "time": now,
                "robots": robots}  # fmt: skip

    def _answer_fleet_table(self, query: zenoh.Query) -> None:
        query.reply(FLEET_TABLE, json.dumps(self.fleet_table()).encode())

    def close(self) -> None:
        self._stop.set()
        self._watch.join(timeout=5.0)
        for entity in self._declared:
            entity.undeclare()
        self._readers.close()
        self.artifacts.close()


OPEN_ARTIFACTS = 4  # policy files kept open for range reads: the newest, a canary's pair, a straggler's


class ArtifactFiles:
    """Byte ranges of published policy artifacts, as download queries ask for them (and nothing else: a version
    that was not published names no file)."""

    def __init__(self, registry: PolicyRegistry, max_range_kb: int) -> None:
        self.registry, self.max_range_kb = registry, max_range_kb
        self._lock = threading.Lock()
        # version -> an open descriptor (read with pread: no shared offset), the most recently read last. Only the
        # few versions robots are fetching stay open: a learner publishing every few seconds for hours would
        # otherwise hold a descriptor, and the disk space of every pruned file, per version.
        self._files: dict[str, int] = {}

    def read(self, version: str, header: bytes | None) -> bytes:
        """The bytes a query's header (ArtifactRange) asks for; ProtocolError or ValueError saying why not."""
        wanted = ArtifactRange.decode(header)
        if wanted.length > self.max_range_kb * 1024:
            raise ValueError(f"range of {wanted.length} bytes exceeds max_range_kb={self.max_range_kb}")
        with self._lock:  # read under it too: a descriptor closed meanwhile could be reused by another file
            fd = self._files.pop(version, None)
            if fd is None:
                path = self.registry.artifact_path(version)  # a version's name, not a path anywhere else
                if self.registry.announcement(version) is None:  # only what was published, never other files
                    raise ValueError(f"no published policy version {version!r}")
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    raise ValueError(f"policy version {version!r} is no longer kept (the registry keeps the newest "
                                     "policies.keep_artifacts)") from None
            self._files[version] = fd
            while len(self._files) > OPEN_ARTIFACTS:
                os.close(self._files.pop(next(iter(self._files))))
            return os.pread(fd, wanted.length, wanted.offset)

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()
