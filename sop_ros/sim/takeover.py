"""When a scripted operator takes over from the policy, as an HG-DAgger expert would, and how it starts. Plain
Python, no ROS.

Three signs that the policy is failing, each configurable: the hand stalls, the executed actions head
elsewhere than the expert's, or the episode runs past a step budget. Heading is compared by direction, not by
distance: the experts command saturated moves where a policy that will succeed moves slower the same way.
Having taken over, the operator may first back off (BackOff) before the expert drives, and may keep the hand
from rising more than a little above where it took over (LiftCap) while the expert re-approaches.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from sop_ros.configs.robot import ScriptedOperatorConfig

# Below this speed (action units: Meta-World's cm per step) a command has no direction to compare.
MIN_MOVE = 0.1
# Meta-World moves the hand at most this far per step (a full-scale command); a back-off that has not lifted
# the hand in twice the steps that takes is blocked and given up.
MAX_STEP_M = 0.01
REACHED_M = 0.01  # a back-off this close to its height is done


def heading_agreement(executed_xyz: np.ndarray, expert_xyz: np.ndarray) -> float | None:
    """Cosine of the angle between two xyz commands: 1 the same way, -1 opposite; None if either barely moves."""
    executed_norm, expert_norm = float(np.linalg.norm(executed_xyz)), float(np.linalg.norm(expert_xyz))
    if executed_norm < MIN_MOVE or expert_norm < MIN_MOVE:
        return None
    return float(np.dot(executed_xyz, expert_xyz)) / (executed_norm * expert_norm)


class TakeoverMonitor:
    def __init__(self, config: ScriptedOperatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self._hand: deque[np.ndarray] = deque(maxlen=self.config.stall_steps)
        self._heading: deque[float] = deque(maxlen=self.config.drift_window)

    def observe(self, hand_xyz: np.ndarray, executed: np.ndarray | None, expert: np.ndarray) -> str | None:
        """One control step: the hand position now, the last executed command and the expert's action.

        Returns why to take over, or None while the policy may go on.
        """
        cfg = self.config
        self.steps += 1
        self._hand.append(np.asarray(hand_xyz, dtype=np.float64))
        if executed is not None:
            agreement = heading_agreement(np.asarray(executed[:3]), np.asarray(expert[:3]))
            if agreement is not None:
                self._heading.append(agreement)
        if self.steps >= cfg.time_budget_steps:
            return f"no success within {cfg.time_budget_steps} steps"
        if len(self._hand) == cfg.stall_steps:
            moved = float(np.linalg.norm(self._hand[-1] - self._hand[0]))
            if moved < cfg.stall_distance_m:
                return f"stalled: the hand moved {moved * 1000:.1f} mm in {cfg.stall_steps} steps"
        if len(self._heading) == cfg.drift_window:
            agreement = float(np.mean(self._heading))
            if agreement < cfg.drift_min_cosine:
                return (f"heading elsewhere than the expert: mean cosine {agreement:.2f} over the last "
                        f"{cfg.drift_window} moving steps")  # fmt: skip
        return None


class BackOff:
    """Straight up by `lift_m` from where the hand is when the operator takes over, then the expert's commands."""

    def __init__(self, lift_m: float) -> None:
        self.lift_m = lift_m
        self.reset()

    def reset(self) -> None:
        self._until_z: float | None = None
        self._steps_left = 0

    def start(self, hand_xyz: np.ndarray) -> None:
        if self.lift_m > 0:
            self._until_z = float(hand_xyz[2]) + self.lift_m
            self._steps_left = 2 * int(np.ceil(self.lift_m / MAX_STEP_M))

    def command(self, hand_xyz: np.ndarray, expert: np.ndarray) -> np.ndarray:
        """What to command this step: up at full speed (the expert's gripper kept) while backing off."""
        if self._until_z is not None and hand_xyz[2] < self._until_z - REACHED_M and self._steps_left > 0:
            self._steps_left -= 1
            return np.array([0.0, 0.0, 1.0, *expert[3:]])
        self._until_z = None
        return expert


class LiftCap:
    """The expert's commands with no upward part once the hand is `cap_m` above where the operator took over (0:
    no cap): the expert's other motions go on at that height, and its descent is never held back."""

    def __init__(self, cap_m: float) -> None:
        self.cap_m = cap_m
        self.reset()

    def reset(self) -> None:
        self._ceiling_z: float | None = None

    def start(self, hand_xyz: np.ndarray) -> None:
        if self.cap_m > 0:
            self._ceiling_z = float(hand_xyz[2]) + self.cap_m

    def command(self, hand_xyz: np.ndarray, action: np.ndarray) -> np.ndarray:
        if self._ceiling_z is not None and hand_xyz[2] >= self._ceiling_z - 1e-6 and action[2] > 0:
            return np.array([action[0], action[1], 0.0, *action[3:]])
        return action


class Correction:
    """What the operator commands once it has taken over: the expert's action after its back-off and under its
    lift cap, as its config says for its task."""

    def __init__(self, config: ScriptedOperatorConfig) -> None:
        self.back_off = BackOff(config.back_off_lift_m)
        self.lift_cap = LiftCap(config.task_lift_cap_m)

    def reset(self) -> None:
        self.back_off.reset()
        self.lift_cap.reset()

    def start(self, hand_xyz: np.ndarray) -> None:
        self.back_off.start(hand_xyz)
        self.lift_cap.start(hand_xyz)

    def command(self, hand_xyz: np.ndarray, expert: np.ndarray) -> np.ndarray:
        return self.lift_cap.command(hand_xyz, self.back_off.command(hand_xyz, expert))
