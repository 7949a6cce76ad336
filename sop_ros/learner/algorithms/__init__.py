"""The post-training algorithms, each in its own file behind `base.Algorithm`: adding one is its file and its
line here (and its name among the learner config's choices)."""

from __future__ import annotations

from sop_ros.configs.learner import LearnerConfig
from sop_ros.learner.algorithms.base import Algorithm
from sop_ros.learner.algorithms.bc import BehaviourCloning
from sop_ros.learner.algorithms.hg_dagger import HgDagger
from sop_ros.learner.algorithms.recap import Recap

ALGORITHMS: dict[str, type[Algorithm]] = {a.name: a for a in (BehaviourCloning, HgDagger, Recap)}


def make_algorithm(config: LearnerConfig) -> Algorithm:
    return ALGORITHMS[config.algorithm](config)
