"""HG-DAgger's training rows from fleet episodes: the operators' corrections, and optionally the policy's own
successful driving.

An intervention is recorded step by step (`EpisodeIndex.operator`): while an operator drives, the executed
command is the operator's, so those steps are labelled by the correction itself. Steps the policy drove are
added only from episodes that succeeded, and only with `use_autonomous_segments`: the autonomous steps of a
failure are the behaviour the corrections are there to replace.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sop_ros.learner.dataset import EpisodeIndex


def training_steps(use_autonomous_segments: bool) -> Callable[[EpisodeIndex], np.ndarray]:
    """A step selection for EpisodeDataset(select=...) over fleet episodes."""

    def select(episode: EpisodeIndex) -> np.ndarray:
        if use_autonomous_segments and episode.outcome == "success":
            return np.ones(episode.steps, dtype=bool)
        return episode.operator.astype(bool, copy=True)

    return select
