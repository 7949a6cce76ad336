"""Operator input devices turned into commands and labels. Plain Python, no ROS.

A device yields a command only while its operator holds control; the arbiter treats a fresh operator
command as a takeover, so devices never need to tell it "takeover" separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sop_ros.configs.robot import TeleopArbiterConfig

OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_ABORT = 1, 2, 3  # sop_ros/msg/EpisodeEvent OUTCOME_*


@dataclass(frozen=True)
class DeviceOutput:
    command: np.ndarray | None  # None: the operator is not in control
    label: int | None = None  # an outcome the operator just gave the episode


class JoyTeleop:
    """sensor_msgs/Joy: deadman + takeover button, one axis per action dimension, label buttons."""

    def __init__(self, config: TeleopArbiterConfig) -> None:
        self.config = config
        self.engaged = False
        self._previous: Sequence[int] = ()
        labels = {
            config.joy_success_button: OUTCOME_SUCCESS,
            config.joy_failure_button: OUTCOME_FAILURE,
            config.joy_abort_button: OUTCOME_ABORT,
        }
        self._labels = {button: outcome for button, outcome in labels.items() if button >= 0}

    def update(self, axes: Sequence[float], buttons: Sequence[int]) -> DeviceOutput:
        cfg = self.config
        needed_axes = max(cfg.joy_axes) + 1
        if len(axes) < needed_axes:
            raise ValueError(f"Joy message has {len(axes)} axes; joy_axes {list(cfg.joy_axes)} needs {needed_axes}")
        pressed = [self._rising(buttons, b) for b in range(len(buttons))]
        if not self._held(buttons, cfg.joy_deadman_button):
            self.engaged = False
        elif cfg.joy_takeover_button >= 0 and pressed[cfg.joy_takeover_button : cfg.joy_takeover_button + 1] == [True]:
            self.engaged = True
        label = next((outcome for b, outcome in self._labels.items() if b < len(pressed) and pressed[b]), None)
        self._previous = list(buttons)
        command = np.array([axes[a] * s for a, s in zip(cfg.joy_axes, cfg.joy_axis_scale, strict=True)])
        return DeviceOutput(command if self.engaged else None, label)

    def _rising(self, buttons: Sequence[int], index: int) -> bool:
        before = self._previous[index] if index < len(self._previous) else 0
        return bool(buttons[index]) and not before

    @staticmethod
    def _held(buttons: Sequence[int], index: int) -> bool:
        return 0 <= index < len(buttons) and bool(buttons[index])


def leader_arm_command(config: TeleopArbiterConfig, names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
    """A leader arm's joint positions, in action_names order; a missing joint is a clear error."""
    index = {name: i for i, name in enumerate(names)}
    missing = [n for n in config.leader_joint_names if n not in index]
    if missing:
        raise ValueError(f"leader arm JointState lacks joints {missing} (has {list(names)})")
    if len(positions) != len(names):
        raise ValueError(f"leader arm JointState has {len(names)} names but {len(positions)} positions")
    return np.array([positions[index[n]] for n in config.leader_joint_names], dtype=np.float64)


KEYBOARD_HELP = """keyboard teleop: space take over / release | w s: x+ x- | a d: y+ y- | r f: z+ z- | g: gripper
                 1: label success | 2: failure | 3: abort | q: quit"""
_KEY_AXES = {"w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0)}
_KEY_LABELS = {"1": OUTCOME_SUCCESS, "2": OUTCOME_FAILURE, "3": OUTCOME_ABORT}


class KeyboardTeleop:
    """Keys from a terminal: space toggles control; each motion key moves one step of `speed` for one period.

    Terminals repeat a held key, so a held key keeps the arm moving and a released one stops it.
    """

    def __init__(self, speed: float = 0.5) -> None:
        self.speed = speed
        self.engaged = False
        self.gripper = -1.0  # open
        self.quit = False
        self._motion = np.zeros(3)

    def press(self, key: str) -> int | None:
        """Apply one key; returns an outcome label when the key gives one."""
        if key == " ":
            self.engaged = not self.engaged
            self._motion[:] = 0.0
        elif key in _KEY_AXES and self.engaged:  # keys typed before a takeover must not move the arm later
            axis, sign = _KEY_AXES[key]
            self._motion[axis] = sign * self.speed
        elif key == "g":
            self.gripper = -self.gripper
        elif key == "q":
            self.quit, self.engaged = True, False
        return _KEY_LABELS.get(key)

    def command(self) -> np.ndarray | None:
        """The command for this period (None when not engaged); motion lasts one period per key press."""
        if not self.engaged:
            return None
        command = np.array([*self._motion, self.gripper])
        self._motion[:] = 0.0
        return command
