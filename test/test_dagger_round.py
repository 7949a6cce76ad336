"""`sop dagger-round`: a tiny policy drives in process, the operator takes over, and the recorded round is a
finished run that `sop what-if` accepts; a round is collected once for its settings."""

import dataclasses
import json

import pytest
import torch
import yaml
from conftest import REPO

from sop_ros.configs import ConfigError, load_config, to_dict
from sop_ros.configs.learner import LearnerConfig
from sop_ros.configs.model import ModelConfig
from sop_ros.configs.robot import RobotLaunchConfig
from sop_ros.episodes.reader import episode_files
from sop_ros.fleet import what_if as what_if_module
from sop_ros.fleet.dagger_round import DaggerRoundConfig, dagger_round, with_operator
from sop_ros.learner.dataset import DatasetConfig, index_episode
from sop_ros.model.vla import VLAPolicy, save_checkpoint

TIER = "unit"  # what the tests need: conftest.TIERS

TINY = ModelConfig(width=32, depth=1, head_depth=1, heads=2, cnn_channels=(8, 8, 8, 8), chunk=8, flow_steps=2)


def tiny_setup(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", VLAPolicy(TINY).eval(), version="tiny-v1", cameras=["corner", "topview"])
    learner = load_config(LearnerConfig, REPO / "config" / "experiment_learner.yaml")
    learner = dataclasses.replace(learner, tasks=("reach-v3",), base_policy=str(tmp_path / "tiny.pt"))
    (tmp_path / "learner.yaml").write_text(yaml.safe_dump(to_dict(learner)))
    robot = load_config(RobotLaunchConfig, REPO / "config" / "fleet_sim.yaml")  # short episodes: quick takeovers
    robot = dataclasses.replace(robot, nodes=dataclasses.replace(
        robot.nodes, sim_robot=dataclasses.replace(robot.nodes.sim_robot, max_episode_steps=60)))  # fmt: skip
    (tmp_path / "robot.yaml").write_text(yaml.safe_dump(to_dict(robot)))


def test_a_round_records_the_operators_takeovers_as_a_finished_run(tmp_path):
    tiny_setup(tmp_path)
    config = DaggerRoundConfig(str(tmp_path / "round"), str(tmp_path / "learner.yaml"),
                               str(tmp_path / "robot.yaml"), operator=(("time_budget_steps", 8),),
                               episodes_per_task=2, steps=40, workers=1)  # fmt: skip
    summary = dagger_round(config)
    reach = summary["tasks"]["reach-v3"]
    # An untrained policy fails; the operator takes over at its time budget and its expert finishes the task.
    assert reach["episodes"] == 2 and reach["takeovers"] == 2 and reach["autonomous_successes"] == 0
    files = episode_files(tmp_path / "round" / "fleet" / "store" / "episodes")
    episodes = [index_episode(f, DatasetConfig()) for f in files]
    assert len(episodes) == 2 and all(e.task == "reach-v3" for e in episodes)
    assert [int(e.operator.argmax()) for e in episodes] == [9, 9]  # judged on state 8, in control from state 9
    assert sum(e.outcome == "success" for e in episodes) == reach["takeover_successes"]
    assert reach["operator_steps"] == sum(int(e.operator.sum()) for e in episodes)
    assert summary["settings"]["robot"]["nodes"]["scripted_operator"]["time_budget_steps"] == 8
    assert "--operator 'time_budget_steps=8'" in summary["command"] and summary["machine"]
    # As a finished run: what-if finds everything it reads, and retrains for the round's budget.
    run = tmp_path / "round"
    assert json.loads((run / "fleet_run.json").read_text())["learner_steps"] == 40
    assert load_config(LearnerConfig, run / "experiment_learner.yaml").tasks == ("reach-v3",)
    assert (run / "fleet" / "keys" / "policy_signing.key").exists()
    trained = []

    def train_offline(learner, fleet_dir, where, steps):
        trained.append((fleet_dir, steps))
        return where / "policy.pt"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sop_ros.fleet.experiments.train_offline", train_offline)
        patch.setattr("sop_ros.model.export.export_onnx", lambda checkpoint, onnx: None)
        patch.setattr("sop_ros.fleet.in_process_eval.evaluate_in_process",
                      lambda *a, **k: {"tasks": {"reach-v3": {"successes": 1, "episodes": 2}}})  # fmt: skip
        what_if_module.what_if(what_if_module.WhatIfConfig(str(run), (("algorithm", "bc"),)))
    assert trained == [(run / "fleet", 40), (run / "fleet", 40)]
    # Collected once for its settings; other settings in the same folder are refused, not mixed in.
    assert dagger_round(config) == summary
    with pytest.raises(ConfigError, match="holds a round of other settings"):
        dagger_round(dataclasses.replace(config, episodes_per_task=3))


def test_operator_settings_are_checked_by_the_operators_own_rules():
    robot = load_config(RobotLaunchConfig, REPO / "config" / "fleet_sim.yaml")
    assert with_operator(robot, (("drift_window", 10),)).nodes.scripted_operator.drift_window == 10
    with pytest.raises(ConfigError, match="drift_windo: not a scripted operator setting"):
        with_operator(robot, (("drift_windo", 10),))
    with pytest.raises(ConfigError, match="drift_window"):
        with_operator(robot, (("drift_window", 0),))
    demo = load_config(RobotLaunchConfig, REPO / "config" / "sim.yaml")
    with pytest.raises(ConfigError, match="must be an intervening operator"):
        with_operator(demo, ())
