"""The policy node between real ingest and arbiter processes: stale sensors hold the robot; bad weights are refused.

The robot's nodes run as `sop robot` starts them (one process each, on wall time); the test plays the sensors
(joint states at 30 Hz, two JPEG cameras at 10 Hz, stamped with the wall clock) and watches the topics.
"""

import contextlib
import dataclasses
import json
import signal
import subprocess
import threading

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, sop, wait_for
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import Float64MultiArray

from sop_ros.configs.model import ModelConfig
from sop_ros.model.export import export_onnx
from sop_ros.model.policy import file_sha256
from sop_ros.model.vla import VLAPolicy, load_checkpoint, save_checkpoint
from sop_ros.msg import ActionChunk, InterventionState, Observation, PolicyStatus
from sop_ros.robot import topics
from sop_ros.srv import LoadPolicy

TIER = "ros"  # what the tests need: conftest.TIERS

NS = "/pol"
CAMERAS = ("corner", "gripperPOV")
STALE = "gripperPOV"  # the camera that goes quiet
TINY = ModelConfig(cameras=2, image_size=32, cnn_channels=(8, 16), width=32, heads=2, depth=1, head_depth=1,
                   chunk=8, instruction_bytes=16, flow_steps=2)  # fmt: skip
ROBOT = """
robot: {{id: {id}, use_sim_time: false}}
nodes:
  ingest: {{cameras: [corner, gripperPOV], image_size: 32, sync_timeout_s: 0.1, max_sensor_age_s: 1.0}}
  policy: {{policy_path: {path}, act_between_episodes: true, wait_for_chunk: false, replan_steps: 4,
           status_hz: 10.0}}
"""
ARBITER = "  teleop_arbiter: {state_hz: 10.0}\n"


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """Tiny exported policies: v1 and v2 (same weights), one with 3 action dimensions, one with 1 camera, one
    trained on other cameras, junk."""
    out = tmp_path_factory.mktemp("policies")

    def export(name: str, model: VLAPolicy, version: str, cameras: list[str] | None = None):
        cameras = cameras or list(CAMERAS[: model.config.cameras])
        save_checkpoint(out / f"{name}.pt", model, version=version, cameras=cameras)
        export_onnx(out / f"{name}.pt", out / f"{name}.onnx")
        return out / f"{name}.onnx"

    torch.manual_seed(0)
    paths = {"v1": export("v1", VLAPolicy(TINY).eval(), "v1")}
    paths["v2"] = export("v2", load_checkpoint(out / "v1.pt")[0], "v2")
    paths["dim3"] = export("dim3", VLAPolicy(dataclasses.replace(TINY, action_dim=3)).eval(), "d3")
    paths["cam1"] = export("cam1", VLAPolicy(dataclasses.replace(TINY, cameras=1)).eval(), "c1")
    paths["topview"] = export("topview", VLAPolicy(TINY).eval(), "tv", cameras=["corner", "topview"])
    paths["corrupt"] = out / "corrupt.onnx"
    paths["corrupt"].write_bytes(np.random.default_rng(0).bytes(4096))
    return paths


class Probe:
    """The sensors of the robot (published on timers) and what its nodes say, spun on a thread of its own."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.node = node = rclpy.create_node("probe", namespace=NS)
        self.cameras_on = set(CAMERAS)
        self.commands, self.statuses, self.states, self.chunks, self.invalid = [], [], [], [], []
        self.joints = node.create_publisher(JointState, topics.JOINT_STATES, topics.STREAM)
        self.cams = {
            cam: node.create_publisher(CompressedImage, topics.CAMERA_COMPRESSED.format(camera=cam), topics.SENSOR)
            for cam in CAMERAS
        }
        image = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
        self.jpeg = cv2.imencode(".jpg", image)[1].tobytes()
        node.create_subscription(Float64MultiArray, topics.POLICY_COMMAND, self.commands.append, topics.RECORD)
        node.create_subscription(PolicyStatus, topics.POLICY_STATUS, self.statuses.append, topics.RECORD)
        node.create_subscription(ActionChunk, topics.POLICY_CHUNK, self.chunks.append, topics.RECORD)
        node.create_subscription(InterventionState, topics.INTERVENTION_STATE, self.states.append, topics.EVENTS)
        node.create_subscription(Observation, topics.OBSERVATION, self.on_observation, topics.RECORD)
        node.create_timer(1 / 30, self.publish_joint_state)
        node.create_timer(1 / 10, self.publish_frames)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def on_observation(self, msg: Observation) -> None:
        if not msg.valid:
            self.invalid.append(msg.problem)

    def publish_joint_state(self) -> None:
        msg = JointState(name=[f"joint{i}" for i in range(9)], position=[0.1 * i for i in range(9)])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.joints.publish(msg)

    def publish_frames(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for cam in CAMERAS:
            if cam in self.cameras_on:
                msg = CompressedImage(format="jpeg", data=self.jpeg)
                msg.header.stamp = stamp
                self.cams[cam].publish(msg)

    def call(self, client, request: LoadPolicy.Request) -> LoadPolicy.Response:
        future = client.call_async(request)
        wait_for(future.done, 20, what=f"the reply to loading {request.path}")
        return future.result()

    def more_commands(self, n: int = 10, timeout: float = 20) -> None:
        count = len(self.commands)
        wait_for(lambda: len(self.commands) >= count + n, timeout, what=f"{n} more policy commands")

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5)
        self.thread.join(timeout=5)
        self.node.destroy_node()


@contextlib.contextmanager
def robot(tmp_path, policy_path, arbiter: bool):
    """`sop robot` with ingest, policy (and the arbiter); its output goes to a file, read when a check fails."""
    config = tmp_path / "robot.yaml"
    config.write_text(ROBOT.format(id=NS.strip("/"), path=json.dumps(str(policy_path))) + (ARBITER if arbiter else ""))
    log = tmp_path / "robot.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(sop("robot", "--config", str(config)), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield log
    except BaseException:
        print(f"robot output:\n{log.read_text()[-4000:]}")  # shown with the failure
        raise
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-4000:]


@pytest.fixture
def probe(rclpy_context):
    probe = Probe()
    yield probe
    probe.close()


def test_a_stale_camera_makes_the_robot_hold_until_it_comes_back(tmp_path, policies, probe):
    with robot(tmp_path, policies["v1"], arbiter=True):
        wait_for(lambda: probe.commands, 60, what="the policy's first command")
        wait_for(lambda: any(s.controller == InterventionState.CONTROLLER_POLICY for s in probe.states), 20,
                 what="the arbiter to hand the robot to the policy")  # fmt: skip
        assert all(len(c.data) == 4 and np.isfinite(c.data).all() for c in probe.commands)
        wait_for(lambda: probe.chunks, 20, what="the policy's first chunk")  # its topic can match after the commands'
        assert probe.chunks[-1].policy_version == "v1" and probe.chunks[-1].horizon == TINY.chunk

        probe.cameras_on.discard(STALE)  # one camera goes quiet; joint states and the other camera go on

        def holding() -> bool:
            message = probe.statuses[-1].message if probe.statuses else ""
            return message.startswith("holding") and f"camera {STALE}" in message

        wait_for(holding, 20, what=f"the policy status to say it holds for camera {STALE}")
        wait_for(lambda: probe.states and probe.states[-1].controller == InterventionState.CONTROLLER_HOLD, 20,
                 what="the arbiter to hold the robot")  # fmt: skip
        # A window of five more status messages and fifteen more (invalid) observations: no command in it.
        commands, statuses, invalid = len(probe.commands), len(probe.statuses), len(probe.invalid)
        wait_for(lambda: len(probe.statuses) >= statuses + 5 and len(probe.invalid) >= invalid + 15, 20,
                 what="the stale window")  # fmt: skip
        assert len(probe.commands) == commands
        assert all(f"camera {STALE}: frame" in p and "corner" not in p for p in probe.invalid[invalid:])
        assert all(s.message.startswith(f"holding: camera {STALE}: frame") for s in probe.statuses[statuses:])
        assert all(s.state == PolicyStatus.STATE_HOLDING for s in probe.statuses[statuses:])
        assert probe.states[-1].controller == InterventionState.CONTROLLER_HOLD

        probe.cameras_on.add(STALE)  # back: the policy commands again and gets the robot back
        probe.more_commands()
        wait_for(lambda: probe.states[-1].controller == InterventionState.CONTROLLER_POLICY, 20,
                 what="the policy back in control")  # fmt: skip
        wait_for(lambda: not probe.statuses[-1].message, 10, what="the holding message to clear")
        assert probe.statuses[-1].state == PolicyStatus.STATE_READY


def test_bad_policy_files_are_refused_and_the_running_one_goes_on(tmp_path, policies, probe):
    client = probe.node.create_client(LoadPolicy, topics.LOAD_POLICY)
    v2 = str(policies["v2"])
    refused = [
        (LoadPolicy.Request(path=str(policies["corrupt"])), "cannot be loaded: InvalidProtobuf"),
        (LoadPolicy.Request(path=str(policies["dim3"])), "3 action dimensions, this robot has 4"),
        (LoadPolicy.Request(path=str(policies["cam1"])), "images (2, 3, 32, 32), expected (1, 3, 32, 32)"),
        (LoadPolicy.Request(path=str(policies["topview"])),
         "cameras ['corner', 'gripperPOV'], the policy was trained on ['corner', 'topview']"),
        (LoadPolicy.Request(path=v2, sha256="0" * 64), f"differs from the expected {'0' * 64}"),
        (LoadPolicy.Request(path=v2, version="v9"), "holds version 'v2', the request names 'v9'"),
        (LoadPolicy.Request(path=str(tmp_path / "missing.onnx")), "no such file"),
    ]
    with robot(tmp_path, policies["v1"], arbiter=False):
        wait_for(lambda: probe.commands, 60, what="the policy's first command")  # it has seen an observation
        assert client.wait_for_service(timeout_sec=30)
        for request, reason in refused:
            request.immediate = True
            response = probe.call(client, request)
            assert not response.accepted, request.path
            assert response.message.startswith(f"refused: {request.path}: ") and reason in response.message
            assert response.running_version == "v1"
            statuses = len(probe.statuses)
            probe.more_commands()  # v1 goes on driving ...
            wait_for(lambda n=statuses: len(probe.statuses) >= n + 2, 20, what="two more status messages")
            assert all(s.version == "v1" and s.state == PolicyStatus.STATE_READY for s in probe.statuses[statuses:])
            assert any(s.message == response.message for s in probe.statuses[statuses:])  # ... and says why
            wait_for(lambda: probe.chunks, 20, what="a chunk")
            assert probe.chunks[-1].policy_version == "v1"


def test_a_valid_policy_is_accepted_after_a_refused_one_and_runs_at_once(tmp_path, policies, probe):
    client = probe.node.create_client(LoadPolicy, topics.LOAD_POLICY)
    v2 = str(policies["v2"])
    with robot(tmp_path, policies["v1"], arbiter=False):
        wait_for(lambda: probe.commands, 60, what="the policy's first command")
        assert client.wait_for_service(timeout_sec=30)
        response = probe.call(client, LoadPolicy.Request(path=v2, sha256="0" * 64, immediate=True))
        assert not response.accepted and response.running_version == "v1"
        request = LoadPolicy.Request(path=v2, version="v2", sha256=file_sha256(v2), immediate=True,
                                     rollout_stage="canary")  # fmt: skip
        response = probe.call(client, request)
        assert response.accepted and response.message == "running v2" and response.running_version == "v2"
        wait_for(lambda: probe.statuses and probe.statuses[-1].version == "v2", 10, what="the status to show v2")
        assert probe.statuses[-1].message == "" and probe.statuses[-1].pending_version == ""
        # The chunk topic may match after the command topic did: wait for a chunk, not only for v2's.
        wait_for(lambda: probe.chunks and probe.chunks[-1].policy_version == "v2", 20, what="a chunk from v2")
        assert probe.chunks[-1].rollout_stage == "canary"
        # Promoted: the same version, told its new stage; the chunks (and so the episode files) say it from now on.
        response = probe.call(client, LoadPolicy.Request(path="", version="v2", rollout_stage="promoted"))
        assert response.accepted and response.message == "v2 holds; its rollout stage is now promoted"
        probe.more_commands()
        wait_for(lambda: probe.chunks[-1].rollout_stage == "promoted", 20, what="a chunk from promoted v2")
        assert probe.chunks[-1].policy_version == "v2"


def test_holds_for_one_reason_are_one_kind_whatever_their_figures_and_other_reasons_another():
    from sop_ros.robot.ingest_node import problem_kind

    camera = "camera corner: frame {} s older than the joint state"
    assert problem_kind(camera.format("0.53")) == problem_kind(camera.format("1.23"))  # the same hold, later
    assert problem_kind(camera.format("0.53")) != problem_kind("joint_states: stamped 1.10 s behind the clock")
