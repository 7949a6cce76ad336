"""Episode bookkeeping on plain data: what goes in which file, labels, disk errors."""

import errno
import os
from pathlib import Path

from rclpy.serialization import serialize_message
from sensor_msgs.msg import JointState

from sop_ros.episodes.reader import read_episode
from sop_ros.episodes.writer import WriterOptions
from sop_ros.robot.recording import Episode, EpisodeRecorder, header_stamp_ns

TIER = "unit"  # what the tests need: conftest.TIERS

TOPICS = {"/r/joint_states": "sensor_msgs/msg/JointState"}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def joints(t_ns: int) -> bytes:
    msg = JointState(name=["j"], position=[t_ns / 1e9])
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
    return serialize_message(msg)


def recorder(root: Path, clock=None, logs=None) -> EpisodeRecorder:
    log = (lambda level, msg: logs.append((level, msg))) if logs is not None else (lambda *_: None)
    return EpisodeRecorder(root, TOPICS, WriterOptions(), label_grace_s=1.0, log=log, clock=clock or FakeClock())


def episode(eid: str, start_ns: int) -> Episode:
    return Episode(eid, "r", "reach-v3", "reach the goal", "v1", start_ns)


def positions(path: Path) -> list[float]:
    return [m.message.position[0] for m in read_episode(path)[1]]


def test_header_stamp_is_read_from_cdr():
    assert header_stamp_ns(joints(12_345_678_901)) == 12_345_678_901


def test_messages_go_to_the_episode_whose_time_span_holds_them(tmp_path):
    clock = FakeClock()
    rec = recorder(tmp_path, clock)
    rec.write("/r/joint_states", joints(1_000), 1_000)  # arrives before the START it belongs after
    rec.start(episode("e1", 1_000))
    rec.write("/r/joint_states", joints(2_000), 2_000)
    rec.end("e1", 1, "sim_success", 1, 2_000)
    rec.start(episode("e2", 3_000))
    rec.write("/r/joint_states", joints(3_000), 3_000)
    rec.write("/r/joint_states", joints(2_000), 2_000)  # late: still e1's
    rec.end("e2", 2, "timeout", 1, 3_000)
    clock.now = 5.0
    paths = rec.tick()
    assert [p.name for p in paths] == ["e1.mcap", "e2.mcap"]
    assert positions(paths[0]) == [1e-6, 2e-6, 2e-6] and positions(paths[1]) == [3e-6]


def test_a_label_within_the_grace_period_sets_the_outcome(tmp_path):
    clock, logs = FakeClock(), []
    rec = recorder(tmp_path, clock, logs)
    rec.start(episode("e1", 0))
    rec.interventions("e1", 2)
    rec.end("e1", 2, "timeout", 10, 100)
    assert rec.label("e1", 1, "operator")
    clock.now = 2.0
    (path,) = rec.tick()
    meta = read_episode(path)[0]
    assert (meta["outcome"], meta["outcome_source"], meta["labels"], meta["interventions"]) == (
        "success", "operator", "success", "2"
    )  # fmt: skip
    assert not rec.label("e1", 2, "operator")
    assert "came after its file was finished" in logs[-1][1]


def test_an_episode_names_the_policy_whose_chunks_drove_it(tmp_path):
    clock = FakeClock()
    rec = recorder(tmp_path, clock)
    rec.start(Episode("e1", "r", "reach-v3", "reach the goal", "", 1_000))  # the simulator does not know
    rec.policy_version(500, "v0")  # a chunk between episodes: not this one's
    rec.policy_version(1_500, "v2")
    rec.policy_version(1_600, "v3")  # weights change only between episodes: the first chunk's stands
    rec.end("e1", 1, "sim_success", 1, 2_000)
    clock.now = 5.0
    (path,) = rec.tick()
    assert read_episode(path)[0]["policy_version"] == "v2"


def test_an_episode_keeps_the_rollout_stage_its_policy_ran_at(tmp_path):
    clock = FakeClock()
    rec = recorder(tmp_path, clock)
    rec.start(Episode("e1", "r", "reach-v3", "reach", "v5", 1_000))  # a paced simulator named the version
    rec.policy_version(1_200, "v4", "")  # not the episode's version: ignored
    rec.policy_version(1_500, "v5", "canary")
    rec.policy_version(1_600, "v5", "promoted")  # promoted mid-episode: it started on canary
    rec.end("e1", 1, "sim_success", 1, 2_000)
    rec.start(Episode("e2", "r", "reach-v3", "reach", "", 3_000))
    rec.policy_version(3_500, "v5", "promoted")
    rec.end("e2", 1, "sim_success", 1, 4_000)
    clock.now = 5.0
    first, second = (read_episode(p)[0] for p in sorted(rec.tick()))
    assert (first["policy_version"], first["rollout_stage"]) == ("v5", "canary")
    assert (second["policy_version"], second["rollout_stage"]) == ("v5", "promoted")


def test_an_unwritable_directory_stops_recording_and_the_next_episode_retries(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    logs = []
    rec = recorder(blocker / "episodes", logs=logs)
    rec.start(episode("e1", 0))
    rec.write("/r/joint_states", joints(5), 5)  # dropped, not raised: the robot keeps going
    assert rec.error and "cannot record episode e1" in rec.error and str(blocker) in rec.error
    assert logs[-1][0] == "error"
    blocker.unlink()
    blocker.mkdir()
    rec.start(episode("e2", 10))
    assert rec.error is None
    rec.end("e2", 1, "sim_success", 0, 10)
    rec.close()
    assert (blocker / "episodes" / "e2.mcap").exists()


def test_a_recording_a_full_disk_stopped_goes_out_when_recording_resumes_not_at_the_next_start(tmp_path, monkeypatch):
    logs = []
    rec = EpisodeRecorder(tmp_path, TOPICS, WriterOptions(chunk_size=1), label_grace_s=1.0,
                          log=lambda level, msg: logs.append((level, msg)), clock=FakeClock())  # fmt: skip
    rec.start(episode("e1", 0))
    rec.write("/r/joint_states", joints(1), 1)  # a chunk of its own, on disk

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    rec.write("/r/joint_states", joints(2), 2)
    assert rec.error.startswith("recording e1 stopped") and (tmp_path / ".partial" / "e1.mcap").exists()
    monkeypatch.undo()
    rec.start(episode("e2", 10))
    assert rec.error is None
    meta, messages = read_episode(tmp_path / "e1.mcap")
    assert meta["recovered"] == "true" and messages[0].message.position[0] == 1e-9
    said = [msg for _, msg in logs if msg.startswith("partial episode file")]
    assert len(said) == 1 and said[0].startswith("partial episode file e1.mcap: recovered")  # e2's, open, unsaid
    rec.end("e2", 1, "sim_success", 0, 10)
    rec.close()
    assert (tmp_path / "e2.mcap").exists() and not list((tmp_path / ".partial").iterdir())


def test_shutdown_mid_episode_keeps_the_data_as_an_abort(tmp_path):
    rec = recorder(tmp_path)
    rec.start(episode("e1", 0))
    rec.write("/r/joint_states", joints(1), 1)
    rec.close()
    meta, messages = read_episode(tmp_path / "e1.mcap")
    assert meta["outcome"] == "abort" and len(messages) == 1
