"""What a post-training algorithm decides in the learner's loop (online.py), and nothing else: which
demonstrations and fleet episodes it learns from, which of their steps, what it adds to a batch, and any network
it trains beside the policy. The loop does the rest the same for all: batches, losses, optimiser, publishing."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from torch import Tensor, nn

from sop_ros.configs.learner import LearnerConfig
from sop_ros.episodes.format import Outcome
from sop_ros.learner.dataset import EpisodeDataset, EpisodeIndex
from sop_ros.learner.ranks import Ranks
from sop_ros.learner.sampling import Row
from sop_ros.model.vla import VLAPolicy

Sources = Mapping[str, EpisodeDataset]  # the loop's data by source: sampling.OFFLINE (demonstrations), ONLINE (fleet)


class Algorithm:
    """Behaviour cloning on the selected steps; an algorithm overrides what it does differently."""

    # The demonstrations' outcomes it learns from, and the fleet episodes' (none: demonstrations only).
    offline_outcomes: tuple[str, ...] = (Outcome.SUCCESS,)
    online_outcomes: tuple[str, ...] = ()
    indicator = ""  # what the exported policy is conditioned on ("positive": RECAP's advantage input)

    def __init__(self, config: LearnerConfig) -> None:
        self.config = config

    def select(self) -> Callable[[EpisodeIndex], np.ndarray] | None:
        """Which steps of a fleet episode it learns from (a mask per episode; None: every step)."""
        return None

    def build(self, policy: VLAPolicy, resumed: dict | None, ranks: Ranks) -> None:
        """Make its own networks for `policy` (restored from a checkpoint's `state_dict`) on the ranks' device."""

    def beside_policy(self) -> nn.Module | None:
        """A network trained in the policy's backward pass (wrapped with it for data parallel); None: none."""
        return None

    def start(self, data: Sources, resumed: dict | None, ranks: Ranks, say: Callable[[str], None]) -> None:
        """Before the first step, with the demonstrations loaded (after a restart too)."""

    def data_grew(self, data: Sources, ranks: Ranks) -> None:
        """The fleet's episodes were refreshed and there are new ones."""

    def add_inputs(self, batch: dict, batch_np: dict, rows: list[Row], mine: list[int], data: Sources,
                   step: int, device) -> Tensor | None:  # fmt: skip
        """Add its inputs to this rank's batch (`mine` of the global `rows`); returns the targets of the network
        beside the policy (None: none)."""
        return None

    def status(self) -> dict:
        """What `sop learner status` and the metrics show of it."""
        return {}

    def state_dict(self) -> dict | None:
        """What a restart needs of it (None: nothing)."""
        return None
