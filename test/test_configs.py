"""Configs fail at load with a message naming the key, the value and what is allowed."""

import subprocess

import pytest
from conftest import REPO, sop

from sop_ros.configs import ConfigError, from_dict, load_config
from sop_ros.configs.learner import LearnerConfig
from sop_ros.configs.robot import RobotLaunchConfig
from sop_ros.launch.plan import plan

TIER = "unit"  # what the tests need: conftest.TIERS


def robot(**nodes):
    return {"robot": {"id": "r1", "use_sim_time": True}, "nodes": nodes}


@pytest.mark.parametrize("name", ["sim.yaml", "robot.yaml"])
def test_shipped_robot_configs_are_valid(name):
    config = load_config(RobotLaunchConfig, REPO / "config" / name)
    assert plan(config)


def test_a_lockstep_simulator_gives_its_ingest_the_camera_rate_and_a_long_frame_wait():
    sim = {"task": "reach-v3", "camera_hz": 10.0}
    ingest = {"sync_timeout_s": 0.05}
    lockstep = plan(from_dict(RobotLaunchConfig, robot(sim_robot=sim | {"step_mode": "lockstep"}, ingest=ingest)))
    realtime = plan(from_dict(RobotLaunchConfig, robot(sim_robot=sim, ingest=ingest)))
    (lockstep_ingest,) = [s.parameters for s in lockstep if s.name == "ingest"]
    (realtime_ingest,) = [s.parameters for s in realtime if s.name == "ingest"]
    assert lockstep_ingest["camera_hz"] == 10.0 and lockstep_ingest["sync_timeout_s"] == 2.0
    assert realtime_ingest["camera_hz"] == 0.0 and realtime_ingest["sync_timeout_s"] == 0.05


def test_a_simulator_waits_for_every_listener_and_a_recorder_for_every_stream_its_robot_publishes():
    config = load_config(RobotLaunchConfig, REPO / "config" / "sim_policy.yaml")
    parameters = {s.name: s.parameters for s in plan(config)}
    assert set(parameters["sim_robot"]["wait_for_nodes"]) == {"teleop_arbiter", "policy", "recorder"}
    # the simulator's states and executed commands, the arbiter's commands, the policy's chunks
    assert set(parameters["recorder"]["wait_for_publishers"]) == {"joint_states", "command/executed", "command",
                                                                  "policy/chunk"}  # fmt: skip
    # a recorder on its own (the robot's other nodes launched apart) waits for what its config names
    alone = plan(from_dict(RobotLaunchConfig, robot(recorder={"wait_for_publishers": ["command"]})))
    assert alone[0].parameters["wait_for_publishers"] == ["command"]


def test_shipped_learner_config_is_valid():
    assert load_config(LearnerConfig, REPO / "config" / "learner.yaml").publish_every_steps == 25


def test_model_presets_are_valid_and_grow_from_the_default():
    from sop_ros.configs.model import ModelConfig
    from sop_ros.model.vla import VLAPolicy, parameter_count

    small, medium, large = (load_config(ModelConfig, REPO / "config" / "models" / f"{n}.yaml")
                            for n in ("small", "medium", "large"))  # fmt: skip
    assert small == ModelConfig()  # the default, written out
    assert (small.image_size, medium.image_size, large.image_size) == (64, 128, 224)
    assert 45e6 < parameter_count(VLAPolicy(medium)) < 60e6  # the sizes the README's table names
    # A learner from scratch builds the preset it names.
    from sop_ros.learner.online import model_shape

    learner = from_dict(LearnerConfig, {"base_policy": "", "model_config": str(REPO / "config/models/medium.yaml")})
    assert model_shape(learner) == medium and model_shape(from_dict(LearnerConfig, {"base_policy": ""})) == small


@pytest.mark.parametrize(
    "data, message",
    [
        (robot(sim_robot={"taks": "reach-v3"}), "nodes.sim_robot.taks: unknown key (did you mean 'task'?)"),
        (robot(sim_robot={"task": "fly-v3"}), "nodes.sim_robot.task='fly-v3': must be a Meta-World MT50 task"),
        (robot(sim_robot={"control_hz": "fast"}), "nodes.sim_robot.control_hz='fast': must be a number"),
        (robot(sim_robot={"cameras": ["corner", "eye"]}), "nodes.sim_robot.cameras[1]='eye': must be one of"),
        (robot(sim_robot={"image_transport": "png"}), "image_transport='png': must be one of 'raw', 'compressed'"),
        (robot(sim_robot={"goal_marker_radius_m": 0.5}), "goal_marker_radius_m=0.5: must be in 0..0.1 m"),
        (robot(sim_robot={"goal_marker_rgba": [0, 1, 0]}), "goal_marker_rgba=(0.0, 1.0, 0.0): must be [] or 4 values"),
        (robot(teleop_arbiter={"action_min": [-1.0]}), "nodes.teleop_arbiter.action_min=(-1.0,): must have one"),
        (robot(teleop_arbiter={"action_max": [1, 1, -2, 1]}), "action_max[2]=-2.0: must be > action_min[2] (-1.0)"),
        (robot(teleop_arbiter={"control_hz": 0}), "nodes.teleop_arbiter.control_hz=0.0: must be > 0"),
        (robot(teleop_arbiter={"hold_keeps_last": [1, 0, 0, 0]}), "hold_keeps_last[0]=1: must be a bool"),
        ({"robot": {"id": "9lives"}, "nodes": {"teleop_arbiter": {}}}, "robot.id='9lives': must be a ROS name"),
        ({"robot": {"id": "r"}, "nodes": {}}, "nodes={}: must start at least one node"),
        ({"robot": {"id": "r"}, "nodes": {"sim_robot": {}}}, "robot.use_sim_time=False: must be true"),
        (robot(sim_robot={"task": "push-v3"}, scripted_operator={"task": "reach-v3"}), "must equal sim_robot.task"),
        (robot(policy={"runtime_order": ["cuda", "gpu"]}), "runtime_order[1]='gpu': must be one of tensorrt"),
        (robot(sim_robot={"step_mode": "lockstep", "lockstep_timeout_s": 10}, policy={"scheduled_policy_wait_s": 10}),
         "policy.scheduled_policy_wait_s=10.0: must be < sim_robot.lockstep_timeout_s (10)"),
    ],
)
def test_robot_config_errors_name_key_value_and_rule(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(RobotLaunchConfig, data)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"algorithm": "ppo"}, "algorithm='ppo': must be one of 'bc', 'hg_dagger', 'recap'"),
        ({"tasks": []}, "tasks=(): must list at least one task"),
        ({"batch_size": 2}, "batch_size=2: must be >= the number of tasks (5)"),
        ({"min_learning_rate": 0.1}, "min_learning_rate=0.1: must be in 0..learning_rate (0.0001)"),
        ({"optimiser_from_base": True, "base_policy": ""}, "optimiser_from_base=True: needs a base_policy"),
        ({"sampling": {"online_share_alpha": 0.5}}, "sampling.online_share_alpha=0.5: must be > 1"),
        ({"model_config": "config/models/medium.yaml"}, "model_config='config/models/medium.yaml': is for a learner"),
        ({"frame_cache_mb": -1}, "frame_cache_mb=-1.0: must be >= 0 (0: no cache)"),
        ({"online_tasks": ["window-open-v3", "push-wall-v3"]}, "online_tasks[1]='push-wall-v3': must be one of the"),
        ({"recap": {"indicator_dropout": 1.0}}, "recap.indicator_dropout=1.0: must be in [0, 1)"),
        ({"recap": {"value_bin": 201}}, "recap.value_bin: unknown key (did you mean 'value_bins'?)"),
    ],
)
def test_learner_config_errors(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(LearnerConfig, data)
    assert message in str(err.value)


def test_section_without_value_means_defaults():
    config = from_dict(RobotLaunchConfig, robot(teleop_arbiter=None))
    assert config.nodes.teleop_arbiter is not None and config.nodes.sim_robot is None


def test_cli_reports_the_file_and_key_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: {id: r1, use_sim_time: true}\nnodes:\n  sim_robot: {control_hz: -5}\n")
    result = subprocess.run(sop("robot", "--config", str(bad)), check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert f"{bad}: nodes.sim_robot.control_hz=-5.0: must be > 0" in result.stderr
    result = subprocess.run(
        sop("check-config", str(REPO / "config" / "sim.yaml")), check=False, capture_output=True, text=True
    )
    assert result.returncode == 0 and "valid robot config" in result.stdout
    learner = subprocess.run(sop("check-config", str(REPO / "config" / "experiment_learner.yaml")), check=False,
                             capture_output=True, text=True)  # fmt: skip
    assert learner.returncode == 0 and "valid learner config" in learner.stdout, learner.stderr
    missing = subprocess.run(sop("check-config", "nope.yaml"), check=False, capture_output=True, text=True)
    assert missing.returncode == 2 and "nope.yaml: no such config file" in missing.stderr
