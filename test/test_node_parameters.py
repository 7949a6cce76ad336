"""ROS parameters at run time: a live one is validated like the YAML and applied, any other is refused as
read-only (what `ros2 param set` does through the same set_parameters path)."""

import numpy as np
import pytest
from rclpy.parameter import Parameter

from sop_ros.episodes.format import Controller

TIER = "ros"  # what the tests need: conftest.TIERS


def set_param(node, name: str, value):
    (result,) = node.set_parameters([Parameter(name, value=value)])
    return result


@pytest.fixture
def policy_node(rclpy_context):
    from sop_ros.robot.policy_node import PolicyNode

    node = PolicyNode()
    yield node
    node.destroy_node()


def test_a_parameter_the_node_cannot_apply_is_read_only(policy_node):
    result = set_param(policy_node, "control_hz", 60.0)
    assert not result.successful and "read-only" in result.reason
    assert policy_node.config.control_hz == 30.0 and policy_node.get_parameter("control_hz").value == 30.0


def test_a_live_parameter_is_checked_like_the_yaml_and_applied(policy_node):
    result = set_param(policy_node, "replan_steps", 0)
    assert not result.successful and result.reason == "parameter replan_steps=0: must be >= 1"
    assert policy_node.config.replan_steps == 8 and policy_node.get_parameter("replan_steps").value == 8

    assert set_param(policy_node, "replan_steps", 4).successful
    assert set_param(policy_node, "swap_at", "immediate").successful
    assert policy_node.config.replan_steps == 4 and policy_node.config.swap_at == "immediate"
    assert policy_node.swaps.swap_at == "immediate"  # the hot-swap decisions follow

    result = set_param(policy_node, "swap_at", "sometimes")
    assert not result.successful and "swap_at='sometimes'" in result.reason
    assert policy_node.swaps.swap_at == "immediate"


def test_the_arbiter_clamps_to_limits_set_at_run_time(rclpy_context):
    from sop_ros.robot.teleop_arbiter_node import TeleopArbiterNode

    node = TeleopArbiterNode()
    try:
        result = set_param(node, "action_max", [0.5, 0.5])  # one value per action dimension, as in the YAML
        assert not result.successful and "action_max" in result.reason
        assert set_param(node, "action_max", [0.2, 0.2, 0.2, 1.0]).successful
        assert set_param(node, "max_rate", [1000.0] * 4).successful  # no rate limit in the way of the check
        node.arbiter.submit(Controller.POLICY, np.ones(4), now=0.0)
        output = node.arbiter.tick(now=0.0)
        assert output.controller == Controller.POLICY and output.command.tolist() == [0.2, 0.2, 0.2, 1.0]
        assert not set_param(node, "control_hz", 10.0).successful
    finally:
        node.destroy_node()
