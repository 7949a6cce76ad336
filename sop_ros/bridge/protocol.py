"""The episode upload protocol, robot -> cloud, on Zenoh queries. No Zenoh imports: both ends share these.

An episode file goes up in pieces, each a query on `sop/episodes/<robot id>/<episode id>` whose attachment is a
JSON `Piece` header and whose payload is the bytes at `offset`. Every piece is answered with a `Reply`:

    the cloud holds the bytes up to `offset`    -> partial, offset: where the next piece must start
    the last piece arrived and the file passed  -> stored (written durably and indexed: the robot may delete it)
    the file fails a check                      -> refused, reason (the robot sets it aside and says why)

A piece that starts elsewhere than the cloud's offset is not written; the reply names the offset to resume
from. So the robot starts each episode with a probe (no payload) and continues from the answer, after a
restart of either side too. A re-sent episode that is already stored is answered `stored`, never stored twice.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Literal

# Key expressions, robots <-> cloud. The access-control config (sop_ros.bridge.security) is written in them too.
EPISODES = "sop/episodes"  # robot -> cloud: episode uploads, sop/episodes/<robot id>/<episode id>
POLICIES = "sop/policies"  # cloud -> robots: everything below is published or served by the learner only
POLICY_ANNOUNCE = f"{POLICIES}/announce"  # a new policy version (put)
POLICY_LATEST = f"{POLICIES}/latest"  # the latest announcement, for robots that start or reconnect late (query)
POLICY_ARTIFACTS = f"{POLICIES}/artifacts"  # a version's bytes in ranges, sop/policies/artifacts/<version> (query)
STREAM = "stream"  # sop/policies/artifacts/<version>/stream: the bytes put once to all robots after the announcement
FLEET = "sop/fleet"
FLEET_ROBOTS = f"{FLEET}/robots"  # robot -> cloud: what a robot runs and holds, sop/fleet/robots/<robot id> (put)
FLEET_TABLE = f"{FLEET}/table"  # the cloud's view of every robot, for `sop fleet status` (query)
_EPISODE_KEY = re.compile(rf"{EPISODES}/(?P<robot>[A-Za-z0-9_]+)/(?P<episode>[A-Za-z0-9._-]+)")  # fullmatch
_SHA256 = re.compile(r"[0-9a-f]{64}")

Status = Literal["partial", "stored", "refused"]


class ProtocolError(ValueError):
    """A malformed key, header or reply; the message says what is wrong."""


def artifact_key(version: str) -> str:
    return f"{POLICY_ARTIFACTS}/{version}"


def robot_report_key(robot_id: str) -> str:
    return f"{FLEET_ROBOTS}/{robot_id}"


def episode_key(robot_id: str, episode_id: str) -> str:
    return f"{EPISODES}/{robot_id}/{episode_id}"


def parse_episode_key(key: str) -> tuple[str, str]:
    """(robot id, episode id) of an upload key."""
    match = _EPISODE_KEY.fullmatch(key)
    if not match or match["episode"] in (".", ".."):
        raise ProtocolError(f"key {key!r} is not {EPISODES}/<robot id>/<episode id>")
    return match["robot"], match["episode"]


@dataclass(frozen=True)
class Piece:
    """One upload query's header: the whole file's size and sha256, and where this piece's bytes start."""

    size: int
    sha256: str
    offset: int | None = None  # None: a probe, no bytes

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Piece:
        fields = json_object(data, "piece header")
        size, sha256, offset = fields.get("size"), fields.get("sha256"), fields.get("offset")
        if not _is_count(size):
            raise ProtocolError(f"piece header: size {size!r} must be an integer >= 0")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ProtocolError(f"piece header: sha256 {sha256!r} must be 64 lowercase hex digits")
        if offset is not None and not (_is_count(offset) and offset <= size):
            raise ProtocolError(f"piece header: offset {offset!r} must be an integer in 0..{size}")
        return cls(size, sha256, offset)


@dataclass(frozen=True)
class ArtifactRange:
    """A download query's header: `length` bytes of a policy artifact from `offset` (the reply may be shorter
    at the end of the file)."""

    offset: int
    length: int

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> ArtifactRange:
        fields = json_object(data, "artifact range")
        offset, length = fields.get("offset"), fields.get("length")
        if not _is_count(offset) or not _is_count(length) or length == 0:
            raise ProtocolError(f"artifact range: offset {offset!r} and length {length!r} must be integers "
                                "(offset >= 0, length > 0)")  # fmt: skip
        return cls(offset, length)


@dataclass(frozen=True)
class Reply:
    status: Status
    offset: int = 0
    reason: str = ""
    duplicate: bool = False  # stored: it was stored before (a re-sent episode)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Reply:
        fields = json_object(data, "reply")
        if fields.get("status") not in ("partial", "stored", "refused"):
            raise ProtocolError(f"reply: status {fields.get('status')!r} is not partial, stored or refused")
        try:
            return cls(**fields)
        except TypeError as err:
            raise ProtocolError(f"reply: {err}") from None


# A robot's report on sop/fleet/robots/<robot id> (bridge_node.robot_report): each field and its JSON type.
ROBOT_REPORT_TEXT = ("running_version", "pending_version", "backend", "policy_state", "newest_version",
                     "held_version", "last_error")  # fmt: skip
ROBOT_REPORT_COUNTS = ("outbox_episodes", "outbox_bytes", "uploaded")
ROBOT_REPORT_SECONDS = ("seconds_since_upload", "time")  # seconds_since_upload: -1 before the first upload
MAX_REPORT_TEXT = 1000  # characters of one text field (an error message is cut to this by its robot)


def decode_robot_report(data: bytes | None) -> dict:
    """A robot's report as the cloud keeps it: exactly the report's fields, each of its type (a report with a
    field missing, of another type, non-finite or out of range is refused: the fleet table and the learner's
    status read every field)."""
    fields = json_object(data, "robot report")
    report: dict = {}
    for name in ROBOT_REPORT_TEXT + ROBOT_REPORT_COUNTS + ROBOT_REPORT_SECONDS:
        value = fields.get(name)
        if name in ROBOT_REPORT_TEXT:
            ok = isinstance(value, str) and len(value) <= MAX_REPORT_TEXT
        elif name in ROBOT_REPORT_COUNTS:
            ok = _is_count(value)
        else:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and value >= (-1 if name == "seconds_since_upload" else 0))  # fmt: skip
        if not ok:
            raise ProtocolError(f"robot report: {name} {value!r:.80} is missing, of the wrong type or out of range")
        report[name] = value
    return report


def _is_count(value: object) -> bool:
    """An integer >= 0 (JSON true/false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def json_object(data: bytes | None, what: str) -> dict:
    if not data:
        raise ProtocolError(f"{what}: missing")
    try:
        fields = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"{what}: not JSON: {err}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(fields).__name__}")
    return fields
