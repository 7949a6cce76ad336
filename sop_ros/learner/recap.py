"""RECAP's arithmetic (pi*0.6): rewards, returns, value targets, advantages and the advantage indicator.

Numpy only, one episode or one task at a time; the learner turns these into the value network's targets and
the policy's indicator input.

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

import numpy as np

from sop_ros.model.inputs import INDICATOR_NEGATIVE, INDICATOR_NONE, INDICATOR_POSITIVE


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
