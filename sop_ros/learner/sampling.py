"""SOP's batch composition: task-balanced, and within each task an adaptive share of online (fleet) data.

Every batch gives each of the M tasks 1/M of its rows (the remainder one row each to tasks drawn at random), so
the policy stays a generalist whatever the fleet happens to be doing. Within a task the online share is

    w_on = exp(alpha * l_on) / (exp(alpha * l_on) + exp(l_off)) = sigmoid(alpha * l_on - l_off)

with l_on and l_off the task's training losses on its online and offline rows, averaged over the last W learner
steps, and w_on clipped to [online_share_min, online_share_max]. alpha > 1 leans towards the fleet's data when
the policy does as badly on it as on the demonstrations; the clip keeps both sources in every batch.

The losses enter relative to their mean, l / ((l_on + l_off) / 2): the share then depends on how much harder the
fleet's data is than the demonstrations, not on the loss's units. Taken raw, flow-matching losses of 0.05-0.3
put alpha * l_on - l_off within +-0.3 of zero whatever the data, so every batch was close to a fixed 50/50 mix;
relative, equal losses give sigmoid(alpha - 1) (0.62 at alpha 1.5), an online loss twice the offline one 0.79,
half of it 0.42.

The published rule assumes plenty of fleet data. A fleet's first episodes of a task are a few hundred steps beside
thousands of demonstration steps, and 60-80% of the task's rows drawn from them overfit those few (measured: one
robot's first 19 episodes per task at shares of 0.65-0.8 took dial-turn from 62% to 22%). So a task's share is at
most `online_share_per_data` times its fleet steps' part of its steps (never below online_share_min): it grows
with the data, and a larger fleet reaches SOP's share sooner.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sop_ros.configs.learner import SamplingConfig

ONLINE, OFFLINE = "online", "offline"
SOURCES = (ONLINE, OFFLINE)


class Row(NamedTuple):
    """One row of a batch: which task, from which source, and which step of which episode of that source."""

    task: str
    source: str  # ONLINE or OFFLINE
    episode: int  # index in that source's dataset
    step: int


def task_rows(batch_size: int, tasks: Sequence[str], rng: np.random.Generator) -> dict[str, int]:
    """Rows per task: batch_size // M each, the remainder one each to tasks drawn without replacement."""
    if not tasks:
        raise ValueError("no tasks to sample")
    base, extra = divmod(batch_size, len(tasks))
    rows = dict.fromkeys(tasks, base)
    for i in rng.choice(len(tasks), extra, replace=False):
        rows[tasks[i]] += 1
    return rows


def online_share(loss_online: float, loss_offline: float, config: SamplingConfig) -> float:
    """SOP's w_on for one task from its windowed mean losses (relative to their mean), clipped to
    [online_share_min, online_share_max]."""
    scale = (loss_online + loss_offline) / 2
    if scale <= 0:  # both zero: as equal losses
        loss_online = loss_offline = scale = 1.0
    x = (config.online_share_alpha * loss_online - loss_offline) / scale
    share = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))  # no overflow either way
    return min(max(share, config.online_share_min), config.online_share_max)


def data_capped(share: float, online_steps: int, offline_steps: int, config: SamplingConfig) -> float:
    """`share`, at most online_share_per_data times the online steps' part of all the task's steps, and at least
    online_share_min (a cap of 0: `share` as it is)."""
    if config.online_share_per_data <= 0 or online_steps + offline_steps == 0:
        return share
    cap = config.online_share_per_data * online_steps / (online_steps + offline_steps)
    return max(config.online_share_min, min(share, cap))


def split_rows(rows: int, share: float, has_online: bool, has_offline: bool, rng: np.random.Generator) -> int:
    """How many of a task's `rows` are online: share * rows, rounded up or down at random so that the expected
    count is exact; all of them from the one source a task has when it lacks the other."""
    if not has_online:
        return 0
    if not has_offline:
        return rows
    exact = share * rows
    return int(math.floor(exact) + (rng.random() < exact - math.floor(exact)))


class OnlineShare:
    """Per-task windowed losses on online and offline rows, and the online share they give.

    Until a task has a loss of both kinds inside the window its share is the middle of the clip range.
    """

    def __init__(self, tasks: Sequence[str], config: SamplingConfig) -> None:
        self.config = config
        # (task, source) -> (learner step, mean loss of that step's rows), oldest first
        self._losses: dict[tuple[str, str], deque[tuple[int, float]]] = {
            (task, source): deque() for task in tasks for source in SOURCES
        }

    def record(self, step: int, task: str, source: str, loss: float) -> None:
        """The mean loss of `task`'s rows from `source` at learner step `step`."""
        if (task, source) not in self._losses:
            raise KeyError(f"unknown task {task!r} or source {source!r} (sources: {', '.join(SOURCES)})")
        if not math.isfinite(loss):
            raise ValueError(f"loss {loss!r} of {task} ({source}) at step {step} is not finite")
        self._losses[task, source].append((step, float(loss)))

    def mean_loss(self, task: str, source: str, step: int) -> float | None:
        """Mean of the losses recorded in the last loss_window_steps steps up to `step`; None without any."""
        window = self._losses[task, source]
        while window and window[0][0] <= step - self.config.loss_window_steps:
            window.popleft()
        return sum(loss for _, loss in window) / len(window) if window else None

    def share(self, task: str, step: int) -> float:
        on, off = self.mean_loss(task, ONLINE, step), self.mean_loss(task, OFFLINE, step)
        if on is None or off is None:
            return (self.config.online_share_min + self.config.online_share_max) / 2
        return online_share(on, off, self.config)

    def state_dict(self) -> dict[str, list]:
        """The windows, for a checkpoint: {"task/source": [[step, loss], ...]}."""
        return {f"{task}/{source}": [list(p) for p in window] for (task, source), window in self._losses.items()}

    def load_state_dict(self, state: dict[str, list]) -> None:
        """Windows from `state_dict`; tasks this learner does not train are ignored."""
        for key, window in state.items():
            task, source = key.rsplit("/", 1)
            if (task, source) in self._losses:
                self._losses[task, source] = deque((int(s), float(v)) for s, v in window)

    def shares(self, step: int, steps: dict[str, tuple[int, int]] | None = None) -> dict[str, float]:
        """Each task's share at `step`; with `steps` (task -> its online and offline steps), capped by the data."""
        tasks = sorted({task for task, _ in self._losses})
        shares = {task: self.share(task, step) for task in tasks}
        if steps is None:
            return shares
        return {t: data_capped(s, *steps.get(t, (0, 0)), self.config) for t, s in shares.items()}
