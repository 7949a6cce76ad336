"""Teleop over real processes and topics: takeover and hand-back, hold on stale input, labels, interventions."""

import select
import signal
import sys

import pytest
from conftest import REPO, sop, start, wait_for
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Float64MultiArray

from sop_ros.msg import EpisodeEvent, InterventionState
from sop_ros.robot import topics
from sop_ros.robot.teleop_devices import KEYBOARD_HELP
from sop_ros.srv import LabelEpisode

TIER = "ros"  # what the tests need: conftest.TIERS

NS = "/tr"


class Probe:
    """The test's side: a policy and a joystick publishing, the robot's command and states observed."""

    def __init__(self):
        import rclpy

        self.rclpy = rclpy
        self.node = rclpy.create_node("probe", namespace=NS)
        self.commands, self.states, self.events = [], [], []
        self.policy = self.node.create_publisher(Float64MultiArray, topics.POLICY_COMMAND, topics.STREAM)
        self.joy = self.node.create_publisher(Joy, topics.JOY, topics.SENSOR)
        self.node.create_subscription(Float64MultiArray, topics.ROBOT_COMMAND, self.commands.append, topics.RECORD)
        self.node.create_subscription(InterventionState, topics.INTERVENTION_STATE, self.states.append, topics.EVENTS)
        self.node.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, self.events.append, topics.EVENTS)

    def spin(self, seconds=0.05):
        self.rclpy.spin_once(self.node, timeout_sec=seconds)

    def next_command(self, publish) -> list[float]:
        """Publish one input, return the first robot command that the arbiter sends after it."""
        for _ in range(5):  # drain what was already on its way
            self.spin(0.02)
        self.commands.clear()
        publish()
        wait_for(lambda: self.commands, 10, self.spin, "a robot command")
        return list(self.commands[0].data)


def joy(deadman: bool, takeover: bool = False, axes=(0.0,) * 6, label_button: int | None = None) -> Joy:
    buttons = [0] * 8
    buttons[4], buttons[0] = int(deadman), int(takeover)
    if label_button is not None:
        buttons[label_button] = 1
    return Joy(axes=list(axes), buttons=buttons)


@pytest.fixture
def arbiter(rclpy_context):
    params = ["-p", "max_rate:=[1e6, 1e6, 1e6, 1e6]", "-p", "operator_timeout_s:=0.5", "-p", "policy_timeout_s:=0.5"]
    cmd = [sys.executable, "-m", "sop_ros.robot.teleop_arbiter_node", "--ros-args", "-r", f"__ns:={NS}", *params]
    proc = start(cmd)
    probe = Probe()
    wait_for(lambda: probe.policy.get_subscription_count() and probe.joy.get_subscription_count(), 30, probe.spin,
             "the arbiter to subscribe")  # fmt: skip
    yield probe
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=20)
    probe.node.destroy_node()
    assert proc.returncode == 0, output


def test_takeover_and_hand_back_switch_on_the_next_command(arbiter):
    policy = Float64MultiArray(data=[0.1, 0.2, 0.3, -1.0])
    # Until the policy's first command the arbiter holds (and its watchdog publishes the hold command).
    wait_for(lambda: arbiter.commands and list(arbiter.commands[-1].data) == pytest.approx(list(policy.data)), 10,
             lambda: (arbiter.policy.publish(policy), arbiter.spin()), "the policy in control")  # fmt: skip
    assert arbiter.next_command(lambda: arbiter.policy.publish(policy)) == pytest.approx([0.1, 0.2, 0.3, -1.0])
    # Joy axes 1, 0, 4, 5 drive x, y, z, gripper. Deadman + takeover: the very next command is the operator's.
    axes = (-0.5, 0.25, 0.0, 0.0, 0.75, 1.0)
    taken = arbiter.next_command(lambda: arbiter.joy.publish(joy(True, True, axes)))
    assert taken == pytest.approx([0.25, -0.5, 0.75, 1.0])
    wait_for(lambda: any(s.controller == InterventionState.CONTROLLER_OPERATOR for s in arbiter.states), 10,
             arbiter.spin, "the intervention to be published")  # fmt: skip
    state = next(s for s in arbiter.states if s.controller == InterventionState.CONTROLLER_OPERATOR)
    assert state.source_device == "joy" and state.interventions_in_episode == 1
    # While the operator holds control, policy commands are not forwarded.
    arbiter.policy.publish(policy)
    arbiter.joy.publish(joy(True, False, axes))
    wait_for(lambda: len(arbiter.commands) >= 1, 10, arbiter.spin, "commands")
    assert all(list(c.data) == pytest.approx([0.25, -0.5, 0.75, 1.0]) for c in arbiter.commands)
    # Releasing the deadman hands back; the operator's input is stale once operator_timeout_s passes.
    arbiter.joy.publish(joy(False))
    arbiter.states.clear()
    wait_for(lambda: any(s.controller != InterventionState.CONTROLLER_OPERATOR for s in arbiter.states), 10,
             lambda: (arbiter.policy.publish(policy), arbiter.spin()), "the hand-back")  # fmt: skip
    assert arbiter.next_command(lambda: arbiter.policy.publish(policy)) == pytest.approx([0.1, 0.2, 0.3, -1.0])


def test_stale_inputs_make_the_arbiter_hold(arbiter):
    arbiter.next_command(lambda: arbiter.policy.publish(Float64MultiArray(data=[0.5, 0.5, 0.5, 1.0])))
    held = [0.0, 0.0, 0.0, 1.0]  # still, with the gripper as it was
    wait_for(lambda: arbiter.commands and list(arbiter.commands[-1].data) == held, 10, arbiter.spin, "hold command")
    wait_for(lambda: arbiter.states and arbiter.states[-1].controller == InterventionState.CONTROLLER_HOLD, 10,
             arbiter.spin, "the HOLD state")  # fmt: skip
    # Once held, the command no longer changes, and the arbiter stops repeating it (controllers keep it).
    for _ in range(10):
        arbiter.spin(0.02)
    arbiter.commands.clear()
    for _ in range(25):
        arbiter.spin(0.02)
    assert arbiter.commands == []


def test_labels_by_service_and_by_joy_button(arbiter):
    client = arbiter.node.create_client(LabelEpisode, topics.LABEL_EPISODE)
    assert client.wait_for_service(timeout_sec=30)
    future = client.call_async(LabelEpisode.Request(outcome=EpisodeEvent.OUTCOME_SUCCESS))
    wait_for(future.done, 10, arbiter.spin, "the label reply")
    assert not future.result().accepted and "no episode" in future.result().message
    start_event = EpisodeEvent(event=EpisodeEvent.EVENT_START, robot_id="tr", episode_id="tr-e1", task="reach-v3")
    events = arbiter.node.create_publisher(EpisodeEvent, topics.EPISODE_EVENTS, topics.EVENTS)
    wait_for(lambda: events.get_subscription_count() >= 2, 30, arbiter.spin, "the arbiter to hear episode events")
    events.publish(start_event)
    wait_for(lambda: arbiter.events, 10, arbiter.spin, "the START event")
    replies = []

    def labelled() -> bool:  # the arbiter may take a moment to receive START: ask until it knows the episode
        if not replies or (replies[-1].done() and not replies[-1].result().accepted):
            replies.append(client.call_async(LabelEpisode.Request(outcome=EpisodeEvent.OUTCOME_FAILURE)))
        return replies[-1].done() and replies[-1].result().accepted

    wait_for(labelled, 20, arbiter.spin, "the label to be accepted")
    wait_for(lambda: any(e.event == EpisodeEvent.EVENT_LABEL for e in arbiter.events), 10, arbiter.spin, "LABEL")
    label = next(e for e in arbiter.events if e.event == EpisodeEvent.EVENT_LABEL)
    assert (label.episode_id, label.outcome, label.outcome_source) == (
        "tr-e1",
        EpisodeEvent.OUTCOME_FAILURE,
        "operator",
    )
    arbiter.events.clear()
    arbiter.joy.publish(joy(False, label_button=2))  # X: abort
    wait_for(lambda: any(e.event == EpisodeEvent.EVENT_LABEL for e in arbiter.events), 10, arbiter.spin, "Joy label")
    assert arbiter.events[-1].outcome == EpisodeEvent.OUTCOME_ABORT


OPERATOR_SIDE = """
robot: {id: tr, use_sim_time: true, clock_topic: /tr/clock}
nodes:
  teleop_arbiter: {operator_device: scripted_expert}
  scripted_operator: {task: reach-v3, mode: intervene, stall_steps: 10}
"""
SIM_SIDE = """
robot: {id: tr, use_sim_time: true, clock_topic: /tr/clock}
nodes:
  sim_robot: {task: reach-v3, episodes: 1, step_mode: lockstep, cameras: [corner], image_width: 32,
              image_height: 32, camera_hz: 5.0, max_episode_steps: 300,
              wait_for_nodes: [teleop_arbiter, scripted_operator]}
"""


def test_scripted_operator_takes_over_a_stalled_policy_and_labels(tmp_path, rclpy_context):
    """A 'policy' that answers every state with zeros stalls; the expert takes over and finishes the task."""
    (tmp_path / "operator.yaml").write_text(OPERATOR_SIDE)
    (tmp_path / "sim.yaml").write_text(SIM_SIDE)
    probe = Probe()
    zeros = Float64MultiArray(data=[0.0, 0.0, 0.0, 0.0])
    probe.node.create_subscription(
        JointState, topics.JOINT_STATES, lambda _m: probe.policy.publish(zeros), topics.RECORD
    )
    operator_side = start(sop("robot", "--config", str(tmp_path / "operator.yaml")))
    sim_side = None
    try:
        # The simulator starts only once the 'policy' reaches the arbiter and the operator watches the robot
        # (an operator found late takes over too late to finish): nothing races discovery.
        wait_for(lambda: probe.policy.get_subscription_count() > 0, 60, probe.spin, "the arbiter")
        wait_for(lambda: probe.node.count_subscribers(f"{NS}/{topics.SIM_STATE}") > 0, 60, probe.spin,
                 "the operator to watch the robot")  # fmt: skip
        sim_side = start(sop("robot", "--config", str(tmp_path / "sim.yaml")))
        # END comes from the simulator, LABEL from the arbiter: two writers, so either may reach the probe first.
        ended_and_labelled = {EpisodeEvent.EVENT_END, EpisodeEvent.EVENT_LABEL}
        wait_for(lambda: ended_and_labelled <= {e.event for e in probe.events}, 120, probe.spin,
                 "the episode to end and be labelled")  # fmt: skip
        sim_output, _ = sim_side.communicate(timeout=60)
        operator_side.send_signal(signal.SIGINT)
        output, _ = operator_side.communicate(timeout=60)
    finally:
        for proc in (operator_side, sim_side):
            if proc is not None and proc.poll() is None:
                proc.kill()
        probe.node.destroy_node()
    assert sim_side.returncode == 0 and operator_side.returncode == 0, output + sim_output
    assert "taking over: stalled" in output
    controllers = [s.controller for s in probe.states]
    assert InterventionState.CONTROLLER_POLICY in controllers
    operator = [s for s in probe.states if s.controller == InterventionState.CONTROLLER_OPERATOR]
    assert operator and operator[-1].source_device == "scripted_expert" and operator[-1].interventions_in_episode == 1
    end = next(e for e in probe.events if e.event == EpisodeEvent.EVENT_END)
    label = next(e for e in probe.events if e.event == EpisodeEvent.EVENT_LABEL)
    assert end.outcome == EpisodeEvent.OUTCOME_SUCCESS and end.outcome_source == "sim_success"
    assert (label.episode_id, label.outcome) == (end.episode_id, EpisodeEvent.OUTCOME_SUCCESS)


def test_keyboard_teleop_in_a_terminal(rclpy_context):
    """The keyboard node on a real pseudo-terminal: space takes control, w moves +x, q quits."""
    import os
    import pty
    import subprocess
    import time

    probe = Probe()
    operator = []
    probe.node.create_subscription(Float64MultiArray, topics.OPERATOR_COMMAND, operator.append, topics.RECORD)
    leader, follower = pty.openpty()
    cmd = [sys.executable, "-m", "sop_ros.robot.keyboard_teleop_node", "--ros-args", "-r", f"__ns:={NS}"]
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=subprocess.STDOUT, cwd=REPO)
    os.close(follower)
    try:
        wait_for(lambda: probe.node.count_publishers(f"{NS}/{topics.OPERATOR_COMMAND}") > 0, 30, probe.spin, "node")
        shown = bytearray()  # the help line comes once the terminal reads keys one by one (cbreak)

        def help_shown() -> bool:
            if select.select([leader], [], [], 0.1)[0]:
                shown.extend(os.read(leader, 4096))
            return KEYBOARD_HELP.split("\n")[0].encode() in shown

        wait_for(help_shown, 30, what="the keyboard help")
        # Engaged and idle, the operator keeps holding control: a hold command every period. Once one arrives, the
        # topic is matched both ways (a key's single command could otherwise go out before the node sees us).
        os.write(leader, b" ")
        wait_for(lambda: operator and list(operator[-1].data) == [0.0, 0.0, 0.0, -1.0], 30, probe.spin, "holding")
        os.write(leader, b"w")  # a key moves the arm for one period
        wait_for(lambda: any(list(m.data) == [0.5, 0.0, 0.0, -1.0] for m in operator), 10, probe.spin, "+x command")
        wait_for(lambda: list(operator[-1].data) == [0.0, 0.0, 0.0, -1.0], 10, probe.spin, "idle while engaged")
        os.write(leader, b" ")  # release: commands stop
        time.sleep(0.3)
        for _ in range(10):
            probe.spin(0.02)
        operator.clear()
        for _ in range(25):
            probe.spin(0.02)
        assert operator == []
        os.write(leader, b"q")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
        probe.node.destroy_node()


LAST_STATE_SIDE = """
robot: {id: tr, use_sim_time: true, clock_topic: /tr/clock}
nodes:
  sim_robot: {task: reach-v3, episodes: 2, step_mode: lockstep, cameras: [corner], image_width: 32,
              image_height: 32, max_episode_steps: 5, lockstep_timeout_s: 600.0, lockstep_end_timeout_s: 0.5}
"""


def test_a_lockstep_simulator_starts_the_next_episode_when_the_last_state_goes_unanswered(tmp_path, rclpy_context):
    """As when an operator's answer to an episode's last state comes after its end and is dropped: the next
    episode starts after lockstep_end_timeout_s, not after lockstep_timeout_s (600 s here)."""
    (tmp_path / "sim.yaml").write_text(LAST_STATE_SIDE)
    probe = Probe()
    robot = probe.node.create_publisher(Float64MultiArray, topics.ROBOT_COMMAND, topics.STREAM)
    zeros = Float64MultiArray(data=[0.0, 0.0, 0.0, 0.0])
    starts, unanswered = [], []

    def on_state(msg: JointState) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        begun = [s for s in starts if s <= stamp]
        # Every state but an episode's last (its fifth step's): 5 periods of 1/30 s after its start.
        if begun and abs(stamp - max(begun) - 5 * 10**9 / 30) < 1e6:
            unanswered.append(stamp)
            return
        robot.publish(zeros)

    def on_event(msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_START:
            starts.append(msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec)

    probe.node.create_subscription(JointState, topics.JOINT_STATES, on_state, topics.RECORD)
    probe.node.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, on_event, topics.EVENTS)
    sim = start(sop("robot", "--config", str(tmp_path / "sim.yaml")))
    try:
        wait_for(lambda: len(starts) >= 2, 120, probe.spin, "the second episode's start")
        assert len(unanswered) == 1 and unanswered[0] > starts[0]  # the first episode's last state
        ends = [e for e in probe.events if e.event == EpisodeEvent.EVENT_END]
        assert ends[0].steps == 5 and ends[0].outcome == EpisodeEvent.OUTCOME_FAILURE
    finally:
        sim.send_signal(signal.SIGINT)
        output, _ = sim.communicate(timeout=30)
        probe.node.destroy_node()
    assert "the episode's last state had no answer in 0.5 s: starting the next" in output
