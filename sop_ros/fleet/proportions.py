"""Success rates as evidence: a rate's interval, a test of two rates, and the episodes a difference needs.

Every scored episode is one Bernoulli trial, so a score is k successes out of n. Wilson's interval stays inside
[0, 1] and keeps its coverage near 0% and 100%, where the textbook p ± 1.96 SE does not; the difference of two
rates gets Newcombe's interval built from the two Wilson intervals, and the verdict "beyond noise" comes from
the pooled two-proportion z-test. Plain Python (no numpy): the same numbers in a report and in a test.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # two-sided: a difference is "beyond noise" when its p-value is below this


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check(successes: int, episodes: int) -> None:
    if episodes <= 0:
        raise ValueError(f"a rate needs at least one episode, got {episodes}")
    if not 0 <= successes <= episodes:
        raise ValueError(f"successes must be between 0 and the {episodes} episodes, got {successes}")


def wilson_interval(successes: int, episodes: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval of the success rate successes / episodes."""
    _check(successes, episodes)
    z, n, p = _z(confidence), episodes, successes / episodes
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Exact at the ends: no success rules out no rate above 0, and all successes none below 1.
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == episodes else centre + half)


@dataclass(frozen=True)
class Rate:
    """k successes out of n episodes."""

    successes: int
    episodes: int

    def __post_init__(self) -> None:
        _check(self.successes, self.episodes)

    @property
    def value(self) -> float:
        return self.successes / self.episodes

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        return wilson_interval(self.successes, self.episodes, confidence)

    def __str__(self) -> str:
        low, high = self.interval()
        return f"{self.value:.0%} [{low:.0%}, {high:.0%}] (n={self.episodes})"

    def as_dict(self) -> dict:
        """The counts, the rate and its 95% interval, as reports keep them."""
        return {"successes": self.successes, "episodes": self.episodes, "rate": self.value,
                "interval": list(self.interval())}  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """Rate a against rate b."""

    a: Rate
    b: Rate
    difference: float  # a - b
    interval: tuple[float, float]  # Newcombe's interval of a - b
    z: float
    p_value: float  # two-sided, pooled two-proportion z-test

    @property
    def beyond_noise(self) -> bool:
        return self.p_value < ALPHA

    def __str__(self) -> str:
        low, high = self.interval
        verdict = "beyond noise" if self.beyond_noise else "within noise"
        return (f"{self.a.value:.0%} vs {self.b.value:.0%}: {self.difference:+.1%} [{low:+.1%}, {high:+.1%}], "
                f"two-proportion z = {self.z:.2f}, p = {self.p_value:.3g}, {verdict} "
                f"({self.a.episodes} and {self.b.episodes} episodes)")  # fmt: skip


def compare(a: Rate, b: Rate, confidence: float = CONFIDENCE) -> Comparison:
    """a - b with Newcombe's interval and the pooled two-proportion z-test's two-sided p-value."""
    pa, pb = a.value, b.value
    (la, ua), (lb, ub) = a.interval(confidence), b.interval(confidence)
    difference = pa - pb
    interval = (difference - math.hypot(pa - la, ub - pb), difference + math.hypot(ua - pa, pb - lb))
    pooled = (a.successes + b.successes) / (a.episodes + b.episodes)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.episodes + 1 / b.episodes))
    if se == 0:  # both rates 0% or both 100%: no evidence of a difference
        return Comparison(a, b, difference, interval, 0.0, 1.0)
    z = difference / se
    return Comparison(a, b, difference, interval, z, math.erfc(abs(z) / math.sqrt(2)))


def episodes_needed(rate_a: float, rate_b: float, power: float = 0.8, alpha: float = ALPHA) -> int:
    """Episodes per arm for the two-sided two-proportion test at `alpha` to see rate_a against rate_b with
    probability `power` (the normal approximation's sample size)."""
    if rate_a == rate_b:
        raise ValueError("equal rates: no number of episodes tells them apart")
    z_alpha, z_power = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    mean = (rate_a + rate_b) / 2
    spread = (z_alpha * math.sqrt(2 * mean * (1 - mean))
              + z_power * math.sqrt(rate_a * (1 - rate_a) + rate_b * (1 - rate_b)))  # fmt: skip
    return math.ceil(spread**2 / (rate_a - rate_b) ** 2)


def bootstrap_difference(groups_a: Sequence[Sequence[bool]], groups_b: Sequence[Sequence[bool]],
                         resamples: int = 10_000, seed: int = 0,
                         confidence: float = CONFIDENCE) -> tuple[float, float]:  # fmt: skip
    """Percentile interval of rate(a) - rate(b) when episodes come in groups (a run, a seed) that may share more
    than chance: whole groups are resampled, so a run that went well or badly counts once, not per episode."""
    if not groups_a or not groups_b:
        raise ValueError("each arm needs at least one group of episodes")
    rng = random.Random(seed)

    def rate(groups: Sequence[Sequence[bool]]) -> float:
        drawn = [groups[rng.randrange(len(groups))] for _ in groups]
        return sum(sum(g) for g in drawn) / max(1, sum(len(g) for g in drawn))

    differences = sorted(rate(groups_a) - rate(groups_b) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return differences[int(tail * (resamples - 1))], differences[math.ceil((1 - tail) * (resamples - 1))]
