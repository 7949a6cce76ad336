"""When a scripted operator takes over from the policy, as an HG-DAgger expert would. Plain Python, no ROS.

Three signs that the policy is failing, each configurable: the hand stalls, the executed actions drift from
what the expert would do, or the episode runs past a step budget.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from sop_ros.configs.robot import ScriptedOperatorConfig


class TakeoverMonitor:
    def __init__(self, config: ScriptedOperatorConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self._hand: deque[np.ndarray] = deque(maxlen=self.config.stall_steps)
        self._drift: deque[float] = deque(maxlen=self.config.drift_window)

    def observe(self, hand_xyz: np.ndarray, executed: np.ndarray | None, expert: np.ndarray) -> str | None:
        """One control step: the hand position now, the last executed command and the expert's action.

        Returns why to take over, or None while the policy may go on.
        """
        cfg = self.config
        self.steps += 1
        self._hand.append(np.asarray(hand_xyz, dtype=np.float64))
        if executed is not None:
            self._drift.append(float(np.linalg.norm(np.asarray(executed[:3]) - np.asarray(expert[:3]))))
        if self.steps >= cfg.time_budget_steps:
            return f"no success within {cfg.time_budget_steps} steps"
        if len(self._hand) == cfg.stall_steps:
            moved = float(np.linalg.norm(self._hand[-1] - self._hand[0]))
            if moved < cfg.stall_distance_m:
                return f"stalled: the hand moved {moved * 1000:.1f} mm in {cfg.stall_steps} steps"
        if len(self._drift) == cfg.drift_window:
            drift = float(np.mean(self._drift))
            if drift > cfg.drift_threshold:
                return f"drifting from the expert: mean action distance {drift:.2f} over {cfg.drift_window} steps"
        return None
