"""The recorder node on a running simulated robot: stock-readable files, SIGKILL recovery, bad directories."""

import os
import signal
import subprocess
import time

import cv2
import numpy as np
import pytest
from conftest import pids_started, sop, start, wait_for
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

TIER = "ros"  # what the tests need: conftest.TIERS

ROBOT = """
robot: {{id: rec, use_sim_time: true, clock_topic: /rec/clock}}
nodes:
  sim_robot: {{task: reach-v3, episodes: {episodes}, step_mode: {mode}, cameras: [corner, gripperPOV],
              image_width: 48, image_height: 48, camera_hz: 10.0, max_episode_steps: {max_steps},
              wait_for_nodes: [teleop_arbiter, scripted_operator, recorder]}}
  teleop_arbiter: {{operator_device: scripted_expert}}
  scripted_operator: {{task: reach-v3, mode: {operator_mode}}}
"""
RECORDER = """
robot: {{id: rec, use_sim_time: true, clock_topic: /rec/clock}}
nodes:
  recorder: {{output_dir: {out}, flush_period_s: 0.2}}
"""


def write_configs(tmp_path, out, episodes=2, mode="lockstep", max_steps=150, operator_mode="demo"):
    robot, rec = tmp_path / "robot.yaml", tmp_path / "recorder.yaml"
    robot.write_text(ROBOT.format(episodes=episodes, mode=mode, max_steps=max_steps, operator_mode=operator_mode))
    rec.write_text(RECORDER.format(out=out))
    return robot, rec


def decode(path):
    """With the stock reader only: mcap + mcap_ros2's decoder."""
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        messages = [(c.topic, s.name, m.log_time, d) for s, c, m, d in reader.iter_decoded_messages()]
        metadata = {r.name: dict(r.metadata) for r in reader.iter_metadata()}
    return metadata, messages


def test_every_episode_is_recorded_whole_and_decodes_with_the_stock_reader(tmp_path):
    out = tmp_path / "episodes"
    robot, rec = write_configs(tmp_path, out)
    recorder = start(sop("robot", "--config", str(rec)))
    try:
        result = start(sop("robot", "--config", str(robot)))
        output, _ = result.communicate(timeout=180)
        assert result.returncode == 0, output
        wait_for(lambda: len(list((out / "rec").glob("*.mcap"))) == 2, 30, what="two finished episode files")
    finally:
        recorder.send_signal(signal.SIGINT)
        rec_output, _ = recorder.communicate(timeout=30)
    assert recorder.returncode == 0, rec_output
    assert not list((out / "rec" / ".partial").glob("*"))
    for path in sorted((out / "rec").glob("*.mcap")):
        metadata, messages = decode(path)
        episode = metadata["episode"]
        assert episode["task"] == "reach-v3" and episode["outcome"] == "success" and episode["labels"] == "success"
        topics = [t for t, *_ in messages]
        steps = int(episode["steps"])
        assert topics.count("/rec/joint_states") == steps + 1  # the reset state, then one per step
        assert topics.count("/rec/command") >= steps
        events = [(log_time, d.event) for t, _, log_time, d in messages if t == "/rec/episode/events"]
        # START, then END and the operator's LABEL. The label comes at the END's simulated instant (in lockstep the
        # clock stands still between episodes): a tie, which the reader may give in either order.
        assert events[0][1] == 0 and sorted(e for _, e in events) == [0, 1, 2]
        assert events[1][0] == events[2][0] or [e for _, e in events] == [0, 1, 2]
        controllers = {(d.controller, d.source_device) for t, _, _, d in messages if t == "/rec/teleop/intervention"}
        assert (1, "scripted_expert") in controllers  # who drove is recorded: the operator, with its device
        frames = [d for t, _, _, d in messages if t == "/rec/cameras/corner/image_raw/compressed"]
        image = cv2.imdecode(np.frombuffer(bytes(frames[0].data), np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (48, 48, 3)
        assert [t for t, *_ in messages] and all(name for _, name, _, _ in messages)


def test_a_recorder_killed_mid_episode_keeps_what_it_flushed(tmp_path):
    out = tmp_path / "episodes"
    # One long realtime episode (the scripted operator never drives: 'intervene' with no policy just waits).
    robot, rec = write_configs(tmp_path, out, episodes=1, mode="realtime", max_steps=400, operator_mode="intervene")
    recorder = start(sop("robot", "--config", str(rec)))
    robot_proc = start(sop("robot", "--config", str(robot)))
    try:
        partial = out / "rec" / ".partial"
        wait_for(lambda: any(p.stat().st_size > 4096 for p in partial.glob("*.mcap")), 120, what="flushed data")
        time.sleep(0.5)
        recorder_node_pid = next(p for p in pids_started_so_far(recorder))
        os.kill(recorder_node_pid, signal.SIGKILL)
        rec_output, _ = recorder.communicate(timeout=30)
        (partial_file,) = partial.glob("*.mcap")
        size_at_kill = partial_file.stat().st_size
        # A new recorder recovers the partial file at start.
        restarted = start(sop("robot", "--config", str(rec)))
        wait_for(lambda: list((out / "rec").glob("*.mcap")), 60, what="the recovered file")
        restarted.send_signal(signal.SIGINT)
        restart_output, _ = restarted.communicate(timeout=30)
    finally:
        robot_proc.send_signal(signal.SIGINT)
        robot_proc.communicate(timeout=30)
        for proc in (recorder, robot_proc):
            if proc.poll() is None:
                proc.kill()
    assert "recovered" in restart_output
    (recovered,) = (out / "rec").glob("*.mcap")
    metadata, messages = decode(recovered)
    assert metadata["episode"]["recovered"] == "true" and metadata["episode"]["task"] == "reach-v3"
    assert size_at_kill > 4096 and len(messages) > 0
    assert sum(t == "/rec/joint_states" for t, *_ in messages) > 0


def pids_started_so_far(proc):
    """Read the launcher's 'started ... (pid N)' line without waiting for it to exit."""
    line = proc.stdout.readline()
    while "(pid" not in line:
        line = proc.stdout.readline()
    return pids_started(line)


def test_an_unwritable_output_directory_is_a_clear_error_not_a_crash(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    robot, rec = write_configs(tmp_path, blocker / "episodes", episodes=1)
    recorder = start(sop("robot", "--config", str(rec)))
    try:
        result = start(sop("robot", "--config", str(robot)))
        output, _ = result.communicate(timeout=180)
        assert result.returncode == 0, output  # the robot finished its episode regardless
    finally:
        recorder.send_signal(signal.SIGINT)
        rec_output, _ = recorder.communicate(timeout=30)
    assert recorder.returncode == 0, rec_output
    assert "cannot record episode" in rec_output and str(blocker) in rec_output


def test_a_full_disk_stops_recording_with_a_clear_error_and_the_robot_goes_on(tmp_path):
    """A real full disk: the recorder's directory is a 256 KiB tmpfs that the episodes overflow."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=False,
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root (CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        robot, rec = write_configs(tmp_path, disk, episodes=6)
        recorder = start(sop("robot", "--config", str(rec)))
        try:
            result = start(sop("robot", "--config", str(robot)))
            output, _ = result.communicate(timeout=300)
            assert result.returncode == 0, output  # the robot finished every episode
        finally:
            recorder.send_signal(signal.SIGINT)
            rec_output, _ = recorder.communicate(timeout=30)
        assert recorder.returncode == 0, rec_output
        assert "free space on the disk holding" in rec_output, rec_output
        finished = sorted((disk / "rec").glob("*.mcap"))
        for path in finished:  # what was published before the disk filled is complete
            metadata, messages = decode(path)
            assert metadata["episode"]["outcome"] == "success" and messages
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def recorder_node(tmp_path, **values):
    from sop_ros.configs.robot import RecorderConfig
    from sop_ros.robot.params import parameter_overrides
    from sop_ros.robot.recorder_node import RecorderNode

    values = {"output_dir": str(tmp_path / "episodes")} | values
    return RecorderNode(parameter_overrides=parameter_overrides(RecorderConfig, values))


def hears_episodes(node) -> bool:
    return node.resolve_topic_name("episode/events") in {s.topic_name for s in node.subscriptions}


def test_a_recorder_listens_for_episodes_only_once_the_streams_it_waits_for_are_connected(tmp_path, rclpy_context):
    """A simulator starts its first episode when every listener is there; a recorder that listened before the
    policy's chunks reached it would record an episode without them."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from sop_ros.msg import ActionChunk
    from sop_ros.robot import topics

    recorder = recorder_node(tmp_path, wait_for_publishers=["policy/chunk"], connect_timeout_s=120.0)
    policy = rclpy.create_node("policy")
    executor = SingleThreadedExecutor()
    executor.add_node(recorder)
    try:
        for _ in range(20):  # a second of looking: no chunk publisher, so no listener
            executor.spin_once(timeout_sec=0.05)
        assert not hears_episodes(recorder)
        policy.create_publisher(ActionChunk, topics.POLICY_CHUNK, topics.STREAM)
        wait_for(lambda: hears_episodes(recorder), 30, spin=lambda: executor.spin_once(timeout_sec=0.05),
                 what="the recorder's episode listener")  # fmt: skip
        assert all(s.get_publisher_count() == 1 for s in recorder.subscriptions
                   if s.topic_name == recorder.resolve_topic_name("policy/chunk"))  # fmt: skip
    finally:
        executor.shutdown()
        policy.destroy_node()
        recorder.destroy_node()


def test_a_recorder_whose_streams_never_connect_listens_after_its_timeout_naming_them(tmp_path, rclpy_context):
    from rclpy.executors import SingleThreadedExecutor

    recorder = recorder_node(tmp_path, wait_for_publishers=["command", "policy/chunk"], connect_timeout_s=0.2)
    executor = SingleThreadedExecutor()
    executor.add_node(recorder)
    try:
        assert recorder.unconnected() == [recorder.resolve_topic_name("command"), recorder.resolve_topic_name(
            "policy/chunk")]  # fmt: skip
        wait_for(lambda: hears_episodes(recorder), 30, spin=lambda: executor.spin_once(timeout_sec=0.05),
                 what="the recorder's episode listener")  # fmt: skip
    finally:
        executor.shutdown()
        recorder.destroy_node()


def test_a_simulator_starts_no_episode_before_each_node_it_waits_for_listens(rclpy_context):
    """The node being up is not enough, nor is a matched subscription count (the simulator's own counts too)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState

    from sop_ros.configs.robot import SimRobotConfig
    from sop_ros.msg import EpisodeEvent
    from sop_ros.robot import topics
    from sop_ros.robot.params import parameter_overrides
    from sop_ros.sim.sim_robot_node import SimRobotNode

    values = {"task": "reach-v3", "episodes": 1, "max_episode_steps": 5, "image_width": 32, "image_height": 32,
              "wait_for_nodes": ["recorder"], "ready_timeout_s": 120.0}  # fmt: skip
    sim = SimRobotNode(parameter_overrides=parameter_overrides(SimRobotConfig, values))
    recorder, probe = rclpy.create_node("recorder"), rclpy.create_node("probe")  # up, not yet listening
    states = []
    probe.create_subscription(JointState, topics.JOINT_STATES, states.append, topics.STREAM)
    executor = SingleThreadedExecutor()
    for node in (sim, recorder, probe):
        executor.add_node(node)
    spin = lambda: executor.spin_once(timeout_sec=0.05)  # noqa: E731
    try:
        wait_for(lambda: sim.sim is not None, 60, spin=spin, what="the simulator built")
        for _ in range(30):  # a second and a half more: the simulator still waits
            spin()
        assert not states
        recorder.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, lambda _: None, topics.EVENTS)
        wait_for(lambda: states, 60, spin=spin, what="the first episode's joint states")
    finally:
        executor.shutdown()
        for node in (probe, recorder, sim):
            node.destroy_node()
