"""What runs on one robot: its identity and the nodes it starts, each with its ROS parameters.

Each node's section in the YAML is that node's config dataclass below; its fields are the node's ROS
parameters (declared from the dataclass, so defaults and rules live in one place).
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from sop_ros.configs import ConfigError, require
from sop_ros.configs.bridge import BridgeConfig
from sop_ros.configs.model import ModelConfig

# Kept free of Meta-World imports so that a robot config is validated in milliseconds.
from sop_ros.configs.tasks import CAMERAS, MT50

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SimRobotConfig:
    """The simulated robot driver: a Meta-World task behind the topics a real robot publishes."""

    task: str = "reach-v3"
    seed: int = 0
    control_hz: float = 30.0
    episodes: int = 0  # stop after this many episodes; 0 runs until shut down
    max_episode_steps: int = 150
    cameras: tuple[str, ...] = ("corner", "gripperPOV")
    image_width: int = 96
    image_height: int = 96
    camera_hz: float = 10.0
    image_transport: Literal["raw", "compressed", "both"] = "compressed"
    jpeg_quality: int = 90
    command_timeout_s: float = 0.5  # no command for this long: the arm holds still
    command_interface: Literal["float64_multi_array", "joint_trajectory"] = "float64_multi_array"
    # realtime: steps at control_hz of wall time with the latest command, as a real robot would.
    # lockstep: steps as soon as the command answering the last state arrives (or command_timeout_s passes), so
    # results do not depend on how fast the host is; the clock still advances 1/control_hz per step.
    step_mode: Literal["realtime", "lockstep"] = "realtime"
    # Lockstep waits this long for the command answering a state before it steps on a hold (and says so): the
    # loop runs at the pace of its slowest participant, so a slow start does not change what happens.
    lockstep_timeout_s: float = 30.0
    # After an episode's end nothing steps on the answer to its last state: lockstep waits for it only this long,
    # so that a late one is not taken for the next episode's first answer. It may never come: an operator's
    # answer that arrives after the end is dropped (the takeover ends with the episode), and the policy's came
    # while the operator was in control.
    lockstep_end_timeout_s: float = 2.0
    publish_clock: bool = True
    # Nodes of this robot (names in its namespace) that must be up, and subscribed to its episode events,
    # before the first episode starts: else their first episode is half missing. `sop robot` and the launch
    # files fill in the robot's other nodes.
    wait_for_nodes: tuple[str, ...] = ()
    ready_timeout_s: float = 60.0
    # Sim-time pacing for experiments (sop_ros/bridge/pace.py): the learner's Zenoh endpoint. The clock then is
    # fleet time, and each step waits until the learner's budget of steps per simulated minute allows it.
    pace_connect: str = ""
    # The task's goal as the cameras show it: Meta-World draws reach's goal as a 2 cm sphere, a few pixels of a
    # 64-pixel policy input. A radius > 0 redraws every target site of the task (its goal, or goals) that big, in
    # goal_marker_rgba (empty: Meta-World's own colour). Only the picture changes: success is Meta-World's.
    goal_marker_radius_m: float = 0.0
    goal_marker_rgba: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        require(self.task in MT50, "task", self.task, "must be a Meta-World MT50 task, e.g. 'pick-place-v3'")
        require(self.control_hz > 0, "control_hz", self.control_hz, "must be > 0")
        require(self.episodes >= 0, "episodes", self.episodes, "must be >= 0 (0: run until shut down)")
        require(
            0 < self.max_episode_steps <= 500,
            "max_episode_steps",
            self.max_episode_steps,
            "must be in 1..500 (Meta-World's limit)",
        )
        for i, cam in enumerate(self.cameras):
            require(cam in CAMERAS, f"cameras[{i}]", cam, f"must be one of {', '.join(CAMERAS)}")
        require(len(set(self.cameras)) == len(self.cameras), "cameras", self.cameras, "must not repeat")
        require(16 <= self.image_width <= 1920, "image_width", self.image_width, "must be in 16..1920")
        require(16 <= self.image_height <= 1080, "image_height", self.image_height, "must be in 16..1080")
        require(
            0 < self.camera_hz <= self.control_hz,
            "camera_hz",
            self.camera_hz,
            f"must be > 0 and <= control_hz ({self.control_hz})",
        )
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", self.jpeg_quality, "must be in 1..100")
        require(self.command_timeout_s > 0, "command_timeout_s", self.command_timeout_s, "must be > 0")
        require(self.ready_timeout_s > 0, "ready_timeout_s", self.ready_timeout_s, "must be > 0")
        require(self.lockstep_timeout_s > 0, "lockstep_timeout_s", self.lockstep_timeout_s, "must be > 0")
        require(0 < self.lockstep_end_timeout_s <= self.lockstep_timeout_s, "lockstep_end_timeout_s",
                self.lockstep_end_timeout_s, f"must be > 0 and <= lockstep_timeout_s ({self.lockstep_timeout_s:g})")
        require(not self.pace_connect or self.step_mode == "lockstep", "pace_connect", self.pace_connect,
                "needs step_mode: lockstep (a paced clock cannot keep wall time)")  # fmt: skip
        require(0 <= self.goal_marker_radius_m <= 0.1, "goal_marker_radius_m", self.goal_marker_radius_m,
                "must be in 0..0.1 m (0: Meta-World's own goal sites)")  # fmt: skip
        require(len(self.goal_marker_rgba) in (0, 4) and all(0 <= c <= 1 for c in self.goal_marker_rgba),
                "goal_marker_rgba", self.goal_marker_rgba, "must be [] or 4 values in 0..1 (red, green, blue, alpha)")

    @property
    def camera_every_steps(self) -> int:
        """The cameras capture every this many control steps: camera_hz rounded to a whole divisor of control_hz."""
        return max(1, round(self.control_hz / self.camera_hz))

    @property
    def frame_hz(self) -> float:
        """The rate the cameras actually run at (camera_hz, unless it does not divide control_hz)."""
        return self.control_hz / self.camera_every_steps


@dataclass(frozen=True)
class TeleopArbiterConfig:
    """The only writer of the robot command: policy or operator, clamped and rate-limited."""

    # Applied at once when set on a running node (`ros2 param set`); the others are read-only.
    LIVE: ClassVar[frozenset[str]] = frozenset({"action_min", "action_max", "max_rate", "hold_keeps_last",
                                                "policy_timeout_s", "operator_timeout_s",
                                                "end_takeover_with_episode"})  # fmt: skip

    action_names: tuple[str, ...] = ("x", "y", "z", "gripper")
    action_min: tuple[float, ...] = (-1.0, -1.0, -1.0, -1.0)
    action_max: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    max_rate: tuple[float, ...] = (60.0, 60.0, 60.0, 120.0)  # largest change per second, per dimension
    # While held (stale inputs), dimensions marked true keep their last value (e.g. keep the gripper
    # closed on an object); the others command zero (no motion for delta/velocity interfaces).
    hold_keeps_last: tuple[bool, ...] = (False, False, False, True)
    # The robot's command rate: the stale-input watchdog runs at it (publishing the hold command), and each
    # command may change by at most max_rate / control_hz.
    control_hz: float = 30.0
    policy_timeout_s: float = 0.5
    operator_timeout_s: float = 0.3  # operators send only while their deadman is held
    # Name recorded for commands on teleop/operator_command (keyboard node, scripted operator, custom devices).
    operator_device: str = "teleop"
    # true: a takeover ends with its episode (operator commands are dropped from the episode's end until the
    # policy has driven the next for operator_timeout_s), so every episode starts with the policy; needed on a
    # lockstep simulator, whose clock stands still until the robot is commanded, when an intervening operator
    # lets go at the end.
    end_takeover_with_episode: bool = False
    state_hz: float = 5.0
    command_interface: Literal["float64_multi_array", "joint_trajectory"] = "float64_multi_array"
    # sensor_msgs/Joy on `joy` (Xbox layout by default). The deadman must be held for the operator to command;
    # pressing takeover while holding it takes control until the deadman is released. Buttons < 0: unused.
    joy_deadman_button: int = 4  # LB
    joy_takeover_button: int = 0  # A
    joy_axes: tuple[int, ...] = (1, 0, 4, 5)  # one axis per action name
    joy_axis_scale: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    joy_success_button: int = 3  # Y
    joy_failure_button: int = 1  # B
    joy_abort_button: int = 2  # X
    # sensor_msgs/JointState of a leader arm on `teleop/leader_joint_states`: the named joints' positions are
    # the command, in action_names order (joint-space robots). Empty: no leader arm.
    leader_joint_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.action_names)
        require(n > 0, "action_names", self.action_names, "must name at least one dimension")
        for key in ("action_min", "action_max", "max_rate", "hold_keeps_last"):
            value = getattr(self, key)
            require(len(value) == n, key, value, f"must have one entry per action name ({n})")
        for i, (lo, hi) in enumerate(zip(self.action_min, self.action_max, strict=True)):
            require(lo < hi, f"action_max[{i}]", hi, f"must be > action_min[{i}] ({lo})")
        require(all(r > 0 for r in self.max_rate), "max_rate", self.max_rate, "every entry must be > 0")
        require(self.control_hz > 0, "control_hz", self.control_hz, "must be > 0")
        require(self.policy_timeout_s > 0, "policy_timeout_s", self.policy_timeout_s, "must be > 0")
        require(self.operator_timeout_s > 0, "operator_timeout_s", self.operator_timeout_s, "must be > 0")
        require(self.state_hz > 0, "state_hz", self.state_hz, "must be > 0")
        require(len(self.joy_axes) == n, "joy_axes", self.joy_axes, f"must have one axis per action name ({n})")
        require(len(self.joy_axis_scale) == n, "joy_axis_scale", self.joy_axis_scale, f"must have {n} entries")
        require(all(a >= 0 for a in self.joy_axes), "joy_axes", self.joy_axes, "axis indices must be >= 0")
        require(self.joy_deadman_button >= 0, "joy_deadman_button", self.joy_deadman_button,
                "must be a button index >= 0: the operator can only command while it is held")  # fmt: skip
        buttons = {k: getattr(self, k) for k in ("joy_deadman_button", "joy_takeover_button", "joy_success_button",
                                                 "joy_failure_button", "joy_abort_button")}  # fmt: skip
        used = [b for b in buttons.values() if b >= 0]
        require(len(used) == len(set(used)), "joy_*_button", buttons, "each button index may serve one purpose")
        require(len(self.leader_joint_names) in (0, n), "leader_joint_names", self.leader_joint_names,
                f"must be empty or name one joint per action name ({n})")  # fmt: skip


@dataclass(frozen=True)
class ScriptedOperatorConfig:
    """An operator played by Meta-World's scripted expert, driving through the teleop path."""

    # demo: in control for whole episodes (demonstrations). intervene: watches the policy drive and takes over,
    # as an HG-DAgger expert, when it stalls, heads elsewhere than the expert would, or runs past a step budget;
    # then keeps control until the episode ends.
    mode: Literal["demo", "intervene"] = "demo"
    device: str = "scripted_expert"
    task: str = "reach-v3"
    stall_steps: int = 15  # the hand moved less than stall_distance_m over this many steps
    stall_distance_m: float = 0.005
    # Heading elsewhere: the mean cosine between the executed and the expert's xyz commands, over the last
    # drift_window steps in which both move, below drift_min_cosine (-0.5: on average more than 120 degrees off,
    # moving away; a policy that takes another path than the expert's, as one that will succeed often does,
    # averages near 0).
    drift_window: int = 20
    drift_min_cosine: float = -0.5
    time_budget_steps: int = 120  # no success by then: take over
    # On taking over a task in back_off_tasks (empty: every task), first lift the hand back_off_m straight up,
    # then let the expert drive, as a person backs off before approaching again. Meta-World's door expert drops
    # straight onto the handle from wherever it is: from behind it, where a failing policy often leaves the hand,
    # it pushes the door shut and stays stuck (docs/results/operator_back_off.md).
    back_off_m: float = 0.0
    back_off_tasks: tuple[str, ...] = ()
    # While it drives, the operator lifts the hand at most this far above where it took over (0: as high as the
    # expert goes). Meta-World's experts re-approach from 20 cm above their target whenever they are ~2 cm off it
    # in the plane; a person correcting a near miss lifts only as far as clears the object. A task that backs off
    # is not capped (its back-off is the lift it needs).
    lift_cap_m: float = 0.0
    label_outcomes: bool = True  # label every episode at its end, through the arbiter's label service

    def __post_init__(self) -> None:
        require(self.task in MT50, "task", self.task, "must be a Meta-World MT50 task")
        require(bool(self.device), "device", self.device, "must name the input device")
        require(self.stall_steps >= 2, "stall_steps", self.stall_steps, "must be >= 2")
        require(self.stall_distance_m >= 0, "stall_distance_m", self.stall_distance_m, "must be >= 0")
        require(self.drift_window >= 1, "drift_window", self.drift_window, "must be >= 1")
        require(-1.0 <= self.drift_min_cosine <= 1.0, "drift_min_cosine", self.drift_min_cosine, "must be in [-1, 1]")
        require(self.time_budget_steps >= 1, "time_budget_steps", self.time_budget_steps, "must be >= 1")
        require(0 <= self.back_off_m <= 0.3, "back_off_m", self.back_off_m, "must be in 0..0.3 m (0: none)")
        require(0 <= self.lift_cap_m <= 0.3, "lift_cap_m", self.lift_cap_m, "must be in 0..0.3 m (0: no cap)")
        for i, task in enumerate(self.back_off_tasks):
            require(task in MT50, f"back_off_tasks[{i}]", task, "must be a Meta-World MT50 task")

    @property
    def back_off_lift_m(self) -> float:
        """How far this operator lifts the hand on taking over its task (0: it does not)."""
        return self.back_off_m if not self.back_off_tasks or self.task in self.back_off_tasks else 0.0

    @property
    def task_lift_cap_m(self) -> float:
        """How far above the takeover point this operator lets the hand rise on its task (0: no cap)."""
        return 0.0 if self.back_off_lift_m > 0 else self.lift_cap_m


@dataclass(frozen=True)
class RecorderConfig:
    """One crash-safe MCAP file per episode, in <output_dir>/<robot id>/ (the bridge's outbox)."""

    output_dir: str = "runs/episodes"
    cameras: tuple[str, ...] = ("corner", "gripperPOV")
    camera_transport: Literal["compressed", "raw"] = "compressed"
    command_interface: Literal["float64_multi_array", "joint_trajectory"] = "float64_multi_array"
    record_policy_chunks: bool = True
    compression: Literal["zstd", "lz4", "none"] = "zstd"
    chunk_size_bytes: int = 1 << 20
    flush_period_s: float = 1.0  # a crash loses at most this much of an episode
    label_grace_s: float = 2.0  # an ended episode's file stays open this long for the operator's label
    # Recorded topics (relative) that must each have a publisher connected before the recorder listens for
    # episodes. A simulated robot waits for that listener before its first episode, so none starts with a stream
    # still unconnected (its first steps would be missing). `sop robot` and the launch files fill in those of the
    # robot's own nodes; after connect_timeout_s the recorder listens anyway, naming what it lacks.
    wait_for_publishers: tuple[str, ...] = ()
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        require(bool(self.output_dir), "output_dir", self.output_dir, "must name a directory")
        require(len(set(self.cameras)) == len(self.cameras), "cameras", self.cameras, "must not repeat")
        require(self.chunk_size_bytes >= 4096, "chunk_size_bytes", self.chunk_size_bytes, "must be >= 4096")
        require(self.flush_period_s > 0, "flush_period_s", self.flush_period_s, "must be > 0")
        require(self.label_grace_s >= 0, "label_grace_s", self.label_grace_s, "must be >= 0")
        require(self.connect_timeout_s > 0, "connect_timeout_s", self.connect_timeout_s, "must be > 0")


@dataclass(frozen=True)
class IngestConfig:
    """Camera frames and joint states -> synchronised, preprocessed observations for the policy."""

    cameras: tuple[str, ...] = ("corner", "gripperPOV")  # the policy's camera order
    camera_transport: Literal["compressed", "raw"] = "compressed"
    image_size: int = ModelConfig.image_size  # square model input after resizing, pixels: the policy's
    joint_names: tuple[str, ...] = ()  # proprioception, in this order; empty: every joint, in message order
    # Per joint state, each camera's newest frame stamped at or before it (as the learner pairs them). A frame
    # due by the camera's own rate but not here yet is waited for up to sync_timeout_s (wall time).
    sync_timeout_s: float = 0.05
    # The cameras' frame rate when it is known exactly (a simulator's); 0: estimated from the frames' stamps.
    camera_hz: float = 0.0
    # Stale-sensor guard: a frame older than this relative to the joint state, or a joint state this much older
    # than the clock, makes the observation invalid, and the policy holds.
    max_sensor_age_s: float = 0.5

    def __post_init__(self) -> None:
        require(bool(self.cameras), "cameras", self.cameras, "must name at least one camera")
        require(len(set(self.cameras)) == len(self.cameras), "cameras", self.cameras, "must not repeat")
        require(16 <= self.image_size <= 1024, "image_size", self.image_size, "must be in 16..1024")
        require(len(set(self.joint_names)) == len(self.joint_names), "joint_names", self.joint_names,
                "must not repeat")  # fmt: skip
        require(self.sync_timeout_s >= 0, "sync_timeout_s", self.sync_timeout_s, "must be >= 0")
        require(self.camera_hz >= 0, "camera_hz", self.camera_hz, "must be >= 0 (0: estimated)")
        require(self.max_sensor_age_s > 0, "max_sensor_age_s", self.max_sensor_age_s, "must be > 0")


# How a robot may run its policy (sop_ros/model/runtime.py), best first when not measured: TensorRT, CUDA replaying
# the inference step as a CUDA graph, CUDA, the CPU.
RUNTIME_KINDS = ("tensorrt", "cuda-graph", "cuda", "cpu")


POLICY_CLASS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def import_policy_class(spec: str, key: str = "policy_class") -> type:
    """The class `spec` ("package.module:Class") names, importable from this Python and with the policy contract's
    `infer` and `reset` (sop_ros/model/plugin.py); a ConfigError naming `key` says what is wrong."""
    require(bool(POLICY_CLASS.match(spec)), key, spec, "must be 'package.module:Class' (a module path, a colon, "
            "a class name)")  # fmt: skip
    module_name, class_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the module's own import errors too: all say the same, it cannot be used
        raise ConfigError(f"{key}={spec!r}: module {module_name!r} cannot be imported by this Python "
                          f"({type(err).__name__}: {err}); is its package installed or on PYTHONPATH?") from None
    cls = getattr(module, class_name, None)
    require(inspect.isclass(cls), key, spec, f"module {module_name!r} has no class {class_name!r}")
    missing = [name for name in ("infer", "reset") if not callable(getattr(cls, name, None))]
    require(not missing, key, spec, f"class {class_name} lacks {' and '.join(missing)}: a policy has infer(obs) "
            "and reset() (sop_ros/model/plugin.py)")  # fmt: skip
    return cls


@dataclass(frozen=True)
class PolicyConfig:
    """The VLA on the robot: inference off the control path, chunk execution, status, hot-swap."""

    # Applied from the next control tick (or load) when set on a running node; the others are read-only.
    LIVE: ClassVar[frozenset[str]] = frozenset({"replan_steps", "wait_for_chunk", "swap_at", "act_between_episodes",
                                                "scheduled_policy_wait_s", "marker_step_m"})  # fmt: skip

    policy_path: str = ""  # .onnx (ONNX Runtime) or .pt (torch); empty: wait for policy/load
    # Your own policy instead of the built-in: "package.module:Class", importable by the robot's Python, with
    # infer(obs) and reset() (sop_ros/model/plugin.py), made as Class(**policy_args) when the node starts. The
    # policy/load service (hot-swap of signed weights) then refuses: it loads the built-in's weights only.
    # E.g. "sop_ros.model.remote_policy:WebsocketPolicy", an openpi policy server: {host: 127.0.0.1, port: 8000}.
    policy_class: str = ""
    policy_args: dict[str, Any] = field(default_factory=dict)
    engine_cache_dir: str = ""  # TensorRT engines built once per robot and model; empty: no cache
    # How to run the policy: empty, every runtime this robot has (tensorrt, cuda-graph, cuda, cpu) is timed at
    # load and the lowest p99 runs; else the first of these that starts, untimed.
    runtime_order: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ("x", "y", "z", "gripper")  # must match the policy's action space
    control_hz: float = 30.0  # the chunk's step period is 1/control_hz
    # Start the next inference after this many steps of the current chunk (one observation in flight).
    replan_steps: int = 8
    # blend: a new chunk takes over linearly within blend_steps; ensemble: every chunk covering a step votes,
    # older ones weighted by exp(-ensemble_decay * age in chunks) (as ACT); rtc: real-time chunking, for policies
    # trained for it (model rtc_max_prefix > 0): each chunk is computed from the actions that will run while it is
    # computed, and takes over from them at once (sop_ros/robot/chunks.py).
    execution: Literal["blend", "ensemble", "rtc"] = "blend"
    blend_steps: int = 4
    ensemble_decay: float = 0.1
    # rtc: how many actions run while a chunk is computed (its given prefix); 0: from the measured inference
    # latency (its median, in control periods, rounded up).
    rtc_prefix_steps: int = 0
    # true: a tick that needs a new chunk waits for it (lockstep simulators, evaluation: results then do not
    # depend on the host's speed); false: the running chunk goes on while the next one is computed.
    wait_for_chunk: bool = False
    # episode_boundary: a verified new policy takes over when the next episode starts (as the published
    # system); immediate: as soon as it is warm.
    swap_at: Literal["episode_boundary", "immediate"] = "episode_boundary"
    # Lockstep simulators wait for an answer to every state, also before the first episode: answer those too.
    act_between_episodes: bool = False
    # An episode whose START names its policy (a paced simulator) waits this long for a version not yet loaded,
    # then runs the one it has, and says so.
    scheduled_policy_wait_s: float = 20.0
    advantage_conditioned: bool = False  # RECAP policies: ask for the positive-advantage behaviour
    seed: int = 0
    inference_threads: int = 0  # ONNX Runtime intra-op threads (0: its default)
    status_hz: float = 2.0
    marker_frame: str = "end_effector"  # the predicted trajectory is drawn from here
    marker_step_m: float = 0.01  # metres per unit of an xyz action (Meta-World: 1 cm)

    def __post_init__(self) -> None:
        require(bool(self.action_names), "action_names", self.action_names, "must name at least one dimension")
        require(self.control_hz > 0, "control_hz", self.control_hz, "must be > 0")
        require(self.replan_steps >= 1, "replan_steps", self.replan_steps, "must be >= 1")
        require(self.blend_steps >= 0, "blend_steps", self.blend_steps, "must be >= 0")
        require(self.rtc_prefix_steps >= 0, "rtc_prefix_steps", self.rtc_prefix_steps, "must be >= 0 (0: measured)")
        require(self.ensemble_decay >= 0, "ensemble_decay", self.ensemble_decay, "must be >= 0")
        require(self.inference_threads >= 0, "inference_threads", self.inference_threads, "must be >= 0")
        for i, kind in enumerate(self.runtime_order):
            require(kind in RUNTIME_KINDS, f"runtime_order[{i}]", kind, f"must be one of {', '.join(RUNTIME_KINDS)}")
        require(self.status_hz > 0, "status_hz", self.status_hz, "must be > 0")
        require(self.scheduled_policy_wait_s >= 0, "scheduled_policy_wait_s", self.scheduled_policy_wait_s,
                "must be >= 0")  # fmt: skip
        require(self.marker_step_m > 0, "marker_step_m", self.marker_step_m, "must be > 0")
        require(not self.policy_args or bool(self.policy_class), "policy_args", self.policy_args,
                "must be empty unless policy_class names your own policy")  # fmt: skip
        if self.policy_class:
            require(not self.policy_path, "policy_path", self.policy_path, f"must be empty with policy_class "
                    f"({self.policy_class!r}): it is the built-in policy's file")  # fmt: skip
            cls = import_policy_class(self.policy_class)
            try:
                inspect.signature(cls).bind(**self.policy_args)
            except TypeError as err:
                raise ConfigError(f"policy_args={self.policy_args!r}: do not fit {self.policy_class}: {err}") from None
            except ValueError:  # no signature to read (a class implemented in C): it is checked when made
                pass


def _check_camera_reader(node: str, cameras: tuple[str, ...], transport: str, sim: SimRobotConfig) -> None:
    """A node that reads the simulated robot's cameras must ask for ones it publishes, as it publishes them."""
    for i, cam in enumerate(cameras):
        require(
            cam in sim.cameras, f"{node}.cameras[{i}]", cam, f"must be one of sim_robot.cameras {list(sim.cameras)}"
        )
    published = {"raw": ("raw", "both"), "compressed": ("compressed", "both")}[transport]
    require(sim.image_transport in published, f"{node}.camera_transport", transport,
            f"sim_robot publishes {sim.image_transport!r} images")  # fmt: skip


@dataclass(frozen=True)
class NodesConfig:
    """The nodes a robot starts; a node whose section is absent is not started."""

    sim_robot: SimRobotConfig | None = None
    teleop_arbiter: TeleopArbiterConfig | None = None
    scripted_operator: ScriptedOperatorConfig | None = None
    ingest: IngestConfig | None = None
    policy: PolicyConfig | None = None
    recorder: RecorderConfig | None = None
    bridge: BridgeConfig | None = None

    def __post_init__(self) -> None:
        for name in ("recorder", "ingest"):
            reader = getattr(self, name)
            if self.sim_robot and reader:
                _check_camera_reader(name, reader.cameras, reader.camera_transport, self.sim_robot)
        if self.sim_robot and self.teleop_arbiter:
            require(self.teleop_arbiter.command_interface == self.sim_robot.command_interface,
                    "teleop_arbiter.command_interface", self.teleop_arbiter.command_interface,
                    f"must equal sim_robot.command_interface ({self.sim_robot.command_interface!r})")  # fmt: skip
        if self.sim_robot and self.scripted_operator:
            require(
                self.scripted_operator.task == self.sim_robot.task,
                "scripted_operator.task",
                self.scripted_operator.task,
                f"must equal sim_robot.task ({self.sim_robot.task!r})",
            )

        if self.sim_robot and self.policy and self.sim_robot.step_mode == "lockstep":
            # The policy must give up on a late scheduled policy before the simulator gives up on the policy:
            # else the simulator steps on a hold, and the result depends on how fast the host is.
            require(self.policy.scheduled_policy_wait_s < self.sim_robot.lockstep_timeout_s,
                    "policy.scheduled_policy_wait_s", self.policy.scheduled_policy_wait_s,
                    f"must be < sim_robot.lockstep_timeout_s ({self.sim_robot.lockstep_timeout_s:g})")  # fmt: skip
        if self.bridge and self.recorder:
            require(self.bridge.outbox_dir == self.recorder.output_dir, "bridge.outbox_dir", self.bridge.outbox_dir,
                    f"must equal recorder.output_dir ({self.recorder.output_dir!r}): its outbox")  # fmt: skip
        if self.policy and self.teleop_arbiter:
            require(self.policy.action_names == self.teleop_arbiter.action_names, "policy.action_names",
                    self.policy.action_names,
                    f"must equal teleop_arbiter.action_names {list(self.teleop_arbiter.action_names)}")  # fmt: skip

    def enabled(self) -> dict[str, object]:
        return {name: cfg for name, cfg in vars(self).items() if cfg is not None}

    def sim_ingest(self) -> IngestConfig:
        """The ingest node a simulated robot given a policy runs: this config's, else one reading every camera the
        simulator publishes."""
        return self.ingest or IngestConfig(cameras=self.sim_robot.cameras)


@dataclass(frozen=True)
class RobotConfig:
    """One robot: every node runs under the namespace /<id>."""

    id: str = "robot_0"
    use_sim_time: bool = False
    # Topic remappings applied to every node, e.g. {command: /arm_controller/commands}.
    remappings: dict[str, str] = field(default_factory=dict)
    # Where this robot's sim time comes from; several simulated robots on one host each need their own.
    clock_topic: str = "/clock"
    log_level: Literal["debug", "info", "warn", "error"] = "info"

    def __post_init__(self) -> None:
        require(bool(NAME.match(self.id)), "id", self.id, "must be a ROS name: a letter, then letters, digits, _")
        require(self.clock_topic.startswith("/"), "clock_topic", self.clock_topic, "must be an absolute topic name")


@dataclass(frozen=True)
class RobotLaunchConfig:
    """The whole YAML file given to `sop robot --config` and to launch/robot.launch.py."""

    robot: RobotConfig = field(default_factory=RobotConfig)
    nodes: NodesConfig = field(default_factory=NodesConfig)

    def __post_init__(self) -> None:
        require(bool(self.nodes.enabled()), "nodes", {}, "must start at least one node")
        if self.nodes.sim_robot and not self.robot.use_sim_time:
            # Sim time keeps recorded stamps and control periods tied to the simulator, not the host's speed.
            raise ConfigError("robot.use_sim_time=False: must be true when nodes.sim_robot runs")
