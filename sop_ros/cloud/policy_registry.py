"""The learner's published policies on disk: each version an ONNX file and its signed announcement.

    <registry>/<version>.onnx    the artifact robots download
    <registry>/<version>.json    its PolicyAnnouncement, signed with the fleet's private key
    <registry>/latest.json       the announcement robots should run now
    <registry>/canary.json       a candidate on canary: the robots it names run it, the rest latest.json
    <registry>/rollouts.jsonl    every canary's verdict, with its evidence, one JSON line each

Files are written whole (temporary name, fsync, rename) so that a crash leaves the registry as it was; the
policy server (sop_ros.cloud.policy_server) serves what is here and announces each new latest.json.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sop_ros.bridge.artifacts import VERSION, PolicyAnnouncement, sign
from sop_ros.bridge.protocol import ProtocolError
from sop_ros.checksums import file_sha256
from sop_ros.episodes.durable import atomic_file

LATEST = "latest.json"
CANARY = "canary.json"
ROLLOUTS = "rollouts.jsonl"


def onnx_version(path: Path) -> str:
    """The version an exported policy carries in its metadata (the policy node checks it against the request)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}.get("sop_ros.version", "")


class PolicyRegistry:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def publish(self, onnx_path: str | Path, private_key: Ed25519PrivateKey, metrics: dict[str, float] | None = None,
                parent: str | None = None, canary: list[str] | None = None) -> PolicyAnnouncement:  # fmt: skip
        """Add an exported policy as the latest version; its parent defaults to the version it replaces. With
        `canary` robots, it is the candidate on canary with them instead: latest.json stays the incumbent until
        `promote` or `roll_back`."""
        source = Path(onnx_path)
        version = onnx_version(source)
        if not VERSION.fullmatch(version):
            raise ValueError(f"{source}: metadata sop_ros.version {version!r} is not a version (export it with "
                             "`sop export`)")  # fmt: skip
        artifact = self.artifact_path(version)
        if artifact.exists():
            raise ValueError(f"version {version} is published already ({artifact}): export the new weights under "
                             "a new version")  # fmt: skip
        newest, incumbent = self.newest(), self.latest()
        staged = self.directory / f".{version}.onnx.tmp"
        shutil.copyfile(source, staged)
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        announcement = sign(PolicyAnnouncement(
            version=version, sha256=file_sha256(staged), size=staged.stat().st_size,
            created=max(time.time(), newest.created + 1e-3 if newest else 0.0),  # strictly newer, whatever the clock
            parent=(incumbent.version if incumbent else "") if parent is None else parent,
            metrics=dict(metrics or {}), robots=list(canary or []), stage="canary" if canary else "",
        ), private_key)  # fmt: skip
        os.replace(staged, artifact)
        self._write(f"{version}.json", announcement.encode())
        self._write(CANARY if canary else LATEST, announcement.encode())
        if not canary:  # a version for every robot supersedes a candidate on canary
            (self.directory / CANARY).unlink(missing_ok=True)
        return announcement

    def latest(self) -> PolicyAnnouncement | None:
        """What every robot but a canary's should run."""
        return self.announcement(LATEST)

    def canary(self) -> PolicyAnnouncement | None:
        """The candidate on canary, if one is."""
        return self.announcement(CANARY)

    def newest(self) -> PolicyAnnouncement | None:
        """The newest announcement of either: a new one must be newer still (robots refuse older ones)."""
        return max(filter(None, (self.latest(), self.canary())), key=lambda a: a.created, default=None)

    def promote(self, private_key: Ed25519PrivateKey, evidence: dict[str, float], reason: str) -> PolicyAnnouncement:
        """The candidate on canary becomes every robot's: announced again, newer, with the verdict's evidence."""
        return self._end_canary(private_key, evidence, reason, promoted=True)

    def roll_back(self, private_key: Ed25519PrivateKey, evidence: dict[str, float], reason: str) -> PolicyAnnouncement:
        """The canaries return to the incumbent: it is announced again, newer than the candidate, to every robot."""
        return self._end_canary(private_key, evidence, reason, promoted=False)

    def _end_canary(self, private_key: Ed25519PrivateKey, evidence: dict[str, float], reason: str,
                    promoted: bool) -> PolicyAnnouncement:  # fmt: skip
        candidate, incumbent = self.canary(), self.latest()
        if candidate is None:
            raise ValueError(f"{self.directory}: no candidate on canary")
        chosen = candidate if promoted else incumbent
        if chosen is None:  # no incumbent: a fleet's first policy is not put on canary
            raise ValueError(f"{self.directory}: no incumbent to roll back to")
        announcement = sign(replace(
            chosen, created=max(time.time(), candidate.created + 1e-3), robots=[],
            stage="promoted" if promoted else "rolled back", metrics={**chosen.metrics, **evidence}, signature="",
        ), private_key)  # fmt: skip
        record = {"time": announcement.created, "candidate": candidate.version, "incumbent": incumbent.version
                  if incumbent else "", "canaries": candidate.robots, "decision": announcement.stage,
                  "reason": reason, "evidence": evidence}  # fmt: skip
        with open(self.directory / ROLLOUTS, "a") as f:  # the verdicts' history: appended, never rewritten
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if promoted:
            self._write(f"{candidate.version}.json", announcement.encode())
        self._write(LATEST, announcement.encode())
        (self.directory / CANARY).unlink()
        return announcement

    def prune_artifacts(self, keep: int) -> list[str]:
        """Delete the ONNX files of all but the `keep` newest versions (0: none), never the latest's or the
        canary's; their announcements stay. The versions whose files went, oldest first."""
        if keep <= 0:
            return []
        protected = {a.version for a in (self.latest(), self.canary()) if a is not None}
        published = []
        for path in self.directory.glob("*.onnx"):
            try:
                published.append((path.stat().st_mtime_ns, path))
            except FileNotFoundError:  # pruned meanwhile by another process
                continue
        pruned = []
        for _, path in sorted(published)[:-keep]:
            if path.stem not in protected:
                path.unlink(missing_ok=True)
                pruned.append(path.stem)
        return pruned

    def rollouts(self, last: int | None = None) -> list[dict]:
        """Every canary's verdict so far, oldest first; `last`: only the newest `last`, read from the end of the
        history (which grows by a line a verdict for as long as the fleet runs)."""
        try:
            with open(self.directory / ROLLOUTS, "rb") as f:
                if last is None:
                    lines = f.read().splitlines()
                else:
                    lines = tail_lines(f, last)
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def announcement(self, name: str) -> PolicyAnnouncement | None:
        """A stored announcement (`latest.json` or `<version>.json`); None when there is none."""
        path = self.directory / (name if name.endswith(".json") else f"{name}.json")
        try:
            return PolicyAnnouncement.decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except ProtocolError as err:
            raise ValueError(f"{path}: {err}") from None

    def artifact_path(self, version: str) -> Path:
        if not VERSION.fullmatch(version):
            raise ValueError(f"{version!r} is not a version")
        return self.directory / f"{version}.onnx"

    def _write(self, name: str, data: bytes) -> None:
        with atomic_file(self.directory / name) as f:
            f.write(data)


def tail_lines(file, count: int, block: int = 8192) -> list[bytes]:
    """The last `count` lines of a binary file, reading back from its end a block at a time."""
    if count <= 0:
        return []
    end = file.seek(0, os.SEEK_END)
    data, start = b"", end
    while start > 0 and data.count(b"\n") <= count:
        start = max(0, start - block)
        file.seek(start)
        data = file.read(end - start)
    lines = data.splitlines()
    if start > 0:
        lines = lines[1:]  # the first may be cut: more than `count` whole lines follow it
    return lines[-count:]
