"""Executing action chunks at the control rate: which action to command at time t, given the chunks so far.

A chunk predicted from the observation at t0 holds the actions for t0, t0 + T, t0 + 2T, ... (T the control
period); it is indexed by time, not by count, so a chunk that arrives late starts where the robot is now, and
a joint-state rate above the control rate does not run it faster. Three ways to go from one chunk to the next:
  blend     the new chunk takes over linearly within `blend_steps` steps of its first use: no jump in the
            command when the new chunk disagrees with the old one (different mode of a multimodal policy).
  ensemble  every chunk covering t votes, the oldest weighted most (ACT's temporal ensembling:
            w_i = exp(-decay * i), i = 0 the oldest): smooth, but averages modes.
  rtc       real-time chunking: the new chunk was computed from the actions that ran while it was computed
            (`upcoming`: its given prefix), so it takes over at once, from where the old one stood.
A chunk may be added before it can be used (`ready_ns`: a simulated inference delay); until then the chunks
before it run on. Blend with blend_steps 0 switches to each new chunk at once (the plain replacement).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass
class Chunk:
    t0_ns: int
    actions: np.ndarray  # (H, D)
    first_used_ns: int | None = None
    ready_ns: int = 0  # usable from this time on


class ChunkExecutor:
    def __init__(
        self,
        period_ns: int,
        mode: Literal["blend", "ensemble", "rtc"] = "blend",
        blend_steps: int = 4,
        ensemble_decay: float = 0.1,
    ) -> None:
        self.period_ns = period_ns
        self.mode = mode
        self.blend_steps = blend_steps
        self.ensemble_decay = ensemble_decay
        self.chunks: list[Chunk] = []  # oldest first
        self.last: np.ndarray | None = None  # the action last returned
        # Since the episode began: how far each returned action moved from the one before (the largest over its
        # dimensions), and which of those changes came at a tick where a new chunk was first used.
        self.changes: list[float] = []
        self.takeovers: list[int] = []  # indices into `changes`

    def clear(self) -> None:
        """A new episode: no chunk, no last action, no changes yet."""
        self.chunks.clear()
        self.last = None
        self.changes, self.takeovers = [], []

    def add(self, actions: np.ndarray, t0_ns: int, ready_ns: int = 0) -> None:
        self.chunks.append(Chunk(t0_ns, np.asarray(actions, dtype=np.float64), ready_ns=ready_ns))

    def upcoming(self, t_ns: int, steps: int) -> np.ndarray:
        """The actions the chunks held now give at t, t + T, ... (at most `steps`, stopping where none covers),
        without using them: a real-time-chunking policy's prefix, the actions that run while it computes."""
        out = []
        for k in range(steps):
            at = t_ns + k * self.period_ns
            covering = [c for c in self.chunks if c.ready_ns <= at and 0 <= self.index(c, at) < len(c.actions)]
            if not covering:
                break
            out.append(covering[-1].actions[self.index(covering[-1], at)])
        return np.stack(out) if out else np.empty((0, 0))

    def index(self, chunk: Chunk, t_ns: int) -> int:
        return round((t_ns - chunk.t0_ns) / self.period_ns)

    def steps_into_newest(self, t_ns: int) -> int | None:
        """How far t is into the newest chunk (None: no chunk yet, or it does not cover t)."""
        if not self.chunks:
            return None
        i = self.index(self.chunks[-1], t_ns)
        return i if 0 <= i < len(self.chunks[-1].actions) else None

    def action(self, t_ns: int) -> np.ndarray | None:
        """The action for time t, or None when no chunk covers it (the robot must not move on a guess)."""
        self.chunks = [c for c in self.chunks if self.index(c, t_ns) < len(c.actions)]  # past their end: gone
        live = [c for c in self.chunks if self.index(c, t_ns) >= 0 and c.ready_ns <= t_ns]
        if not live:
            return None
        newest = live[-1]
        switched = newest.first_used_ns is None
        if switched:
            newest.first_used_ns = t_ns
        action = self._action(live, newest, t_ns)
        if self.last is not None:
            if switched:
                self.takeovers.append(len(self.changes))
            self.changes.append(float(np.abs(action - self.last).max()))
        self.last = action
        return action

    def _action(self, live: list[Chunk], newest: Chunk, t_ns: int) -> np.ndarray:
        if self.mode == "ensemble":
            weights = np.exp(-self.ensemble_decay * np.arange(len(live)))
            votes = np.stack([c.actions[self.index(c, t_ns)] for c in live])
            return weights @ votes / weights.sum()
        own = newest.actions[self.index(newest, t_ns)]
        since = round((t_ns - newest.first_used_ns) / self.period_ns)
        if self.mode == "rtc" or len(live) < 2 or since >= self.blend_steps:
            return own.copy()
        previous = live[-2]
        alpha = (since + 1) / (self.blend_steps + 1)
        return alpha * own + (1 - alpha) * previous.actions[self.index(previous, t_ns)]


def seam_changes(changes: list[float], takeovers: list[int], window: int) -> list[float]:
    """What each takeover cost in motion: the largest change of the action (`ChunkExecutor.changes`) over the
    `window` ticks from the one where the new chunk was first used, or fewer when the next one takes over sooner.
    One window for every mode: a switch or rtc moves at once, a blend spreads the same disagreement over its steps."""
    ends = [*takeovers[1:], len(changes)] if takeovers else []
    return [max(changes[start : min(start + window, end)]) for start, end in zip(takeovers, ends, strict=True)]
