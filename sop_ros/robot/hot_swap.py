"""Which policy a robot runs, and when newly loaded weights take over: the policy node's hot-swap decisions on
plain data (sop_ros.robot.policy_node wires them to its load service, episode events and control ticks).

Weights loaded in the background wait, pending, for a swap point: the next episode boundary, or at once when the
load asks for it, the node is configured so, or no episode is running. A paced simulator instead names the
version each episode runs: from its first such episode on, swaps follow the names, and the few recently loaded
policies are kept warm for an episode that names one of them; one not loaded yet is awaited.

A policy let go (swapped out, the oldest warm one, a reload's predecessor) is not freed here: it waits in
`retired` for the node to release it between two control ticks (freeing an ONNX Runtime session holds the GIL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

KEEP_LOADED = 3  # recently loaded policies kept warm, for episodes scheduled to run one of them


class PolicyState(IntEnum):
    """The node's state, as PolicyStatus.state carries it (the message's STATE_* constants)."""

    LOADING = 0  # no policy can run yet
    READY = 1  # running a verified policy
    ERROR = 2  # the running policy failed; the robot is held
    HOLDING = 3  # a verified policy, commanding nothing: sensors stale, or an observation it does not fit


def policy_state_name(state: int) -> str:
    """`state` as the fleet table shows it ("ready", ...); "?" for a value this version does not know."""
    try:
        return PolicyState(state).name.lower()
    except ValueError:
        return "?"


class Takeover(Enum):
    """What became of a policy just loaded; `describe` is the load service's reply."""

    SCHEDULED_NOW = "running {version} (the episode's scheduled policy)"
    NOW = "running {version}"
    SCHEDULED_LATER = "{version} verified, runs from the first episode scheduled to run it"
    AT_BOUNDARY = "{version} verified, swaps in at the next episode boundary"

    def describe(self, version: str) -> str:
        return self.value.format(version=version)


class Versioned(Protocol):
    version: str


P = TypeVar("P", bound=Versioned)


class Swapped(NamedTuple, Generic[P]):
    old: P | None
    new: P


@dataclass
class HotSwap(Generic[P]):
    swap_at: Literal["episode_boundary", "immediate"] = "episode_boundary"
    keep_loaded: int = KEEP_LOADED
    running: P | None = None
    pending: P | None = None  # loaded and verified, waiting for its swap point
    recent: dict[str, P] = field(default_factory=dict)  # version -> loaded policy, oldest first (running included)
    scheduled: bool = False  # episodes name their policy: swaps follow the names, not the loads
    awaited: str = ""  # the version the running episode is scheduled to run, not loaded yet
    awaited_since: float = 0.0
    retired: list[P] = field(default_factory=list)  # let go, for the node to release between two ticks

    def loaded(self, policy: P, immediate: bool, episode_active: bool) -> tuple[Takeover, Swapped[P] | None]:
        """`policy` was just loaded and verified: swapped in now, or kept pending for its swap point."""
        self.pending = policy
        self.remember(policy)
        if policy.version == self.awaited:  # the running episode waits for it
            self.awaited = ""
            return Takeover.SCHEDULED_NOW, self.swap()
        if self.running is None or immediate or self.swap_at == "immediate":
            return Takeover.NOW, self.swap()
        if self.scheduled:
            return Takeover.SCHEDULED_LATER, None
        if not episode_active:
            return Takeover.NOW, self.swap()
        return Takeover.AT_BOUNDARY, None

    def episode_event(self, start: bool, scheduled_version: str, now: float) -> Swapped[P] | None:
        """An episode starts (naming the version it runs, or "") or ends: a swap point."""
        if start and scheduled_version:
            self.scheduled = True
            return self.run_scheduled(scheduled_version, now)
        if self.pending is not None and not self.scheduled:
            return self.swap()
        return None

    def run_scheduled(self, version: str, now: float) -> Swapped[P] | None:
        """The starting episode runs `version`: swapped in if loaded, else awaited from `now` on."""
        if self.running is not None and self.running.version == version:
            self.awaited = ""
            return None
        loaded = self.recent.get(version)  # every policy loaded passes through `remember`, the pending one too
        if loaded is None:
            self.awaited, self.awaited_since = version, now
            return None
        self.awaited = ""
        return self.swap(loaded)

    def still_awaiting(self, now: float, wait_s: float) -> bool:
        """Whether a control tick waits for the awaited version; after `wait_s` it is given up (the running one
        answers)."""
        if not self.awaited:
            return False
        if now - self.awaited_since < wait_s:
            return True
        self.awaited = ""
        return False

    def swap(self, policy: P | None = None) -> Swapped[P] | None:
        """`policy` (by default the pending one) runs from now on; None when that changes nothing."""
        policy = policy or self.pending
        if policy is None or policy is self.running:
            return None
        old = self.running
        if old is not None and old not in self.recent.values():  # a reload may have replaced its version
            self.retired.append(old)
        if policy is self.pending:
            self.pending = None
        self.running = policy
        return Swapped(old, policy)

    def remember(self, policy: P) -> None:
        """Keep `policy` warm among the recently loaded; the oldest not running is let go, as is a copy of the
        same version loaded before."""
        replaced = self.recent.pop(policy.version, None)
        if replaced is not None and replaced not in (self.running, self.pending):
            self.retired.append(replaced)
        self.recent[policy.version] = policy
        for version in list(self.recent)[: max(0, len(self.recent) - self.keep_loaded)]:
            if self.recent[version] not in (self.running, self.pending):
                self.retired.append(self.recent.pop(version))

    def take_retired(self) -> list[P]:
        """The policies let go since the last call, for the caller to release."""
        retired, self.retired = self.retired, []
        return retired
