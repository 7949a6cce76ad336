"""RECAP (pi*0.6): the policy learns every step of the fleet's and the demonstrations' episodes, conditioned on
whether the step's advantage was good, from a distributional value network trained on their returns.

The arithmetic is numpy, one episode or one task at a time; `Advantages` keeps it per episode and per task,
the value network (sop_ros.model.value) is pre-trained on the demonstrations, then frozen or trained beside the
policy, and `Recap` plugs all of it into the learner's loop.

- Rewards: -1 for every step, and at the last step 0 when the episode succeeded or -C when it failed.
- Monte-Carlo return-to-go G_t = r_t + r_(t+1) + ... + r_(T-1), normalised per task by L + C, where L is the
  task's maximum episode length: every return then lies in [-1, 0] (0 at a success's last step, near -1 for a
  failure that used the whole time), one support for the value network of every task.
- Value targets: the distribution over `bins` evenly spaced values on [-1, 0], trained with cross-entropy
  against the bin nearest to the return.
- n-step advantage: A_t = r_t + ... + r_(t+n-1) + V(s_(t+n)) - V(s_t) on normalised rewards, the sum cut at
  the episode's end and V after the end taken as 0.
- Indicator: positive where A_t > epsilon_task (the task's advantages' `percentile`-th percentile), negative
  elsewhere; steps an operator drove are positive whatever their advantage (their corrections are what the
  policy should do); in training it is dropped ("none") with probability `dropout`, so that the policy also
  learns the unconditioned action distribution that classifier-free guidance needs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from sop_ros.configs.learner import LearnerConfig
from sop_ros.episodes.format import LABELLED, Outcome
from sop_ros.learner.algorithms.base import Algorithm, Sources
from sop_ros.learner.dataset import EpisodeDataset, EpisodeIndex
from sop_ros.learner.pretrain import to_torch
from sop_ros.learner.ranks import Ranks
from sop_ros.learner.sampling import OFFLINE, ONLINE, Row
from sop_ros.model.inputs import INDICATOR_NEGATIVE, INDICATOR_NONE, INDICATOR_POSITIVE
from sop_ros.model.value import ValueNetwork
from sop_ros.model.vla import VLAPolicy


def rewards(steps: int, success: bool, failure_penalty: float) -> np.ndarray:
    """(steps,) float64: -1 each step; the last step 0 for a success, -failure_penalty for a failure."""
    if steps < 1:
        raise ValueError(f"an episode of {steps} steps has no rewards")
    r = np.full(steps, -1.0)
    r[-1] = 0.0 if success else -failure_penalty
    return r


def returns_to_go(r: np.ndarray) -> np.ndarray:
    """G_t = sum of r_t..r_(T-1)."""
    return np.cumsum(r[::-1])[::-1].copy()


def normaliser(max_length: int, failure_penalty: float) -> float:
    """The task's scale L + C: the largest cost an episode of the task can have."""
    if max_length < 1:
        raise ValueError(f"max_length {max_length} must be >= 1")
    return float(max_length + failure_penalty)


def normalised_rewards(steps: int, success: bool, max_length: int, failure_penalty: float) -> np.ndarray:
    return rewards(steps, success, failure_penalty) / normaliser(max_length, failure_penalty)


def value_support(bins: int) -> np.ndarray:
    """The values of the value network's `bins` atoms, evenly spaced on [-1, 0]."""
    return np.linspace(-1.0, 0.0, bins)


def value_bin(returns: np.ndarray, bins: int) -> np.ndarray:
    """Index of the atom nearest to each normalised return (clipped into [-1, 0]): the cross-entropy target."""
    clipped = np.clip(returns, -1.0, 0.0)
    return np.rint((clipped + 1.0) * (bins - 1)).astype(np.int64)


def expected_value(probabilities: np.ndarray, bins: int) -> np.ndarray:
    """V(s) = sum over atoms of p(atom) * value(atom); `probabilities` (..., bins)."""
    return probabilities @ value_support(bins)


def n_step_advantages(r: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """A_t = r_t + ... + r_(t+n-1) + V_(t+n) - V_t for one episode; sums end at the episode, V after it is 0."""
    if len(r) != len(values):
        raise ValueError(f"{len(r)} rewards but {len(values)} values")
    if n < 1:
        raise ValueError(f"n {n} must be >= 1")
    steps = len(r)
    summed = np.cumsum(r)  # summed[k] = r_0 + ... + r_k
    ahead = np.minimum(np.arange(steps) + n, steps)  # first step past the n-step window, at most the end
    window = summed[ahead - 1] - np.concatenate([[0.0], summed[:-1]])  # r_t + ... + r_(ahead-1)
    bootstrap = np.concatenate([values, [0.0]])[ahead]
    return window + bootstrap - values


def advantage_threshold(advantages: np.ndarray, percentile: float) -> float:
    """epsilon_task: the `percentile`-th percentile of one task's advantages."""
    if len(advantages) == 0:
        raise ValueError("no advantages to take a percentile of")
    return float(np.percentile(advantages, percentile))


def indicators(advantages: np.ndarray, threshold: float | np.ndarray, operator: np.ndarray) -> np.ndarray:
    """Positive where A > threshold (one, or each row's task's) or an operator drove, negative elsewhere (int64,
    the model's encoding)."""
    positive = (advantages > threshold) | operator.astype(bool)
    return np.where(positive, INDICATOR_POSITIVE, INDICATOR_NEGATIVE).astype(np.int64)


def drop_indicators(indicator: np.ndarray, dropout: float, rng: np.random.Generator) -> np.ndarray:
    """Each indicator replaced by 'none' with probability `dropout` (a copy)."""
    dropped = indicator.copy()
    dropped[rng.random(len(indicator)) < dropout] = INDICATOR_NONE
    return dropped


# ---------------------------------------------------------------------------------------------------------
# Per episode and per task
# ---------------------------------------------------------------------------------------------------------


class Advantages:
    """Per episode, its steps' value targets and n-step advantages; per task, the indicator threshold."""

    def __init__(self, config: LearnerConfig) -> None:
        self.config = config.recap
        self.advantages: dict[str, np.ndarray] = {}  # episode id -> (steps,)
        self.thresholds: dict[str, float] = {}
        self._bins: dict[str, np.ndarray] = {}  # episode id -> (steps,) its steps' value-target atoms
        # episode id -> (task, V of its first state, its realised normalised return from there)
        self.initial_values: dict[str, tuple[str, float, float]] = {}

    def rewards(self, episode: EpisodeIndex) -> np.ndarray:
        c = self.config
        return normalised_rewards(episode.steps, episode.outcome == Outcome.SUCCESS, c.max_episode_steps,
                                        c.failure_penalty)  # fmt: skip

    def value_target(self, episode: EpisodeIndex, step: int) -> int:
        """The atom nearest to the step's normalised Monte-Carlo return (computed once per episode)."""
        if episode.episode_id not in self._bins:
            returns = returns_to_go(self.rewards(episode))
            self._bins[episode.episode_id] = value_bin(returns, self.config.value_bins)
        return int(self._bins[episode.episode_id][step])

    def add(self, episode: EpisodeIndex, values: np.ndarray) -> None:
        r = self.rewards(episode)
        self.advantages[episode.episode_id] = n_step_advantages(r, values, self.config.n_step)
        self.initial_values[episode.episode_id] = (episode.task, float(values[0]), float(returns_to_go(r)[0]))

    def value_estimates(self) -> dict[str, float]:
        """Per task, the value network's mean estimate of its episodes' first states (normalised return)."""
        return {t: check["predicted"] for t, check in self.value_check().items()}

    def value_check(self, episode_ids: set[str] | None = None) -> dict[str, dict]:
        """Per task, how well the value network knew the episodes (`episode_ids`, or all) from their first state:
        its mean prediction against the mean realised normalised return, their mean absolute difference and
        correlation (None with fewer than three episodes or no spread), and the share of the episodes' steps
        whose advantage clears the task's threshold (what the indicator calls positive before operators)."""
        by_task: dict[str, list[tuple[str, float, float]]] = {}
        for episode_id, (task, predicted, realised) in self.initial_values.items():
            if episode_ids is None or episode_id in episode_ids:
                by_task.setdefault(task, []).append((episode_id, predicted, realised))
        checks = {}
        for task, rows in sorted(by_task.items()):
            predicted, realised = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
            spread = len(rows) >= 3 and predicted.std() > 0 and realised.std() > 0
            advantages = np.concatenate([self.advantages[r[0]] for r in rows])
            threshold = self.thresholds.get(task)
            checks[task] = {
                "episodes": len(rows),
                "predicted": round(float(predicted.mean()), 4),
                "realised": round(float(realised.mean()), 4),
                "mean_abs_error": round(float(np.abs(predicted - realised).mean()), 4),
                "correlation": round(float(np.corrcoef(predicted, realised)[0, 1]), 3) if spread else None,
                "positive_share": None if threshold is None else round(float((advantages > threshold).mean()), 3),
            }  # fmt: skip
        return checks

    def update_thresholds(self, episodes: list[EpisodeIndex]) -> None:
        by_task: dict[str, list[np.ndarray]] = {}
        for e in episodes:
            if e.episode_id in self.advantages:
                by_task.setdefault(e.task, []).append(self.advantages[e.episode_id])
        self.thresholds = {t: advantage_threshold(np.concatenate(a), self.config.advantage_percentile)
                           for t, a in by_task.items()}  # fmt: skip

    def indicators(self, batch: dict, rng: np.random.Generator) -> np.ndarray:
        """The batch rows' indicators (operators' steps positive), dropped to 'none' at the configured rate."""
        advantage = np.array([self.advantages[e][k] for e, k in zip(batch["episode_id"], batch["step"], strict=True)])
        threshold = np.array([self.thresholds[t] for t in batch["task"]])
        indicator = indicators(advantage, threshold, batch["operator"])  # each row against its task's
        return drop_indicators(indicator, self.config.indicator_dropout, rng)


@torch.no_grad()
def episode_values(value: ValueNetwork, dataset: EpisodeDataset, index: int, device: torch.device) -> np.ndarray:
    """V(s_k) for every step of one episode."""
    episode = dataset.episodes[index]
    out = []
    for start in range(0, episode.steps, 64):
        picks = [(index, k) for k in range(start, min(start + 64, episode.steps))]
        batch = to_torch(dataset.collate(picks), value.config, device)
        out.append(value.value(batch["images"], batch["proprio"], batch["instruction"]).cpu().numpy())
    return np.concatenate(out)


def score_episodes(value: ValueNetwork, advantages: Advantages, dataset: EpisodeDataset, device: torch.device) -> None:
    """Advantages for the dataset's episodes that have none yet (thresholds: Advantages.update_thresholds)."""
    value.eval()
    for i, episode in enumerate(dataset.episodes):
        if episode.episode_id not in advantages.advantages:
            advantages.add(episode, episode_values(value, dataset, i, device))


def pretrain_value(value: ValueNetwork, offline: EpisodeDataset, advantages: Advantages, config: LearnerConfig,
                   ranks: Ranks, say: Callable[[str], None]) -> None:  # fmt: skip
    """RECAP's value network on the demonstrations' Monte-Carlo returns (cross-entropy over atoms)."""
    value.requires_grad_(True)
    trainable = list(value.parameters())
    module = nn.parallel.DistributedDataParallel(value) if ranks.world > 1 else value
    optimiser = torch.optim.AdamW(trainable, lr=config.recap.value_learning_rate)
    value.train()
    for step in range(config.recap.value_pretrain_steps):
        rng = np.random.default_rng([config.seed, step, 2])
        picks = [p for t in offline.tasks for p in offline.draw(rng, t, config.batch_size // len(offline.tasks))]
        mine = picks[ranks.rank :: ranks.world]
        batch_np = offline.collate(mine)
        batch = to_torch(batch_np, value.config, ranks.device)
        bins = torch.from_numpy(np.array([advantages.value_target(offline.episodes[e], k) for e, k in mine]))
        bins = bins.to(ranks.device)
        loss = functional.cross_entropy(module(batch["images"], batch["proprio"], batch["instruction"]), bins)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if (step + 1) % 50 == 0:
            say(f"value pretraining {step + 1}/{config.recap.value_pretrain_steps}: cross-entropy {loss.item():.3f}")
    if config.recap.value_training == "frozen":
        value.requires_grad_(False)
    value.eval()


# ---------------------------------------------------------------------------------------------------------
# In the learner's loop
# ---------------------------------------------------------------------------------------------------------


class Recap(Algorithm):
    name = "recap"
    offline_outcomes = LABELLED  # returns need an outcome
    online_outcomes = LABELLED
    indicator = "positive"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        self.advantages = Advantages(config)
        self.cotrain = config.recap.value_training == "cotrain"
        self.value: ValueNetwork | None = None
        self.online_ids: set[str] = set()  # the fleet's episodes scored so far

    def build(self, policy: VLAPolicy, resumed: dict | None, ranks: Ranks) -> None:
        self.value = ValueNetwork(policy.config, self.config.recap.value_bins)
        self.value.set_normalisation((policy.proprio_mean, policy.proprio_std))
        if resumed and resumed.get("value"):
            self.value.load_state_dict(resumed["value"])
        self.value.to(ranks.device)
        if not self.cotrain:
            self.value.requires_grad_(False)

    def beside_policy(self) -> nn.Module | None:
        return self.value if self.cotrain else None

    def start(self, data: Sources, resumed: dict | None, ranks: Ranks, say: Callable[[str], None]) -> None:
        if not (resumed and resumed.get("value")):
            pretrain_value(self.value, data[OFFLINE], self.advantages, self.config, ranks, say)
        score_episodes(self.value, self.advantages, data[OFFLINE], ranks.device)
        self.advantages.update_thresholds(data[OFFLINE].episodes)

    def data_grew(self, data: Sources, ranks: Ranks) -> None:
        score_episodes(self.value, self.advantages, data[ONLINE], ranks.device)
        self.online_ids = {e.episode_id for e in data[ONLINE].episodes}
        self.advantages.update_thresholds(data[OFFLINE].episodes + data[ONLINE].episodes)

    def add_inputs(self, batch: dict, batch_np: dict, rows: list[Row], mine: list[int], data: Sources,
                   step: int, device) -> Tensor | None:  # fmt: skip
        rng = np.random.default_rng([self.config.seed, step, 1])
        batch["indicator"] = torch.from_numpy(self.advantages.indicators(batch_np, rng)).to(device)
        if not self.cotrain:
            return None
        targets = [self.advantages.value_target(data[rows[i].source].episodes[rows[i].episode], rows[i].step)
                   for i in mine]  # fmt: skip
        return torch.from_numpy(np.array(targets)).to(device)

    def status(self) -> dict:
        return {"value_thresholds": self.advantages.thresholds,
                "value_estimates": self.advantages.value_estimates(),
                "value_check_online": self.advantages.value_check(self.online_ids)}  # fmt: skip

    def state_dict(self) -> dict | None:
        return self.value.state_dict()
