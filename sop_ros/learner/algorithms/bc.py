"""Behaviour cloning: the demonstrations only, whatever the fleet does (the baseline the others are held to)."""

from __future__ import annotations

from sop_ros.learner.algorithms.base import Algorithm


class BehaviourCloning(Algorithm):
    name = "bc"
