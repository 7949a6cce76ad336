"""The policy on the robot: observations in, commands out at the control rate, chunks computed off the control path.

Each valid observation is a control tick: it is answered from the running action chunk (sop_ros.robot.chunks);
every `replan_steps` steps the next chunk is computed by the inference thread from the newest observation. An
invalid observation (stale sensors), a failed inference or no policy: nothing is commanded, the chunk is dropped,
and the teleop arbiter holds the robot. New weights arrive through the policy/load service: loaded, checked and
warmed on a thread of their own, then swapped in at the next episode boundary (or at once, if asked).

A robot may run its own policy class instead (`policy_class`, sop_ros/model/plugin.py): made when the node starts,
run and reported as the built-in is; the policy/load service then refuses, as it loads the built-in's weights.

An episode whose START names a policy version (a paced simulator: the learner's schedule) runs exactly that one:
a recently loaded one is swapped back in, one not yet loaded is waited for, with nothing commanded meanwhile.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue
import threading
import time
from collections import deque

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.task import Future
from rclpy.time import Time
from std_msgs.msg import ColorRGBA, Float64MultiArray
from visualization_msgs.msg import Marker, MarkerArray

from sop_ros.configs.robot import PolicyConfig, import_policy_class
from sop_ros.host import return_free_memory
from sop_ros.model.plugin import PluginPolicy, make_plugin
from sop_ros.model.policy import ChunkPolicy, Observation, load_policy
from sop_ros.model.preprocess import to_unit_range
from sop_ros.msg import ActionChunk, EpisodeEvent, PolicyStatus
from sop_ros.msg import Observation as ObservationMsg
from sop_ros.robot import topics
from sop_ros.robot.chunks import ChunkExecutor
from sop_ros.robot.hot_swap import HotSwap, PolicyState, Swapped, Takeover
from sop_ros.robot.params import declare_config
from sop_ros.robot.recording import stamp_ns
from sop_ros.robot.spin import run_node
from sop_ros.srv import LoadPolicy

XYZ = ("x", "y", "z")
LOADER_NICENESS = 10  # added to the loading thread's nice value (lower CPU priority than control and inference)


def to_observation(msg: ObservationMsg) -> Observation:
    """The message's arrays as the policy's input; the instruction comes from the episode, later."""
    pixels = np.frombuffer(msg.images, dtype=np.uint8).reshape(len(msg.cameras), 3, msg.image_size, msg.image_size)
    return Observation(to_unit_range(pixels), np.frombuffer(msg.proprio, dtype=np.float32), "", tuple(msg.cameras))


def trajectory_markers(actions: np.ndarray, names: tuple[str, ...], frame: str, step_m: float, stamp,
                       ns: str) -> MarkerArray:  # fmt: skip
    """The chunk's end-effector path for rviz: xyz deltas summed from the end effector, coloured by the gripper."""
    if names[:3] != XYZ:
        return MarkerArray()
    path = np.vstack([np.zeros(3), np.cumsum(actions[:, :3], axis=0) * step_m])
    gripper = actions[:, 3] if actions.shape[1] > 3 else np.zeros(len(actions))
    common = dict(ns=ns, action=Marker.ADD, lifetime=Duration(sec=1))
    line = Marker(id=0, type=Marker.LINE_STRIP, **common)
    line.scale.x = 0.004
    line.color = ColorRGBA(r=0.1, g=0.6, b=1.0, a=0.9)
    dots = Marker(id=1, type=Marker.SPHERE_LIST, **common)
    dots.scale.x = dots.scale.y = dots.scale.z = 0.008
    for marker in (line, dots):
        marker.header.frame_id, marker.header.stamp = frame, stamp
        marker.pose.orientation.w = 1.0
    line.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in path]
    dots.points = line.points[1:]
    closed = np.clip((gripper + 1) / 2, 0, 1)  # Meta-World: -1 open, +1 closed
    dots.colors = [ColorRGBA(r=float(c), g=float(1 - c), b=0.2, a=1.0) for c in closed]
    return MarkerArray(markers=[line, dots])


class PolicyNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("policy", **kwargs)
        self.config = cfg = declare_config(self, PolicyConfig, on_change=self.reconfigure)
        self.period_ns = round(1e9 / cfg.control_hz)
        # Guards everything below that both the executor and the inference thread touch.
        self._lock = threading.Lock()
        self.chunks = ChunkExecutor(self.period_ns, cfg.execution, cfg.blend_steps, cfg.ensemble_decay)
        # Which policy runs, which waits for its swap point, which are kept warm. Replaced policies wait in its
        # `retired` to be released right after a command goes out: destroying an ONNX Runtime session holds the
        # GIL for ~20 ms, which must fall between two control ticks, not on one.
        self.swaps: HotSwap[ChunkPolicy | PluginPolicy] = HotSwap(swap_at=cfg.swap_at)
        self.state, self.message = PolicyState.LOADING, "no policy loaded yet"
        self.held = False  # commanding nothing until a valid observation comes (stale sensors, a misfit)
        self.episode_active, self.instruction, self.episode_start_ns = False, "", 0
        self.latest: Observation | None = None  # the newest valid observation, and its stamp
        self.latest_ns = -1
        self.waiting_tick: int | None = None  # wait_for_chunk: the tick answered when its chunk is ready
        self.answered_ns = -1  # stamp of the last observation a command answered
        self.inflight = False
        self.generation = 0  # bumped when chunks in flight no longer apply (new episode, stale sensors)
        self.sequence = 0
        self.latencies: deque[float] = deque(maxlen=200)
        self.loading = ""  # path being loaded, while a load runs
        self.stages: dict[str, str] = {}  # version -> its rollout stage, as the bridge last said (chunks carry it)

        self.command_pub = self.create_publisher(Float64MultiArray, topics.POLICY_COMMAND, topics.STREAM)
        self.chunk_pub = self.create_publisher(ActionChunk, topics.POLICY_CHUNK, topics.STREAM)
        self.marker_pub = self.create_publisher(MarkerArray, topics.POLICY_MARKERS, topics.STREAM)
        self.status_pub = self.create_publisher(PolicyStatus, topics.POLICY_STATUS, topics.STREAM)
        self.create_subscription(ObservationMsg, topics.OBSERVATION, self.on_observation, topics.LATEST)
        self.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, self.on_episode_event, topics.EVENTS)
        # A group of its own: while a load is awaited, the default group (observations, events) keeps running.
        loads = MutuallyExclusiveCallbackGroup()
        self.create_service(LoadPolicy, topics.LOAD_POLICY, self.on_load, callback_group=loads)
        # Status flows on wall time: it must keep coming when a simulator (and its clock) stops.
        self.create_timer(1.0 / cfg.status_hz, self.publish_status, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._wake = self.create_guard_condition(lambda: None)  # resumes a service call waiting for its load

        self._stop = threading.Event()
        self._requests: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self.infer_loop, name="inference", daemon=True)
        self._worker.start()
        if cfg.policy_path or cfg.policy_class:
            threading.Thread(target=self.load_at_start, name="policy_load", daemon=True).start()

    def reconfigure(self, config: PolicyConfig) -> None:
        """Live parameters set (`ros2 param set`): read from the next tick or load on."""
        with self._lock:
            self.config = config
            self.swaps.swap_at = config.swap_at

    @property
    def policy(self) -> ChunkPolicy | PluginPolicy | None:
        """The running policy."""
        return self.swaps.running

    # -- control ticks (executor thread) ---------------------------------------------------------------------

    def on_observation(self, msg: ObservationMsg) -> None:
        stamp = stamp_ns(msg)
        with self._lock:
            if not msg.valid:
                self.hold(f"holding: {msg.problem}")
                return
            try:
                obs = to_observation(msg)
            except ValueError as err:
                self.hold(f"holding: observation refused: {err}")
                return
            mismatch = self.policy.input_mismatch(obs) if self.policy else ""
            if mismatch:
                self.hold(f"holding: policy {self.policy.version} does not fit this robot: {mismatch}")
                return
            if self.episode_active and stamp < self.episode_start_ns:
                return  # a state from before the episode, come after its START (topics race): not this episode's
            self.latest, self.latest_ns = obs, stamp
            if self.held:
                self.held, self.message = False, ""
            if self.episode_active or self.config.act_between_episodes:
                self.tick(stamp)
            retired = self.swaps.take_retired()
        del retired  # outside the lock, just after this tick's command

    def tick(self, stamp: int) -> None:
        """Answer the observation at `stamp` (lock held): from the running chunk, starting the next as due."""
        if self.policy is None or self.state == PolicyState.ERROR:
            return
        awaited, wait_s = self.swaps.awaited, self.config.scheduled_policy_wait_s
        if self.swaps.still_awaiting(time.monotonic(), wait_s):
            self.waiting_tick = stamp  # answered once the scheduled policy is loaded
            return
        if awaited:
            self.get_logger().warning(f"the episode's scheduled policy {awaited} did not come within {wait_s:g} s: "
                                      f"it runs {self.policy.version}")  # fmt: skip
        steps = self.chunks.steps_into_newest(stamp)
        due = steps is None or steps >= self.config.replan_steps
        if due and self.config.wait_for_chunk:
            self.waiting_tick = stamp
        else:
            self.command(stamp)  # first: the command goes out before the inference thread competes for the GIL
        if due:
            self.request_chunk()

    def request_chunk(self) -> None:
        """Have the inference thread compute a chunk from the newest observation, unless one is in flight."""
        if self.inflight or self.swaps.awaited:
            return
        self.inflight = True
        obs = dataclasses.replace(self.latest, instruction=self.instruction)
        rtc = self.config.execution == "rtc" and getattr(self.policy, "rtc_max_prefix", 0)
        prefix = self.chunks.upcoming(self.latest_ns, self.prefix_steps()) if rtc else None
        self._requests.put((self.policy, obs, self.policy.next_noise(), prefix, self.latest_ns, self.generation))

    def prefix_steps(self) -> int:
        """rtc: the actions that will run while the next chunk is computed (configured, or from the latency)."""
        if self.config.rtc_prefix_steps:
            return self.config.rtc_prefix_steps
        median_ms = float(np.median(self.latencies)) if self.latencies else 0.0
        return math.ceil(median_ms * 1e6 / self.period_ns)

    def command(self, stamp: int) -> None:
        action = self.chunks.action(stamp)
        if action is not None:  # no chunk covers this instant: command nothing, the arbiter holds
            self.command_pub.publish(Float64MultiArray(data=action.tolist()))
            self.answered_ns = stamp

    def hold(self, reason: str) -> None:
        """Command nothing until a valid observation comes (lock held)."""
        self.get_logger().warning(reason, throttle_duration_sec=2.0)
        self.held, self.message = True, reason
        self.drop_chunks()

    def drop_chunks(self) -> None:
        """Drop the running chunk and whatever is in flight (lock held)."""
        self.chunks.clear()
        self.waiting_tick = None
        self.generation += 1

    def on_episode_event(self, msg: EpisodeEvent) -> None:
        if msg.event not in (EpisodeEvent.EVENT_START, EpisodeEvent.EVENT_END):
            return
        start = msg.event == EpisodeEvent.EVENT_START
        with self._lock:
            # A plugin is the only policy this robot runs: an episode scheduled to run a version of the built-in's
            # would wait for a load that never comes.
            scheduled = "" if self.config.policy_class else msg.policy_version
            self.swapped(self.swaps.episode_event(start, scheduled, time.monotonic()))
            if self.swaps.awaited == scheduled and start and scheduled:
                self.get_logger().info(f"the episode is scheduled to run {msg.policy_version}: waiting for it to "
                                       "be loaded")  # fmt: skip
            self.drop_chunks()
            self.episode_active = start
            if self.episode_active:
                self.instruction, self.episode_start_ns = msg.instruction, stamp_ns(msg)
                if self.policy is not None:
                    self.policy.reset()
            # Observations and events come on different topics, in either order. The newest observation may be
            # unanswered: it came first (an episode's first state before its START), or the answer it waited for
            # was just dropped with the old generation (an episode's last state, before its END). Answer it now,
            # in the new context; one already answered is not answered twice (lockstep pairs states and answers).
            if self.latest is None or self.latest_ns <= self.answered_ns:
                return
            if self.episode_active:
                in_context = self.latest_ns >= self.episode_start_ns
            else:
                in_context = self.config.act_between_episodes
            if in_context:
                self.tick(self.latest_ns)

    # -- inference (its own thread) --------------------------------------------------------------------------

    def infer_loop(self) -> None:
        while not self._stop.is_set():
            try:
                policy, obs, noise, prefix, stamp, generation = self._requests.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                result = policy.infer(obs, noise) if prefix is None else policy.infer(obs, noise, prefix)
                del policy  # a replaced policy is released by the control path, between two ticks
            except Exception as err:  # a policy that fails must not move the robot: hold and say why
                reason = f"inference failed, holding: {type(err).__name__}: {err}"
                self.get_logger().error(reason)
                with self._lock:
                    self.inflight = False
                    self.state, self.message = PolicyState.ERROR, reason
                    self.drop_chunks()
                continue
            with self._lock:
                self.inflight = False
                if generation != self.generation:  # computed for an episode or a state of the sensors that is over
                    if self.waiting_tick is not None:
                        self.request_chunk()  # a tick of the new one waits: it was not asked while this ran
                    continue
                self.chunks.add(result.actions, stamp)
                self.latencies.append(result.latency_ms)
                self.sequence += 1
                self.publish_chunk(result.actions, stamp, result.version)
                if self.waiting_tick is not None:
                    tick, self.waiting_tick = self.waiting_tick, None
                    self.command(tick)

    def publish_chunk(self, actions: np.ndarray, stamp: int, version: str) -> None:
        cfg = self.config
        msg = ActionChunk(
            names=list(cfg.action_names),
            horizon=actions.shape[0],
            action_dim=actions.shape[1],
            actions=actions.astype(np.float32).ravel().tolist(),
            step_period=1.0 / cfg.control_hz,
            policy_version=version,
            rollout_stage=self.stages.get(version, ""),
            sequence=self.sequence,
        )
        msg.header.stamp = Time(nanoseconds=stamp).to_msg()
        msg.header.frame_id = cfg.marker_frame
        self.chunk_pub.publish(msg)
        if not self.marker_pub.get_subscription_count():
            return  # building markers costs a millisecond of Python: only for someone watching (rviz)
        markers = trajectory_markers(actions, cfg.action_names, cfg.marker_frame, cfg.marker_step_m,
                                     msg.header.stamp, self.get_namespace().strip("/") or "policy")  # fmt: skip
        if markers.markers:
            self.marker_pub.publish(markers)

    # -- hot-swap ----------------------------------------------------------------------------------------------

    def load(self, path: str, sha256: str = "", version: str = "") -> ChunkPolicy:
        """Load, check and warm a policy on the calling thread; ValueError says why it is refused."""
        cfg = self.config
        if hasattr(os, "setpriority"):  # Linux: a thread's own nice value; loading must not starve control ticks
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
        with self._lock:
            example = self.latest
        policy = load_policy(path, len(cfg.action_names), example, sha256, cfg.engine_cache_dir or None, cfg.seed,
                             cfg.advantage_conditioned, cfg.inference_threads, runtime_order=cfg.runtime_order,
                             log=self.get_logger().info)  # fmt: skip
        if version and policy.version != version:
            raise ValueError(f"{path}: holds version {policy.version!r}, the request names {version!r}")
        if cfg.execution == "rtc" and not policy.rtc_max_prefix:
            self.get_logger().warning(f"execution: rtc, but {policy.version} was not trained to take the actions "
                                      "that run first (model rtc_max_prefix 0): its chunks take over as they come")
        return policy

    def make_plugin(self) -> PluginPolicy:
        """The robot's own policy class, made from its config (checked when the config was read); a ValueError says
        why not."""
        cfg = self.config
        policy = make_plugin(import_policy_class(cfg.policy_class), cfg.policy_args, len(cfg.action_names))
        self.get_logger().info(f"running your own policy {cfg.policy_class} ({policy.version})")
        return policy

    def load_at_start(self) -> None:
        try:
            policy = self.make_plugin() if self.config.policy_class else self.load(self.config.policy_path)
        except ValueError as err:
            with self._lock:
                self.message = f"refused {err}"
            self.get_logger().error(f"refused the configured policy: {err}")
            return
        with self._lock:
            self.swapped(self.swaps.loaded(policy, immediate=True, episode_active=self.episode_active)[1])

    def swapped(self, change: Swapped[ChunkPolicy] | None) -> None:
        """A new policy runs (lock held): ready, and said so."""
        if change is None:
            return
        self.state, self.message = PolicyState.READY, ""
        old = change.old.version if change.old else "none"
        self.get_logger().info(f"policy {change.new.version} ({change.new.backend}) replaces {old}")

    async def on_load(self, request: LoadPolicy.Request, response: LoadPolicy.Response) -> LoadPolicy.Response:
        done = Future()
        with self._lock:
            busy = self.loading
            held = [p.version for p in (self.policy, self.swaps.pending) if p is not None]
            restaged = bool(request.version) and request.version in held and not self.config.policy_class
            if restaged:  # a version this node holds changed stage (a canary promoted): nothing to load
                self.stages[request.version] = request.rollout_stage
            elif not busy and not self.config.policy_class:
                self.loading = request.path
        if restaged:
            response.accepted = True
            response.message = f"{request.version} holds; its rollout stage is now {request.rollout_stage or 'none'}"
        elif self.config.policy_class:
            response.accepted, response.message = False, (
                f"refused: this robot runs its own policy class {self.config.policy_class}; policy/load swaps the "
                "built-in policy's weights only (empty policy_class to run the built-in)")
        elif busy:
            response.accepted, response.message = False, f"busy: still loading {busy}"
        else:
            threading.Thread(target=self.load_for, args=(request, done), name="policy_load", daemon=True).start()
            policy, error = await done  # the executor resumes this when the loader's trigger wakes it
            with self._lock:
                self.loading = ""
                if error:
                    response.accepted, response.message = False, f"refused: {error}"
                    self.message = response.message
                else:
                    takeover, change = self.swaps.loaded(policy, request.immediate, self.episode_active)
                    kept = {p.version for p in (self.policy, self.swaps.pending, *self.swaps.recent.values()) if p}
                    self.stages = {v: stage for v, stage in self.stages.items() if v in kept}
                    self.stages[policy.version] = request.rollout_stage
                    self.swapped(change)
                    response.accepted, response.message = True, takeover.describe(policy.version)
                    if takeover == Takeover.SCHEDULED_NOW and self.waiting_tick is not None:  # its tick waited
                        tick, self.waiting_tick = self.waiting_tick, None
                        self.tick(tick)
        with self._lock:
            response.running_version = self.policy.version if self.policy else ""
        if response.accepted:  # one call site per severity: rclpy refuses a call site whose severity changes
            self.get_logger().info(f"load {request.path}: {response.message}")
        else:
            self.get_logger().error(f"load {request.path}: {response.message}")
        return response

    def load_for(self, request: LoadPolicy.Request, done: Future) -> None:
        return_free_memory()  # what the policies retired since the last load freed, before a new one is built
        try:
            done.set_result((self.load(request.path, request.sha256, request.version), ""))
        except ValueError as err:
            done.set_result((None, str(err)))
        with self._lock:  # a load can outlive the node (a robot stopping): then nothing is left to wake
            if not self._stop.is_set():
                self._wake.trigger()

    # -- status ----------------------------------------------------------------------------------------------

    def publish_status(self) -> None:
        with self._lock:
            latencies = np.array(self.latencies) if self.latencies else np.zeros(1)
            held = self.held and self.state == PolicyState.READY
            msg = PolicyStatus(
                state=PolicyState.HOLDING if held else self.state,
                version=self.policy.version if self.policy else "",
                backend=self.policy.backend if self.policy else "",
                pending_version=self.swaps.pending.version if self.swaps.pending else "",
                awaited_version=self.swaps.awaited,
                latency_last_ms=float(latencies[-1]),
                latency_p50_ms=float(np.percentile(latencies, 50)),
                latency_p99_ms=float(np.percentile(latencies, 99)),
                inferences=self.sequence,
                message=self.message,
            )
        msg.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(msg)

    def destroy_node(self) -> None:
        with self._lock:
            self._stop.set()
        self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
