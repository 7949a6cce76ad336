"""A Meta-World task as a robot: reset, step with a 4-dim action, joint states, camera images, success.

Plain Python (no ROS), so the simulator's behaviour is tested on its own; sim_robot_node wraps it.
"""

from __future__ import annotations

import os

# Headless rendering on the CPU (Mesa); must be set before mujoco is imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import metaworld
import mujoco
import numpy as np

from sop_ros.configs.tasks import CAMERAS, pick_instruction

if TYPE_CHECKING:
    from sop_ros.configs.robot import SimRobotConfig

# Movable joints of the Sawyer in Meta-World's model, in the order of urdf/sawyer.urdf and JointState.
JOINT_NAMES = (
    "right_j0", "right_j1", "right_j2", "right_j3", "right_j4", "right_j5", "right_j6", "r_close", "l_close",
)  # fmt: skip
# Where the hand (end effector) position sits in Meta-World's 39-dim observation.
HAND_XYZ = slice(0, 3)
# End-effector xyz delta (scaled by Meta-World to 1 cm per unit) and gripper effort (-1 open, +1 close).
ACTION_NAMES = ("x", "y", "z", "gripper")
# sim/state: Meta-World's observation, then the command the simulator applied to reach it (NaN where none was:
# an episode's first state). One message: a scripted operator judges each state with the very command that led
# to it, never with a command on another topic that may arrive before or after the state.
APPLIED = slice(-len(ACTION_NAMES), None)
# These cameras' MJCF up vector points down: rotate their images by 180 degrees, as for a camera mounted
# upside down.
UPSIDE_DOWN_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})


def sim_state(observation: np.ndarray, applied: np.ndarray | None) -> list[float]:
    """The sim/state message's data: `observation`, then the command `applied` to reach it (None: none was)."""
    tail = np.full(len(ACTION_NAMES), np.nan) if applied is None else np.asarray(applied, dtype=np.float64)
    return np.concatenate([np.asarray(observation, dtype=np.float64), tail]).tolist()


def split_sim_state(data) -> tuple[np.ndarray, np.ndarray | None]:
    """A sim/state message's data as (observation, the command applied to reach it or None)."""
    data = np.asarray(data, dtype=np.float64)
    applied = data[APPLIED]
    return data[: APPLIED.start], None if np.isnan(applied).any() else applied


@dataclass(frozen=True)
class GoalMarker:
    """How the cameras draw the task's target sites: a sphere of this radius, in this colour (None: Meta-World's)."""

    radius_m: float
    rgba: tuple[float, float, float, float] | None = None


def goal_marker(config: SimRobotConfig) -> GoalMarker | None:
    """The marker a simulated robot's config asks for (None: Meta-World's own goal sites)."""
    if config.goal_marker_radius_m <= 0:
        return None
    return GoalMarker(config.goal_marker_radius_m, tuple(config.goal_marker_rgba) or None)


@dataclass(frozen=True)
class Episode:
    index: int
    task: str
    instruction: str
    variant: int  # which of Meta-World's 50 goal/object placements of the task


@dataclass(frozen=True)
class StepResult:
    state: np.ndarray  # Meta-World's full 39-dim observation (privileged: for scripted operators only)
    success: bool  # Meta-World's own success signal
    steps: int  # steps taken in this episode


class MetaWorldSim:
    """One Meta-World task; every episode draws a placement and an instruction from a seeded stream."""

    def __init__(self, task: str, seed: int, image_size: tuple[int, int] = (96, 96),
                 goal_marker: GoalMarker | None = None) -> None:  # fmt: skip
        benchmark = metaworld.MT1(task, seed=seed)
        self.task = task
        self._variants = benchmark.train_tasks
        self._env = benchmark.train_classes[task]()
        self._rng = random.Random(seed)
        self._seed = seed
        self._episodes = 0
        self._steps = 0
        self.episode: Episode | None = None
        model = self._env.model
        # No multisampling or shadows: they triple CPU rendering time and a policy does not need them.
        model.vis.quality.offsamples = 0
        height, width = image_size
        self._renderer = mujoco.Renderer(model, height, width)
        self._goal_marker = goal_marker
        self._qpos = np.array([model.joint(n).qposadr[0] for n in JOINT_NAMES])
        self._qvel = np.array([model.joint(n).dofadr[0] for n in JOINT_NAMES])

    @property
    def steps(self) -> int:
        """Steps taken in the current episode."""
        return self._steps

    @property
    def max_steps(self) -> int:
        """Meta-World's own episode limit: it refuses to step past this."""
        return int(self._env.max_path_length)

    def reset(self) -> tuple[Episode, np.ndarray]:
        variant = self._rng.randrange(len(self._variants))
        self._env.set_task(self._variants[variant])
        state, _ = self._env.reset(seed=self._seed + self._episodes)
        if self._goal_marker is not None:
            self._draw_goal_marker(self._goal_marker)
        self.episode = Episode(self._episodes, self.task, pick_instruction(self.task, self._rng), variant)
        self._episodes += 1
        self._steps = 0
        return self.episode, np.asarray(state, dtype=np.float64)

    def step(self, action: np.ndarray) -> StepResult:
        if self.episode is None:
            raise RuntimeError("MetaWorldSim.step before reset(): call reset() to start an episode")
        if self._steps >= self.max_steps:
            raise RuntimeError(f"episode already at Meta-World's limit of {self.max_steps} steps: reset()")
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        state, _, _, _, info = self._env.step(action)
        self._steps += 1
        return StepResult(np.asarray(state, dtype=np.float64), bool(info["success"]), self._steps)

    def target_sites(self) -> list[str]:
        """The sites where Meta-World shows the task's goal (none for tasks whose goal is a fixed part)."""
        # Meta-World's own list of the sites it moves to each episode's targets (a private but stable property).
        return [name for name, _ in self._env._target_site_config]

    def _draw_goal_marker(self, marker: GoalMarker) -> None:
        model = self._env.model
        for name in self.target_sites():
            site = model.site(name).id
            model.site_size[site] = marker.radius_m
            if marker.rgba is not None:
                model.site_rgba[site] = marker.rgba

    def joint_positions(self) -> np.ndarray:
        return self._env.data.qpos[self._qpos].copy()

    def joint_velocities(self) -> np.ndarray:
        return self._env.data.qvel[self._qvel].copy()

    def render(self, camera: str) -> np.ndarray:
        """An RGB image (height x width x 3, uint8) from the named MJCF camera."""
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; Meta-World's cameras: {', '.join(CAMERAS)}")
        self._renderer.update_scene(self._env.data, camera=camera)
        # Shadows, the table's reflection (a second pass over the scene) and the sky cost half of CPU rendering
        # time and show a policy nothing it needs.
        for flag in ("mjRND_SHADOW", "mjRND_REFLECTION", "mjRND_SKYBOX"):
            self._renderer.scene.flags[getattr(mujoco.mjtRndFlag, flag)] = 0
        image = self._renderer.render()
        return np.ascontiguousarray(image[::-1, ::-1]) if camera in UPSIDE_DOWN_CAMERAS else image

    def close(self) -> None:
        self._renderer.close()
        self._env.close()


def expert_for(task: str) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's scripted expert for `task`: full 39-dim state in, 4-dim action out."""
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[task]()
    return lambda state: np.clip(np.asarray(policy.get_action(state), dtype=np.float64), -1.0, 1.0)
