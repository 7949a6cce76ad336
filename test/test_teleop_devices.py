"""Operator devices on plain data: Joy deadman/takeover/labels, leader arm, keyboard."""

import numpy as np
import pytest

from sop_ros.configs.robot import TeleopArbiterConfig
from sop_ros.robot.teleop_devices import JoyTeleop, KeyboardTeleop, leader_arm_command

TIER = "unit"  # what the tests need: conftest.TIERS

AXES = [0.25, -0.5, 0.0, 0.0, 0.75, 1.0]


def buttons(*pressed: int) -> list[int]:
    return [int(i in pressed) for i in range(8)]


def test_joy_needs_deadman_and_takeover_and_releases_with_the_deadman():
    joy = JoyTeleop(TeleopArbiterConfig())
    assert joy.update(AXES, buttons()).command is None
    assert joy.update(AXES, buttons(0)).command is None  # takeover without deadman: nothing
    assert joy.update(AXES, buttons(4)).command is None  # deadman alone does not take over
    np.testing.assert_allclose(joy.update(AXES, buttons(4, 0)).command, [-0.5, 0.25, 0.75, 1.0])
    assert joy.update(AXES, buttons(4)).command is not None  # stays engaged while the deadman is held
    assert joy.update(AXES, buttons()).command is None
    assert joy.update(AXES, buttons(4)).command is None  # a new takeover press is needed


def test_joy_label_buttons_fire_once_per_press():
    joy = JoyTeleop(TeleopArbiterConfig())
    assert joy.update(AXES, buttons(3)).label == 1
    assert joy.update(AXES, buttons(3)).label is None
    assert joy.update(AXES, buttons(1)).label == 2
    with pytest.raises(ValueError, match="needs 6"):
        joy.update([0.0, 0.0], buttons())


def test_leader_arm_orders_by_name_and_names_missing_joints():
    cfg = TeleopArbiterConfig(action_names=("j1", "j2"), action_min=(-3, -3), action_max=(3, 3), max_rate=(1, 1),
                              hold_keeps_last=(False, False), joy_axes=(0, 1), joy_axis_scale=(1, 1),
                              leader_joint_names=("j1", "j2"))  # fmt: skip
    np.testing.assert_allclose(leader_arm_command(cfg, ["j2", "j1"], [0.2, 0.1]), [0.1, 0.2])
    with pytest.raises(ValueError, match=r"lacks joints \['j2'\]"):
        leader_arm_command(cfg, ["j1"], [0.1])


def test_keyboard_moves_one_period_per_key_and_toggles():
    keys = KeyboardTeleop(speed=0.5)
    keys.press("w")
    assert keys.command() is None
    keys.press(" ")
    keys.press("d")
    np.testing.assert_allclose(keys.command(), [0, -0.5, 0, -1.0])
    np.testing.assert_allclose(keys.command(), [0, 0, 0, -1.0])
    keys.press("g")
    assert keys.command()[3] == 1.0
    assert keys.press("3") == 3
    keys.press("q")
    assert keys.quit and keys.command() is None
