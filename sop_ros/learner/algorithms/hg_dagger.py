"""HG-DAgger's training rows from fleet episodes: the operators' corrections, and optionally the policy's own
driving that ended in success.

An intervention is recorded step by step (`EpisodeIndex.operator`): while an operator drives, the executed
command is the operator's, so those steps are labelled by the correction itself. With `use_autonomous_segments`,
steps the policy drove are added too, but only those that led to a success with no one taking over again: a whole
episode that succeeded on its own, or the policy's steps after the last correction of one that succeeded. The
steps before a takeover are the behaviour the correction is there to replace, even when the episode then
succeeded thanks to the operator (learning from those made a task's success fall to 0%). Off by default, as
HG-DAgger aggregates the expert's labels only: a policy's successful driving is slower than its operator's
(faucet-open: about 100 steps against the expert's 60), and learning from it teaches the slowness.

Without `use_failed_corrections`, a correction counts only when its episode ended in success: one that did not
finish the task is no demonstration of it. A scripted operator showed why it matters: taking over door-open where
the policy left the arm, it failed 16 of 29 corrections (each flailing to the step limit), until it learned to back
off first (docs/results/operator_back_off.md).

With `skip_correction_rise`, a correction's opening lift is left out: the steps at its start that command the hand
up more than sideways. An operator who takes over near the object first lifts clear (a back-off, or Meta-World's
experts re-approaching from 20 cm above whenever they are 2 cm off their target), and those steps start from states
on the policy's own path, where the demonstrations go on towards the object: learned from, they teach the policy
to break off mid-task (dial-turn fell from 74 to 44 of 100 after one round: docs/results/dagger-rounds). The
approach that follows, from above, is what a demonstration does and is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sop_ros.episodes.format import LABELLED, Outcome
from sop_ros.learner.algorithms.base import Algorithm
from sop_ros.learner.dataset import EpisodeIndex


class HgDagger(Algorithm):
    name = "hg_dagger"
    online_outcomes = (*LABELLED, Outcome.UNKNOWN)  # corrections count whatever the outcome, unless told

    def select(self) -> Callable[[EpisodeIndex], np.ndarray]:
        cfg = self.config
        return training_steps(cfg.use_autonomous_segments, cfg.use_failed_corrections, cfg.skip_correction_rise)


# A command rises when its upward part is above this (action units) and at least its sideways part.
MIN_RISE = 0.1


def training_steps(use_autonomous_segments: bool, use_failed_corrections: bool = True,
                   skip_correction_rise: bool = False) -> Callable[[EpisodeIndex], np.ndarray]:  # fmt: skip
    """A step selection for EpisodeDataset(select=...) over fleet episodes."""

    def select(episode: EpisodeIndex) -> np.ndarray:
        if not use_failed_corrections and episode.outcome != Outcome.SUCCESS:
            return np.zeros(len(episode.operator), bool)
        selected = episode.operator.astype(bool, copy=True)
        if skip_correction_rise:
            selected &= ~opening_rises(episode.operator, episode.actions)
        if use_autonomous_segments and episode.outcome == Outcome.SUCCESS:
            corrected = np.flatnonzero(episode.operator)
            selected[corrected[-1] + 1 if len(corrected) else 0 :] = True
        return selected

    return select


def opening_rises(operator: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The steps that open each stretch of operator control by commanding the hand up more than sideways."""
    rising = (actions[:, 2] > MIN_RISE) & (actions[:, 2] >= np.linalg.norm(actions[:, :2], axis=1))
    opening = np.zeros(len(operator), bool)
    for k in range(len(operator)):
        starts_or_goes_on = k == 0 or not operator[k - 1] or opening[k - 1]
        opening[k] = bool(operator[k]) and starts_or_goes_on and bool(rising[k])
    return opening
