"""The learner's published policies on disk: each version an ONNX file and its signed announcement.

    <registry>/<version>.onnx    the artifact robots download
    <registry>/<version>.json    its PolicyAnnouncement, signed with the fleet's private key
    <registry>/latest.json       the announcement robots should run now

Files are written whole (temporary name, fsync, rename) so that a crash leaves the registry as it was; the
policy server (sop_ros.cloud.policy_server) serves what is here and announces each new latest.json.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sop_ros.bridge.artifacts import VERSION, PolicyAnnouncement, sign
from sop_ros.bridge.protocol import ProtocolError
from sop_ros.checksums import file_sha256
from sop_ros.episodes.durable import atomic_file

LATEST = "latest.json"


def onnx_version(path: Path) -> str:
    """The version an exported policy carries in its metadata (the policy node checks it against the request)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}.get("sop_ros.version", "")


class PolicyRegistry:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def publish(self, onnx_path: str | Path, private_key: Ed25519PrivateKey, metrics: dict[str, float] | None = None,
                parent: str | None = None) -> PolicyAnnouncement:  # fmt: skip
        """Add an exported policy as the latest version; its parent defaults to the version it replaces."""
        source = Path(onnx_path)
        version = onnx_version(source)
        if not VERSION.fullmatch(version):
            raise ValueError(f"{source}: metadata sop_ros.version {version!r} is not a version (export it with "
                             "`sop export`)")  # fmt: skip
        artifact = self.artifact_path(version)
        if artifact.exists():
            raise ValueError(f"version {version} is published already ({artifact}): export the new weights under "
                             "a new version")  # fmt: skip
        latest = self.latest()
        staged = self.directory / f".{version}.onnx.tmp"
        shutil.copyfile(source, staged)
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        announcement = sign(PolicyAnnouncement(
            version=version, sha256=file_sha256(staged), size=staged.stat().st_size,
            created=max(time.time(), latest.created + 1e-3 if latest else 0.0),  # strictly newer, whatever the clock
            parent=(latest.version if latest else "") if parent is None else parent,
            metrics=dict(metrics or {}),
        ), private_key)  # fmt: skip
        os.replace(staged, artifact)
        self._write(f"{version}.json", announcement.encode())
        self._write(LATEST, announcement.encode())
        return announcement

    def latest(self) -> PolicyAnnouncement | None:
        return self.announcement(LATEST)

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
