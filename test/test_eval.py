"""`sop eval`: a policy drives simulated robots through ingest -> policy -> arbiter; success comes from Meta-World."""

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO, sop
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from sop_ros.configs.model import ModelConfig
from sop_ros.model.export import export_onnx
from sop_ros.model.vla import VLAPolicy, save_checkpoint

TIER = "e2e"  # what the tests need: conftest.TIERS

TINY = ModelConfig(width=32, depth=1, head_depth=1, heads=2, cnn_channels=(8, 8, 8, 8), chunk=8, flow_steps=2)


def agreeing(sent: np.ndarray, stepped: np.ndarray, offset: int) -> int:
    """How many of the `stepped` commands the `sent` ones from `offset` on repeat, from the first."""
    same = np.all(sent[offset : offset + len(stepped)] == stepped, axis=1)
    return len(stepped) if same.all() else int(np.argmin(same))


def test_eval_runs_the_policy_through_the_nodes_and_reports_success_per_task(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", VLAPolicy(TINY).eval(), version="tiny-v1", cameras=["corner", "topview"])
    export_onnx(tmp_path / "tiny.pt", tmp_path / "tiny.onnx")
    config = tmp_path / "sim_policy.yaml"  # short episodes: an untrained policy runs each to its step limit
    config.write_text(
        (REPO / "config" / "sim_policy.yaml").read_text().replace("max_episode_steps: 150", "max_episode_steps: 40")
    )
    out = tmp_path / "eval"
    cmd = sop("eval", "--policy", str(tmp_path / "tiny.onnx"), "--tasks", "reach-v3", "--episodes-per-task", "2",
              "--robots", "1", "--out", str(out), "--config", str(config))  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["version"] == "tiny-v1" and report["seed"] == 100_000 and report["failed"] == []
    reach = report["tasks"]["reach-v3"]
    assert reach["episodes"] == 2 and 0 <= reach["successes"] <= 2
    assert reach["success_rate"] == reach["successes"] / 2 and report["mean_success_rate"] == reach["success_rate"]
    files = sorted(out.glob("robot_0/*.mcap"))
    assert len(files) == 2
    with open(files[0], "rb") as f:  # the policy drove: its chunks are in the episode, with its version
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        chunks = [d for _, _, _, d in reader.iter_decoded_messages(topics=["/robot_0/policy/chunk"])]
    assert chunks and {c.policy_version for c in chunks} == {"tiny-v1"}
    # Every camera frame of the run is on one grid of the simulated clock (30 Hz control, 10 Hz cameras: every
    # 3rd step), the second episode's too: each episode starts on a camera tick, so its first state has its frames.
    step_ns = round(1e9 / 30)
    ticks = set()
    for path in files:
        with open(path, "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            topic = "/robot_0/cameras/corner/image_raw/compressed"
            ticks |= {round((d.header.stamp.sec * 10**9 + d.header.stamp.nanosec) / step_ns)
                      for _, _, _, d in reader.iter_decoded_messages(topics=[topic])}  # fmt: skip
    assert len(ticks) >= 20 and {t % 3 for t in ticks} == {0}, sorted(ticks)
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "no command for" not in logs  # lockstep never waited in vain: every state was answered

    # Stepped in process (no ROS), the same episodes send the simulator the very same commands, step for step.
    # A recording may also hold the answers to the states just before and just after its episode.
    from sop_ros.configs import load_config
    from sop_ros.configs.robot import RobotLaunchConfig
    from sop_ros.fleet.collect_demos import plan_units
    from sop_ros.fleet.in_process_eval import run_unit

    commands = []
    unit = plan_units(["reach-v3"], 2, 1, 100_000)[0]
    results = run_unit(str(tmp_path / "tiny.onnx"), load_config(RobotLaunchConfig, str(config)), unit, commands,
                       record=tmp_path / "in-process")  # fmt: skip
    assert [r.steps for r in results] == [40, 40] and [r.success for r in results] == [False, False]
    # Recorded in process, the episodes are what the robot's recorder wrote, as the learner reads them: the same
    # joint states, actions, camera frames (the very JPEG bytes) and controller at every step.
    from sop_ros.episodes.reader import episode_files
    from sop_ros.learner.dataset import DatasetConfig, index_episode

    stepped_files = episode_files(tmp_path / "in-process")
    assert len(stepped_files) == 2
    for node_path, stepped_path in zip(files, stepped_files, strict=True):
        node, stepped = (index_episode(p, DatasetConfig()) for p in (node_path, stepped_path))
        expected = (40, "failure", "reach-v3")
        assert (stepped.steps, stepped.outcome, stepped.task) == (node.steps, node.outcome, node.task) == expected
        np.testing.assert_array_equal(stepped.proprio, node.proprio)
        np.testing.assert_array_equal(stepped.actions, node.actions)
        assert not stepped.operator.any() and not node.operator.any()
        for camera in ("corner", "topview"):
            assert [stepped.frames[camera][i] for i in stepped.frame_of_step[camera]] == [
                node.frames[camera][i] for i in node.frame_of_step[camera]]
    for path, episode_commands in zip(files, commands, strict=True):
        with open(path, "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            sent = np.array([d.data for _, _, _, d in reader.iter_decoded_messages(topics=["/robot_0/command"])])
        stepped, n = np.array(episode_commands), len(episode_commands)
        agree = {o: agreeing(sent, stepped, o) for o in range(len(sent) - n + 1)}
        best = max(agree, key=agree.get, default=0)
        assert agree.get(best) == n, (f"{path.name}: {len(sent)} recorded commands, {n} stepped; the best window "
                                      f"(from {best}) repeats {agree.get(best)} of them, then sent "
                                      f"{sent[best + agree.get(best, 0)]} for {stepped[agree.get(best, 0)]}")
    cmd = sop("eval", "--in-process", "--policy", str(tmp_path / "tiny.onnx"), "--tasks", "reach-v3",
              "--episodes-per-task", "2", "--robots", "1", "--out", str(tmp_path / "direct"), "--config", str(config))
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    direct = json.loads((tmp_path / "direct" / "eval.json").read_text())
    assert direct["path"] == "in-process" and direct["tasks"]["reach-v3"] == reach
    assert [(e["index"], e["steps"]) for e in direct["episodes"]] == [(0, 40), (1, 40)]


@pytest.mark.unit
def test_eval_refuses_a_file_that_is_not_a_policy(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    cmd = sop("eval", "--policy", str(bad), "--tasks", "reach-v3", "--episodes-per-task", "1", "--out", str(tmp_path))
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and f"--policy: {bad}: cannot be loaded" in result.stderr, result.stderr


@pytest.mark.unit
def test_eval_refuses_a_policy_trained_on_other_cameras(tmp_path):
    """Images of the right shape from other cameras would run and score in silence: the names are compared first."""
    save_checkpoint(tmp_path / "tiny.pt", VLAPolicy(TINY).eval(), version="tiny-v1", cameras=["corner", "gripperPOV"])
    export_onnx(tmp_path / "tiny.pt", tmp_path / "tiny.onnx")
    cmd = sop("eval", "--policy", str(tmp_path / "tiny.onnx"), "--tasks", "reach-v3", "--episodes-per-task", "1",
              "--out", str(tmp_path), "--config", "config/sim_policy.yaml")  # fmt: skip
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cameras ['corner', 'topview'], the policy was trained on ['corner', 'gripperPOV']" in result.stderr, (
        result.stderr
    )
    assert "(robot config config/sim_policy.yaml)" in result.stderr, result.stderr


@pytest.mark.unit
def test_in_process_episodes_have_the_configs_operator_take_over_and_back_off_first(tmp_path):
    """A fleet config's intervening operator, stepped in process: judged failing on the time budget's last state,
    it is in control from the next, lifts the hand first (its back-off), and then its expert finishes the task."""
    import dataclasses

    from sop_ros.configs import load_config
    from sop_ros.configs.robot import RobotLaunchConfig
    from sop_ros.fleet.collect_demos import plan_units
    from sop_ros.fleet.in_process_eval import run_unit
    from sop_ros.fleet.operator_check import judged_counts, takeover_counts

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny.pt", VLAPolicy(TINY).eval(), version="tiny-v1", cameras=["corner", "topview"])
    export_onnx(tmp_path / "tiny.pt", tmp_path / "tiny.onnx")
    fleet = load_config(RobotLaunchConfig, REPO / "config" / "fleet_sim.yaml")
    operator = dataclasses.replace(fleet.nodes.scripted_operator, time_budget_steps=10, stall_steps=50,
                                   back_off_m=0.05, back_off_tasks=("reach-v3",))  # fmt: skip
    config = dataclasses.replace(fleet, nodes=dataclasses.replace(fleet.nodes, scripted_operator=operator))
    commands = []
    [result] = run_unit(str(tmp_path / "tiny.onnx"), config, plan_units(["reach-v3"], 1, 1, 200_000)[0], commands,
                        record=tmp_path / "recorded")  # fmt: skip
    # Observed from the second state on (the first answers no command): the 10th judgement is on state 10.
    assert result.took_over_at == 11 and result.success and result.steps < 150
    # Recorded, the learner sees the operator's commands from that state on: an intervention, as HG-DAgger learns it.
    from sop_ros.episodes.reader import episode_files
    from sop_ros.learner.dataset import DatasetConfig, index_episode

    [path] = episode_files(tmp_path / "recorded")
    episode = index_episode(path, DatasetConfig())
    assert episode.operator.tolist() == [False] * 11 + [True] * (result.steps - 11)
    assert (episode.outcome, episode.metadata["interventions"]) == ("success", "1")
    np.testing.assert_array_equal(episode.actions, np.array(commands[0], dtype=np.float32))
    lifting = [c for c in commands[0][11:] if list(c[:3]) == [0.0, 0.0, 1.0]]
    assert 3 <= len(lifting) <= 10 and list(commands[0][11][:3]) == [0.0, 0.0, 1.0]
    operated = commands[0][11:]  # the operator's commands, counted as it drove: how many rose
    rising = sum(c[2] > 0.5 for c in operated)
    assert (result.operator_steps, result.operator_rising) == (len(operated), rising) and rising >= 3
    assert takeover_counts([result]) | {"takeover_interval95": None} == {
        "episodes": 1, "autonomous": 0, "autonomous_successes": 0, "takeovers": 1, "takeover_successes": 1,
        "takeover_success_rate": 1.0, "takeover_interval95": None, "operator_steps": len(operated),
        "rising_share": round(rising / len(operated), 3)}  # fmt: skip
    assert result.judged_at == 11
    # Watching only, the operator judges on the same state and leaves the episode to the policy: an untrained one
    # runs it to the step limit, failing.
    [watched] = run_unit(str(tmp_path / "tiny.onnx"), config, plan_units(["reach-v3"], 1, 1, 200_000)[0],
                         watch_only=True)  # fmt: skip
    assert (watched.judged_at, watched.took_over_at, watched.success) == (11, None, False)
    assert judged_counts([watched, dataclasses.replace(watched, success=True)]) == {
        "episodes": 2, "judged": 2, "judged_then_succeeded": 1, "not_judged_successes": 0,
        "judged_at_steps": [11, 11], "premature_share": 0.5}  # fmt: skip
