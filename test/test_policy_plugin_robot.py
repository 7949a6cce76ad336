"""A simulated robot driven by a policy class of its own, named in its YAML, through the real nodes (`sop robot`:
simulator, ingest, policy, arbiter, each in its own process): the class defined here, and the openpi websocket
client asking a local server. Their actions reach the robot's command; the status names the class. And the same
robot, its cameras stopped and restarted: it holds, then goes on by itself."""

import os
import signal
import subprocess

import numpy as np
from conftest import REPO, sop, start, wait_for
from openpi_server import OpenpiServer
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool

from sop_ros.model.policy import Observation, PolicyResult
from sop_ros.msg import Observation as ObservationMsg
from sop_ros.msg import PolicyStatus
from sop_ros.robot import topics
from sop_ros.srv import LoadPolicy

TIER = "ros"  # what the tests need: conftest.TIERS

NS = "/plug"
ROBOT = """
robot: {{id: plug, use_sim_time: true, clock_topic: /plug/clock}}
nodes:
  sim_robot: {{task: reach-v3, step_mode: lockstep, cameras: [corner], image_width: 32, image_height: 32,
              camera_hz: 10.0, max_episode_steps: 40}}
  ingest: {{cameras: [corner], image_size: 32}}
  policy: {{policy_class: {policy_class}, policy_args: {policy_args}, wait_for_chunk: true,
           act_between_episodes: true, replan_steps: 2, status_hz: 5.0}}
  teleop_arbiter: {{}}
"""


class SteadyPolicy:
    """The robot's own policy: the same action for every step, from observations shaped as the ingest node makes
    them (anything else raises, and the robot holds)."""

    def __init__(self, action: list[float], steps: int = 4) -> None:
        self.chunk = np.tile(np.asarray(action, np.float32), (steps, 1))

    def infer(self, obs: Observation) -> PolicyResult:
        if obs.images.shape != (1, 3, 32, 32) or obs.cameras != ("corner",):
            raise ValueError(f"unexpected observation: images {obs.images.shape} from {obs.cameras}")
        return PolicyResult(self.chunk, "steady-1")

    def reset(self) -> None:
        pass


class Probe:
    """The robot's command and policy status, observed; the policy's load service, called."""

    def __init__(self):
        import rclpy

        self.rclpy = rclpy
        self.node = rclpy.create_node("probe", namespace=NS)
        self.commands, self.statuses = [], []
        self.node.create_subscription(Float64MultiArray, topics.ROBOT_COMMAND, self.commands.append, topics.RECORD)
        self.node.create_subscription(PolicyStatus, topics.POLICY_STATUS, self.statuses.append, topics.RECORD)
        self.load = self.node.create_client(LoadPolicy, topics.LOAD_POLICY)

    def spin(self) -> None:
        self.rclpy.spin_once(self.node, timeout_sec=0.05)

    def running(self, backend: str) -> PolicyStatus | None:
        """The first status that names `backend` after its first inference."""
        return next((s for s in self.statuses if s.backend == backend and s.inferences > 0), None)

    def command_is(self, action) -> bool:
        return any(np.allclose(c.data, action, atol=1e-6) for c in self.commands)


def drive(tmp_path, probe: Probe, policy_class: str, policy_args: str, action, backend: str) -> PolicyStatus:
    """Run the robot on `policy_class` until its command is `action` and its status names `backend`; the status."""
    (tmp_path / "robot.yaml").write_text(ROBOT.format(policy_class=policy_class, policy_args=policy_args))
    # The node processes import the test's policy class from here.
    path = [str(REPO / "test"), str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    robot = start(sop("robot", "--config", str(tmp_path / "robot.yaml")), env=env)
    try:
        wait_for(lambda: probe.command_is(action), 120, probe.spin, f"the robot commanded {action}")
        wait_for(lambda: probe.running(backend), 30, probe.spin, f"a status naming {backend}, after an inference")
        wait_for(probe.load.service_is_ready, 30, probe.spin, "the policy/load service")
        future = probe.load.call_async(LoadPolicy.Request(path="/tmp/fleet.onnx", immediate=True))
        wait_for(future.done, 30, probe.spin, "the reply to policy/load")
        reply = future.result()
        assert not reply.accepted and f"runs its own policy class {policy_class}" in reply.message
        robot.send_signal(signal.SIGINT)
        output, _ = robot.communicate(timeout=60)
    finally:
        if robot.poll() is None:
            robot.kill()
            robot.communicate()
    assert robot.returncode == 0, output[-4000:]
    return probe.running(backend)


def test_a_policy_class_named_in_the_yaml_drives_the_simulated_robot(tmp_path, rclpy_context):
    probe = Probe()
    try:
        action = [0.25, -0.5, 0.75, -1.0]
        status = drive(tmp_path, probe, "test_policy_plugin_robot:SteadyPolicy", f"{{action: {action}}}", action,
                       "SteadyPolicy")  # fmt: skip
    finally:
        probe.node.destroy_node()
    assert status.state == PolicyStatus.STATE_READY and status.version == "SteadyPolicy" and status.inferences > 0


def test_the_websocket_policy_drives_the_simulated_robot_from_an_openpi_server(tmp_path, rclpy_context):
    action = [-0.5, 0.25, 0.5, 1.0]
    server = OpenpiServer(action, steps=4)
    probe = Probe()
    try:
        status = drive(tmp_path, probe, "sop_ros.model.remote_policy:WebsocketPolicy",
                       f"{{port: {server.port}, prompt_key: task}}", action, "WebsocketPolicy")  # fmt: skip
    finally:
        probe.node.destroy_node()
        server.close()
    assert status.state == PolicyStatus.STATE_READY and status.version == "served-v1"
    obs = server.received[-1]
    assert obs["observation/corner"].shape == (32, 32, 3) and obs["observation/corner"].dtype == np.uint8
    assert obs["observation/state"].dtype == np.float32 and isinstance(obs["task"], str)


def test_a_lockstep_robot_whose_cameras_stop_holds_and_goes_on_by_itself_when_they_come_back(tmp_path, rclpy_context):
    import rclpy

    robot_yaml = ROBOT.format(policy_class="test_policy_plugin_robot:SteadyPolicy",
                              policy_args="{action: [0.1, 0.0, 0.0, 0.0]}")  # fmt: skip
    # Nothing steps on a hold for 10 minutes: a robot that does not go on by itself is seen waiting.
    robot_yaml = robot_yaml.replace("max_episode_steps: 40", "max_episode_steps: 400, lockstep_timeout_s: 600.0")
    (tmp_path / "robot.yaml").write_text(robot_yaml)
    path = [str(REPO / "test"), str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    node = rclpy.create_node("camera_probe", namespace=NS)
    seen: list[tuple[int, bool]] = []  # (stamp ns, valid) of each observation
    node.create_subscription(ObservationMsg, topics.OBSERVATION, lambda m: seen.append(
        (m.header.stamp.sec * 10**9 + m.header.stamp.nanosec, m.valid)), topics.STREAM)  # fmt: skip
    cameras = node.create_client(SetBool, "sim_robot/cameras_on")

    def spin() -> None:
        rclpy.spin_once(node, timeout_sec=0.05)

    def switch(on: bool) -> None:
        wait_for(cameras.service_is_ready, 60, spin, "the sim_robot/cameras_on service")
        future = cameras.call_async(SetBool.Request(data=on))
        wait_for(future.done, 30, spin, "the reply to sim_robot/cameras_on")

    log = tmp_path / "robot.log"  # read at the end: a pipe nobody reads while the test waits would stall the robot
    with open(log, "w") as out:
        robot = subprocess.Popen(sop("robot", "--config", str(tmp_path / "robot.yaml")), stdout=out,
                                 stderr=subprocess.STDOUT, cwd=REPO, env=env)  # fmt: skip
    try:
        wait_for(lambda: sum(valid for _, valid in seen) >= 5, 120, spin, "five observations of a running robot")
        switch(on=False)
        wait_for(lambda: not seen[-1][1], 60, spin, "an observation flagged stale")
        held = seen[-1][0]
        switch(on=True)
        wait_for(lambda: any(valid and stamp > held for stamp, valid in seen), 60, spin, "the robot going on")
        robot.send_signal(signal.SIGINT)
        robot.wait(timeout=60)
    finally:
        node.destroy_node()
        if robot.poll() is None:
            robot.kill()
            robot.wait()
    output = log.read_text()
    assert robot.returncode == 0, output[-4000:]
    assert "stale sensors, the policy holds" in output and "sensors fresh again" in output
    after = [(stamp, valid) for stamp, valid in seen if stamp >= held]
    # The held state itself is answered again once its frames come (unless an episode's end moved on first).
    assert after[0] == (held, False) and after[1][1], after[:3]
