"""The policy contract robots use: `infer(observation) -> result` and `reset()`, whatever runtime runs it.

An observation is what the ingest node produces for one control step: preprocessed camera images, joint
positions and the task's instruction. The result is an action chunk in robot units, with the version and
backend that produced it and how long inference took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sop_ros.checksums import file_sha256
from sop_ros.model.inputs import INDICATOR_NONE, INDICATOR_POSITIVE
from sop_ros.model.runtime import Runtime, load_runtime
from sop_ros.model.tokens import instruction_tokens


@dataclass(frozen=True)
class Observation:
    images: np.ndarray  # float32 (cameras, 3, S, S) in [0, 1]
    proprio: np.ndarray  # float32 (proprio_dim,)
    instruction: str
    cameras: tuple[str, ...] = ()  # the images' cameras in order, where known


@dataclass(frozen=True)
class PolicyResult:
    actions: np.ndarray  # float32 (chunk, action_dim), robot units
    version: str = ""
    backend: str = ""
    latency_ms: float = 0.0


class ChunkPolicy:
    def __init__(self, runtime: Runtime, seed: int = 0, advantage_conditioned: bool = False) -> None:
        self.runtime = runtime
        config = json.loads(runtime.metadata.get("sop_ros.model_config", "{}"))
        self.version = runtime.metadata.get("sop_ros.version", "") or "unversioned"
        # The cameras it was trained on, in its input's order ((): not recorded, as in policies made before it was)
        self.cameras = tuple(json.loads(runtime.metadata.get("sop_ros.cameras", "[]")))
        self.chunk = int(config.get("chunk", 16))
        self.rtc_max_prefix = int(config.get("rtc_max_prefix", 0))  # > 0: it takes the actions that run first
        self.action_dim = int(config.get("action_dim", 4))
        self.instruction_bytes = int(config.get("instruction_bytes", 96))
        self.input_shapes = {
            "images": (
                int(config.get("cameras", 1)),
                3,
                int(config.get("image_size", 96)),
                int(config.get("image_size", 96)),
            ),
            "proprio": (int(config.get("proprio_dim", 9)),),
        }
        # RECAP policies are asked for the positive-advantage behaviour at inference: by the robot's parameter,
        # or by the policy's own metadata.
        positive = advantage_conditioned or runtime.metadata.get("sop_ros.indicator") == "positive"
        self.indicator = INDICATOR_POSITIVE if positive else INDICATOR_NONE
        self._seed = seed
        self.reset()

    @property
    def backend(self) -> str:
        """What runs it, as the status reports it (the runtime's name)."""
        return self.runtime.backend

    def reset(self) -> None:
        """A new episode: the noise stream restarts, so an episode's actions depend only on its observations."""
        self._rng = np.random.default_rng(self._seed)

    def input_mismatch(self, obs: Observation) -> str:
        """Why `obs` cannot be fed to this policy ("" when it can)."""
        wrong = [f"{k} {getattr(obs, k).shape}, expected {shape}" for k, shape in self.input_shapes.items()
                 if getattr(obs, k).shape != shape]  # fmt: skip
        # Images of the right shape from other cameras would run, and fail in silence: the names are compared.
        if self.cameras and obs.cameras and tuple(obs.cameras) != self.cameras:
            wrong.append(f"cameras {list(obs.cameras)}, the policy was trained on {list(self.cameras)} (the ingest "
                         f"node's cameras must name these, in this order)")  # fmt: skip
        return "; ".join(wrong)

    def next_noise(self) -> np.ndarray:
        """The next draw of the episode's noise stream. A robot draws it when it asks for a chunk, so that a chunk
        computed late, for an episode already over, does not take the next episode's draw."""
        return self._rng.standard_normal((1, self.chunk, self.action_dim), dtype=np.float32)

    def infer(self, obs: Observation, noise: np.ndarray | None = None,
              prefix: np.ndarray | None = None) -> PolicyResult:  # fmt: skip
        """A chunk for `obs`. `prefix` (n, action_dim), robot units: the actions that will run before the chunk
        arrives (real-time chunking; a policy trained for it takes its first rtc_max_prefix, else none): the
        chunk starts with them and goes on from them."""
        inputs = {
            "images": obs.images[None].astype(np.float32, copy=False),
            "proprio": obs.proprio[None].astype(np.float32, copy=False),
            "instruction": instruction_tokens([obs.instruction], self.instruction_bytes),
            "indicator": np.array([self.indicator], dtype=np.int64),
            "noise": self.next_noise() if noise is None else noise,
        }
        if self.rtc_max_prefix:
            given = np.zeros((1, self.chunk, self.action_dim), np.float32)
            n = 0 if prefix is None else min(len(prefix), self.rtc_max_prefix)
            if n:
                given[0, :n] = prefix[:n]
            inputs |= {"prefix": given, "prefix_len": np.array([n], dtype=np.int64)}
        start = time.perf_counter()
        actions = self.runtime.run(inputs)[0]
        latency = (time.perf_counter() - start) * 1000
        return PolicyResult(actions, self.version, self.runtime.backend, latency)


def load_policy(
    path: str | Path,
    action_dim: int,
    example: Observation | None = None,
    sha256: str = "",
    engine_cache: str | Path | None = None,
    seed: int = 0,
    advantage_conditioned: bool = False,
    threads: int = 0,
    cameras: tuple[str, ...] = (),
    runtime_order: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> ChunkPolicy:
    """Load a policy file, check that it can drive this robot, and warm it up; or a ValueError saying why not.

    Checked: the file's sha256 (when given), that the runtime accepts the file, the action space, and one
    inference on `example` (the robot's own observation; else zeros shaped as the policy says, from `cameras`
    when the robot's are known) that must give a finite (chunk, action_dim) result. Loading chooses the runtime
    (runtime.py: measured, or the first of `runtime_order` that starts; `log` says which) and warms it, building
    TensorRT engines and capturing CUDA graphs, so the first real inference after a swap is not slow.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if sha256 and file_sha256(path) != sha256.lower():
        raise ValueError(f"{path}: sha256 {file_sha256(path)} differs from the expected {sha256.lower()}")
    try:
        runtime = load_runtime(path, engine_cache, threads, runtime_order, log)
    except Exception as err:  # every runtime has its own errors for a damaged file: report them as one kind
        raise ValueError(f"{path}: cannot be loaded: {type(err).__name__}: {str(err).strip()[:300]}") from None
    policy = ChunkPolicy(runtime, seed, advantage_conditioned)
    if policy.action_dim != action_dim:
        raise ValueError(f"{path}: {policy.action_dim} action dimensions, this robot has {action_dim}")
    if example is None:
        shapes = policy.input_shapes
        example = Observation(np.zeros(shapes["images"], np.float32), np.zeros(shapes["proprio"], np.float32), "",
                              tuple(cameras))  # fmt: skip
    if mismatch := policy.input_mismatch(example):
        raise ValueError(f"{path}: does not fit this robot's observation: {mismatch}")
    try:
        actions = policy.infer(example).actions
    except Exception as err:
        raise ValueError(
            f"{path}: fails on this robot's observation (images {example.images.shape}, proprio "
            f"{example.proprio.shape}): {type(err).__name__}: {str(err).strip()[:300]}"
        ) from None
    if actions.shape != (policy.chunk, action_dim) or not np.isfinite(actions).all():
        raise ValueError(f"{path}: gives actions of shape {actions.shape} (finite: {np.isfinite(actions).all()}), "
                         f"expected ({policy.chunk}, {action_dim})")  # fmt: skip
    policy.reset()
    return policy
