"""The cloud's episode store: episode files plus a SQLite index, written so that an acknowledged episode survives.

    <root>/index.sqlite                          one row per stored episode (id, robot, task, outcome, ...)
    <root>/episodes/<robot id>/<episode id>.mcap  the files, exactly as the robot recorded them
    <root>/incoming/<robot id>/<episode id>.part  uploads in progress (a restart resumes them)

A commit fsyncs the file, renames it into episodes/ and fsyncs the directory, then inserts the index row; only
then is the robot told "stored". A crash between the rename and the insert leaves a file the index lacks:
`EpisodeStore` indexes such files when it opens, and `get` when asked for one. Episode ids are unique: the
same id is never stored twice.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sop_ros.checksums import BackgroundSha256, file_sha256
from sop_ros.episodes.durable import BackgroundSync, fsync_dir, sync_file
from sop_ros.episodes.format import Outcome
from sop_ros.episodes.reader import check_episode_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    episode_id TEXT PRIMARY KEY,
    robot_id TEXT NOT NULL,
    task TEXT NOT NULL,
    outcome TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    steps INTEGER NOT NULL,
    interventions INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    stored_at REAL NOT NULL,
    metadata TEXT NOT NULL
)
"""
_COLUMNS = "episode_id, robot_id, task, outcome, policy_version, steps, interventions, size, sha256, path, stored_at"
# From the file's metadata: the episode's end on the robot's clock (simulated time on a simulator), and the rollout
# stage of its policy when it ran.
_SELECT = (f"{_COLUMNS}, CAST(COALESCE(json_extract(metadata, '$.end_ns'), 0) AS INTEGER), "
           "COALESCE(json_extract(metadata, '$.rollout_stage'), '')")  # fmt: skip


@dataclass(frozen=True)
class StoredEpisode:
    episode_id: str
    robot_id: str
    task: str
    outcome: str
    policy_version: str
    steps: int
    interventions: int
    size: int
    sha256: str
    path: str  # relative to the store's root
    stored_at: float  # unix time
    ended_ns: int = 0  # the episode's END stamp, ns on the robot's clock (0: not known)
    rollout_stage: str = ""  # of its policy version when it ran: "canary", "promoted", "rolled back" or none

    @property
    def autonomous_success(self) -> bool:
        """A success the policy made alone: no intervention (an operator finishes a failing episode as a success)."""
        return self.outcome == Outcome.SUCCESS and self.interventions == 0


class DamagedUpload(ValueError):
    """The received bytes do not hash to the sha256 the robot announced: damaged on the way, to be sent again."""


@dataclass(frozen=True)
class _Upload:
    file: BinaryIO  # incoming/<robot id>/<episode id>.part, appended to
    digest: BackgroundSha256  # of the bytes written
    sync: BackgroundSync  # flushing them to disk as they come


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class EpisodeStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        (self.root / "episodes").mkdir(parents=True, exist_ok=True)
        (self.root / "incoming").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Uploads in progress, kept open, with the sha256 of their bytes so far (hashed while the next piece is
        # written): a commit need not read the file again.
        self._uploads: dict[Path, _Upload] = {}
        self._db = sqlite3.connect(self.root / "index.sqlite", check_same_thread=False, isolation_level=None)
        # WAL + FULL: a committed row is on disk when the commit returns, and readers never block the writer.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self.reconcile()

    def close(self) -> None:
        for path in list(self._uploads):
            self._close_upload(path)
        with self._lock:
            self._db.close()

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, episode_id: str) -> StoredEpisode | None:
        """The stored episode with this id, if any (also one whose file was renamed in but never indexed)."""
        with self._lock:
            row = self._db.execute(f"SELECT {_SELECT} FROM episodes WHERE episode_id = ?", (episode_id,)).fetchone()
        if row:
            return StoredEpisode(*row)
        orphans = list((self.root / "episodes").glob(f"*/{episode_id}.mcap"))
        return self._index(orphans[0]) if orphans else None

    def episodes(self, robot_id: str | None = None) -> list[StoredEpisode]:
        query, args = f"SELECT {_SELECT} FROM episodes", ()
        if robot_id is not None:
            query, args = query + " WHERE robot_id = ?", (robot_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY stored_at", args).fetchall()
        return [StoredEpisode(*row) for row in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]

    # -- uploads --------------------------------------------------------------------------------------------

    def _incoming(self, robot_id: str, episode_id: str) -> Path:
        return self.root / "incoming" / robot_id / f"{episode_id}.part"

    def receiving(self, robot_id: str, episode_id: str) -> bool:
        """Whether this upload is in progress in this process (open, not yet committed or discarded)."""
        return self._incoming(robot_id, episode_id) in self._uploads

    def staged(self, robot_id: str, episode_id: str) -> int:
        """Bytes of this upload held so far."""
        path = self._incoming(robot_id, episode_id)
        upload = self._uploads.get(path)
        if upload is not None:
            return upload.file.tell()
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, robot_id: str, episode_id: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset` if that is where the upload stands; returns the bytes held after."""
        path = self._incoming(robot_id, episode_id)
        upload = self._uploads.get(path)
        if upload is None:  # the first piece, or the first since a restart: hash what is held
            path.parent.mkdir(parents=True, exist_ok=True)
            file = open(path, "ab+")  # stays open for the next pieces: closed at commit or discard
            digest = BackgroundSha256()
            file.seek(0)
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
            upload = self._uploads[path] = _Upload(file, digest, BackgroundSync(file))
        if upload.file.tell() != offset:
            return upload.file.tell()
        upload.file.write(data)
        upload.digest.update(data)
        upload.sync.wrote()
        return upload.file.tell()

    def discard(self, robot_id: str, episode_id: str) -> None:
        path = self._incoming(robot_id, episode_id)
        self._close_upload(path)
        path.unlink(missing_ok=True)

    def _close_upload(self, path: Path) -> None:
        upload = self._uploads.pop(path, None)
        if upload is not None:
            try:
                upload.sync.wait()  # never close the descriptor under a flush in progress
            except OSError:
                pass  # the file is being discarded or was made durable by the commit's own fsync
            upload.file.close()

    def commit(self, robot_id: str, episode_id: str, sha256: str,
               check: Callable[[Path], dict[str, str]]) -> StoredEpisode:  # fmt: skip
        """Store a complete upload durably and index it. `check(path)` returns the episode's metadata or raises
        ValueError; a wrong sha256 raises DamagedUpload. Either way the upload is discarded."""
        part = self._incoming(robot_id, episode_id)
        upload = self._uploads.get(part)
        try:
            if upload is not None:
                upload.sync.wait()
                sync_file(upload.file)
            actual = upload.digest.hexdigest() if upload is not None else file_sha256(part)
            if actual != sha256:
                raise DamagedUpload(f"sha256 of the received bytes is {actual}, the robot announced {sha256}")
            metadata = check(part)
        except ValueError:
            self.discard(robot_id, episode_id)
            raise
        if upload is None:
            with open(part, "rb+") as f:
                sync_file(f)
        self._close_upload(part)
        final = self.root / "episodes" / robot_id / f"{episode_id}.mcap"
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        fsync_dir(final.parent)
        return self._index(final, sha256, metadata)

    def reconcile(self) -> int:
        """Index episode files that a crash left unindexed; returns how many."""
        with self._lock:
            known = {row[0] for row in self._db.execute("SELECT path FROM episodes")}
        orphans = [p for p in sorted((self.root / "episodes").glob("*/*.mcap"))
                   if str(p.relative_to(self.root)) not in known]  # fmt: skip
        for path in orphans:
            self._index(path)
        return len(orphans)

    def _index(self, path: Path, sha256: str = "", metadata: dict[str, str] | None = None) -> StoredEpisode:
        """Index a file in episodes/; its sha256 and metadata are read from it unless the caller has them."""
        if metadata is None:
            metadata, _ = check_episode_file(path)
        episode = StoredEpisode(
            episode_id=path.stem,
            robot_id=path.parent.name,
            task=metadata.get("task", ""),
            outcome=metadata.get("outcome", ""),
            policy_version=metadata.get("policy_version", ""),
            steps=_int(metadata.get("steps")),
            interventions=_int(metadata.get("interventions")),
            size=path.stat().st_size,
            sha256=sha256 or file_sha256(path),
            path=str(path.relative_to(self.root)),
            stored_at=time.time(),
            ended_ns=_int(metadata.get("end_ns")),
            rollout_stage=metadata.get("rollout_stage", ""),
        )
        with self._lock:
            self._db.execute(
                f"INSERT OR IGNORE INTO episodes ({_COLUMNS}, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*(getattr(episode, c.strip()) for c in _COLUMNS.split(",")), json.dumps(metadata)),
            )
        return episode


def stored_episodes(root: Path | str) -> list[StoredEpisode]:
    """Every episode indexed in the store at `root`, in the order stored (for reports after a run)."""
    store = EpisodeStore(root)
    try:
        return store.episodes()
    finally:
        store.close()


def indexed_episodes(root: Path | str) -> list[StoredEpisode]:
    """The episodes indexed so far, read-only, in the order stored: for a process that watches a store another
    process writes (no reconciling, which only the writer may do)."""
    path = Path(root) / "index.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return [StoredEpisode(*row) for row in db.execute(f"SELECT {_SELECT} FROM episodes ORDER BY stored_at")]
    except sqlite3.OperationalError:  # the writer has not made the table yet
        return []
    finally:
        db.close()
