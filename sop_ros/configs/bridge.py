"""Configs of the link between robots and the cloud: Zenoh sessions, the robot's bridge, the cloud's episode ingest."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from sop_ros.configs import require

_ENDPOINT = re.compile(r"(tcp|tls|quic|udp)/[^\s/]+:\d+")  # fullmatch: protocol/host:port


@dataclass(frozen=True)
class TlsConfig:
    """Mutual TLS on tls/ endpoints (`sop keys` writes the files): each side proves it holds a certificate of
    the fleet's CA, and the cloud's access control knows a robot by its certificate's common name.
    Empty paths: TLS off. The files are checked when the session opens (a config may be written before them)."""

    root_ca: str = ""  # the fleet CA's certificate (PEM): only peers with a certificate it signed get in
    certificate: str = ""  # this peer's certificate (PEM), signed by root_ca, common name = robot id or "cloud"
    private_key: str = ""  # its private key (PEM, mode 0600)

    @property
    def enabled(self) -> bool:
        return bool(self.root_ca)

    def __post_init__(self) -> None:
        paths = {"root_ca": self.root_ca, "certificate": self.certificate, "private_key": self.private_key}
        missing = [key for key, path in paths.items() if not path]
        require(len(missing) in (0, 3), missing[0] if missing else "", "",
                "set root_ca, certificate and private_key together (all empty: TLS off)")  # fmt: skip


@dataclass(frozen=True)
class ZenohConfig:
    """One Zenoh session: explicit endpoints, scouting off (no traffic anywhere not named here)."""

    mode: Literal["peer", "client"] = "peer"
    listen: tuple[str, ...] = ()  # endpoints this session accepts connections on, e.g. tcp/127.0.0.1:7447
    connect: tuple[str, ...] = ()  # endpoints it connects to (retried until they answer)
    # Same-host peers otherwise move large messages through a shared-memory pool: off, so that loopback
    # measures what a network gives, and robots and cloud behave the same on one host as on many.
    shared_memory: bool = False
    tls: TlsConfig = field(default_factory=TlsConfig)  # set: every endpoint is tls/..., with mutual authentication
    # The cloud's: a JSON (or JSON5) file holding Zenoh's `access_control` section (`sop keys` writes one that
    # lets robots do only what the protocol needs); empty: none. Matches peers by certificate, so it needs tls.
    access_control: str = ""

    def __post_init__(self) -> None:
        require(bool(self.listen or self.connect), "connect", self.connect, "name at least one endpoint to listen on "
                "or connect to (scouting is off)")  # fmt: skip
        for key in ("listen", "connect"):
            for i, endpoint in enumerate(getattr(self, key)):
                require(bool(_ENDPOINT.fullmatch(endpoint)), f"{key}[{i}]", endpoint,
                        "must be an endpoint like tcp/127.0.0.1:7447")  # fmt: skip
                tls = endpoint.startswith("tls/")
                require(tls == self.tls.enabled, f"{key}[{i}]", endpoint,
                        "must be a tls/ endpoint when tls is set (no unauthenticated way in)" if self.tls.enabled
                        else "a tls/ endpoint needs tls.root_ca, tls.certificate and tls.private_key")  # fmt: skip
        require(not self.access_control or self.tls.enabled, "access_control", self.access_control,
                "needs tls (its subjects are certificate common names)")  # fmt: skip


@dataclass(frozen=True)
class PolicyDownloadConfig:
    """The robot's side of weight distribution: announced policies are checked against the fleet's public key,
    downloaded in ranges (resuming), checked against the signed sha256, then handed to the policy node."""

    public_key: str = ""  # the fleet's Ed25519 public key (`sop keys`); empty: no policy is downloaded
    cache_dir: str = "runs/policies"  # verified artifacts, in <cache_dir>/<robot id>/
    chunk_kb: int = 1024  # bytes per range query
    window: int = 4  # range queries in flight: keeps the link busy while each reply crosses it
    check_period_s: float = 5.0  # also ask for the latest announcement this often: a robot that was away missed it
    swap: Literal["episode_boundary", "immediate"] = "episode_boundary"
    keep_versions: int = 3  # verified artifacts kept in the cache (the running one is never removed)

    def __post_init__(self) -> None:
        require(4 <= self.chunk_kb <= 65536, "chunk_kb", self.chunk_kb, "must be in 4..65536")
        require(1 <= self.window <= 64, "window", self.window, "must be in 1..64")
        require(self.check_period_s > 0, "check_period_s", self.check_period_s, "must be > 0")
        require(self.keep_versions >= 1, "keep_versions", self.keep_versions, "must be >= 1")


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
    window: int = 4  # pieces in flight: the link stays busy while each acknowledgement comes back
    reply_timeout_s: float = 10.0  # a piece not acknowledged by then is sent again, after a backoff
    retry_initial_s: float = 0.5  # backoff after a failure: doubles up to retry_max_s while the cloud is away
    retry_max_s: float = 30.0
    scan_period_s: float = 0.5  # how often the outbox is looked at when it is empty
    status_hz: float = 1.0  # bridge/status here, and the robot's report to the cloud's fleet table
    policies: PolicyDownloadConfig = field(default_factory=PolicyDownloadConfig)
    zenoh: ZenohConfig = field(default_factory=lambda: ZenohConfig(connect=("tcp/127.0.0.1:7447",)))

    def __post_init__(self) -> None:
        require(bool(self.outbox_dir), "outbox_dir", self.outbox_dir, "must name a directory")
        require(self.outbox_quota_mb > 0, "outbox_quota_mb", self.outbox_quota_mb, "must be > 0")
        require(4 <= self.chunk_kb <= 65536, "chunk_kb", self.chunk_kb, "must be in 4..65536")
        require(1 <= self.window <= 64, "window", self.window, "must be in 1..64")
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


@dataclass(frozen=True)
class PolicyServingConfig:
    """The cloud's side of weight distribution: the registry of signed versions, announced and served."""

    registry_dir: str = "runs/policies"  # <version>.onnx + signed <version>.json, latest.json
    private_key: str = ""  # the fleet's Ed25519 private key (`sop keys`): needed to publish, not to serve
    poll_s: float = 0.2  # how often the server looks for a new latest.json to announce
    max_range_kb: int = 65536  # the largest range one query may ask for
    stream_chunk_kb: int = 1024  # a new artifact is also streamed to every robot in pieces of this size
    range_workers: int = 2  # threads reading the byte ranges robots ask for
    # The ONNX files of only this many newest versions stay (0: every version), never the latest's or a canary's;
    # every signed announcement stays, the history whole. A learner publishing every few seconds fills a disk
    # otherwise: 6.9 GB in the 2-hour soak. Experiments that score old versions keep them all.
    keep_artifacts: int = 0

    def __post_init__(self) -> None:
        require(bool(self.registry_dir), "registry_dir", self.registry_dir, "must name a directory")
        require(self.keep_artifacts == 0 or self.keep_artifacts >= 3, "keep_artifacts", self.keep_artifacts,
                "must be 0 (keep all) or >= 3 (the newest, the one robots are fetching, and one before)")
        require(self.poll_s > 0, "poll_s", self.poll_s, "must be > 0")
        require(self.max_range_kb >= 4, "max_range_kb", self.max_range_kb, "must be >= 4")
        require(4 <= self.stream_chunk_kb <= 65536, "stream_chunk_kb", self.stream_chunk_kb, "must be in 4..65536")
        require(self.range_workers >= 1, "range_workers", self.range_workers, "must be >= 1")
