"""Episode files on plain data: message definitions, a finished episode read back by the stock MCAP reader,
recovery after a real SIGKILL, quarantine, disk errors. Real ROS message classes make the CDR bytes; no nodes.
"""

import errno
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import REPO
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import Float64MultiArray

from sop_ros.episodes.durable import RecordingError, atomic_file
from sop_ros.episodes.format import Controller, Outcome
from sop_ros.episodes.reader import read_episode
from sop_ros.episodes.recovery import recover_partials
from sop_ros.episodes.schemas import message_definition
from sop_ros.episodes.writer import EpisodeWriter, WriterOptions
from sop_ros.msg import EpisodeEvent, InterventionState

TIER = "unit"  # what the tests need: conftest.TIERS

SEPARATOR = "=" * 80
T0 = 1_700_000_000_000_000_000  # log times in ns


def joint_state(i: int) -> bytes:
    msg = JointState(name=["j0", "j1"], position=[float(i), -float(i)], velocity=[0.5, 0.25])
    msg.header.stamp.sec, msg.header.frame_id = i, "base"
    return serialize_message(msg)


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())} if directory.is_dir() else {}


# ---------------------------------------------------------------------------------------------------------
# message_definition
# ---------------------------------------------------------------------------------------------------------


def test_definition_of_a_nested_type_holds_each_dependency_once():
    text = message_definition("sensor_msgs/msg/JointState")
    assert text.count(f"\n{SEPARATOR}\nMSG: std_msgs/Header\n") == 1
    assert text.count(f"\n{SEPARATOR}\nMSG: builtin_interfaces/Time\n") == 1
    assert [line for line in text.splitlines() if line == SEPARATOR] == [SEPARATOR] * 2
    own = text.split(SEPARATOR)[0]
    assert "std_msgs/Header header" in own and "float64[] position" in own
    assert message_definition("sensor_msgs/JointState") == text

    event = message_definition("sop_ros/msg/EpisodeEvent")
    assert event.startswith("# Episode lifecycle") and "uint8 EVENT_START = 0" in event
    assert re.findall(r"^MSG: (.*)$", event, re.M) == ["std_msgs/Header", "builtin_interfaces/Time"]
    assert re.findall(r"^MSG: (.*)$", message_definition("std_msgs/msg/Float64MultiArray"), re.M) == [
        "std_msgs/MultiArrayLayout",
        "std_msgs/MultiArrayDimension",
    ]


@pytest.fixture
def fake_msgs(tmp_path, monkeypatch):
    """A package 'fake_msgs' on AMENT_PREFIX_PATH with every .msg syntax a parser must get right."""
    prefix = tmp_path / "prefix"
    (prefix / "share/ament_index/resource_index/packages").mkdir(parents=True)
    (prefix / "share/ament_index/resource_index/packages/fake_msgs").touch()
    msg = prefix / "share/fake_msgs/msg"
    msg.mkdir(parents=True)
    (msg / "Outer.msg").write_text(
        "# a comment line\n"
        "\n"
        "uint8 FOO = 1\n"
        'string BAR="a # not a comment"\n'
        "int32 x 5  # default value\n"
        "string<=10 bounded\n"
        "float64[3] fixed\n"
        "wstring w\n"
        "Inner[] inners\n"
        "fake_msgs/Inner[<=2] bounded_inners\n"
        "Header legacy_header\n"
        "std_msgs/Header header\n"
        "builtin_interfaces/Time t\n"
    )
    (msg / "Inner.msg").write_text("Leaf leaf\nstring[<=4] names\n")
    (msg / "Leaf.msg").write_text("bool b\nbyte[] raw\nchar c\n")
    (msg / "Broken.msg").write_text("int32 fine\nnot-a-type! x\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{prefix}{os.pathsep}{os.environ['AMENT_PREFIX_PATH']}")
    return msg


def test_definition_parser_handles_msg_syntax(fake_msgs):
    text = message_definition("fake_msgs/msg/Outer")
    assert text.startswith((fake_msgs / "Outer.msg").read_text())
    assert re.findall(r"^MSG: (.*)$", text, re.M) == [
        "fake_msgs/Inner",
        "fake_msgs/Leaf",
        "std_msgs/Header",
        "builtin_interfaces/Time",
    ]
    assert text.rstrip().endswith("uint32 nanosec")
    with pytest.raises(ValueError, match=r"Broken\.msg line 2.*not-a-type"):
        message_definition("fake_msgs/msg/Broken")
    with pytest.raises(LookupError, match="package 'no_such_msgs' not found"):
        message_definition("no_such_msgs/msg/Thing")
    with pytest.raises(LookupError, match="Missing.msg"):
        message_definition("fake_msgs/msg/Missing")
    with pytest.raises(ValueError, match="not of the form"):
        message_definition("JointState")


# ---------------------------------------------------------------------------------------------------------
# A finished episode
# ---------------------------------------------------------------------------------------------------------

TOPICS = {
    "joint_states": "sensor_msgs/msg/JointState",
    "cameras/front/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
    "command": "std_msgs/msg/Float64MultiArray",
    "episode/events": "sop_ros/msg/EpisodeEvent",
    "teleop/intervention": "sop_ros/msg/InterventionState",
}


def record_episode(writer: EpisodeWriter) -> list[tuple[str, int]]:
    """Write a small episode on every topic; returns (topic, log time) of each message written."""
    for topic, type_name in TOPICS.items():
        writer.add_topic(topic, type_name)
    written = []

    def put(topic: str, data: bytes, t: int, publish: int | None = None) -> None:
        writer.write(topic, data, T0 + t, publish)
        written.append((topic, T0 + t))

    start = EpisodeEvent(event=EpisodeEvent.EVENT_START, robot_id="robot_0", episode_id="ep-1", task="reach-v3")
    put("episode/events", serialize_message(start), 0)
    for i in range(30):
        put("joint_states", joint_state(i), 10 + i * 100, publish=T0 + 5 + i * 100)
        put("command", serialize_message(Float64MultiArray(data=[0.1 * i, 0.0, -0.1, 1.0])), 20 + i * 100)
        if i % 10 == 0:
            image = CompressedImage(format="jpeg", data=bytes([i, 255, 216, 0]) * 50)
            put("cameras/front/image_raw/compressed", serialize_message(image), 30 + i * 100)
    state = InterventionState(controller=InterventionState.CONTROLLER_OPERATOR, episode_id="ep-1")
    state.since.sec, state.interventions_in_episode = 7, 1
    put("teleop/intervention", serialize_message(state), 1500)
    end = EpisodeEvent(event=EpisodeEvent.EVENT_END, outcome=EpisodeEvent.OUTCOME_SUCCESS, steps=30)
    put("episode/events", serialize_message(end), 3100)
    return written


def test_finished_episode_decodes_with_the_stock_reader(tmp_path):
    start_metadata = {"robot": "robot_0", "task": "reach-v3", "instruction": "reach the goal"}
    writer = EpisodeWriter(tmp_path, "ep-1", metadata=start_metadata)
    written = record_episode(writer)
    assert not (tmp_path / "ep-1.mcap").exists(), "an unfinished episode must not appear in the root"
    assert (tmp_path / ".partial" / "ep-1.mcap").exists()

    path = writer.finish({"outcome": "success", "interventions": "1", "policy_version": "v3"})

    assert path == tmp_path / "ep-1.mcap" and path.is_file()
    assert list((tmp_path / ".partial").iterdir()) == []
    metadata, messages = read_episode(path)
    assert metadata == {**start_metadata, "outcome": "success", "interventions": "1", "policy_version": "v3"} | {
        "episode_id": "ep-1"
    }
    assert sorted((m.topic, m.log_time_ns) for m in messages) == sorted(written)
    by_topic = {topic: [m for m in messages if m.topic == topic] for topic in TOPICS}
    assert {t: len(ms) for t, ms in by_topic.items()} == {t: sum(w[0] == t for w in written) for t in TOPICS}
    assert {m.type_name for m in by_topic["joint_states"]} == {"sensor_msgs/msg/JointState"}

    joints = by_topic["joint_states"]
    assert [j.message.position for j in joints] == [[float(i), -float(i)] for i in range(30)]
    assert joints[3].message.name == ["j0", "j1"] and joints[3].message.header.frame_id == "base"
    assert joints[3].message.header.stamp.sec == 3 and joints[3].publish_time_ns == T0 + 305
    assert by_topic["command"][2].message.data == pytest.approx([0.2, 0.0, -0.1, 1.0])
    assert by_topic["command"][2].publish_time_ns == by_topic["command"][2].log_time_ns  # defaults to log time
    image = by_topic["cameras/front/image_raw/compressed"][1].message
    assert image.format == "jpeg" and bytes(image.data) == bytes([10, 255, 216, 0]) * 50
    events = by_topic["episode/events"]
    assert [e.message.event for e in events] == [EpisodeEvent.EVENT_START, EpisodeEvent.EVENT_END]
    assert events[0].message.task == "reach-v3" and events[1].message.outcome == EpisodeEvent.OUTCOME_SUCCESS
    state = by_topic["teleop/intervention"][0].message
    assert (state.controller, state.since.sec, state.interventions_in_episode) == (1, 7, 1)

    with open(path, "rb") as f:  # what other tools see: a ROS 2 MCAP file with complete summary
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        assert summary.statistics.message_count == len(written)
        assert {s.encoding for s in summary.schemas.values()} == {"ros2msg"}
        assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
        assert {c.topic for c in summary.channels.values()} == set(TOPICS)

    stats = writer.stats()
    assert stats.messages == stats.flushed_messages == len(written)
    assert stats.topics == {t: len(ms) for t, ms in by_topic.items()}
    assert stats.bytes == path.stat().st_size
    with pytest.raises(RuntimeError, match="already finished"):
        writer.write("command", b"", T0)


def test_finished_episode_is_never_overwritten(tmp_path):
    writer = EpisodeWriter(tmp_path, "ep-2")
    writer.add_topic("joint_states", "sensor_msgs/JointState")
    writer.write("joint_states", joint_state(1), T0)
    finished = writer.finish({"outcome": "failure"})
    before = finished.read_bytes()
    with pytest.raises(FileExistsError, match=r"ep-2 is already recorded in .*ep-2\.mcap.*new episode id"):
        EpisodeWriter(tmp_path, "ep-2")
    assert finished.read_bytes() == before and list((tmp_path / ".partial").iterdir()) == []


def test_an_episode_taken_the_moment_it_is_published_still_finishes(tmp_path, monkeypatch):
    # The bridge watches the outbox: it may upload and remove a finished file before the recorder's next line.
    from sop_ros.episodes import writer as writer_module

    taken, replace = {}, os.replace

    def publish_then_upload(src, dst):
        replace(src, dst)
        taken["bytes"] = Path(dst).read_bytes()
        Path(dst).unlink()

    writer = EpisodeWriter(tmp_path, "ep-taken")
    writer.add_topic("joint_states", "sensor_msgs/msg/JointState")
    writer.write("joint_states", joint_state(1), T0)
    monkeypatch.setattr(writer_module.os, "replace", publish_then_upload)
    path = writer.finish({"outcome": "success"})

    assert path == tmp_path / "ep-taken.mcap" and not path.exists()
    assert writer.stats().bytes == len(taken["bytes"]) > 0


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_abort_publishes_everything_recorded(tmp_path, compression):
    options = WriterOptions(compression=compression, chunk_size=256)  # several small chunks
    writer = EpisodeWriter(tmp_path, "ep-3", options, metadata={"robot": "robot_0"})
    writer.add_topic("joint_states", "sensor_msgs/msg/JointState")
    for i in range(20):
        writer.write("joint_states", joint_state(i), T0 + i)
    assert writer.stats().flushed_messages >= 10  # completed chunks went to disk on their own
    path = writer.abort("operator pressed stop")
    metadata, messages = read_episode(path)
    assert metadata["outcome"] == "abort" and metadata["abort_reason"] == "operator pressed stop"
    assert metadata["robot"] == "robot_0" and [m.message.position[0] for m in messages] == list(range(20))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"compression": "gzip"}, "compression 'gzip' is not one of zstd, lz4, none"),
        ({"chunk_size": 0}, "chunk_size 0 must be a positive number of bytes"),
        ({"flush_period_s": float("nan")}, "flush_period_s nan must be a positive number of seconds"),
    ],
)
def test_bad_writer_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        WriterOptions(**options)


def test_topic_misuse_is_refused(tmp_path):
    writer = EpisodeWriter(tmp_path, "ep-4")
    writer.add_topic("command", "std_msgs/msg/Float64MultiArray")
    writer.add_topic("command", "std_msgs/Float64MultiArray")  # same type again: a no-op
    with pytest.raises(ValueError, match="'command' is already recorded as std_msgs/msg/Float64MultiArray"):
        writer.add_topic("command", "sensor_msgs/msg/JointState")
    with pytest.raises(KeyError, match="add_topic"):
        writer.write("joint_states", joint_state(0), T0)
    with pytest.raises(LookupError):
        writer.add_topic("x", "sensor_msgs/msg/NoSuchType")
    writer.abort("test done")


@pytest.mark.parametrize("bad", ["", "ep 1", "../ep", "a/b", ".", "..", "épisode", "ep-1\n"])
def test_bad_episode_id_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match=r"episode id .* is not allowed: use only letters, digits"):
        EpisodeWriter(tmp_path / "root", bad)
    assert not (tmp_path / "root").exists()


# ---------------------------------------------------------------------------------------------------------
# Crash safety and recovery
# ---------------------------------------------------------------------------------------------------------

CRASHING_WRITER = """
import sys, time
from pathlib import Path
from rclpy.serialization import serialize_message
from sensor_msgs.msg import JointState
from sop_ros.episodes.writer import EpisodeWriter, WriterOptions

writer = EpisodeWriter(
    Path(sys.argv[1]), "crash-1", WriterOptions(chunk_size=2048, flush_period_s=0.02),
    metadata={"robot": "robot_0", "task": "reach-v3"},
)
writer.add_topic("joint_states", "sensor_msgs/msg/JointState")
flushed = 0
for i in range(10_000_000):
    msg = JointState(name=["j0"], position=[float(i)])
    msg.header.stamp.sec = i
    writer.write("joint_states", serialize_message(msg), 1_000_000 + i)
    if writer.stats().flushed_messages != flushed:
        flushed = writer.stats().flushed_messages
        print(f"flushed {flushed}", flush=True)
    time.sleep(0.0002)
"""


def test_sigkill_mid_episode_keeps_every_flushed_message(tmp_path):
    script = tmp_path / "crashing_writer.py"
    script.write_text(CRASHING_WRITER)
    root = tmp_path / "episodes"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    lines: queue.Queue = queue.Queue()

    def pump() -> None:  # a thread, so that waiting for a line can time out
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    reported: list[int] = []
    output = []
    try:
        while len(reported) < 5 or reported[-1] < 300:  # several flushes in: kill it mid-episode
            line = lines.get(timeout=10)
            output.append(line)
            if line.startswith("flushed "):
                reported.append(int(line.split()[1]))
            assert proc.poll() is None, f"writer exited early: {''.join(output)}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(timeout=10)
    while not lines.empty():  # what it printed before the kill arrived
        line = lines.get()
        if line.startswith("flushed "):
            reported.append(int(line.split()[1]))
    last_flushed = reported[-1]

    assert not (root / "crash-1.mcap").exists() and (root / ".partial" / "crash-1.mcap").exists()
    results = recover_partials(root)

    assert [(r.action, r.output) for r in results] == [("recovered", root / "crash-1.mcap")]
    assert results[0].messages >= last_flushed, (results[0], last_flushed)
    metadata, messages = read_episode(root / "crash-1.mcap")
    assert metadata["recovered"] == "true" and metadata["outcome"] == "unknown"
    assert metadata["robot"] == "robot_0" and metadata["task"] == "reach-v3"
    assert metadata["recovered_messages"] == str(len(messages)) == str(results[0].messages)
    # A gap-free prefix of what was written, with the original timestamps and contents.
    assert [m.log_time_ns for m in messages] == [1_000_000 + i for i in range(len(messages))]
    assert [m.message.position[0] for m in messages] == [float(i) for i in range(len(messages))]
    assert list((root / ".partial").iterdir()) == []
    print(f"crash test: last reported flush {last_flushed}, recovered {len(messages)} messages")


def crashed_partial(tmp_path: Path) -> tuple[bytes, int]:
    """The bytes a crash leaves: K messages flushed, then a last chunk cut in half. Returns (bytes, K)."""
    writer = EpisodeWriter(tmp_path / "source", "ep-9", metadata={"robot": "robot_1"})
    writer.add_topic("joint_states", "sensor_msgs/msg/JointState")
    writer.add_topic("command", "std_msgs/msg/Float64MultiArray")
    for i in range(40):
        writer.write("joint_states", joint_state(i), T0 + 2 * i)
        writer.write("command", serialize_message(Float64MultiArray(data=[float(i)])), T0 + 2 * i + 1)
    writer.flush()
    flushed = writer.partial_path.read_bytes()
    for i in range(40, 60):
        writer.write("joint_states", joint_state(i), T0 + 2 * i)
    writer.flush()
    more = writer.partial_path.read_bytes()
    writer.abort("test snapshot taken")
    return more[: (len(flushed) + len(more)) // 2], 80


def test_truncated_last_chunk_keeps_every_message_before_it(tmp_path):
    data, flushed = crashed_partial(tmp_path)
    root = tmp_path / "robot"
    (root / ".partial").mkdir(parents=True)
    (root / ".partial" / "ep-9.mcap").write_bytes(data)

    [result] = recover_partials(root)

    assert (result.action, result.messages, result.output) == ("recovered", flushed, root / "ep-9.mcap")
    assert "without the MCAP footer" in result.reason
    metadata, messages = read_episode(root / "ep-9.mcap")
    assert metadata["robot"] == "robot_1" and metadata["recovered_messages"] == str(flushed)
    assert {m.topic for m in messages} == {"joint_states", "command"}
    assert messages[-1].message.data == [39.0]


def test_interrupted_recovery_is_finished_by_the_next_one(tmp_path):
    data, flushed = crashed_partial(tmp_path)
    root = tmp_path / "robot"
    partial = root / ".partial" / "ep-9.mcap"
    partial.parent.mkdir(parents=True)
    # Crash while writing the recovered copy: a half-written output beside the partial.
    partial.write_bytes(data)
    (root / ".partial" / "ep-9.mcap.recovering").write_bytes(data[:100])
    assert [r.action for r in recover_partials(root)] == ["recovered"]
    assert list((root / ".partial").iterdir()) == []
    published = (root / "ep-9.mcap").read_bytes()

    # Crash after publishing, before removing the partial: the next run only removes it.
    partial.write_bytes(data)
    [again] = recover_partials(root)
    assert (again.action, again.messages) == ("recovered", flushed) and "already recovered" in again.reason
    assert (root / "ep-9.mcap").read_bytes() == published
    assert recover_partials(root) == [] and list((root / ".partial").iterdir()) == []


def test_unreadable_partials_are_quarantined_never_deleted(tmp_path):
    root = tmp_path / "robot"
    partial_dir = root / ".partial"
    partial_dir.mkdir(parents=True)
    header_only = EpisodeWriter(tmp_path / "source", "ep-5")  # crashed before its first message
    (partial_dir / "ep-5.mcap").write_bytes(header_only.partial_path.read_bytes())
    header_only.abort("snapshot taken")
    (partial_dir / "junk-1.mcap").write_bytes(os.urandom(3000))
    (partial_dir / "empty-2.mcap").write_bytes(b"")
    (partial_dir / "notes.txt").write_text("not a recording")
    originals = files_in(partial_dir)

    results = {r.path.name: r for r in recover_partials(root)}

    assert {name: r.action for name, r in results.items()} == dict.fromkeys(originals, "quarantined")
    assert "no readable message" in results["ep-5.mcap"].reason
    assert "no MCAP header" in results["junk-1.mcap"].reason
    assert "not named <episode_id>.mcap" in results["notes.txt"].reason
    quarantine = files_in(root / "quarantine")
    assert {name: quarantine[name] for name in originals} == originals
    assert results["junk-1.mcap"].reason in quarantine["junk-1.mcap.reason.txt"].decode()
    assert list(partial_dir.iterdir()) == [] and not list(root.glob("*.mcap"))

    assert recover_partials(root) == []  # idempotent: nothing left to do, nothing changed
    assert files_in(root / "quarantine") == quarantine
    (partial_dir / "junk-1.mcap").write_bytes(b"other junk")  # the same name again: kept beside the first
    [again] = recover_partials(root)
    assert again.output == root / "quarantine" / "junk-1.mcap.1"
    assert files_in(root / "quarantine")["junk-1.mcap"] == originals["junk-1.mcap"]


def test_partial_of_a_running_writer_is_left_alone(tmp_path):
    writer = EpisodeWriter(tmp_path, "ep-6")
    writer.add_topic("joint_states", "sensor_msgs/msg/JointState")
    writer.write("joint_states", joint_state(0), T0)
    writer.flush()
    assert [r.action for r in recover_partials(tmp_path)] == ["skipped"]
    assert read_episode(writer.finish({"outcome": "success"}))[0]["outcome"] == "success"


# ---------------------------------------------------------------------------------------------------------
# Disk problems
# ---------------------------------------------------------------------------------------------------------


def test_root_that_cannot_be_created_is_a_clear_recording_error(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a regular file")
    root = blocker / "episodes"
    with pytest.raises(RecordingError, match=rf"{re.escape(str(root))}.*{re.escape(str(blocker))} is a file") as info:
        EpisodeWriter(root, "ep-7")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOTDIR


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.ENOSPC, "free space on the disk holding"),
        (errno.EDQUOT, "disk quota"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "writable for this user"),
    ],
)
def test_disk_error_while_recording_names_path_and_fix(tmp_path, monkeypatch, code, advice):
    done = EpisodeWriter(tmp_path, "ep-done")
    done.add_topic("joint_states", "sensor_msgs/msg/JointState")
    done.write("joint_states", joint_state(0), T0)
    finished = done.finish({"outcome": "success"})
    before = finished.read_bytes()
    writer = EpisodeWriter(tmp_path, "ep-8")
    writer.add_topic("joint_states", "sensor_msgs/msg/JointState")
    for i in range(3):
        writer.write("joint_states", joint_state(i), T0 + i)

    def fsync_fails(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(RecordingError) as info:
        writer.flush()
    message = str(info.value)
    assert str(writer.partial_path) in message and os.strerror(code) in message and advice in message
    assert info.value.errno == code
    with pytest.raises(RecordingError, match="stopped recording after a disk error"):
        writer.write("joint_states", joint_state(3), T0 + 3)
    with pytest.raises(RecordingError):
        writer.finish({"outcome": "success"})
    monkeypatch.undo()

    assert finished.read_bytes() == before
    # What reached the disk before the error is not lost: the next start recovers it.
    [result] = recover_partials(tmp_path)
    assert (result.action, result.messages) == ("recovered", 3)


def test_disk_full_at_start_leaves_nothing_behind(tmp_path, monkeypatch):
    def fsync_fails(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(RecordingError, match=r"cannot create .*ep-10\.mcap: No space left on device; free space"):
        EpisodeWriter(tmp_path, "ep-10")
    monkeypatch.undo()
    assert list((tmp_path / ".partial").iterdir()) == []
    EpisodeWriter(tmp_path, "ep-10").abort("retry works")


def test_outcomes_and_controllers_match_the_message_constants():
    assert [Outcome.from_event(getattr(EpisodeEvent, f"OUTCOME_{o.name}")) for o in Outcome] == list(Outcome)
    assert Outcome.from_event(99) == Outcome.UNKNOWN and Outcome.of("won") == Outcome.UNKNOWN
    assert Outcome.of("failure") == "failure" and str(Outcome.ABORT) == "abort"  # metadata spells the value
    assert {c.name: c.value for c in Controller} == {
        name.removeprefix("CONTROLLER_"): getattr(InterventionState, name)
        for name in dir(InterventionState)
        if name.startswith("CONTROLLER_")
    }


def test_atomic_file_shows_the_new_bytes_or_the_old_never_a_part(tmp_path):
    path = tmp_path / "latest.json"
    with atomic_file(path) as f:
        f.write(b"first")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write(b"half of the sec")
        raise RuntimeError("stopped mid-write")
    assert path.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["latest.json"]
    with atomic_file(path, durable=False) as f:
        f.write(b"second")
    assert path.read_bytes() == b"second"
