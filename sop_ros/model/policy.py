"""The policy contract robots use: `infer(observation) -> result` and `reset()`, whatever runtime runs it.

An observation is what the ingest node produces for one control step: preprocessed camera images, joint
positions and the task's instruction. The result is an action chunk in robot units, with the version and
backend that produced it and how long inference took.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from sop_ros.model.runtime import Runtime
from sop_ros.model.tokens import instruction_tokens
from sop_ros.model.vla import INDICATOR_NONE, INDICATOR_POSITIVE


@dataclass(frozen=True)
class Observation:
    images: np.ndarray  # float32 (cameras, 3, S, S) in [0, 1]
    proprio: np.ndarray  # float32 (proprio_dim,)
    instruction: str


@dataclass(frozen=True)
class PolicyResult:
    actions: np.ndarray  # float32 (chunk, action_dim), robot units
    version: str
    backend: str
    latency_ms: float


class ChunkPolicy:
    def __init__(self, runtime: Runtime, seed: int = 0, advantage_conditioned: bool = False) -> None:
        self.runtime = runtime
        config = json.loads(runtime.metadata.get("sop_ros.model_config", "{}"))
        self.version = runtime.metadata.get("sop_ros.version", "")
        self.chunk = int(config.get("chunk", 16))
        self.action_dim = int(config.get("action_dim", 4))
        self.instruction_bytes = int(config.get("instruction_bytes", 96))
        # RECAP policies are asked for the positive-advantage behaviour at inference.
        self.indicator = INDICATOR_POSITIVE if advantage_conditioned else INDICATOR_NONE
        self._seed = seed
        self.reset()

    def reset(self) -> None:
        """A new episode: the noise stream restarts, so an episode's actions depend only on its observations."""
        self._rng = np.random.default_rng(self._seed)

    def infer(self, obs: Observation) -> PolicyResult:
        inputs = {
            "images": obs.images[None].astype(np.float32, copy=False),
            "proprio": obs.proprio[None].astype(np.float32, copy=False),
            "instruction": instruction_tokens([obs.instruction], self.instruction_bytes),
            "indicator": np.array([self.indicator], dtype=np.int64),
            "noise": self._rng.standard_normal((1, self.chunk, self.action_dim), dtype=np.float32),
        }
        start = time.perf_counter()
        actions = self.runtime.run(inputs)[0]
        latency = (time.perf_counter() - start) * 1000
        return PolicyResult(actions, self.version, self.runtime.backend, latency)
