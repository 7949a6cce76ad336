"""A simulated robot: a Meta-World task behind the topics and clock a real robot driver provides.

Publishes joint states, camera images (raw and/or JPEG), /clock, the privileged simulator state (for
scripted operators only) and episode events; applies the latest command from the robot command topic
at a fixed control rate, holding still when commands stop.

Like a hardware driver, the control loop runs on a thread of its own, not on the executor: the
simulator's OpenGL context belongs to the thread that created it, and the loop keeps its rate however
busy the executor is.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import datetime, timezone

import numpy as np
import rclpy.time
from builtin_interfaces.msg import Time
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, Header
from std_srvs.srv import SetBool

from sop_ros.bridge.pace import RobotPace
from sop_ros.configs.robot import SimRobotConfig
from sop_ros.episodes.format import Outcome
from sop_ros.model.preprocess import encode_jpeg_rgb
from sop_ros.msg import EpisodeEvent
from sop_ros.robot import commands, topics
from sop_ros.robot.params import declare_config
from sop_ros.robot.spin import run_node
from sop_ros.sim.metaworld_sim import ACTION_NAMES, JOINT_NAMES, MetaWorldSim, goal_marker, sim_state

# After the last episode, how long to wait for an operator's label of it before the run ends.
LABEL_WAIT_S = 2.0
# A stop waits this long for the driver thread, which ends within a control period. (Not while it builds the
# simulator: seconds on a busy host, and not interruptible. The ending process drops it.)
DRIVER_JOIN_S = 1.0
# Lockstep: how often a wait for a command looks whether restarted cameras owe their frames.
OWED_FRAMES_POLL_S = 0.02


def sim_stamp(nanoseconds: int) -> Time:
    return rclpy.time.Time(nanoseconds=nanoseconds).to_msg()


def image_messages(image: np.ndarray, header: Header, transport: str, jpeg_quality: int) -> list:
    """sensor_msgs images for one RGB frame, as configured: raw Image, JPEG CompressedImage, or both."""
    out = []
    if transport in ("raw", "both"):
        h, w, _ = image.shape
        out.append(Image(header=header, height=h, width=w, encoding="rgb8", step=w * 3, data=image.tobytes()))
    if transport in ("compressed", "both"):
        jpeg = encode_jpeg_rgb(image, jpeg_quality)
        out.append(CompressedImage(header=header, format="rgb8; jpeg compressed bgr8", data=jpeg))
    return out


class SimRobotNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("sim_robot", **kwargs)
        self.config = cfg = declare_config(self, SimRobotConfig)
        self.robot_id = self.get_namespace().strip("/").replace("/", "_") or "robot"
        self.finished = threading.Event()
        self.exit_code = 0
        self.sim: MetaWorldSim | None = None
        self.pace: RobotPace | None = None
        self._command = np.zeros(len(ACTION_NAMES))
        self._command_time = -float("inf")
        # Whole nanoseconds: a float sum of 1/control_hz drifts below the timers' deadlines on sim time,
        # and rcl then skips their ticks.
        self._sim_time_ns = 0
        self._period_ns = round(1e9 / cfg.control_hz)
        self._episodes_done = 0
        self._episode = None
        self._episode_id = ""
        self._started_utc = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")[:-3]
        self._command_arrived = threading.Event()  # lockstep: a command came after the last state
        self._first_reset = None  # lockstep: the reset shown while waiting for the first answer
        self._abort_requested = threading.Event()
        self._labelled: deque[str] = deque(maxlen=16)  # episodes an operator labelled lately (the last awaited)
        self._cameras_on = True  # false: a sensor fault, injected through ~/cameras_on (fault tests)
        self._frames_owed = False  # the cameras came back: the driver shows the current state's frames at once

        self.joint_pub = self.create_publisher(JointState, topics.JOINT_STATES, topics.STREAM)
        self.executed_pub = self.create_publisher(JointState, topics.EXECUTED_COMMAND, topics.STREAM)
        self.state_pub = self.create_publisher(Float64MultiArray, topics.SIM_STATE, topics.STREAM)
        self.event_pub = self.create_publisher(EpisodeEvent, topics.EPISODE_EVENTS, topics.EVENTS)
        self.clock_pub = self.create_publisher(Clock, "/clock", QoSProfile(depth=1)) if cfg.publish_clock else None
        self.image_pubs = {}
        for cam in cfg.cameras:
            pubs = []
            if cfg.image_transport in ("raw", "both"):
                pubs.append(self.create_publisher(Image, topics.CAMERA_IMAGE.format(camera=cam), topics.SENSOR))
            if cfg.image_transport in ("compressed", "both"):
                topic = topics.CAMERA_COMPRESSED.format(camera=cam)
                pubs.append(self.create_publisher(CompressedImage, topic, topics.SENSOR))
            self.image_pubs[cam] = pubs
        command_type = commands.MESSAGE_TYPES[cfg.command_interface]
        self.create_subscription(command_type, topics.ROBOT_COMMAND, self.on_command, topics.LATEST)
        self.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, self.on_episode_event, topics.EVENTS)
        # A sensor fault on demand: false stops every camera (the simulation, clock and joint states go on), true
        # restarts them. What a robot does without images (its ingest flags them stale, its policy holds) is then
        # seen end to end (`sop chaos soak`).
        self.create_service(SetBool, "~/cameras_on", self.on_cameras_on)
        self._stop = threading.Event()
        self._driver = threading.Thread(target=self.drive, name="sim_driver", daemon=True)
        self._driver.start()

    def on_command(self, msg) -> None:
        try:
            self._command = commands.from_message(msg, ACTION_NAMES)
        except ValueError as err:
            self.get_logger().error(f"refused a command: {err}", throttle_duration_sec=5.0)
            return
        self._command_time = time.monotonic()
        self._command_arrived.set()

    def on_episode_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_LABEL:
            self._labelled.append(msg.episode_id)
        aborted = msg.event == EpisodeEvent.EVENT_LABEL and msg.outcome == EpisodeEvent.OUTCOME_ABORT
        if aborted and msg.episode_id == self._episode_id:
            self._abort_requested.set()

    def drive(self) -> None:
        cfg = self.config
        try:
            self.sim = MetaWorldSim(cfg.task, cfg.seed, (cfg.image_height, cfg.image_width), goal_marker(cfg))
            if self._stop.is_set():  # stopped while the simulator was built: the node may be gone already
                return
            if cfg.pace_connect:
                self.pace = RobotPace(cfg.pace_connect, self.robot_id, self._period_ns)
                self._sim_time_ns = self.pace.start(self._stop, cfg.ready_timeout_s)
                self.get_logger().info(f"paced by the learner at {cfg.pace_connect}; fleet time "
                                       f"{self._sim_time_ns / 1e9:.1f} s")  # fmt: skip
            self.get_logger().info(
                f"Meta-World {cfg.task} at {cfg.control_hz:g} Hz, cameras {list(cfg.cameras)} "
                f"{cfg.image_width}x{cfg.image_height} at {cfg.camera_hz:g} Hz ({cfg.image_transport})"
            )
            self.wait_until_ready()
            if cfg.step_mode == "lockstep":
                self.wait_for_answer()
            period, next_tick = 1.0 / cfg.control_hz, time.monotonic()
            while not self._stop.is_set() and not self.finished.is_set():
                self.control_tick()
                if self._frames_owed:  # the cameras came back during the step
                    self.publish_images()
                if cfg.step_mode == "lockstep":
                    ended = self._episode is None  # the state shown was an episode's last
                    if not self.await_command(cfg.lockstep_end_timeout_s if ended else cfg.lockstep_timeout_s):
                        if ended:
                            self.get_logger().info(f"the episode's last state had no answer in "
                                                   f"{cfg.lockstep_end_timeout_s:g} s: starting the next")  # fmt: skip
                        else:
                            self.get_logger().warning(f"no command for {cfg.lockstep_timeout_s:g} s: stepping on a "
                                                      "hold")  # fmt: skip
                else:
                    next_tick += period
                    self._stop.wait(max(0.0, next_tick - time.monotonic()))
        except Exception as err:  # stop the robot and say why, rather than run on with a dead loop
            if not self.context.ok():
                return  # shutting down: a publish raced the context's shutdown
            self.get_logger().fatal(f"simulator failed: {type(err).__name__}: {err}")
            self.exit_code = 1
            self.finished.set()
        finally:
            if self.sim is not None:
                self.sim.close()
            if self.pace is not None:
                self.pace.close()

    def wait_until_ready(self) -> None:
        wanted = set(self.config.wait_for_nodes)
        deadline = time.monotonic() + self.config.ready_timeout_s
        while wanted and not self._stop.is_set():
            # Seen subscribing in the graph, and matched: an endpoint the graph shows may not be matched yet, and
            # the match count alone includes this node's own subscription (and would not say whose are missing).
            seen = {info.node_name for info in self.get_subscriptions_info_by_topic(self.event_pub.topic_name)
                    if info.node_namespace == self.get_namespace()}  # fmt: skip
            matched = self.event_pub.get_subscription_count() >= len(wanted | {self.get_name()})
            if wanted <= seen and matched:
                return
            if time.monotonic() > deadline:
                missing = sorted(wanted - seen) or "their episode-event subscriptions"
                self.get_logger().warning(f"starting without {missing} after {self.config.ready_timeout_s:g} s")
                return
            self._stop.wait(0.1)

    def wait_for_answer(self) -> None:
        """Lockstep: before the first episode, show a state until a command comes back.

        Nodes being up is not the whole path being connected (state -> operator or policy -> arbiter -> here): a
        first state nobody receives would go unanswered. These states are stamped before the first episode, so
        recorders leave them out.
        """
        self._first_reset = self.sim.reset()  # the first episode's own reset: nothing is stepped before it starts
        state = self._first_reset[1]
        deadline = time.monotonic() + self.config.ready_timeout_s
        while not self._stop.is_set():
            self.publish_clock()
            self.publish_state(state)
            self.publish_images()  # a policy answers what it sees: the cameras show the state too
            if self._command_arrived.wait(self.config.command_timeout_s):
                return
            if time.monotonic() > deadline:
                self.get_logger().warning(f"no command after {self.config.ready_timeout_s:g} s: starting anyway")
                return

    def await_command(self, timeout_s: float) -> bool:
        """Lockstep: wait up to `timeout_s` for the command that answers the state shown (True if it came),
        showing a restarted camera's frames meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not self._command_arrived.wait(min(OWED_FRAMES_POLL_S, max(0.0, deadline - time.monotonic()))):
            if self._frames_owed:
                self.publish_images()
            if time.monotonic() >= deadline:
                return False
        return True

    def control_tick(self) -> None:
        if self._episode is None:
            self.start_episode()
            return
        if self._abort_requested.is_set():
            self.end_episode(EpisodeEvent.OUTCOME_ABORT, "operator", self.sim.steps)
            return
        acted_at = self.header()  # the state this step answers
        self.advance_clock()
        action = self.current_action()
        result = self.sim.step(action)
        # What ran, stamped with the state it ran from: late or doubled commands (a takeover's first step has the
        # policy's and the operator's answer) leave no doubt in the recording about which one it was.
        self.executed_pub.publish(JointState(header=acted_at, name=list(ACTION_NAMES), position=action.tolist()))
        self.publish_clock()
        self.publish_state(result.state, action)
        if self.on_camera_tick():
            self.publish_images()
        if result.success:
            self.end_episode(EpisodeEvent.OUTCOME_SUCCESS, "sim_success", result.steps)
        elif result.steps >= self.config.max_episode_steps:
            self.end_episode(EpisodeEvent.OUTCOME_FAILURE, "timeout", result.steps)

    def advance_clock(self) -> None:
        """One control period on the simulated clock. One simulator step is one control period of the simulated
        robot, so nodes on sim time (the arbiter's output timer, the recorder's stamps) see the configured control
        rate however fast the host runs. A paced robot first waits for the learner's budget."""
        if self.pace is not None:
            self.pace.wait_to_reach(self._sim_time_ns + self._period_ns, self._stop)
        self._sim_time_ns += self._period_ns
        if self.pace is not None:
            self.pace.report(self._sim_time_ns)

    def on_camera_tick(self) -> bool:
        """The cameras capture every `camera_every_steps` control periods of the simulated clock."""
        return round(self._sim_time_ns / self._period_ns) % self.config.camera_every_steps == 0

    def current_action(self) -> np.ndarray:
        fresh_for = (
            self.config.lockstep_timeout_s if self.config.step_mode == "lockstep" else self.config.command_timeout_s
        )
        if time.monotonic() - self._command_time <= fresh_for:
            return self._command
        # No fresh command: stay in place, keep the gripper as it was (do not drop what it holds).
        return np.array([0.0, 0.0, 0.0, self._command[3]])

    def start_episode(self) -> None:
        self._episode, state = self._first_reset or self.sim.reset()
        self._first_reset = None
        # A reset takes a control period, so no instant belongs to two episodes (recorders split by time), and
        # up to a camera period more: an episode starts on the cameras' tick, so its first state has its own frames
        # and every frame of the run is on one grid (the ingest pairs states with frames exactly, in lockstep).
        self.advance_clock()
        while not self.on_camera_tick():
            self.advance_clock()
        self._abort_requested.clear()
        # Unique over robots and time (the cloud store is keyed by it): robot, node start (UTC, ms), counter.
        self._episode_id = f"{self.robot_id}-{self._started_utc}-{self._episodes_done:05d}"
        # Paced: the episode names the policy the learner's schedule gives it, for the policy node to run.
        scheduled = self.pace.scheduled_policy(self._sim_time_ns) if self.pace is not None else ""
        self.publish_event(EpisodeEvent.EVENT_START, EpisodeEvent.OUTCOME_UNKNOWN, "", 0, scheduled)
        self.publish_clock()
        self.publish_state(state)
        self.publish_images()

    def end_episode(self, outcome: int, source: str, steps: int) -> None:
        self.publish_event(EpisodeEvent.EVENT_END, outcome, source, steps)
        if self.pace is not None:
            self.pace.ended(self._episode_id, self._sim_time_ns)
        verdict = Outcome.from_event(outcome)
        self.get_logger().info(
            f'episode {self._episode_id} ({self._episode.task}, "{self._episode.instruction}"): '
            f"{verdict} after {steps} steps ({source})"
        )
        self._episode = None
        self._episodes_done += 1
        if self.config.episodes and self._episodes_done >= self.config.episodes:
            self.finish_run()

    def finish_run(self) -> None:
        """After the last episode: let its END reach every subscriber, and its label come, before stopping.

        Stopping at once would end the robot's other nodes before the recorder has closed the episode.
        """
        self.event_pub.wait_for_all_acked(Duration(seconds=5))
        deadline = time.monotonic() + LABEL_WAIT_S
        while self._episode_id not in self._labelled and time.monotonic() < deadline and not self._stop.is_set():
            self._stop.wait(0.05)
        self.finished.set()

    def header(self, frame_id: str = "") -> Header:
        return Header(stamp=sim_stamp(self._sim_time_ns), frame_id=frame_id)

    def publish_clock(self) -> None:
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=sim_stamp(self._sim_time_ns)))

    def publish_state(self, state: np.ndarray, applied: np.ndarray | None = None) -> None:
        """The robot's joints, and for scripted operators its full state with the command `applied` to reach it."""
        self._command_arrived.clear()  # lockstep waits for the command that answers this state
        self.joint_pub.publish(
            JointState(
                header=self.header(),
                name=list(JOINT_NAMES),
                position=self.sim.joint_positions().tolist(),
                velocity=self.sim.joint_velocities().tolist(),
            )
        )
        self.state_pub.publish(Float64MultiArray(data=sim_state(state, applied)))

    def on_cameras_on(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        restarted = request.data and not self._cameras_on
        self._cameras_on = bool(request.data)
        response.success, response.message = True, f"cameras {'on' if request.data else 'off'}"
        self.get_logger().warning(f"fault injection: {response.message}")
        # A camera that comes back shows the scene at once (the driver renders: the GL context is its thread's).
        # Waiting for the next camera tick would not do in lockstep: a robot holding for want of frames sends no
        # command, and without one nothing steps.
        self._frames_owed = self._frames_owed or restarted
        return response

    def publish_images(self) -> None:
        if not self._cameras_on:
            return
        self._frames_owed = False
        cfg = self.config
        for cam, pubs in self.image_pubs.items():
            msgs = image_messages(self.sim.render(cam), self.header(cam), cfg.image_transport, cfg.jpeg_quality)
            for pub, msg in zip(pubs, msgs, strict=True):
                pub.publish(msg)

    def publish_event(self, event: int, outcome: int, source: str, steps: int, policy_version: str = "") -> None:
        self.event_pub.publish(
            EpisodeEvent(
                header=self.header(),
                event=event,
                robot_id=self.robot_id,
                episode_id=self._episode_id,
                task=self._episode.task,
                instruction=self._episode.instruction,
                outcome=outcome,
                outcome_source=source,
                steps=steps,
                policy_version=policy_version,
            )
        )

    def destroy_node(self) -> None:
        self._stop.set()
        self._command_arrived.set()  # wake a lockstep wait
        if self.sim is not None:
            self._driver.join(timeout=DRIVER_JOIN_S)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(SimRobotNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
