"""Policy artifacts, cloud -> fleet: the signed announcement of a version, and the fleet's Ed25519 keys.

The learner signs each announcement (version, parent, sha256, size, creation time, metrics, and which robots are
to run it at which rollout stage) with the fleet's private key; a robot checks the signature with the public key
before it downloads anything, then checks the downloaded bytes against the signed sha256 and size. So a file that
loads was made by the holder of the private key, byte for byte. No Zenoh imports: the learner, the robots and
the tests share this.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sop_ros.bridge.protocol import ProtocolError, json_object

PRIVATE_KEY_FILE = "policy_signing.key"
PUBLIC_KEY_FILE = "policy_signing.pub"
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: a Zenoh key chunk and a file name
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SIGNATURE = re.compile(r"[0-9a-f]{128}")
ROBOT_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # fullmatch: a ROS namespace and a Zenoh key chunk
# A canary runs on the robots named; a promotion or a rollback (the incumbent announced again) on every robot.
STAGES = ("", "canary", "promoted", "rolled back")


class VerificationError(ValueError):
    """An announcement or artifact that must not be loaded; the message says what failed."""


@dataclass(frozen=True)
class PolicyAnnouncement:
    version: str
    sha256: str  # of the ONNX file
    size: int  # bytes
    created: float  # unix time; robots take only announcements newer than the one they run (no replayed rollbacks)
    parent: str = ""  # the version it was trained from; empty for a base policy
    metrics: dict[str, float] = field(default_factory=dict)  # what justifies it, e.g. success rate per task
    robots: list[str] = field(default_factory=list)  # the robots to run it; empty: every robot
    stage: str = ""  # of a canary rollout (sop_ros.cloud.canary); empty: none
    signature: str = ""  # hex Ed25519 signature of signed_bytes()

    def signed_bytes(self) -> bytes:
        """Every field but the signature, canonically encoded: what the signature covers."""
        fields = asdict(self)
        del fields["signature"]
        for name in ("robots", "stage"):  # a whole-fleet version signs as it did before rollouts had stages
            if not fields[name]:
                del fields[name]
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> PolicyAnnouncement:
        fields = json_object(data, "policy announcement")
        unknown = set(fields) - set(cls.__dataclass_fields__)
        if unknown:
            raise ProtocolError(f"policy announcement: unknown fields {sorted(unknown)}")
        try:
            announcement = cls(**fields)
        except TypeError as err:
            raise ProtocolError(f"policy announcement: {err}") from None
        announcement.check()
        return announcement

    def check(self) -> None:
        """Field by field, so that a malformed announcement is refused with the reason."""
        problems = []
        if not isinstance(self.version, str) or not VERSION.fullmatch(self.version):
            problems.append(f"version {self.version!r} must match {VERSION.pattern}")
        if not isinstance(self.parent, str) or self.parent and not VERSION.fullmatch(self.parent):
            problems.append(f"parent {self.parent!r} must be empty or a version")
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            problems.append(f"sha256 {self.sha256!r} must be 64 lowercase hex digits")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size <= 0:
            problems.append(f"size {self.size!r} must be an integer > 0")
        if not _is_finite(self.created) or self.created <= 0:
            problems.append(f"created {self.created!r} must be a unix time")
        if not isinstance(self.metrics, dict) or not all(
            isinstance(k, str) and _is_finite(v) for k, v in self.metrics.items()
        ):
            problems.append("metrics must map names to finite numbers")
        if not isinstance(self.robots, list) or not all(isinstance(r, str) and ROBOT_ID.fullmatch(r)
                                                           for r in self.robots):  # fmt: skip
            problems.append(f"robots must be a list of robot ids ({ROBOT_ID.pattern})")
        if self.stage not in STAGES:
            problems.append(f"stage {self.stage!r} must be one of {', '.join(map(repr, STAGES))}")
        elif (self.stage == "canary") != bool(self.robots):
            problems.append("a canary names its robots, and only a canary does")
        if not isinstance(self.signature, str) or self.signature and not _SIGNATURE.fullmatch(self.signature):
            problems.append("signature must be empty or 128 hex digits")
        if problems:
            raise ProtocolError("policy announcement: " + "; ".join(problems))


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def sign(announcement: PolicyAnnouncement, private_key: Ed25519PrivateKey) -> PolicyAnnouncement:
    announcement.check()
    return replace(announcement, signature=private_key.sign(announcement.signed_bytes()).hex())


def verify(announcement: PolicyAnnouncement, public_key: Ed25519PublicKey) -> None:
    """Raises VerificationError unless the fleet's private key signed exactly these fields."""
    if not announcement.signature:
        raise VerificationError(f"policy {announcement.version} is not signed")
    try:
        public_key.verify(bytes.fromhex(announcement.signature), announcement.signed_bytes())
    except (InvalidSignature, ValueError):
        raise VerificationError(f"policy {announcement.version}: the signature does not match the fleet's "
                                "public key (signed by another key, or a field was changed)") from None  # fmt: skip


def make_signing_keys(out_dir: str | Path, force: bool = False) -> tuple[Path, Path]:
    """A new fleet key pair: the private key (mode 0600) stays with the learner, the public key goes to robots."""
    out = Path(out_dir)
    private_path, public_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise FileExistsError(f"{path} exists: a new key pair would orphan every robot that trusts the old "
                                  "one (`sop keys --force` replaces it)")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_read_key(path, "private"), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key (make one with `sop keys`)")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(_read_key(path, "public"))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key (make one with `sop keys`)")
    return key


def _read_key(path: str | Path, kind: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read the fleet's {kind} key {path}: {err.strerror}") from None
