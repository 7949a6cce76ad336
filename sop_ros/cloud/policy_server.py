"""The cloud's side of weight distribution, and its view of the fleet.

- Announces each new version of the registry (sop_ros.cloud.policy_registry) on `sop/policies/announce`.
- Answers `sop/policies/latest` with the latest signed announcement: a robot that starts or reconnects late
  asks for it (a put is not kept for peers that were away).
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
    json_object,
)
from sop_ros.bridge.zenoh_session import QueryWorkers
from sop_ros.cloud.policy_registry import LATEST, PolicyRegistry
from sop_ros.configs.bridge import PolicyServingConfig

log = logging.getLogger("sop.policies")


class PolicyServer:
    def __init__(self, session: zenoh.Session, config: PolicyServingConfig) -> None:
        self.session = session
        self.config = config
        self.registry = PolicyRegistry(config.registry_dir)
        self.latest = self.registry.latest()
        self.robots: dict[str, dict] = {}  # robot id -> its last report, with the time it arrived
        self._lock = threading.Lock()
        self._announcing = threading.Lock()  # one announcement per version, from publish() or the registry watch
        self._files: dict[str, int] = {}  # version -> an open descriptor (read with pread: no shared offset)
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
                parent: str | None = None) -> PolicyAnnouncement:  # fmt: skip
        """A learner in this process: add a version to the registry and announce it at once (no polling)."""
        with self._announcing:
            announcement = self.registry.publish(onnx_path, private_key, metrics, parent)
            with self._lock:
                self.latest = announcement
            self.announce()
        return announcement

    def announce(self) -> None:
        """Put the latest announcement, then stream its artifact once to every robot connected."""
        latest = self.latest
        if latest is None:
            return
        self.session.put(POLICY_ANNOUNCE, latest.encode(), congestion_control=zenoh.CongestionControl.BLOCK)
        log.info("announced policy %s (%d bytes, parent %s)", latest.version, latest.size, latest.parent or "none")
        threading.Thread(
            target=self.stream, args=(latest.version, latest.size), name="policy-stream", daemon=True
        ).start()

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
        """A new latest.json (written by the learner, possibly in another process) is announced."""
        seen = self._mtime()
        while not self._stop.wait(self.config.poll_s):
            mtime = self._mtime()
            if mtime == seen:
                continue
            seen = mtime
            try:
                latest = self.registry.latest()
            except ValueError as err:
                log.error("not announcing: %s", err)
                continue
            with self._announcing:
                if latest is not None and (self.latest is None or latest.version != self.latest.version):
                    with self._lock:
                        self.latest = latest
                    self.announce()

    def _mtime(self) -> int:
        try:
            return (self.registry.directory / LATEST).stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def _answer_latest(self, query: zenoh.Query) -> None:
        with self._lock:
            latest = self.latest
        if latest is None:
            query.reply_err(b"no policy published yet")
        else:
            query.reply(POLICY_LATEST, latest.encode())

    def _answer_range(self, query: zenoh.Query) -> None:
        try:
            data = self.read_range(str(query.key_expr).rsplit("/", 1)[-1], query.attachment)
        except (ProtocolError, ValueError, OSError) as err:
            query.reply_err(str(err).encode())
            return
        query.reply(query.key_expr, data)

    def read_range(self, version: str, attachment: zenoh.ZBytes | None) -> bytes:
        wanted = ArtifactRange.decode(attachment.to_bytes() if attachment is not None else None)
        if wanted.length > self.config.max_range_kb * 1024:
            raise ValueError(f"range of {wanted.length} bytes exceeds max_range_kb={self.config.max_range_kb}")
        with self._lock:
            fd = self._files.get(version)
            if fd is None:
                if self.registry.announcement(version) is None:  # only what was published, never other files
                    raise ValueError(f"no published policy version {version!r}")
                fd = self._files[version] = os.open(self.registry.artifact_path(version), os.O_RDONLY)
        return os.pread(fd, wanted.length, wanted.offset)

    def _on_report(self, sample: zenoh.Sample) -> None:
        try:
            report = json_object(sample.payload.to_bytes(), "robot report")
        except ProtocolError as err:
            log.warning("ignored a report on %s: %s", sample.key_expr, err)
            return
        robot = str(sample.key_expr).rsplit("/", 1)[-1]
        with self._lock:
            self.robots[robot] = {**report, "robot": robot, "received": time.time()}

    def fleet_table(self) -> dict:
        with self._lock:
            latest = self.latest.version if self.latest else ""
            robots = [dict(r) for _, r in sorted(self.robots.items())]
        now = time.time()
        for robot in robots:
            robot["report_age_s"] = round(now - robot.pop("received"), 3)
        return {"latest_version": latest, "time": now, "robots": robots}

    def _answer_fleet_table(self, query: zenoh.Query) -> None:
        query.reply(FLEET_TABLE, json.dumps(self.fleet_table()).encode())

    def close(self) -> None:
        self._stop.set()
        self._watch.join(timeout=5.0)
        for entity in self._declared:
            entity.undeclare()
        self._readers.close()
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()
