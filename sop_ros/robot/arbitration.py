"""Who commands the robot, and the safety limits on what reaches it. Plain Python, no ROS.

The operator wins whenever their input is fresh (devices send only while the deadman is held); otherwise the
policy drives while its input is fresh; otherwise the robot is held. Every output is clamped to the
configured range and rate-limited (at most max_rate / control_hz of change per command), whoever sent it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from sop_ros.configs.robot import TeleopArbiterConfig
from sop_ros.episodes.format import Controller, Outcome

# The outcomes an operator may give an episode, by EpisodeEvent.OUTCOME_* code (every code but UNKNOWN's).
LABELS = {code: Outcome.from_event(code) for code in range(256) if Outcome.from_event(code) != Outcome.UNKNOWN}


@dataclass(frozen=True)
class ArbiterOutput:
    command: np.ndarray
    controller: Controller
    since: float  # when the current controller took over
    changed: bool  # the controller changed at this tick
    device: str  # the operator's input device while the operator is in control, else ""


class Release(Enum):
    """Where a released operator is (see Arbiter.release_operator)."""

    NONE = "none"  # not released: operator commands count
    AT_END = "at_end"  # the episode ended: operator commands are ignored
    IN_NEW_EPISODE = "in_new_episode"  # ignored still, until the policy has driven for operator_timeout_s


class Arbiter:
    def __init__(self, config: TeleopArbiterConfig) -> None:
        self.reconfigure(config)
        self._period = 1.0 / config.control_hz
        self._inputs: dict[Controller, tuple[np.ndarray, float, str]] = {}
        self._output = np.zeros(len(config.action_names))
        self._last_tick: float | None = None
        self.controller = Controller.HOLD
        self.since = 0.0
        self.interventions = 0
        self._operator_released = Release.NONE
        self._policy_drove_since: float | None = None  # released: when the policy first drove the new episode

    def reconfigure(self, config: TeleopArbiterConfig) -> None:
        """Limits and timeouts from `config` from the next command on (its action names and rate stay)."""
        self.config = config
        self._low = np.array(config.action_min)
        self._high = np.array(config.action_max)
        self._rate = np.array(config.max_rate)
        self._keeps_last = np.array(config.hold_keeps_last)

    def submit(self, source: Controller, command: np.ndarray, now: float, device: str = "") -> None:
        """Take a command from the policy or the operator (and their `device`).

        A wrongly sized or non-finite command is refused with ValueError; the last good one stays.
        """
        command = np.asarray(command, dtype=np.float64)
        expected = len(self.config.action_names)
        if command.shape != (expected,):
            raise ValueError(
                f"{source.name.lower()} command has {command.size} values, expected {expected} "
                f"({', '.join(self.config.action_names)})"
            )
        if not np.all(np.isfinite(command)):
            raise ValueError(f"{source.name.lower()} command has non-finite values: {command.tolist()}")
        if source == Controller.OPERATOR and self._operator_released != Release.NONE:
            return
        self._inputs[source] = (command, now, device)

    def new_episode(self) -> None:
        self.interventions = 0
        if self._operator_released == Release.AT_END:
            self._operator_released = Release.IN_NEW_EPISODE

    def release_operator(self) -> None:
        """At an episode's end a takeover ends: the reset and the next episode go to the policy. On a lockstep
        simulator's clock, which stands still until the robot is commanded, the operator's timeout would
        otherwise never run out.

        Operator commands are ignored from here until the policy has driven the next episode for
        operator_timeout_s: the operator's answer to the episode's last state can arrive after the end (and even
        a few steps into the next episode), and would take the robot back for an operator who has let go."""
        self._inputs.pop(Controller.OPERATOR, None)
        self._operator_released, self._policy_drove_since = Release.AT_END, None

    def tick(self, now: float) -> ArbiterOutput:
        controller = self._select(now)
        if controller == Controller.POLICY and self._operator_released == Release.IN_NEW_EPISODE:
            if self._policy_drove_since is None:
                self._policy_drove_since = now
            elif now - self._policy_drove_since >= self.config.operator_timeout_s:
                self._operator_released = Release.NONE
        changed = controller != self.controller
        if changed:
            self.controller, self.since = controller, now
            self.interventions += controller == Controller.OPERATOR
        if controller == Controller.HOLD:
            target = np.where(self._keeps_last, self._output, 0.0)
        else:
            target = self._inputs[controller][0]
        target = np.clip(target, self._low, self._high)
        # At least one control period per command: on sim time the clock may not have advanced yet when the
        # command for the next step arrives, and a zero step would forward the previous command again.
        dt = self._period if self._last_tick is None else max(now - self._last_tick, self._period)
        step = self._rate * dt
        self._output = self._output + np.clip(target - self._output, -step, step)
        self._last_tick = now
        device = self._inputs[controller][2] if controller == Controller.OPERATOR else ""
        return ArbiterOutput(self._output.copy(), controller, self.since, changed, device)

    def _select(self, now: float) -> Controller:
        timeouts = {
            Controller.OPERATOR: self.config.operator_timeout_s,
            Controller.POLICY: self.config.policy_timeout_s,
        }
        for source in (Controller.OPERATOR, Controller.POLICY):
            if source in self._inputs and now - self._inputs[source][1] <= timeouts[source]:
                return source
        return Controller.HOLD


class Labelled(Protocol):
    episode_id: str


def label_target(outcome: int, episode_id: str, known: Sequence[Labelled | None]) -> tuple[Labelled | None, str]:
    """The episode a label request means, of those `known` (the running one, then the last ended; None where
    there is none): the one `episode_id` names, or the first; None and why not when it names none of them or
    `outcome` is not a label (LABELS)."""
    if outcome not in LABELS:
        allowed = ", ".join(f"{code} ({name})" for code, name in LABELS.items())
        return None, f"outcome {outcome} is not one of {allowed} (EpisodeEvent.OUTCOME_*)"
    episodes = [e for e in known if e is not None]
    target = next((e for e in episodes if e.episode_id == episode_id), None) if episode_id else next(iter(episodes),
                                                                                                  None)  # fmt: skip
    if target is None:
        return None, f"no episode {episode_id!r} on this robot" if episode_id else "no episode to label yet"
    return target, ""
