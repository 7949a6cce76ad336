"""When the scripted operator takes over from the policy (stalls, heading elsewhere, the time budget), and how it
backs off first."""

import dataclasses

import numpy as np
import pytest

from sop_ros.configs import ConfigError
from sop_ros.configs.robot import ScriptedOperatorConfig
from sop_ros.sim.takeover import BackOff, Correction, LiftCap, TakeoverMonitor, heading_agreement

TIER = "unit"  # what the tests need: conftest.TIERS

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


def test_backing_off_lifts_the_hand_then_hands_over_to_the_expert():
    back_off = BackOff(0.05)
    back_off.start(np.array([0.1, 0.6, 0.15]))
    assert back_off.command(np.array([0.1, 0.6, 0.15]), EXPERT).tolist() == [0.0, 0.0, 1.0, -1.0]  # gripper kept
    assert back_off.command(np.array([0.1, 0.6, 0.19]), EXPERT).tolist() == EXPERT.tolist()  # within 1 cm: done
    assert back_off.command(np.array([0.1, 0.6, 0.15]), EXPERT).tolist() == EXPERT.tolist()  # and stays done


def test_a_blocked_back_off_is_given_up_and_none_is_configured_by_default():
    back_off = BackOff(0.05)
    back_off.start(np.zeros(3))
    commands = [back_off.command(np.zeros(3), EXPERT)[2] for _ in range(12)]  # the hand never rises
    assert commands == [1.0] * 10 + [0.0] * 2  # twice the 5 steps a free lift takes, then the expert
    never = BackOff(ScriptedOperatorConfig(task="door-open-v3").back_off_lift_m)
    never.start(np.zeros(3))
    assert never.command(np.zeros(3), EXPERT).tolist() == EXPERT.tolist()


def test_back_off_applies_to_the_tasks_named():
    door = ScriptedOperatorConfig(task="door-open-v3", back_off_m=0.2, back_off_tasks=("door-open-v3",))
    assert door.back_off_lift_m == 0.2
    assert dataclasses.replace(door, task="window-open-v3").back_off_lift_m == 0.0
    assert dataclasses.replace(door, task="window-open-v3", back_off_tasks=()).back_off_lift_m == 0.2
    with pytest.raises(ConfigError, match=r"back_off_tasks\[0\]='door-v3': must be a Meta-World MT50 task"):
        dataclasses.replace(door, back_off_tasks=("door-v3",))


def test_the_lift_cap_stops_the_rise_above_the_takeover_point_and_nothing_else():
    up = np.array([0.3, -0.2, 1.0, 0.6])  # an expert re-approaching from above: up, and across towards its target
    cap = LiftCap(0.05)
    cap.start(np.array([0.1, 0.6, 0.10]))
    assert cap.command(np.array([0.1, 0.6, 0.12]), up).tolist() == up.tolist()  # 2 cm up: rises
    assert cap.command(np.array([0.12, 0.6, 0.15]), up).tolist() == [0.3, -0.2, 0.0, 0.6]  # at 5 cm: across only
    down = np.array([0.0, 0.1, -1.0, 0.6])
    assert cap.command(np.array([0.12, 0.6, 0.16]), down).tolist() == down.tolist()  # descending is never held back
    cap.reset()
    assert cap.command(np.array([0.1, 0.6, 0.3]), up).tolist() == up.tolist()  # not started: no cap
    uncapped = LiftCap(0.0)
    uncapped.start(np.zeros(3))
    assert uncapped.command(np.array([0.0, 0.0, 0.5]), up).tolist() == up.tolist()
    # A task that backs off lifts as its back-off says; the others are capped as configured.
    door = ScriptedOperatorConfig(task="door-open-v3", back_off_m=0.2, back_off_tasks=("door-open-v3",),
                                  lift_cap_m=0.05)  # fmt: skip
    assert door.task_lift_cap_m == 0.0 and dataclasses.replace(door, task="dial-turn-v3").task_lift_cap_m == 0.05
    with pytest.raises(ConfigError, match=r"lift_cap_m=0.5: must be in 0..0.3 m"):
        dataclasses.replace(door, lift_cap_m=0.5)


def test_a_correction_backs_off_on_its_backing_off_task_and_caps_the_lift_on_the_others():
    config = ScriptedOperatorConfig(task="door-open-v3", back_off_m=0.05, back_off_tasks=("door-open-v3",),
                                    lift_cap_m=0.02)  # fmt: skip
    door, dial = Correction(config), Correction(dataclasses.replace(config, task="dial-turn-v3"))
    up = np.array([0.3, -0.2, 1.0, 0.6])
    for correction in (door, dial):
        correction.start(np.array([0.1, 0.6, 0.10]))
    assert door.command(np.array([0.1, 0.6, 0.13]), up).tolist() == [0.0, 0.0, 1.0, 0.6]  # backing off: straight up
    assert dial.command(np.array([0.1, 0.6, 0.13]), up).tolist() == [0.3, -0.2, 0.0, 0.6]  # 3 cm up: capped
    dial.reset()
    assert dial.command(np.array([0.1, 0.6, 0.13]), up).tolist() == up.tolist()
