"""The cloud's episode ingest: robots' upload pieces (sop_ros.bridge.protocol) in, durable stored episodes out.

`EpisodeIngest.handle` answers one piece (no Zenoh: tested directly); `EpisodeIngestService` serves it on a Zenoh
queryable with a few worker threads (bridge.zenoh_session.QueryWorkers). Every piece of one episode goes to the
same worker, so they are written in order; a malformed piece or file is answered `refused` with the reason, and
the service goes on for everyone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zenoh

from sop_ros.bridge.protocol import EPISODES, Piece, ProtocolError, Reply, parse_episode_key
from sop_ros.bridge.zenoh_session import QueryWorkers, open_session
from sop_ros.cloud.episode_store import DamagedUpload, EpisodeStore
from sop_ros.configs.bridge import EpisodeIngestConfig
from sop_ros.episodes.reader import check_episode_file

log = logging.getLogger("sop.ingest")


class EpisodeIngest:
    def __init__(self, store: EpisodeStore, config: EpisodeIngestConfig) -> None:
        self.store = store
        self.config = config
        self.max_bytes = int(config.max_episode_mb * 1024 * 1024)

    def handle(self, key: str, header: bytes | None, payload: bytes | None) -> Reply:
        try:
            return self._handle(key, header, payload or b"")
        except ProtocolError as err:
            log.warning("refused a piece on %s: %s", key, err)
            return Reply("refused", reason=str(err))

    def _handle(self, key: str, header: bytes | None, data: bytes) -> Reply:
        robot_id, episode_id = parse_episode_key(key)
        piece = Piece.decode(header)
        allowed = self.config.allowed_robots
        if allowed and robot_id not in allowed:
            raise ProtocolError(f"robot {robot_id!r} may not upload (allowed: {', '.join(allowed)})")
        # An upload in progress here is not stored (a commit ends it): only its first piece asks the index.
        stored = None if self.store.receiving(robot_id, episode_id) else self.store.get(episode_id)
        if stored is not None:
            if stored.sha256 != piece.sha256:
                raise ProtocolError(f"episode {episode_id} is stored already with other content "
                                    f"(sha256 {stored.sha256[:12]}..., this one {piece.sha256[:12]}...)")  # fmt: skip
            return Reply("stored", offset=stored.size, duplicate=True)
        if piece.size > self.max_bytes:
            raise ProtocolError(f"episode of {piece.size} bytes exceeds max_episode_mb={self.config.max_episode_mb:g}")
        held = self.store.staged(robot_id, episode_id)
        if held > piece.size:  # bytes of some other file under this id: start over
            self.store.discard(robot_id, episode_id)
            held = 0
        if piece.offset is not None and piece.offset == held:
            if held + len(data) > piece.size:
                raise ProtocolError(f"piece at {piece.offset} of {len(data)} bytes runs past the size {piece.size}")
            held = self.store.append(robot_id, episode_id, piece.offset, data)
        if held < piece.size or piece.size == 0 and piece.offset is None:
            return Reply("partial", offset=held)
        return self._commit(robot_id, episode_id, piece.sha256)

    def _commit(self, robot_id: str, episode_id: str, sha256: str) -> Reply:
        def check(path: Path) -> dict[str, str]:
            metadata, _ = check_episode_file(path)
            missing = [k for k in self.config.required_metadata if not metadata.get(k)]
            if missing:
                raise ValueError(f"episode metadata lacks {', '.join(missing)}")
            for field, expected in (("episode_id", episode_id), ("robot_id", robot_id)):
                if field in metadata and metadata[field] != expected:
                    raise ValueError(f"metadata {field} is {metadata[field]!r}, uploaded as {expected!r}")
            return metadata

        try:
            stored = self.store.commit(robot_id, episode_id, sha256, check)
        except DamagedUpload as err:
            log.warning("episode %s from %s: %s; asking for it again", episode_id, robot_id, err)
            return Reply("partial", offset=0)
        except ValueError as err:
            log.warning("refused episode %s from %s: %s", episode_id, robot_id, err)
            return Reply("refused", reason=f"episode {episode_id}: {err}")
        log.info("stored %s from %s (%d bytes, %s, %s)", episode_id, robot_id, stored.size, stored.task,
                 stored.outcome)  # fmt: skip
        return Reply("stored", offset=stored.size)


class EpisodeIngestService:
    """EpisodeIngest on the queryable `sop/episodes/**`, until `close()`."""

    def __init__(self, store: EpisodeStore, config: EpisodeIngestConfig, session: zenoh.Session | None = None) -> None:
        self.ingest = EpisodeIngest(store, config)
        self._own_session = session is None
        self.session = session or open_session(config.zenoh)
        # The disk and hashing work happens on the workers, one episode (key) per worker.
        self._workers = QueryWorkers("ingest", config.workers, self._serve)
        self._queryable = self.session.declare_queryable(f"{EPISODES}/**", self._workers.submit)

    def _serve(self, query: zenoh.Query) -> None:
        header = query.attachment.to_bytes() if query.attachment is not None else None
        payload = query.payload.to_bytes() if query.payload is not None else None
        reply = self.ingest.handle(str(query.key_expr), header, payload)
        query.reply(query.key_expr, reply.encode())

    def close(self) -> None:
        self._queryable.undeclare()
        self._workers.close()
        if self._own_session:
            self.session.close()
