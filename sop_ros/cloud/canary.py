"""Canary rollout: a new policy runs on a few robots first, and reaches the fleet only if it does no worse.

    candidate published   the canary robots (chosen by config, or at random) run it; the rest keep the incumbent
    canary episodes end   once the canaries have ended `min_episodes` with the candidate, its success is compared
                          with the incumbent's on the same tasks
    promote               not below the incumbent beyond noise: every robot takes the candidate
    roll back             below it beyond noise: the canaries return to the incumbent at their next episode
                          boundary, and the learner's next candidate starts again (from the incumbent, or from
                          its moving average)

The test is one-sided and stratified by task: each task's difference in success is weighted by its share of the
canary's episodes (so a canary that happened to draw the hard tasks is not judged against the incumbent's easy
ones), its variance from the two tasks' pooled rate, and the candidate is rolled back when a difference this low
has probability below `alpha` under "no worse". Success is the episode's own without the operator's help: an
operator who finishes every failing episode would make every labelled outcome a success.

Plain data in, a verdict out: no Zenoh, no ROS (tested on hand-computed counts).
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Literal

from sop_ros.bridge.artifacts import PolicyAnnouncement
from sop_ros.configs.learner import CanaryConfig

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sop_ros.cloud.episode_store import StoredEpisode
    from sop_ros.cloud.policy_registry import PolicyRegistry

Decision = Literal["wait", "promote", "roll back"]


def choose_canaries(robots: Sequence[str], config: CanaryConfig, rng: random.Random) -> list[str]:
    """The robots that run the next candidate: the configured ones among `robots`, else a random `share`."""
    if config.robots:
        return [r for r in config.robots if r in robots]
    if len(robots) < 2:
        return []  # one robot: no incumbent left to compare with, so no canary
    count = min(max(1, math.ceil(config.share * len(robots))), len(robots) - 1)
    return sorted(rng.sample(sorted(robots), count))


@dataclass(frozen=True)
class Ended:
    """One ended episode as the gate sees it."""

    task: str
    policy_version: str
    success: bool  # the policy's own: no operator intervention
    robot_id: str = ""


@dataclass
class Tally:
    """Successes and episodes per task."""

    counts: dict[str, list[int]] = field(default_factory=dict)  # task -> [successes, episodes]

    def add(self, task: str, success: bool) -> None:
        counts = self.counts.setdefault(task, [0, 0])
        counts[0] += int(success)
        counts[1] += 1

    @property
    def episodes(self) -> int:
        return sum(n for _, n in self.counts.values())

    @property
    def successes(self) -> int:
        return sum(s for s, _ in self.counts.values())


def tally(outcomes: Iterable[Ended], version: str, robots: Sequence[str] | None = None,
          window: int | None = None) -> Tally:  # fmt: skip
    """`version`'s episodes (on `robots`, if named), the latest `window` of each task (in the order given)."""
    per_task: dict[str, list[bool]] = {}
    for o in outcomes:
        if o.policy_version == version and (robots is None or o.robot_id in robots):
            per_task.setdefault(o.task, []).append(o.success)
    counted = Tally()
    for task, successes in per_task.items():
        for success in successes[-window:] if window else successes:
            counted.add(task, success)
    return counted


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    difference: float = 0.0  # candidate - incumbent, task-weighted by the canary's episodes
    z: float = 0.0
    p: float = 1.0  # one-sided: the chance of a difference this low were the candidate no worse
    candidate: tuple[int, int] = (0, 0)  # successes, episodes on the tasks compared
    incumbent: tuple[int, int] = (0, 0)
    tasks: tuple[str, ...] = ()

    def evidence(self) -> dict[str, float]:
        """The figures the signed announcement carries."""
        return {"canary_successes": self.candidate[0], "canary_episodes": self.candidate[1],
                "incumbent_successes": self.incumbent[0], "incumbent_episodes": self.incumbent[1],
                "difference": round(self.difference, 6), "z": round(self.z, 6), "p": round(self.p, 6)}  # fmt: skip


def judge(candidate: Tally, incumbent: Tally, config: CanaryConfig) -> Verdict:
    """Promote, roll back, or wait for more canary episodes (or for the incumbent's on the canary's tasks)."""
    if candidate.episodes < config.min_episodes:
        return Verdict("wait", f"{candidate.episodes} of {config.min_episodes} canary episodes")
    tasks = tuple(sorted(t for t in candidate.counts if t in incumbent.counts))
    if not tasks:
        return Verdict("wait", "the incumbent has no episodes of the canary's tasks yet")
    total = sum(candidate.counts[t][1] for t in tasks)
    difference = variance = 0.0
    for task in tasks:
        (cs, cn), (is_, in_) = candidate.counts[task], incumbent.counts[task]
        weight = cn / total
        pooled = (cs + is_) / (cn + in_)
        difference += weight * (cs / cn - is_ / in_)
        variance += weight**2 * pooled * (1 - pooled) * (1 / cn + 1 / in_)
    z = difference / math.sqrt(variance) if variance > 0 else 0.0
    p = NormalDist().cdf(z)
    counts = {"candidate": (sum(candidate.counts[t][0] for t in tasks), total),
              "incumbent": (sum(incumbent.counts[t][0] for t in tasks), sum(incumbent.counts[t][1] for t in tasks))}
    figures = f"{difference:+.1%} on {', '.join(tasks)}, z = {z:.2f}, one-sided p = {p:.3g}"
    if p < config.alpha:
        return Verdict("roll back", f"below the incumbent beyond noise: {figures}", difference, z, p,
                       tasks=tasks, **counts)  # fmt: skip
    return Verdict("promote", f"not below the incumbent beyond noise: {figures}", difference, z, p, tasks=tasks,
                   **counts)  # fmt: skip


def ended(stored: Iterable[StoredEpisode]) -> list[Ended]:
    """The store's episodes, oldest first, as the gate counts them: a success is one with no intervention."""
    return [Ended(e.task, e.policy_version, e.autonomous_success, e.robot_id) for e in stored]


# Publish an exported policy: (onnx path, metrics, canary robots or None for every robot) -> its announcement.
Publish = Callable[[str, dict[str, float], list[str] | None], PolicyAnnouncement]


RECENT_VERDICTS = 20  # a gate's latest verdicts, as the learner's status shows them


class CanaryGate:
    """The rollout of each new version: on canary when there is an incumbent to compare with, then decided.

    Whoever makes versions (the learner, or a scenario) offers each to `publish`, and calls `check` with the
    episodes stored so far; while a candidate is on canary, `publish` refuses newer ones (the maker holds them)."""

    def __init__(self, config: CanaryConfig, registry: PolicyRegistry, private_key: Ed25519PrivateKey,
                 publish: Publish, robots: Callable[[], Sequence[str]]) -> None:  # fmt: skip
        self.config, self.registry, self.private_key = config, registry, private_key
        self._publish, self._robots = publish, robots
        self.rng = random.Random(config.seed)
        # (candidate, verdict) of the latest decided canaries: a fleet left for days decides thousands, and every
        # one is kept in the registry's rollout history; here, how many went each way.
        self.verdicts: deque[tuple[str, Verdict]] = deque(maxlen=RECENT_VERDICTS)
        self.decided: Counter[str] = Counter()

    @property
    def pending(self) -> PolicyAnnouncement | None:
        return self.registry.canary()

    def publish(self, onnx_path: str, metrics: dict[str, float]) -> PolicyAnnouncement | None:
        """Put a new version on canary (or out to every robot while there is no incumbent or only one robot);
        None while another candidate is on canary."""
        if self.pending is not None:
            return None
        canaries = choose_canaries(self._robots(), self.config, self.rng) if self.registry.latest() else []
        return self._publish(onnx_path, metrics, canaries or None)

    def check(self, outcomes: Sequence[Ended]) -> Verdict | None:
        """Decide the candidate on canary if its episodes suffice: promote it or roll it back (signed, in the
        registry, which the policy server announces). None when there is none; a "wait" verdict otherwise."""
        candidate, incumbent = self.pending, self.registry.latest()
        if candidate is None or incumbent is None:
            return None
        on_canary = tally(outcomes, candidate.version, candidate.robots)
        verdict = judge(on_canary, tally(outcomes, incumbent.version, window=self.config.incumbent_window), self.config)
        if verdict.decision == "promote":
            self.registry.promote(self.private_key, verdict.evidence(), verdict.reason)
        elif verdict.decision == "roll back":
            self.registry.roll_back(self.private_key, verdict.evidence(), verdict.reason)
        if verdict.decision != "wait":
            self.verdicts.append((candidate.version, verdict))
            self.decided[verdict.decision] += 1
        return verdict
