"""The cloud learner's config: what it trains on, how it samples, which algorithm, when it publishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sop_ros.configs import require
from sop_ros.configs.bridge import EpisodeIngestConfig, PolicyServingConfig
from sop_ros.configs.tasks import MT50


@dataclass(frozen=True)
class SamplingConfig:
    """Task-balanced batches; within a task, SOP's adaptive share of online (fleet) data."""

    online_share_alpha: float = 1.5  # alpha > 1 favours online data when its loss is as high as offline's
    online_share_min: float = 0.2
    online_share_max: float = 0.8  # equal to online_share_min: a fixed share
    # A task's online share is at most this many times its fleet steps' part of its training steps (fleet and
    # demonstrations; never below online_share_min): a few fleet episodes do not fill most of a batch. 0: no cap.
    online_share_per_data: float = 2.0
    loss_window_steps: int = 200

    def __post_init__(self) -> None:
        require(self.online_share_alpha > 1.0, "online_share_alpha", self.online_share_alpha, "must be > 1")
        require(
            0.0 <= self.online_share_min <= self.online_share_max <= 1.0,
            "online_share_max",
            self.online_share_max,
            f"need 0 <= online_share_min ({self.online_share_min}) <= max <= 1",
        )
        require(self.loss_window_steps > 0, "loss_window_steps", self.loss_window_steps, "must be > 0")
        require(self.online_share_per_data >= 0, "online_share_per_data", self.online_share_per_data,
                "must be >= 0 (0: no cap)")  # fmt: skip


@dataclass(frozen=True)
class RecapConfig:
    """Advantage-conditioned policy with a distributional value function."""

    value_bins: int = 201
    failure_penalty: float = 50.0  # return -C at failure, before per-task normalisation
    n_step: int = 10
    advantage_percentile: float = 30.0  # epsilon_task: this percentile of the task's advantages
    indicator_dropout: float = 0.3
    guidance_beta: float = 1.0
    value_training: Literal["frozen", "cotrain"] = "frozen"
    max_episode_steps: int = 250  # L: a task's longest episode (the fleet simulator's limit); returns scale by L + C
    value_pretrain_steps: int = 300  # on the offline data, before the policy's training starts
    value_learning_rate: float = 3e-4

    def __post_init__(self) -> None:
        require(self.value_bins >= 2, "value_bins", self.value_bins, "must be >= 2")
        require(self.failure_penalty >= 0, "failure_penalty", self.failure_penalty, "must be >= 0")
        require(self.n_step >= 1, "n_step", self.n_step, "must be >= 1")
        require(
            0 <= self.advantage_percentile <= 100,
            "advantage_percentile",
            self.advantage_percentile,
            "must be in 0..100",
        )
        require(0 <= self.indicator_dropout < 1, "indicator_dropout", self.indicator_dropout, "must be in [0, 1)")
        require(self.guidance_beta >= 0, "guidance_beta", self.guidance_beta, "must be >= 0")
        require(self.max_episode_steps >= 1, "max_episode_steps", self.max_episode_steps, "must be >= 1")
        require(self.value_pretrain_steps >= 0, "value_pretrain_steps", self.value_pretrain_steps, "must be >= 0")
        require(self.value_learning_rate > 0, "value_learning_rate", self.value_learning_rate, "must be > 0")


@dataclass(frozen=True)
class PaceConfig:
    """Sim-time pacing for experiments on a simulated fleet (sop_ros/bridge/pace.py): a fixed budget of learner
    steps per simulated minute, so results do not depend on how fast the host is. Off on a real fleet."""

    steps_per_sim_minute: float = 0.0  # > 0: paced; the robots' simulators must set pace_connect
    robots: int = 1  # the fleet's size: each step waits for this many robots' clocks
    lead_steps: int = 2  # robots may run this many learner steps ahead (overlaps acting and training)
    ingest_delay_s: float = 5.0  # simulated seconds from an episode's end until the learner trains on it
    episode_wait_s: float = 120.0  # wall time to wait for an ended episode to be stored before going without it

    def __post_init__(self) -> None:
        require(self.steps_per_sim_minute >= 0, "steps_per_sim_minute", self.steps_per_sim_minute,
                "must be >= 0 (0: not paced)")  # fmt: skip
        require(self.robots >= 1, "robots", self.robots, "must be >= 1")
        require(self.lead_steps >= 1, "lead_steps", self.lead_steps, "must be >= 1 (0 would stop the fleet)")
        require(self.ingest_delay_s >= 0, "ingest_delay_s", self.ingest_delay_s, "must be >= 0")
        require(self.episode_wait_s > 0, "episode_wait_s", self.episode_wait_s, "must be > 0")


@dataclass(frozen=True)
class CanaryConfig:
    """The rollout of each new policy (sop_ros/cloud/canary.py); off: every robot takes it at its next episode
    boundary."""

    enabled: bool = False
    robots: tuple[str, ...] = ()  # the canary robots by id; empty: `share` of the fleet's robots at random
    share: float = 0.25  # of the robots reporting, rounded up, at least one and never all of them
    min_episodes: int = 20  # canary episodes with the candidate before the verdict
    alpha: float = 0.05  # one-sided: rolled back when p < alpha that the candidate is no worse
    incumbent_window: int = 100  # the incumbent's latest episodes per task that its success is measured on
    after_rollback: Literal["incumbent", "ema"] = "incumbent"  # where the learner's next candidate starts
    seed: int = 0  # the random choice of canaries

    def __post_init__(self) -> None:
        require(0 < self.share < 1, "share", self.share, "must be in (0, 1): at least one robot keeps the incumbent")
        require(self.min_episodes >= 1, "min_episodes", self.min_episodes, "must be >= 1")
        require(0 < self.alpha < 1, "alpha", self.alpha, "must be in (0, 1)")
        require(self.incumbent_window >= 1, "incumbent_window", self.incumbent_window, "must be >= 1")
        require(self.after_rollback in ("incumbent", "ema"), "after_rollback", self.after_rollback,
                "must be incumbent or ema")  # fmt: skip
        require(len(set(self.robots)) == len(self.robots), "robots", self.robots, "must not repeat")



@dataclass(frozen=True)
class LearnerConfig:
    algorithm: Literal["bc", "hg_dagger", "recap"] = "hg_dagger"
    tasks: tuple[str, ...] = ("reach-v3", "push-v3", "pick-place-v3", "drawer-open-v3", "window-open-v3")
    base_policy: str = "runs/base.pt"  # the checkpoint training starts from (`sop pretrain`); "": from scratch
    model_config: str = ""  # from scratch: the model's YAML (config/models/); "": ModelConfig's defaults
    demos_dir: str = "runs/demos"
    demos_per_task: int = 0  # mix in only the first N demonstrations of each task (0: all), as pretraining did
    store_dir: str = "runs/store"
    checkpoint_dir: str = "runs/learner"  # checkpoint, status.json, TensorBoard events (tensorboard/)
    batch_size: int = 64  # the global batch, split over data-parallel ranks
    learning_rate: float = 1e-4
    # The learning rate rises linearly from 0 over warmup_steps (a fresh optimiser's first updates are its
    # largest), then, with decay_steps > 0, falls along a cosine to min_learning_rate over that many more steps
    # and stays there. 0 and 0: constant.
    warmup_steps: int = 0
    decay_steps: int = 0
    min_learning_rate: float = 0.0
    # true: continue the base checkpoint's AdamW moments (`sop pretrain` saves them) rather than start a fresh
    # optimiser, whose first updates are normalised by moments of a single batch.
    optimiser_from_base: bool = False
    weight_decay: float = 1e-4
    # > 0: robots get an exponential moving average of the weights (this decay per step), not the last step's:
    # successive policies then differ by many steps' drift rather than one batch's noise.
    ema_decay: float = 0.0
    publish_every_steps: int = 25
    publish_every_s: float = 0.0  # > 0: also publish on this period
    max_steps: int = 0  # stop after this many learner steps (0: run until stopped)
    refresh_every_steps: int = 10  # look for newly stored episodes this often
    # The fleet's most recently stored episodes trained from (0: every one stored). Each kept costs the learner
    # ~17 KB of memory (its steps' arrays and frame offsets), ~290 KB of spilled JPEG on disk and its frames'
    # place in the decoded-frame cache, all released when it leaves: a learner meant to run for days bounds its
    # memory and disk with this, as a replay buffer's capacity does.
    replay_episodes: int = 0
    log_every_s: float = 10.0  # progress line, status.json and TensorBoard scalars
    serve_robots: bool = True  # ingest and policy serving in the learner (false: `sop cloud` runs them)
    use_autonomous_segments: bool = False  # HG-DAgger: also learn from the policy's own driving that succeeded
    use_failed_corrections: bool = True  # HG-DAgger: also learn from corrections whose episode did not succeed
    skip_correction_rise: bool = False  # HG-DAgger: leave out the lift that opens a correction (hg_dagger.py)
    # The tasks whose fleet episodes are learned from (empty: every task); the others train on demonstrations only.
    online_tasks: tuple[str, ...] = ()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # fp32; tf32: float32 matrix products on TF32 tensor cores (CUDA only: ~10 bits of mantissa); bf16: the forward
    # pass under bfloat16 autocast (weights, optimiser and loss sums stay float32).
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    torch_threads: int = 0  # intra-op threads per rank (0: torch's default)
    # Camera frames kept decoded in memory, up to this many MB (0: decode every sample): each is decoded once.
    frame_cache_mb: float = 1024.0
    # Processes that decode the demonstrations' frames into that cache at start (-1: one per core but one on a
    # GPU, none on a CPU): a GPU's first steps then wait for no decoding. The fleet's frames decode on first use.
    frame_cache_workers: int = -1
    seed: int = 0
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    recap: RecapConfig = field(default_factory=RecapConfig)
    pace: PaceConfig = field(default_factory=PaceConfig)  # simulated fleets only
    ingest: EpisodeIngestConfig = field(default_factory=EpisodeIngestConfig)  # robots' episodes into store_dir
    policies: PolicyServingConfig = field(default_factory=PolicyServingConfig)  # signed weights out to robots
    canary: CanaryConfig = field(default_factory=CanaryConfig)  # each new policy to a few robots first

    def __post_init__(self) -> None:
        require(bool(self.tasks), "tasks", self.tasks, "must list at least one task")
        for i, task in enumerate(self.tasks):
            require(task in MT50, f"tasks[{i}]", task, "must be a Meta-World MT50 task")
        require(len(set(self.tasks)) == len(self.tasks), "tasks", self.tasks, "must not repeat")
        require(
            self.batch_size >= len(self.tasks),
            "batch_size",
            self.batch_size,
            f"must be >= the number of tasks ({len(self.tasks)}): each batch is split across tasks",
        )
        require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        require(not self.optimiser_from_base or bool(self.base_policy), "optimiser_from_base",
                self.optimiser_from_base, "needs a base_policy (a `sop pretrain` checkpoint) to take it from")
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0 (0: none)")
        require(self.decay_steps >= 0, "decay_steps", self.decay_steps, "must be >= 0 (0: no decay)")
        require(0 <= self.min_learning_rate <= self.learning_rate, "min_learning_rate", self.min_learning_rate,
                f"must be in 0..learning_rate ({self.learning_rate})")  # fmt: skip
        require(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "must be in [0, 1) (0: off)")
        require(self.demos_per_task >= 0, "demos_per_task", self.demos_per_task, "must be >= 0 (0: all)")
        require(self.publish_every_steps >= 1, "publish_every_steps", self.publish_every_steps, "must be >= 1")
        require(self.publish_every_s >= 0, "publish_every_s", self.publish_every_s, "must be >= 0 (0: off)")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        require(self.max_steps >= 0, "max_steps", self.max_steps, "must be >= 0 (0: until stopped)")
        require(self.refresh_every_steps >= 1, "refresh_every_steps", self.refresh_every_steps, "must be >= 1")
        require(self.replay_episodes >= 0, "replay_episodes", self.replay_episodes, "must be >= 0 (0: all)")
        require(self.log_every_s > 0, "log_every_s", self.log_every_s, "must be > 0")
        require(self.torch_threads >= 0, "torch_threads", self.torch_threads, "must be >= 0 (0: default)")
        for i, task in enumerate(self.online_tasks):
            require(task in self.tasks, f"online_tasks[{i}]", task, "must be one of the learner's tasks")
        require(not (self.model_config and self.base_policy), "model_config", self.model_config,
                "is for a learner from scratch (base_policy: ''): a base checkpoint carries its own model shape")
        require(self.frame_cache_mb >= 0, "frame_cache_mb", self.frame_cache_mb, "must be >= 0 (0: no cache)")
        require(self.frame_cache_workers >= -1, "frame_cache_workers", self.frame_cache_workers,
                "must be >= 0, or -1 (one per core on a GPU, none on a CPU)")
        require(self.serve_robots or not self.pace.steps_per_sim_minute, "pace.steps_per_sim_minute",
                self.pace.steps_per_sim_minute, "needs serve_robots: true (clocks come on its session)")  # fmt: skip
        require(not self.canary.enabled or self.serve_robots, "canary.enabled", self.canary.enabled,
                "needs serve_robots: true (the gate reads the fleet's reports and episodes)")  # fmt: skip
        require(not (self.canary.enabled and self.pace.steps_per_sim_minute), "canary.enabled", self.canary.enabled,
                "is for unpaced fleets: a paced one schedules each episode's policy for every robot alike")  # fmt: skip


def learner_status_path(checkpoint_dir: str | Path) -> Path:
    """The status a learner with this `checkpoint_dir` rewrites as it runs: what `sop learner status` shows."""
    return Path(checkpoint_dir) / "status.json"
