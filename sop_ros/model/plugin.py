"""Your own policy on the robot: the contract the policy node runs, and how it runs a class that keeps it.

A robot names its policy class in its YAML (`policy_class: "package.module:Class"`, `policy_args: {...}`,
sop_ros/configs/robot.py); the node makes it once, as `Class(**policy_args)`, and from then on calls:

- `infer(obs: Observation) -> PolicyResult`, on the node's inference thread, once per chunk (every
  `replan_steps` control steps). `obs` is what the ingest node built for the newest control step
  (sop_ros/model/policy.py `Observation`): `images` float32 (cameras, 3, S, S) in [0, 1], in the order of
  `cameras` (the ingest node's camera names); `proprio` float32 (joints,); `instruction`, the episode's task text.
  It returns a `PolicyResult` whose `actions` are the next steps from that observation on, float32
  (steps, action_dim) in robot units, one column per `action_names` entry; its `version` may name the weights
  ("" reports the class's `version` attribute, else its name). The node measures the latency itself and reports
  the class's name as the backend. Raising holds the robot (the node's ERROR state) and says why.
- `reset()`, when an episode starts: forget whatever the last episode left (a history, a random stream).

Optional: `input_mismatch(obs) -> str`, why `obs` cannot be fed to it ("" when it can): the robot holds instead
of asking. Hot-swap of signed weights (the policy/load service) is for the built-in policy: a plugin is refused,
because what the fleet's registry sends is the built-in's exported model, which a plugin cannot be assumed to run,
and its checks (sha256, version, a warm-up inference) would not apply to whatever a plugin did with the file.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import numpy as np

from sop_ros.model.policy import Observation, PolicyResult


@runtime_checkable
class Policy(Protocol):
    """The whole contract a robot's policy keeps (the module's docstring says what each call gets and gives)."""

    def infer(self, obs: Observation) -> PolicyResult: ...

    def reset(self) -> None: ...


class PluginPolicy:
    """A policy class of the robot's own, run by the policy node as it runs the built-in (`ChunkPolicy`): the same
    calls, its results checked before they can move the robot."""

    def __init__(self, policy: Policy, action_dim: int) -> None:
        self.policy = policy
        self.action_dim = action_dim
        self.backend = type(policy).__name__
        self.version = str(getattr(policy, "version", "") or self.backend)

    def reset(self) -> None:
        self.policy.reset()

    def input_mismatch(self, obs: Observation) -> str:
        check = getattr(self.policy, "input_mismatch", None)
        return check(obs) if callable(check) else ""

    def next_noise(self) -> None:
        """The built-in draws its noise per request; a plugin keeps its own randomness."""
        return None

    def infer(self, obs: Observation, noise: None = None) -> PolicyResult:
        start = time.perf_counter()
        result = self.policy.infer(obs)
        latency = (time.perf_counter() - start) * 1000
        if not isinstance(result, PolicyResult):
            raise TypeError(f"{self.backend}.infer returned {type(result).__name__}, not a PolicyResult")
        actions = np.asarray(result.actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] != self.action_dim:
            raise ValueError(f"{self.backend}.infer gave actions of shape {actions.shape}, expected (steps >= 1, "
                             f"{self.action_dim}): one column per action name")  # fmt: skip
        if not np.isfinite(actions).all():
            raise ValueError(f"{self.backend}.infer gave actions that are not all finite")
        return PolicyResult(actions, result.version or self.version, self.backend, latency)


def make_plugin(cls: type, args: dict, action_dim: int) -> PluginPolicy:
    """`cls(**args)`, run as the robot's policy; a ValueError says why it cannot be made."""
    try:
        policy = cls(**args)
    except Exception as err:  # whatever its constructor raises (a server not reachable, bad arguments)
        raise ValueError(f"{cls.__module__}:{cls.__name__}(**{args!r}) failed: {type(err).__name__}: {err}") from None
    return PluginPolicy(policy, action_dim)
