"""The teleop arbiter's rules on plain data: who is in control, clamping, rate limits, hold on stale input."""

import numpy as np
import pytest

from sop_ros.configs.robot import TeleopArbiterConfig
from sop_ros.episodes.format import Controller
from sop_ros.robot.arbitration import Arbiter

TIER = "unit"  # what the tests need: conftest.TIERS

CFG = TeleopArbiterConfig(max_rate=(100.0, 100.0, 100.0, 100.0), policy_timeout_s=0.5, operator_timeout_s=0.3)


def test_operator_takes_over_and_hands_back_to_the_policy():
    arb = Arbiter(CFG)
    arb.submit(Controller.POLICY, [0.1, 0, 0, 0], now=0.0)
    assert arb.tick(0.0).controller == Controller.POLICY
    arb.submit(Controller.OPERATOR, [-0.2, 0, 0, 1], now=0.1)
    arb.submit(Controller.POLICY, [0.1, 0, 0, 0], now=0.1)
    out = arb.tick(0.1)
    assert out.controller == Controller.OPERATOR and out.changed and out.since == 0.1
    np.testing.assert_allclose(out.command, [-0.2, 0, 0, 1])
    assert arb.interventions == 1
    arb.submit(Controller.POLICY, [0.1, 0, 0, 0], now=0.5)
    out = arb.tick(0.5)  # operator silent for 0.4 s > 0.3 s: released
    assert out.controller == Controller.POLICY and out.changed
    np.testing.assert_allclose(out.command, [0.1, 0, 0, 0])


def test_a_takeover_ends_with_its_episode_even_on_a_clock_that_stands_still():
    arb = Arbiter(CFG)
    arb.submit(Controller.OPERATOR, [-0.2, 0, 0, 1], now=1.0)
    arb.submit(Controller.POLICY, [0.1, 0, 0, 0], now=1.0)
    assert arb.tick(1.0).controller == Controller.OPERATOR
    arb.release_operator()  # the episode ended; lockstep: the clock waits for a command
    arb.submit(Controller.POLICY, [0.1, 0, 0, 0], now=1.0)
    assert arb.tick(1.0).controller == Controller.POLICY and arb.interventions == 1
    # The operator's answer to the episode's last state, late, and even after the next start: ignored.
    arb.submit(Controller.OPERATOR, [-0.2, 0, 0, 1], now=1.0)
    assert arb.tick(1.0).controller == Controller.POLICY
    arb.new_episode()
    for now in (1.03, 1.07, 1.1):  # ... and in the new episode's first operator_timeout_s (0.3 s) of policy
        arb.submit(Controller.POLICY, [0.1, 0, 0, 0], now=now)
        arb.submit(Controller.OPERATOR, [-0.2, 0, 0, 1], now=now)
        assert arb.tick(now).controller == Controller.POLICY and arb.interventions == 0
    arb.submit(Controller.POLICY, [0.1, 0, 0, 0], now=1.33)
    assert arb.tick(1.33).controller == Controller.POLICY
    # Once the policy has driven the new episode that long, the operator takes over again at once.
    arb.submit(Controller.OPERATOR, [-0.2, 0, 0, 1], now=1.37)
    out = arb.tick(1.37)
    assert out.controller == Controller.OPERATOR and out.changed and arb.interventions == 1


def test_holds_when_every_input_is_stale_and_keeps_the_gripper():
    arb = Arbiter(CFG)
    arb.submit(Controller.POLICY, [0.5, 0.5, 0.5, 1.0], now=0.0)
    arb.tick(0.0)
    np.testing.assert_allclose(arb.tick(0.1).command, [0.5, 0.5, 0.5, 1.0])
    out = arb.tick(1.0)
    assert out.controller == Controller.HOLD
    np.testing.assert_allclose(out.command, [0, 0, 0, 1.0])


def test_commands_are_clamped_and_rate_limited():
    arb = Arbiter(TeleopArbiterConfig(max_rate=(10.0, 10.0, 10.0, 10.0), control_hz=100.0))
    arb.tick(0.0)
    arb.submit(Controller.POLICY, [5.0, -5.0, 0.05, 0], now=0.0)
    out = arb.tick(0.01)  # one 0.01 s period at 10/s: at most 0.1 of change
    np.testing.assert_allclose(out.command, [0.1, -0.1, 0.05, 0])
    for t in np.arange(0.02, 0.5, 0.01):
        out = arb.tick(t)
    np.testing.assert_allclose(out.command, [1.0, -1.0, 0.05, 0])  # clamped to [-1, 1]


@pytest.mark.parametrize("bad", [[0.0, 0.0], [0, 0, 0, float("nan")]])
def test_bad_commands_are_refused_and_the_last_good_one_stays(bad):
    arb = Arbiter(CFG)
    arb.submit(Controller.POLICY, [0.2, 0, 0, 0], now=0.0)
    with pytest.raises(ValueError, match="policy command"):
        arb.submit(Controller.POLICY, bad, now=0.0)
    np.testing.assert_allclose(arb.tick(0.0).command, [0.2, 0, 0, 0])


def test_a_command_on_a_clock_that_has_not_advanced_still_moves_the_output():
    # Sim time: the next step's command can arrive before the clock message of that step.
    arb = Arbiter(TeleopArbiterConfig(max_rate=(30.0, 30.0, 30.0, 30.0), control_hz=30.0))
    arb.submit(Controller.OPERATOR, [0.5, 0, 0, 0], now=1.0)
    np.testing.assert_allclose(arb.tick(1.0).command, [0.5, 0, 0, 0])
    arb.submit(Controller.OPERATOR, [1.0, 0, 0, 0], now=1.0)
    np.testing.assert_allclose(arb.tick(1.0).command, [1.0, 0, 0, 0])  # one period's worth of change
