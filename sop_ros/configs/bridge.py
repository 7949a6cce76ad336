"""Configs of the link between robots and the cloud: Zenoh sessions, the robot's bridge, the cloud's episode ingest."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from sop_ros.configs import require

_ENDPOINT = re.compile(r"(tcp|tls|quic|udp)/[^\s/]+:\d+")  # fullmatch: protocol/host:port


@dataclass(frozen=True)
class ZenohConfig:
    """One Zenoh session: explicit endpoints, scouting off (no traffic anywhere not named here)."""

    mode: Literal["peer", "client"] = "peer"
    listen: tuple[str, ...] = ()  # endpoints this session accepts connections on, e.g. tcp/127.0.0.1:7447
    connect: tuple[str, ...] = ()  # endpoints it connects to (retried until they answer)
    # Same-host peers otherwise move large messages through a shared-memory pool: off, so that loopback
    # measures what a network gives, and robots and cloud behave the same on one host as on many.
    shared_memory: bool = False

    def __post_init__(self) -> None:
        require(bool(self.listen or self.connect), "connect", self.connect, "name at least one endpoint to listen on "
                "or connect to (scouting is off)")  # fmt: skip
        for key in ("listen", "connect"):
            for i, endpoint in enumerate(getattr(self, key)):
                require(bool(_ENDPOINT.fullmatch(endpoint)), f"{key}[{i}]", endpoint,
                        "must be an endpoint like tcp/127.0.0.1:7447")  # fmt: skip


@dataclass(frozen=True)
class BridgeConfig:
    """The robot's bridge node: the recorder's finished episodes up to the cloud, each deleted (or archived)
    only once the cloud acknowledged storing it durably."""

    outbox_dir: str = "runs/episodes"  # the recorder's output_dir: episodes wait in <outbox_dir>/<robot id>/
    after_upload: Literal["delete", "archive"] = "delete"
    archive_dir: str = ""  # after_upload=archive: here (default <outbox_dir>/<robot id>/uploaded)
    # While the cloud is away the outbox grows; past the quota, a clear warning, and with drop_oldest the
    # oldest episodes are deleted (each one logged) so that the newest experience survives.
    outbox_quota_mb: float = 2048.0
    when_full: Literal["drop_oldest", "keep"] = "drop_oldest"
    chunk_kb: int = 1024  # upload in pieces of this size (each acknowledged; a restart resumes at the last)
    reply_timeout_s: float = 10.0  # a piece not acknowledged by then is sent again, after a backoff
    retry_initial_s: float = 0.5  # backoff after a failure: doubles up to retry_max_s while the cloud is away
    retry_max_s: float = 30.0
    scan_period_s: float = 0.5  # how often the outbox is looked at when it is empty
    status_hz: float = 1.0
    zenoh: ZenohConfig = field(default_factory=lambda: ZenohConfig(connect=("tcp/127.0.0.1:7447",)))

    def __post_init__(self) -> None:
        require(bool(self.outbox_dir), "outbox_dir", self.outbox_dir, "must name a directory")
        require(self.outbox_quota_mb > 0, "outbox_quota_mb", self.outbox_quota_mb, "must be > 0")
        require(4 <= self.chunk_kb <= 65536, "chunk_kb", self.chunk_kb, "must be in 4..65536")
        require(self.reply_timeout_s > 0, "reply_timeout_s", self.reply_timeout_s, "must be > 0")
        require(0 < self.retry_initial_s <= self.retry_max_s, "retry_initial_s", self.retry_initial_s,
                f"must be > 0 and <= retry_max_s ({self.retry_max_s})")  # fmt: skip
        require(self.scan_period_s > 0, "scan_period_s", self.scan_period_s, "must be > 0")
        require(self.status_hz > 0, "status_hz", self.status_hz, "must be > 0")


@dataclass(frozen=True)
class EpisodeIngestConfig:
    """The cloud's episode ingest: what it accepts from robots, and how many uploads it handles at once."""

    # Robot ids allowed to upload; empty: any. (With mutual TLS, only certified peers reach the service.)
    allowed_robots: tuple[str, ...] = ()
    max_episode_mb: float = 2048.0
    workers: int = 2  # uploads processed in parallel (pieces of one episode always in order, by one worker)
    # Every finished episode file has these: a file without one of them is refused.
    required_metadata: tuple[str, ...] = ("episode_id", "robot_id", "task", "outcome", "steps")
    zenoh: ZenohConfig = field(default_factory=lambda: ZenohConfig(listen=("tcp/127.0.0.1:7447",)))

    def __post_init__(self) -> None:
        require(self.max_episode_mb > 0, "max_episode_mb", self.max_episode_mb, "must be > 0")
        require(self.workers >= 1, "workers", self.workers, "must be >= 1")
