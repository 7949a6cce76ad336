"""Which episode file each recorded message goes to, and what an episode's metadata says. No rclpy.

An episode's file opens at its START event and stays open for a short grace period after its END, so that
an operator's label given just after the end still lands in the file (the next episode may already be
recording meanwhile). Messages go to the episode whose [start, end] holds their time (their header stamp,
else their receive time), not to whichever file is open when they arrive: topics arrive in any order, and a
joint state may overtake the START event it belongs after. A disk problem stops recording with a clear
error; the robot keeps running and the next episode tries again.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sop_ros.episodes.durable import RecordingError
from sop_ros.episodes.format import Outcome
from sop_ros.episodes.recovery import RecoveryResult, recover_partials
from sop_ros.episodes.writer import EpisodeWriter, WriterOptions

PENDING_LIMIT = 512  # messages kept while no episode is open, for the START that may be on its way


def stamp_ns(msg) -> int:
    """The header stamp of a decoded message, in nanoseconds."""
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def header_stamp_ns(cdr: bytes) -> int:
    """The std_msgs/Header stamp of a CDR message that begins with one (stamp.sec int32, stamp.nanosec uint32)."""
    endian = "<" if cdr[1] == 1 else ">"  # encapsulation 0x0001: CDR little endian, 0x0000: big endian
    sec, nanosec = struct.unpack_from(f"{endian}iI", cdr, 4)
    return sec * 1_000_000_000 + nanosec


@dataclass
class Episode:
    episode_id: str
    robot_id: str
    task: str
    instruction: str
    policy_version: str
    start_ns: int
    outcome: int = 0
    outcome_source: str = ""
    steps: int = 0
    interventions: int = 0
    end_ns: int | None = None
    labels: list[str] = field(default_factory=list)
    rollout_stage: str = ""  # of its policy version when it ran: "canary", "promoted", "rolled back" or none

    def metadata(self) -> dict[str, str]:
        return {
            "episode_id": self.episode_id,
            "robot_id": self.robot_id,
            "task": self.task,
            "instruction": self.instruction,
            "policy_version": self.policy_version,
            "rollout_stage": self.rollout_stage,
            "outcome": Outcome.from_event(self.outcome).value,
            "outcome_source": self.outcome_source,
            "steps": str(self.steps),
            "interventions": str(self.interventions),
            "start_ns": str(self.start_ns),
            "end_ns": "" if self.end_ns is None else str(self.end_ns),
            "labels": ",".join(self.labels),
        }


@dataclass
class _Open:
    episode: Episode
    writer: EpisodeWriter
    close_at: float | None = None  # monotonic time at which an ended episode's file is finished
    stage_seen: bool = False  # a chunk has named the episode's policy and its rollout stage


class EpisodeRecorder:
    def __init__(
        self,
        root: Path,
        topics: dict[str, str],
        options: WriterOptions,
        label_grace_s: float,
        log: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = Path(root)
        self.topics = topics  # topic -> ROS type name, registered in every file
        self.options = options
        self.label_grace_s = label_grace_s
        self.log = log  # (level, message)
        self.clock = clock
        self.error: str | None = None  # why recording is stopped, if it is
        self._open: dict[str, _Open] = {}
        self._current: _Open | None = None
        self._pending: deque[tuple[str, bytes, int]] = deque(maxlen=PENDING_LIMIT)

    def recover(self) -> list[RecoveryResult]:
        results = recover_partials(self.root)
        own = {record.writer.partial_path for record in self._open.values()}  # open, so skipped: nothing to say
        for r in results:
            if r.path in own:
                continue
            level = "warn" if r.action == "quarantined" else "info"
            self.log(
                level, f"partial episode file {r.path.name}: {r.action} ({r.messages} messages) {r.reason}".strip()
            )
        return results

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, episode: Episode) -> None:
        if self._current is not None:
            self.log("warn", f"episode {episode.episode_id} started before {self._current.episode.episode_id} ended")
            self._close(self._current, "the next episode started before this one ended")
        try:
            writer = EpisodeWriter(self.root, episode.episode_id, self.options, metadata=episode.metadata())
            for topic, type_name in self.topics.items():
                writer.add_topic(topic, type_name)
        except (RecordingError, FileExistsError) as err:
            self._fail(f"cannot record episode {episode.episode_id}: {err}")
            return
        self._current = self._open[episode.episode_id] = _Open(episode, writer)
        if self.error:
            self.log("info", "recording resumed")
            self.error = None
            # The disk takes files again: what the error stopped goes out now, not at the recorder's next start,
            # which on a robot that runs for days may be days away.
            try:
                self.recover()
            except RecordingError as err:
                self.log("warn", f"partial episode files stay in .partial/ until the next start: {err}")
        pending, self._pending = list(self._pending), deque(maxlen=PENDING_LIMIT)
        for topic, data, time_ns in pending:
            self.write(topic, data, time_ns)

    def end(self, episode_id: str, outcome: int, source: str, steps: int, end_ns: int) -> None:
        record = self._open.get(episode_id)
        if record is None:
            return
        episode = record.episode
        if not episode.labels:  # an operator's label outranks the end event's outcome
            episode.outcome, episode.outcome_source = outcome, source
        episode.steps, episode.end_ns = steps, end_ns
        record.close_at = self.clock() + self.label_grace_s
        if record is self._current:
            self._current = None

    def label(self, episode_id: str, outcome: int, source: str) -> bool:
        record = self._open.get(episode_id)
        if record is None:
            self.log("warn", f"label {Outcome.from_event(outcome)} for {episode_id} came after its file was finished")
            return False
        episode = record.episode
        episode.outcome, episode.outcome_source = outcome, source
        episode.labels.append(Outcome.from_event(outcome).value)
        return True

    def interventions(self, episode_id: str, count: int) -> None:
        record = self._open.get(episode_id)
        if record is not None:
            record.episode.interventions = max(record.episode.interventions, count)

    def policy_version(self, time_ns: int, version: str, rollout_stage: str = "") -> None:
        """The policy that produced a chunk at `time_ns`, and its rollout stage: the episode then running names them,
        unless its START named the version (weights change only between episodes) or an earlier chunk did."""
        record = self._episode_at(time_ns)
        if record is None or record.episode.policy_version not in ("", version) or record.stage_seen:
            return
        record.episode.policy_version, record.episode.rollout_stage = version, rollout_stage
        record.stage_seen = True

    # -- data -------------------------------------------------------------------------------------------------
    def write(self, topic: str, data: bytes, time_ns: int, episode_id: str | None = None) -> None:
        """A message at `time_ns`, for the episode whose time span holds it (or the named one, for events)."""
        record = self._open.get(episode_id) if episode_id else self._episode_at(time_ns)
        if record is None:
            if not episode_id:
                self._pending.append((topic, data, time_ns))
            return
        try:
            record.writer.write(topic, data, time_ns)
        except RecordingError as err:
            self._abandon(record, f"recording {record.episode.episode_id} stopped: {err}")

    def _episode_at(self, time_ns: int) -> _Open | None:
        for record in self._open.values():
            episode = record.episode
            if episode.start_ns <= time_ns and (episode.end_ns is None or time_ns <= episode.end_ns):
                return record
        return None

    def tick(self) -> list[Path]:
        """Finish ended episodes whose grace period is over; flush the running one when due."""
        done = []
        for record in list(self._open.values()):
            if record.close_at is not None and self.clock() >= record.close_at:
                path = self._close(record)
                if path is not None:
                    done.append(path)
            else:
                try:
                    record.writer.flush_if_due()
                except RecordingError as err:
                    self._abandon(record, f"recording {record.episode.episode_id} stopped: {err}")
        return done

    def close(self) -> None:
        """Shutdown: ended episodes are finished; a running one is kept, marked as aborted."""
        for record in list(self._open.values()):
            self._close(record, None if record.close_at is not None else "the recorder stopped mid-episode")

    # -- internals ------------------------------------------------------------------------------------------
    def _close(self, record: _Open, abort_reason: str | None = None) -> Path | None:
        self._open.pop(record.episode.episode_id, None)
        if record is self._current:
            self._current = None
        try:
            if abort_reason is None:
                path = record.writer.finish(record.episode.metadata())
            else:
                path = record.writer.abort(abort_reason, record.episode.metadata())
        except RecordingError as err:
            self._fail(f"cannot finish {record.episode.episode_id}: {err} (kept in .partial/ for recovery)")
            return None
        stats = record.writer.stats()
        outcome = Outcome.ABORT if abort_reason else Outcome.from_event(record.episode.outcome)
        self.log("info", f"recorded {path.name}: {stats.messages} messages, {stats.bytes} bytes, {outcome}")
        return path

    def _abandon(self, record: _Open, reason: str) -> None:
        # What reached the disk stays in .partial/, recovered when recording resumes or at the next start.
        self._open.pop(record.episode.episode_id, None)
        if record is self._current:
            self._current = None
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.error = reason
        self.log("error", reason)
