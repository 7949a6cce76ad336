"""SOP's sampling and RECAP's arithmetic on small hand-computed cases."""

from pathlib import Path

import numpy as np
import pytest

from sop_ros.configs.learner import LearnerConfig, SamplingConfig
from sop_ros.learner.algorithms import recap
from sop_ros.learner.algorithms.hg_dagger import training_steps
from sop_ros.learner.dataset import EpisodeIndex
from sop_ros.learner.sampling import (
    OFFLINE,
    ONLINE,
    OnlineShare,
    data_capped,
    online_share,
    split_rows,
    task_rows,
)
from sop_ros.model.inputs import INDICATOR_NEGATIVE, INDICATOR_NONE, INDICATOR_POSITIVE

TIER = "unit"  # what the tests need: conftest.TIERS

SOP = SamplingConfig(online_share_alpha=1.5, online_share_min=0.2, online_share_max=0.8, loss_window_steps=3)


def test_every_task_gets_an_equal_part_of_the_batch():
    rng = np.random.default_rng(0)
    for batch in (10, 64, 3):
        rows = task_rows(batch, ["a", "b", "c"], rng)
        assert sum(rows.values()) == batch
        assert sorted(set(rows.values())) in ([batch // 3], [batch // 3, batch // 3 + 1])
    extra = [task for _ in range(3000) for task, n in task_rows(10, ["a", "b", "c"], rng).items() if n == 4]
    assert {t: extra.count(t) for t in "abc"} == pytest.approx({"a": 1000, "b": 1000, "c": 1000}, rel=0.1)
    with pytest.raises(ValueError, match="no tasks"):
        task_rows(8, [], rng)


def test_the_online_share_follows_sops_formula_on_relative_losses_and_its_clip():
    # Equal losses: sigmoid(alpha - 1) = sigmoid(0.5), at any scale of the loss.
    for loss in (0.05, 0.5, 5.0):
        assert online_share(loss, loss, SOP) == pytest.approx(1 / (1 + np.exp(-0.5)))  # 0.6225
    assert online_share(0.0, 0.0, SOP) == pytest.approx(1 / (1 + np.exp(-0.5)))
    # 0.4 and 0.7 relative to their mean 0.55: (1.5 * 0.4 - 0.7) / 0.55 = -0.1818.
    assert online_share(0.4, 0.7, SOP) == pytest.approx(1 / (1 + np.exp(0.1 / 0.55)))  # 0.4547
    assert online_share(1.0, 0.0, SOP) == 0.8  # sigmoid(3) = 0.953, clipped
    assert online_share(0.0, 2.0, SOP) == 0.2  # sigmoid(-2) = 0.119, clipped
    assert (online_share(1e4, 0.0, SOP), online_share(0.0, 1e4, SOP)) == (0.8, 0.2)  # no overflow


def test_a_task_whose_fleet_data_is_harder_gets_a_larger_online_share():
    # Flow-matching losses as the learner sees them (0.05-0.3): on raw losses every task sat near 0.5.
    harder, like, easier = online_share(0.2, 0.1, SOP), online_share(0.1, 0.1, SOP), online_share(0.05, 0.1, SOP)
    assert 0.2 <= easier < like < harder <= 0.8
    assert harder - easier > 0.3


def test_a_few_fleet_episodes_get_no_more_than_twice_their_part_of_the_data():
    like = online_share(0.1, 0.1, SOP)  # 0.62: equal losses lean to the fleet
    assert data_capped(like, 300, 2700, SOP) == pytest.approx(0.2)  # 10% of the steps: at most 20% of the rows
    assert data_capped(like, 100, 2900, SOP) == pytest.approx(0.2)  # never below the clip's minimum
    assert data_capped(like, 1000, 3000, SOP) == pytest.approx(0.5)  # 25% of the steps: at most 50%
    assert data_capped(like, 3000, 3000, SOP) == pytest.approx(like)  # as much as the demonstrations: SOP's own
    assert data_capped(like, 100, 2900, SamplingConfig(online_share_per_data=0.0)) == like  # no cap
    shares = OnlineShare(["a"], SOP)
    shares.record(1, "a", ONLINE, 0.1)
    shares.record(1, "a", OFFLINE, 0.1)
    assert shares.shares(1, {"a": (300, 2700)}) == {"a": pytest.approx(0.2)}


def test_losses_are_averaged_over_the_last_window_of_steps():
    shares = OnlineShare(["a", "b"], SOP)
    assert shares.share("a", 0) == 0.5  # no losses yet: the middle of the clip range
    for step, (on, off) in enumerate([(1.0, 0.1), (2.0, 0.2), (3.0, 0.3)], start=1):
        shares.record(step, "a", ONLINE, on)
        shares.record(step, "a", OFFLINE, off)
    assert shares.mean_loss("a", ONLINE, 3) == pytest.approx(2.0)
    assert shares.mean_loss("a", ONLINE, 4) == pytest.approx(2.5)  # step 1 left the 3-step window
    assert shares.mean_loss("a", OFFLINE, 6) is None and shares.share("a", 6) == 0.5
    shares.record(7, "a", ONLINE, 0.3)
    shares.record(7, "a", OFFLINE, 0.6)
    assert shares.shares(7) == {"a": pytest.approx(1 / (1 + np.exp(-(1.5 * 0.3 - 0.6) / 0.45))), "b": 0.5}
    with pytest.raises(KeyError, match="unknown task 'c'"):
        shares.record(8, "c", ONLINE, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        shares.record(8, "a", ONLINE, float("nan"))


def test_a_tasks_rows_split_between_sources_with_the_exact_expected_share():
    rng = np.random.default_rng(1)
    assert split_rows(8, 0.25, True, True, rng) == 2
    counts = [split_rows(10, 0.25, True, True, rng) for _ in range(4000)]
    assert set(counts) == {2, 3} and np.mean(counts) == pytest.approx(2.5, abs=0.05)
    assert split_rows(10, 0.8, False, True, rng) == 0  # no fleet data for this task yet
    assert split_rows(10, 0.2, True, False, rng) == 10  # no demonstrations of it


def test_returns_are_normalised_by_the_tasks_length_and_penalty():
    success = recap.rewards(4, success=True, failure_penalty=50.0)
    failure = recap.rewards(3, success=False, failure_penalty=50.0)
    assert success.tolist() == [-1, -1, -1, 0] and failure.tolist() == [-1, -1, -50]
    assert recap.returns_to_go(success).tolist() == [-3, -2, -1, 0]
    assert recap.returns_to_go(failure).tolist() == [-52, -51, -50]
    scale = recap.normaliser(max_length=10, failure_penalty=50.0)  # 60
    g = recap.returns_to_go(recap.normalised_rewards(3, False, 10, 50.0))
    assert g == pytest.approx([-52 / 60, -51 / 60, -50 / 60]) and scale == 60
    with pytest.raises(ValueError, match="no rewards"):
        recap.rewards(0, True, 50.0)


def test_value_targets_are_the_nearest_of_201_atoms_on_minus_one_to_zero():
    support = recap.value_support(201)
    assert support[0] == -1 and support[-1] == 0 and support[100] == pytest.approx(-0.5)
    bins = recap.value_bin(np.array([-3 / 60, -52 / 60, 0.0, -1.2, 0.3]), 201)
    assert bins.tolist() == [190, 27, 200, 0, 200]  # 0.95*200; 0.1333*200 = 26.7 -> 27; clipped at both ends
    probabilities = np.zeros((2, 201))
    probabilities[0, 190] = 1.0
    probabilities[1, [0, 200]] = 0.5
    assert recap.expected_value(probabilities, 201) == pytest.approx([-0.05, -0.5])


def test_n_step_advantages_bootstrap_from_the_value_and_stop_at_the_episode_end():
    r = np.array([-1.0, -1.0, -1.0, 0.0])
    perfect = np.array([-3.0, -2.0, -1.0, 0.0])  # the true returns: no step is better than expected
    assert recap.n_step_advantages(r, perfect, 2) == pytest.approx([0, 0, 0, 0])
    zeros = np.zeros(4)
    assert recap.n_step_advantages(r, zeros, 2) == pytest.approx([-2, -2, -1, 0])
    assert recap.n_step_advantages(r, zeros, 10) == pytest.approx([-3, -2, -1, 0])  # longer than the episode: G_t
    hopeful = np.array([-1.0, -1.0, -1.0, -1.0])
    assert recap.n_step_advantages(r, hopeful, 1) == pytest.approx([-1, -1, -1, 1])  # A = r_t + V_(t+1) - V_t
    with pytest.raises(ValueError, match="4 rewards but 3 values"):
        recap.n_step_advantages(r, zeros[:3], 2)


def test_the_indicator_is_positive_above_the_percentile_and_where_an_operator_drove():
    advantages = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    threshold = recap.advantage_threshold(advantages, 30.0)
    assert threshold == pytest.approx(2.2)  # numpy's linear interpolation: 2 + 0.2 * (3 - 2)
    operator = np.array([True, False, False, False, False])
    P, N = INDICATOR_POSITIVE, INDICATOR_NEGATIVE
    assert recap.indicators(advantages, threshold, operator).tolist() == [P, N, P, P, P]
    with pytest.raises(ValueError, match="no advantages"):
        recap.advantage_threshold(np.array([]), 30.0)


def test_the_indicator_is_dropped_at_the_configured_rate_and_kept_otherwise():
    rng = np.random.default_rng(2)
    indicator = np.full(20000, INDICATOR_POSITIVE)
    indicator[::2] = INDICATOR_NEGATIVE
    dropped = recap.drop_indicators(indicator, 0.3, rng)
    gone = dropped == INDICATOR_NONE
    assert gone.mean() == pytest.approx(0.3, abs=0.015)
    assert (dropped[~gone] == indicator[~gone]).all() and (indicator != INDICATOR_NONE).all()  # a copy
    assert (recap.drop_indicators(indicator, 0.0, rng) == indicator).all()


def fleet_episode(outcome: str, operator: list[bool]) -> EpisodeIndex:
    steps = len(operator)
    return EpisodeIndex(episode_id=f"e-{outcome}", task="reach-v3", instruction="reach", outcome=outcome,
                        path=Path("e.mcap"), robot_id="robot_0", joint_names=("j0",),
                        step_ns=np.arange(steps + 1), proprio=np.zeros((steps + 1, 1), np.float32),
                        actions=np.zeros((steps, 4), np.float32), operator=np.array(operator), frame_ns={},
                        frames={}, frame_of_step={})  # fmt: skip


def test_the_value_check_compares_first_state_predictions_with_realised_returns_per_task():
    import dataclasses

    from sop_ros.configs.learner import RecapConfig

    config = LearnerConfig(recap=RecapConfig(failure_penalty=2.0, max_episode_steps=4, n_step=1,
                                             advantage_percentile=50.0))  # fmt: skip
    advantages = recap.Advantages(config)
    # Normalised by L + C = 6: a 2-step success returns -1/6 from its first state, a 3-step failure (-1 -1 -2) -4/6.
    won = dataclasses.replace(fleet_episode("success", [False, False]), episode_id="won")
    lost = dataclasses.replace(fleet_episode("failure", [False, False, False]), episode_id="lost")
    advantages.add(won, np.array([-0.5, 0.0]))  # predicted -0.5 at the start
    advantages.add(lost, np.array([-0.5, -0.5, -0.5]))
    advantages.update_thresholds([won, lost])
    # A_t = r_t + V_(t+1) - V_t: won [-1/6 + 0.5, 0], lost [-1/6, -1/6, -2/6 + 0.5]; median threshold 0.
    assert advantages.thresholds["reach-v3"] == pytest.approx(0.0)
    check = advantages.value_check()["reach-v3"]
    assert check["episodes"] == 2 and check["predicted"] == -0.5 and check["correlation"] is None  # two: no r
    assert check["realised"] == pytest.approx((-1 / 6 - 4 / 6) / 2, abs=1e-4)
    assert check["mean_abs_error"] == pytest.approx((abs(-0.5 + 1 / 6) + abs(-0.5 + 4 / 6)) / 2, abs=1e-4)
    assert check["positive_share"] == pytest.approx(2 / 5)  # two of five steps clear the threshold
    assert advantages.value_check({"won"})["reach-v3"]["episodes"] == 1
    assert advantages.value_estimates() == {"reach-v3": -0.5}


def test_hg_dagger_learns_from_corrections_and_optionally_from_autonomy_that_succeeded():
    corrected = [False, False, True, True, False]  # the policy, an operator's correction, the policy again
    success, failure = fleet_episode("success", corrected), fleet_episode("failure", corrected)
    corrections_only, with_autonomy = training_steps(False), training_steps(True)
    assert corrections_only(success).tolist() == corrected and corrections_only(failure).tolist() == corrected
    # A success after a correction: the policy's steps after it count, never those that made the operator take over.
    assert with_autonomy(success).tolist() == [False, False, True, True, True]
    assert with_autonomy(fleet_episode("success", [False] * 4)).tolist() == [True] * 4  # a success on its own
    twice = [False, True, False, True, False, False]  # taken over again after handing back: only the last stretch
    assert with_autonomy(fleet_episode("success", twice)).tolist() == [False, True, False, True, True, True]
    assert with_autonomy(failure).tolist() == corrected  # never the autonomous steps of a failure
    assert corrections_only(success) is not success.operator  # a mask of its own, not the episode's array
    # Corrections of successes only: a failed episode gives nothing, whoever drove it.
    successes_only = training_steps(True, use_failed_corrections=False)
    assert successes_only(success).tolist() == [False, False, True, True, True]
    assert successes_only(failure).tolist() == [False] * 5


def test_hg_dagger_can_leave_out_the_lift_that_opens_each_correction():
    import dataclasses

    up, up_and_over, over, down = [0, 0, 1, 0], [0.5, 0.3, 0.6, 0], [0.8, 0, 0.1, 0], [0, 0, -1, 0]
    # The policy drives, an operator lifts clear then approaches, hands back, then takes over again rising.
    operator = [False, True, True, True, True, False, True, True, False]
    actions = np.array([up, up, up_and_over, over, up, up, up, down, up], np.float32)
    episode = dataclasses.replace(fleet_episode("success", operator), actions=actions)
    without_rise = training_steps(False, skip_correction_rise=True)(episode)
    # The lift inside a correction (step 4) is the correction's own; only each stretch's opening rise goes.
    assert without_rise.tolist() == [False, False, False, True, True, False, False, True, False]
    assert training_steps(False)(episode).tolist() == operator
    with_autonomy = training_steps(True, skip_correction_rise=True)(episode)
    assert with_autonomy.tolist() == [False, False, False, True, True, False, False, True, True]


def test_the_learning_rate_warms_up_then_follows_a_cosine_to_its_minimum():
    from sop_ros.learner.online import learning_rate_at

    constant = LearnerConfig(learning_rate=1e-4)
    assert [learning_rate_at(s, constant) for s in (0, 10, 10_000)] == [1e-4] * 3
    config = LearnerConfig(learning_rate=1e-4, warmup_steps=4, decay_steps=10, min_learning_rate=1e-5)
    assert [learning_rate_at(s, config) for s in range(4)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4])
    assert learning_rate_at(4, config) == pytest.approx(1e-4)  # the cosine starts at the top
    assert learning_rate_at(9, config) == pytest.approx(5.5e-5)  # half way: the mean of 1e-4 and 1e-5
    assert learning_rate_at(14, config) == learning_rate_at(1000, config) == pytest.approx(1e-5)


def test_every_algorithm_a_config_can_name_has_its_module_and_each_learns_from_what_it_should():
    from typing import get_args, get_type_hints

    from sop_ros.learner.algorithms import ALGORITHMS, make_algorithm

    assert set(ALGORITHMS) == set(get_args(get_type_hints(LearnerConfig)["algorithm"]))
    kinds = {name: make_algorithm(LearnerConfig(algorithm=name, tasks=("reach-v3",))) for name in ALGORITHMS}
    assert kinds["bc"].online_outcomes == () and kinds["bc"].offline_outcomes == ("success",)
    assert set(kinds["hg_dagger"].online_outcomes) == {"success", "failure", "unknown"}  # never an aborted one
    assert kinds["recap"].offline_outcomes == ("success", "failure") and kinds["recap"].indicator == "positive"
    assert kinds["hg_dagger"].select() is not None and kinds["recap"].select() is None
