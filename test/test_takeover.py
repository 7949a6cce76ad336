"""When the scripted operator takes over from the policy: stalls, heading elsewhere, and the time budget."""

import numpy as np

from sop_ros.configs.robot import ScriptedOperatorConfig
from sop_ros.sim.takeover import TakeoverMonitor, heading_agreement

CONFIG = ScriptedOperatorConfig(mode="intervene", stall_steps=10, stall_distance_m=0.005, drift_window=5,
                                drift_min_cosine=0.0, time_budget_steps=60)  # fmt: skip
EXPERT = np.array([1.0, -1.0, 0.0, -1.0])  # a saturated move, as Meta-World's experts command


def drive(monitor: TakeoverMonitor, executed: np.ndarray, steps: int, speed_m: float = 0.01) -> list[str | None]:
    hand = np.zeros(3)
    verdicts = []
    for _ in range(steps):
        hand = hand + speed_m
        verdicts.append(monitor.observe(hand, executed, EXPERT))
    return verdicts


def test_a_slower_move_the_experts_way_is_not_drifting():
    verdicts = drive(TakeoverMonitor(CONFIG), np.array([0.2, -0.3, 0.05, -1.0]), 50)
    assert verdicts == [None] * 50


def test_heading_the_other_way_for_the_window_takes_over():
    verdicts = drive(TakeoverMonitor(CONFIG), np.array([-0.5, 0.4, 0.0, -1.0]), 10)
    assert verdicts[:4] == [None] * 4
    assert verdicts[4].startswith("heading elsewhere than the expert: mean cosine -0.99 over the last 5 moving")


def test_commands_without_a_direction_are_not_judged():
    assert heading_agreement(np.array([0.01, 0.0, 0.02]), EXPERT[:3]) is None
    assert heading_agreement(EXPERT[:3], np.zeros(3)) is None
    assert heading_agreement(np.array([1.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])) == 0.0
    verdicts = drive(TakeoverMonitor(CONFIG), np.array([0.0, 0.05, 0.0, 1.0]), 50)
    assert verdicts == [None] * 50  # barely commanding, yet moving: neither drifting nor stalled


def test_a_stalled_hand_and_the_time_budget():
    monitor = TakeoverMonitor(CONFIG)
    verdicts = drive(monitor, EXPERT, 12, speed_m=0.0001)
    assert verdicts[:9] == [None] * 9 and verdicts[9] == "stalled: the hand moved 1.6 mm in 10 steps"
    monitor.reset()
    verdicts = drive(monitor, EXPERT, 60)
    assert verdicts[:59] == [None] * 59 and verdicts[59] == "no success within 60 steps"
