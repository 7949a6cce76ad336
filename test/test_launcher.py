"""`sop robot` starts a robot's nodes from YAML, they talk over ROS 2, and SIGINT stops them all cleanly."""

import os
import re
import signal
import threading

import pytest
from conftest import REPO, alive, pids_started, sop, start, wait_for
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from sop_ros.host import MEMORY_REPORT_ENV, malloc_usage
from sop_ros.msg import InterventionState
from sop_ros.robot import topics

TIER = "ros"  # what the tests need: conftest.TIERS

SIM = """
robot: {{id: {rid}, use_sim_time: true}}
nodes:
  sim_robot: {{task: reach-v3, cameras: [corner], image_width: 32, image_height: 32,
              goal_marker_radius_m: 0.04, goal_marker_rgba: [0.0, 1.0, 0.0, 1.0], camera_hz: 5.0}}
  teleop_arbiter: {{operator_device: scripted_expert}}
  scripted_operator: {{task: reach-v3}}
"""


def observe_robot(rid: str, timeout: float = 60.0) -> dict:
    """Wait until the robot's joint states, the arbiter's commands and an operator takeover are seen."""
    import rclpy

    node = rclpy.create_node("observer", namespace=f"/{rid}")
    seen = {}
    node.create_subscription(JointState, topics.JOINT_STATES, lambda m: seen.setdefault("joints", m), topics.RECORD)
    node.create_subscription(
        Float64MultiArray, topics.ROBOT_COMMAND, lambda m: seen.setdefault("cmd", m), topics.RECORD
    )

    def on_state(msg):
        if msg.controller == InterventionState.CONTROLLER_OPERATOR:
            seen["operator"] = msg

    node.create_subscription(InterventionState, topics.INTERVENTION_STATE, on_state, topics.EVENTS)
    try:
        wait_for(lambda: len(seen) == 3, timeout, lambda: rclpy.spin_once(node, timeout_sec=0.05), "robot traffic")
    finally:
        node.destroy_node()
    return seen


@pytest.mark.parametrize("mode", [[], ["--single-process"]], ids=["processes", "single-process"])
def test_sigint_stops_every_node_with_exit_code_0(tmp_path, rclpy_context, mode):
    config = tmp_path / "sim.yaml"
    config.write_text(SIM.format(rid="r7"))
    # Asked to, each node's process says what malloc holds, in one process or many.
    proc = start(sop("robot", "--config", str(config), *mode), env={**os.environ, MEMORY_REPORT_ENV: "0.2"})
    try:
        seen = observe_robot("r7")
        assert list(seen["joints"].name)[:2] == ["right_j0", "right_j1"]
        assert len(seen["cmd"].data) == 4 and seen["operator"].source_device == "scripted_expert"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    pids = pids_started(output)
    assert len(pids) == (3 if not mode else 0)
    assert not [pid for pid in pids if alive(pid)], "orphan node processes"
    if not mode:
        assert output.count("exit code 0") == 3, output
    if malloc_usage() is not None:
        assert "memory: malloc in use" in output


def test_nodes_die_with_a_killed_launcher(tmp_path, rclpy_context):
    config = tmp_path / "sim.yaml"
    config.write_text(SIM.format(rid="r8"))
    proc = start(sop("robot", "--config", str(config)))
    try:
        observe_robot("r8")
    finally:
        proc.kill()  # SIGKILL: the launcher cannot forward anything
        output, _ = proc.communicate(timeout=30)
    pids = pids_started(output)
    assert len(pids) == 3
    wait_for(lambda: not any(alive(p) for p in pids), 30, what="nodes to exit after their launcher died")


def test_a_bounded_run_ends_by_itself(tmp_path):
    config = tmp_path / "sim.yaml"
    config.write_text(SIM.format(rid="r9").replace("task: reach-v3,", "task: reach-v3, episodes: 1,"))
    proc = start(sop("robot", "--config", str(config)))
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "sim_robot finished" in output
    assert not [pid for pid in pids_started(output) if alive(pid)]


@pytest.mark.parametrize("mode", [[], ["--single-process"]], ids=["processes", "single-process"])
def test_a_robot_whose_simulator_fails_exits_non_zero_saying_why(tmp_path, mode):
    from sop_ros.host import free_endpoint

    # Paced by a learner that is not there: the simulator gives up after ready_timeout_s.
    config = tmp_path / "sim.yaml"
    config.write_text(SIM.format(rid="r6").replace(
        "camera_hz: 5.0}", f"camera_hz: 5.0, step_mode: lockstep, pace_connect: '{free_endpoint()}', "
                           "ready_timeout_s: 1.0}"))  # fmt: skip
    proc = start(sop("robot", "--config", str(config), *mode))
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    assert "simulator failed: RuntimeError: no learner answered on sop/pace/learner within 1 s" in output


def test_node_with_bad_parameter_fails_at_start_naming_it():
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "sop_ros.robot.teleop_arbiter_node", "--ros-args", "-p", "control_hz:=-1.0"]
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=60, env=os.environ)
    assert result.returncode == 2
    assert "parameter control_hz=-1.0: must be > 0" in result.stderr


def test_a_node_logs_what_malloc_holds_when_asked_and_refuses_a_bad_period():
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "sop_ros.robot.teleop_arbiter_node"]
    bad = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={**os.environ, MEMORY_REPORT_ENV: "often"})  # fmt: skip
    assert bad.returncode == 2 and f"{MEMORY_REPORT_ENV}='often': must be a number of seconds" in bad.stderr
    if malloc_usage() is None:
        pytest.skip("not glibc >= 2.33: no mallinfo2 to report")
    proc = start(cmd, env={**os.environ, MEMORY_REPORT_ENV: "0.2"})
    lines: list[str] = []
    deadline = threading.Timer(60, proc.send_signal, [signal.SIGINT])  # its output ends then, lines or not
    deadline.start()
    try:
        while len(lines) < 2 and (line := proc.stdout.readline()):
            if "memory: malloc in use" in line:
                lines.append(line)
    finally:
        deadline.cancel()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    in_use = [float(re.search(r"in use ([0-9.]+) MB, free ([0-9.]+) MB", x).group(1)) for x in lines]
    assert len(in_use) == 2 and all(0 < mb < 1000 for mb in in_use)


def test_nodes_in_one_process_spin_apart_and_a_failing_callback_ends_them_all(rclpy_context):
    import threading

    import rclpy

    from sop_ros.robot.spin import spin_until_done

    in_slow, stop = threading.Event(), threading.Event()
    ticks_while_slow_blocks = []
    slow, fast, failing = (rclpy.create_node(name) for name in ("slow", "fast", "failing"))

    def slow_tick():
        in_slow.set()
        stop.wait(10.0)  # blocks until the fast node has ticked meanwhile: each node spins on its own executor

    def fast_tick():
        if in_slow.is_set():
            ticks_while_slow_blocks.append(1)
        if len(ticks_while_slow_blocks) == 5:
            stop.set()

    slow.create_timer(0.01, slow_tick)
    fast.create_timer(0.01, fast_tick)
    try:
        spin_until_done([slow, fast], stop, duration_s=30.0)
        assert len(ticks_while_slow_blocks) >= 5

        def fail():
            raise RuntimeError("callback failed")

        failing.create_timer(0.01, fail)
        with pytest.raises(RuntimeError, match="callback failed"):
            spin_until_done([slow, fast, failing], threading.Event(), duration_s=30.0)
    finally:
        for node in (slow, fast, failing):
            node.destroy_node()


def test_when_a_node_finishes_the_others_first_handle_what_had_reached_them(rclpy_context):
    import threading

    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Int32

    from sop_ros.robot.spin import spin_until_done

    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    source, sink = rclpy.create_node("source"), rclpy.create_node("sink")
    source.finished = threading.Event()
    publisher = source.create_publisher(Int32, "numbers", qos)
    handled = []

    def handle(msg):
        threading.Event().wait(0.02)  # a slow callback: messages queue up behind it
        handled.append(msg.data)

    sink.create_subscription(Int32, "numbers", handle, qos)

    def publish_then_finish():
        wait_for(lambda: publisher.get_subscription_count() == 1, 30.0, what="the sink's subscription")
        for i in range(20):
            publisher.publish(Int32(data=i))
        publisher.wait_for_all_acked(Duration(seconds=10))  # every message is in the sink's queue
        source.finished.set()  # as a simulator after its last episode

    threading.Thread(target=publish_then_finish, daemon=True).start()
    try:
        spin_until_done([source, sink], threading.Event(), duration_s=60.0)
        assert handled == list(range(20))
    finally:
        source.destroy_node()
        sink.destroy_node()


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="needs Linux's scheduler autogroups")
def test_a_niced_process_in_a_session_of_its_own_keeps_its_niceness_against_other_sessions(tmp_path):
    """Each session is an autogroup, and autogroups share the CPU evenly whatever nice says: a niced robot's
    node processes would each take a full share from the learner."""
    import sys

    from sop_ros.host import start_logged

    proc = start_logged([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "log", niceness=7,
                        own_session=True)  # fmt: skip
    try:
        group = open(f"/proc/{proc.pid}/autogroup").read()
        assert group.split()[-1] == str(min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7))
        # A process in the boot session's default autogroup reads nothing there (as under some CI runners).
        ours = open("/proc/self/autogroup").read().split()
        assert not ours or group.split()[0] != ours[0]  # a group of its own
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads resident memory from Linux's /proc")
def test_memory_freed_under_a_live_block_goes_back_to_the_system():
    """What a policy node or bridge calls after replacing a policy: free() alone keeps a heap whose top is in use."""
    import subprocess
    import sys

    code = """
from sop_ros.host import malloc_usage, return_free_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
start = malloc_usage()
blocks = [bytes(4000) for _ in range(25_000)]  # 100 MB of malloc's heap
held = malloc_usage()
pin = bytes(4000)  # allocated last: the top of the heap stays in use
del blocks
freed = malloc_usage()
before = rss()
print(return_free_memory(), round(before), round(rss()),
      *(round(u[k]) for u in (start, held, freed) for k in ("in_use", "free")) if start else "")
"""
    trimmed, before, after, *usage = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                    check=True, cwd=REPO).stdout.split()  # fmt: skip
    if trimmed == "False":
        pytest.skip("not glibc: its allocator returns memory its own way")
    assert int(before) - int(after) > 50, (before, after)
    if usage:  # glibc >= 2.33: what malloc holds tells data kept from memory freed but kept
        start_in_use, start_free, held_in_use, _, freed_in_use, freed_free = map(int, usage)
        assert held_in_use - start_in_use >= 95 and freed_in_use - start_in_use <= 5, usage
        assert freed_free - start_free >= 95, usage


def test_a_node_hands_back_large_blocks_it_frees_not_only_the_first():
    """glibc raises its mapping threshold past a freed mapped block, so the next such block is kept when freed; a
    robot node holds the threshold (bound_malloc), so every one goes back to the system; the learner does not."""
    import subprocess
    import sys

    code = """
import sys
from sop_ros.host import bound_malloc, malloc_usage
mode = sys.argv[1]
bounded = mode != "default" and bound_malloc(mmap_threshold=None if mode == "learner" else 128 * 2**10)
for _ in range(2):  # the first block is mapped on its own, whatever the threshold; the second shows it
    before = malloc_usage()["free"]
    block = bytearray(2_000_000)
    del block
print(bounded, malloc_usage()["free"] - before)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    runs = {mode: subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True,
                                 cwd=REPO, env=env).stdout.split()
            for mode in ("bounded", "default", "learner")}  # fmt: skip
    if malloc_usage() is None or runs["bounded"][0] == "False":
        pytest.skip("not glibc >= 2.33: no mallopt or mallinfo2 to hold and read the threshold")
    assert float(runs["default"][1]) >= 1.5, runs  # kept by malloc, free
    assert float(runs["bounded"][1]) <= 0.1, runs  # unmapped
    assert float(runs["learner"][1]) >= 1.5, runs  # the learner's arenas are bounded, not its threshold
