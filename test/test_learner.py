"""`sop learner`: the online loop on real recorded episodes, real Zenoh ingest and torch.distributed (gloo)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import pytest
import torch
import yaml
from conftest import DEMO_TASKS, REPO, sop, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sop_ros.bench.bridge import zenoh_config
from sop_ros.bridge.artifacts import make_signing_keys
from sop_ros.cloud.episode_store import StoredEpisode
from sop_ros.cloud.policy_registry import PolicyRegistry
from sop_ros.configs import ConfigError, from_dict
from sop_ros.configs.learner import LearnerConfig
from sop_ros.episodes.reader import copy_episode, episode_files
from sop_ros.host import free_endpoint
from sop_ros.learner.algorithms import make_algorithm
from sop_ros.learner.dataset import DatasetConfig, EpisodeDataset
from sop_ros.learner.frames import SpilledJpegs
from sop_ros.learner.online import TrainingData, fleet_metrics, plan_rows, version_lag

TIER = "unit"  # what the tests need: conftest.TIERS


# A robot's report before it runs a policy or uploads (bridge_node.robot_report's fields).
FRESH_ROBOT_REPORT = {"running_version": "", "pending_version": "", "backend": "", "policy_state": "no status",
                      "newest_version": "", "held_version": "", "outbox_episodes": 0, "outbox_bytes": 0,
                      "uploaded": 0, "seconds_since_upload": -1.0, "last_error": "", "time": 1.7e9}


def run_sop(*args: str, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(sop(*args), capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env, check=False)


def learner_yaml(tmp_path, demos, name="learner", **overrides) -> str:
    """A small learner on the recorded demos, everything under tmp_path, robots served on a free port."""
    if not (tmp_path / "keys").exists():
        make_signing_keys(tmp_path / "keys")
    config = {
        "tasks": DEMO_TASKS, "base_policy": "", "demos_dir": str(demos), "store_dir": str(tmp_path / "store"),
        "checkpoint_dir": str(tmp_path / name), "batch_size": 8, "publish_every_steps": 2, "log_every_s": 0.5,
        "torch_threads": 1, "ingest": {"zenoh": {"listen": [free_endpoint()]}},
        "policies": {"registry_dir": str(tmp_path / f"{name}_policies"),
                     "private_key": str(tmp_path / "keys" / "policy_signing.key")},
        **overrides,
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def step_losses(checkpoint_dir) -> list[tuple[int, float]]:
    events = EventAccumulator(str(checkpoint_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("loss/step")]


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("batch_sise: 8", "batch_sise: unknown key (did you mean 'batch_size'?)"),
        ("sampling: {online_share_alpha: 0.5}", "sampling.online_share_alpha=0.5: must be > 1"),
        ("algorithm: dagger", "algorithm='dagger': must be one of 'bc', 'hg_dagger', 'recap'"),
        ("tasks: [reach-v3, fly-v3]", "tasks[1]='fly-v3': must be a Meta-World MT50 task"),
        ("base_policy: runs/none.pt", "base_policy='runs/none.pt': no such checkpoint"),
        ("base_policy: ''\ndemos_dir: /nonexistent/demos", "demos_dir='/nonexistent/demos': no such directory"),
    ],
)
def test_a_malformed_config_fails_at_start_naming_the_key(tmp_path, line, named):
    path = tmp_path / "bad.yaml"
    path.write_text(line + "\n")
    result = run_sop("learner", "--config", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert named in result.stderr


def test_a_missing_signing_key_is_named_at_start(tmp_path, recorded_demos):
    config = learner_yaml(tmp_path, recorded_demos, policies={"private_key": str(tmp_path / "none.key")})
    result = run_sop("learner", "--config", config)
    assert result.returncode == 2 and "policies.private_key=" in result.stderr and "none.key" in result.stderr


@pytest.mark.e2e
def test_two_gloo_ranks_train_the_same_model_as_one_rank_with_the_same_global_batch(tmp_path, recorded_demos):
    """torchrun --nproc-per-node 2: each rank decodes half of the same global batch; losses and weights match a
    one-process run to float rounding (tolerance 1e-5 on losses)."""
    one = learner_yaml(tmp_path, recorded_demos, "one", max_steps=4, publish_every_steps=100)
    two = learner_yaml(tmp_path, recorded_demos, "two", max_steps=4, publish_every_steps=100)
    result = run_sop("learner", "--config", one)
    assert result.returncode == 0, result.stdout + result.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "sop_ros.cli", "learner", "--config", two]  # fmt: skip
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run(torchrun, capture_output=True, text=True, cwd=REPO, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on cpu x 2" in result.stdout
    single, parallel = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert [s for s, _ in single] == [s for s, _ in parallel] == [0, 1, 2, 3]
    np.testing.assert_allclose([v for _, v in parallel], [v for _, v in single], rtol=1e-5)
    a = torch.load(tmp_path / "one" / "learner.pt", weights_only=False)["policy"]
    b = torch.load(tmp_path / "two" / "learner.pt", weights_only=False)["policy"]
    # AdamW steps every weight by about the learning rate whatever its gradient's size, so a weight whose gradient
    # is near zero can step either way on rounding alone: nearly every weight equal, at most a handful apart.
    difference = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    assert difference.mean().item() < 1e-6 and (difference > 1e-4).float().mean().item() < 1e-4
    assert single[0][1] != single[1][1]  # it trained: the loss moved


def upload(endpoint: str, episode, tmp_path) -> None:
    """One episode through the robot's real uploader to the learner's ingest; returns once it is stored."""
    from sop_ros.bridge.uploader import OutboxUploader
    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.configs.bridge import BridgeConfig

    robot = episode.parent.name
    outbox = tmp_path / "outbox" / robot
    outbox.mkdir(parents=True)
    copy = shutil.copy2(episode, outbox / episode.name)
    with open_session(zenoh_config(connect=endpoint)) as session:
        uploader = OutboxUploader(session, robot, outbox, BridgeConfig(), lambda *_: None)
        halt = threading.Event()
        worker = threading.Thread(target=uploader.run, args=(halt,))
        worker.start()
        try:
            wait_for(lambda: uploader.snapshot().uploaded == 1, 60, what="the upload to be acknowledged")
        finally:
            halt.set()
            worker.join()
    assert not os.path.exists(copy)  # acknowledged as stored: the outbox let it go


@pytest.mark.e2e
def test_it_resumes_after_sigkill_from_its_checkpoint_with_every_stored_episode(tmp_path, recorded_demos):
    config = learner_yaml(tmp_path, recorded_demos, refresh_every_steps=2, publish_every_steps=3)
    endpoint = yaml.safe_load(open(config))["ingest"]["zenoh"]["listen"][0]
    status = tmp_path / "learner" / "status.json"
    learner = subprocess.Popen(sop("learner", "--config", config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=REPO)  # fmt: skip
    try:
        wait_for(status.exists, 120, what="the learner to start")
        upload(endpoint, episode_files(recorded_demos)[0], tmp_path)
        wait_for(lambda: json.loads(status.read_text())["online_episodes"] == 1, 120, what="the episode in training")
        wait_for(lambda: torch.load(tmp_path / "learner" / "learner.pt", weights_only=False)["step"] >= 6, 120,
                 what="a checkpoint past step 6")  # fmt: skip
    finally:
        learner.send_signal(signal.SIGKILL)
        learner.communicate(timeout=60)
    saved = torch.load(tmp_path / "learner" / "learner.pt", weights_only=False)["step"]
    result = run_sop("learner", "--config", config, "--max-steps", str(saved + 4))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resumed from {tmp_path / 'learner' / 'learner.pt'} at step {saved}" in result.stdout
    final = json.loads(status.read_text())
    assert final["step"] == saved + 4
    assert final["online_episodes"] == 1 and final["fleet"]["episodes"] == 1  # the stored episode is still there
    assert 0 < final["memory_mb"]["frame_cache"] <= 64  # the episode's and demonstrations' frames, decoded once
    assert final["latest_policy"].endswith(f"-{saved + 4:07d}")
    assert PolicyRegistry(tmp_path / "learner_policies").latest().version == final["latest_policy"]
    steps = [s for s, _ in step_losses(tmp_path / "learner")]
    assert steps[-4:] == list(range(saved, saved + 4))  # the curve goes on where the checkpoint was
    shown = run_sop("learner", "status", "--config", config)
    assert shown.returncode == 0 and f"step {saved + 4}" in shown.stdout and DEMO_TASKS[0] in shown.stdout
    assert "memory (MB): frame cache" in shown.stdout


@pytest.mark.e2e
def test_recap_pretrains_its_value_network_and_publishes_an_advantage_conditioned_policy(tmp_path, recorded_demos):
    config = learner_yaml(tmp_path, recorded_demos, algorithm="recap", max_steps=3, serve_robots=False,
                          recap={"value_pretrain_steps": 3, "value_training": "cotrain"})  # fmt: skip
    result = run_sop("learner", "--config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads((tmp_path / "learner" / "status.json").read_text())
    assert sorted(status["value_thresholds"]) == sorted(DEMO_TASKS)
    assert all(-1.0 <= t <= 1.0 for t in status["value_thresholds"].values())
    assert sorted(status["value_estimates"]) == sorted(DEMO_TASKS)  # V(first state), a normalised return
    assert all(-1.0 <= v <= 0.0 for v in status["value_estimates"].values())
    latest = PolicyRegistry(tmp_path / "learner_policies").latest()
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "learner_policies" / f"{latest.version}.onnx"))
                .metadata_props}  # fmt: skip
    assert metadata["sop_ros.indicator"] == "positive" and metadata["sop_ros.guidance"] == "1.0"


def test_each_batch_is_split_across_tasks_and_within_a_task_by_the_online_share(tmp_path, recorded_demos):
    config = from_dict(LearnerConfig, {"tasks": DEMO_TASKS, "demos_dir": str(recorded_demos), "batch_size": 64,
                                       "checkpoint_dir": str(tmp_path / "learner")})  # fmt: skip
    data = TrainingData(config, DatasetConfig(), make_algorithm(config))
    files = episode_files(recorded_demos)
    data.refresh(files)
    assert not data.online.episodes  # indexed in the background, taken at the next refresh
    assert data.refresh(files) and len(data.online.episodes) == 4
    # The fleet's frames are read from the learner's spill file, and give the batches the files give.
    assert all(isinstance(jpegs, SpilledJpegs) for e in data.online.episodes for jpegs in e.frames.values())
    in_memory = EpisodeDataset(files, data.online_config, log=lambda _: None, select=data.select)
    for seed in (0, 1):
        got = data.online.sample(np.random.default_rng(seed), 32)
        assert got["images"].tobytes() == in_memory.sample(np.random.default_rng(seed), 32)["images"].tobytes()
    for share in (0.2, 0.8):
        rows = plan_rows(7, config, data, dict.fromkeys(DEMO_TASKS, share))
        assert len(rows) == 64
        for task in DEMO_TASKS:
            mine = [r for r in rows if r.task == task]
            online = sum(r.source == "online" for r in mine)
            assert len(mine) == 32 and online in (int(32 * share), int(32 * share) + 1)
    assert plan_rows(7, config, data, dict.fromkeys(DEMO_TASKS, 0.5)) == plan_rows(7, config, data,
                                                                                    dict.fromkeys(DEMO_TASKS, 0.5))
    data.close()
    # A task left out of online_tasks trains on its demonstrations alone, whatever its share.
    only = from_dict(LearnerConfig, {"tasks": DEMO_TASKS, "demos_dir": str(recorded_demos), "batch_size": 64,
                                     "online_tasks": [DEMO_TASKS[0]],
                                     "checkpoint_dir": str(tmp_path / "only")})  # fmt: skip
    data = TrainingData(only, DatasetConfig(), make_algorithm(only))
    data.refresh(files, at_once=True)
    assert data.online.tasks == [DEMO_TASKS[0]]
    rows = plan_rows(7, only, data, dict.fromkeys(DEMO_TASKS, 0.8))
    assert {r.task for r in rows if r.source == "online"} == {DEMO_TASKS[0]}
    assert sum(r.source == "online" for r in rows if r.task == DEMO_TASKS[1]) == 0
    data.close()


def test_replay_episodes_keeps_the_most_recent_fleet_episodes_and_releases_the_rest(tmp_path, recorded_demos):
    config = from_dict(LearnerConfig, {"tasks": DEMO_TASKS, "demos_dir": str(recorded_demos), "replay_episodes": 1,
                                       "checkpoint_dir": str(tmp_path / "learner")})  # fmt: skip
    data = TrainingData(config, DatasetConfig(), make_algorithm(config))
    files = episode_files(recorded_demos)  # 4, in the order "stored"
    assert data.refresh(files[:2], at_once=True) and [e.path for e in data.online.episodes] == files[1:2]
    assert not data.refresh(files[:2])  # the same files: nothing changed
    first, spill = data.online.episodes[0], data.spills[0]
    data.online.sample(np.random.default_rng(0), 8)  # its frames decoded, and kept
    frame_keys = [(first.path, camera, i) for camera, jpegs in first.frames.items() for i in range(len(jpegs))]
    data.refresh(files[:3])  # the newest is indexed in the background (into a new spill), taken at the next refresh
    assert data.refresh(files[:3]) and [e.path for e in data.online.episodes] == files[2:3]
    assert set(data._cache) == {files[2]} and len(data.spills) == 2  # the older one left the index
    data.refresh(files)
    assert data.refresh(files) and [e.path for e in data.online.episodes] == files[3:]
    # Released a refresh after it left (a batch planned before may still have read it): its frames and spill file.
    assert data.frames.forget(frame_keys) == 0 and len(data.spills) == 2
    with pytest.raises(ValueError, match="closed"):
        spill.read(0, 1)
    data.close()
    with pytest.raises(ConfigError, match="replay_episodes"):
        from_dict(LearnerConfig, {"tasks": DEMO_TASKS, "demos_dir": "d", "replay_episodes": -1})


def test_fleet_metrics_come_from_the_labels_and_version_lag_from_the_robots_reports():
    def stored(task, outcome, interventions, at):
        return StoredEpisode("e", "robot_0", task, outcome, "v1", 100, interventions, 1, "0" * 64, "p", at)

    now = time.time()
    episodes = [stored("reach-v3", "success", 0, now), stored("reach-v3", "success", 2, now),
                stored("reach-v3", "failure", 1, now), stored("push-v3", "abort", 5, now)]  # fmt: skip
    metrics = fleet_metrics(episodes, now - 3600)
    assert metrics["success"] == {"reach-v3": pytest.approx(2 / 3)}
    assert metrics["autonomous_success"] == {"reach-v3": pytest.approx(1 / 3)}
    assert metrics["interventions_per_hour"] == pytest.approx(8, rel=0.01)
    table = {"robots": [{"robot": "robot_0", "running_version": "b"}, {"robot": "robot_1", "running_version": "c"},
                        {"robot": "robot_2", "running_version": "base"}]}  # fmt: skip
    assert version_lag(table, ["a", "b", "c"]) == {"robot_0": 1, "robot_1": 0, "robot_2": 3}


def test_a_fleet_robot_is_a_valid_robot_whose_operator_intervenes_and_whose_bridge_fetches_policies(tmp_path):
    from sop_ros.configs import load_config
    from sop_ros.configs.robot import RobotLaunchConfig
    from sop_ros.fleet.collect_demos import WorkUnit
    from sop_ros.fleet.online_fleet import robot_config

    base = load_config(RobotLaunchConfig, REPO / "config" / "fleet_sim.yaml")
    config = from_dict(RobotLaunchConfig, robot_config(base, "robot_1", WorkUnit("reach-v3", 5, 200_000), tmp_path,
                                                       "tcp/127.0.0.1:7447"))  # fmt: skip
    nodes = config.nodes
    assert config.robot.id == "robot_1" and nodes.sim_robot.task == nodes.scripted_operator.task == "reach-v3"
    assert nodes.scripted_operator.mode == "intervene" and nodes.sim_robot.step_mode == "lockstep"
    assert nodes.policy.policy_path == "" and nodes.bridge.policies.swap == "episode_boundary"
    assert nodes.bridge.outbox_dir == nodes.recorder.output_dir and nodes.teleop_arbiter.end_takeover_with_episode
    assert nodes.bridge.policies.public_key.endswith("policy_signing.pub")


@pytest.mark.e2e
def test_the_offline_baselines_run_through_the_same_learner(tmp_path, recorded_demos):
    """Offline HG-DAgger retrains once on what a frozen policy's fleet stored; offline BC on demonstrations only."""
    for path in episode_files(recorded_demos):  # stand-ins for a frozen fleet's episodes (`sop fleet run --frozen`)
        target = tmp_path / "store" / "episodes" / "robot_0" / f"fleet-{path.name}"
        copy_episode(path, target, episode_id=target.stem)
    for name, algorithm, online in (("dagger", "hg_dagger", 4), ("bc", "bc", 0)):
        config = learner_yaml(tmp_path, recorded_demos, name=name, algorithm=algorithm, max_steps=3, serve_robots=False)
        result = run_sop("learner", "--config", config)
        assert result.returncode == 0, result.stdout + result.stderr
        status = json.loads((tmp_path / name / "status.json").read_text())
        assert (status["step"], status["online_episodes"], status["fleet"]["episodes"]) == (3, online, 4)
        assert status["latest_policy"].endswith("-0000003")


@pytest.mark.e2e
def test_with_ema_decay_robots_get_the_moving_average_of_the_weights(tmp_path, recorded_demos):
    """ema_decay d: the policy published after step 2 is d x (step 1's weights) + (1 - d) x (step 2's); the
    training itself is the same as without (step 1's weights: those of a one-step run without averaging)."""
    from sop_ros.learner.online import FINAL_POLICY, STATE
    from sop_ros.model.vla import load_checkpoint

    runs = {}
    for name, steps, decay in (("one_step", 1, 0.0), ("averaged", 2, 0.25)):
        config = learner_yaml(tmp_path, recorded_demos, name=name, max_steps=steps, serve_robots=False,
                              ema_decay=decay)  # fmt: skip
        result = run_sop("learner", "--config", config)
        assert result.returncode == 0, result.stdout + result.stderr
        runs[name] = load_checkpoint(tmp_path / name / FINAL_POLICY)[0].state_dict()
    trained = torch.load(tmp_path / "averaged" / STATE, map_location="cpu", weights_only=False)["policy"]
    weights = [k for k, v in trained.items() if v.is_floating_point() and not torch.equal(v, runs["one_step"][k])]
    assert weights  # the second step moved them
    for k in weights:
        torch.testing.assert_close(runs["averaged"][k], 0.25 * runs["one_step"][k] + 0.75 * trained[k])


@pytest.mark.e2e
def test_optimiser_from_base_continues_pretrainings_adamw_moments(tmp_path, recorded_demos):
    from sop_ros.learner.online import STATE

    base = tmp_path / "base.pt"
    pretrained = run_sop("pretrain", "--demos", str(recorded_demos), "--out", str(base), "--steps", "3",
                         "--batch-size", "8")  # fmt: skip
    assert pretrained.returncode == 0, pretrained.stderr
    counts = {}
    for carry in (False, True):
        name = f"carry_{carry}"
        config = learner_yaml(tmp_path, recorded_demos, name=name, base_policy=str(base), max_steps=2,
                              serve_robots=False, optimiser_from_base=carry)  # fmt: skip
        result = run_sop("learner", "--config", config)
        assert result.returncode == 0, result.stdout + result.stderr
        state = torch.load(tmp_path / name / STATE, map_location="cpu", weights_only=False)["optimiser"]["state"]
        counts[carry] = {int(s["step"]) for s in state.values()}
    assert counts == {False: {2}, True: {5}}  # AdamW's step count: 2 learner steps, after 3 of pretraining

    old = tmp_path / "old.pt"  # a checkpoint saved without its optimiser
    payload = torch.load(base, map_location="cpu", weights_only=True)
    del payload["optimiser"]
    torch.save(payload, old)
    config = learner_yaml(tmp_path, recorded_demos, name="old", base_policy=str(old), max_steps=1,
                          serve_robots=False, optimiser_from_base=True)  # fmt: skip
    result = run_sop("learner", "--config", config)
    assert result.returncode == 2 and "holds no optimiser state" in result.stderr, result.stdout + result.stderr


def test_bf16_precision_runs_the_forward_pass_under_autocast_and_fp32_does_not():
    from sop_ros.configs.model import ModelConfig
    from sop_ros.learner.online import precision_context
    from sop_ros.model.export import example_inputs
    from sop_ros.model.vla import VLAPolicy

    torch.manual_seed(0)
    policy = VLAPolicy(ModelConfig(image_size=32, width=32, cnn_channels=(8, 16), depth=1, head_depth=1))
    images, proprio, instruction, indicator, actions = example_inputs(policy, 4)
    batch = {"images": images, "proprio": proprio, "instruction": instruction, "indicator": indicator,
             "actions": actions, "action_mask": torch.ones(4, policy.config.chunk, dtype=torch.bool),
             "noise": torch.randn_like(actions), "flow_time": torch.rand(4)}  # fmt: skip
    results = {}
    for precision in ("fp32", "tf32", "bf16"):
        with precision_context(precision, torch.device("cpu"))():
            results[precision] = (torch.is_autocast_enabled("cpu"), policy.sample_losses(batch)[0].float())
    assert (results["fp32"][0], results["tf32"][0], results["bf16"][0]) == (False, False, True)
    torch.testing.assert_close(results["tf32"][1], results["fp32"][1])  # no TF32 on a CPU
    assert torch.isfinite(results["bf16"][1]).all() and not torch.equal(results["bf16"][1], results["fp32"][1])
    torch.testing.assert_close(results["bf16"][1], results["fp32"][1], rtol=0.1, atol=0.05)


@pytest.mark.e2e
def test_with_canaries_a_new_policy_goes_to_the_canary_first_and_a_rollback_restarts_the_learner(tmp_path,
                                                                                                 recorded_demos):
    """The learner's first policy goes to every robot; the next to the canary robot only, and no newer one while
    it is on canary; the canary's episodes fail where the incumbent's succeed: rolled back, training goes on
    from the incumbent's weights, and the next policy goes on canary again."""
    from sop_ros.bridge.protocol import robot_report_key
    from sop_ros.bridge.uploader import OutboxUploader
    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.configs.bridge import BridgeConfig

    config = learner_yaml(tmp_path, recorded_demos, publish_every_steps=2, refresh_every_steps=2,
                          canary={"enabled": True, "robots": ["robot_9"], "min_episodes": 2})  # fmt: skip
    endpoint = yaml.safe_load(open(config))["ingest"]["zenoh"]["listen"][0]
    status, registry = tmp_path / "learner" / "status.json", PolicyRegistry(tmp_path / "learner_policies")
    learner = subprocess.Popen(sop("learner", "--config", config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=REPO)  # fmt: skip
    source = episode_files(recorded_demos)[0]
    try:
        with open_session(zenoh_config(connect=endpoint)) as session:
            wait_for(status.exists, 120, what="the learner to start")

            said = [0.0]

            def reported() -> bool:
                """The robots report, as their bridges do every period: the fleet the canaries come from. (Said
                until a canary goes out: a report put before the learner's server listens is not heard.)"""
                if time.monotonic() - said[0] > 0.5:
                    for robot in ("robot_0", "robot_9"):
                        session.put(robot_report_key(robot), json.dumps(FRESH_ROBOT_REPORT).encode())
                    said[0] = time.monotonic()
                return registry.canary() is not None

            wait_for(reported, 120, what="a policy on canary")
            incumbent, candidate = registry.latest(), registry.canary()
            assert incumbent.stage == "" and candidate.robots == ["robot_9"] and candidate.parent == incumbent.version
            time.sleep(2.0)  # a few publishing periods: nothing newer goes out while the candidate is on canary
            assert registry.canary() == candidate and registry.latest() == incumbent
            episodes = [("robot_0", incumbent.version, "success", "0"), ("robot_0", incumbent.version, "success", "0"),
                        ("robot_9", candidate.version, "failure", "1"), ("robot_9", candidate.version, "failure", "1")]
            for robot in ("robot_0", "robot_9"):
                outbox = tmp_path / "outbox" / robot
                mine = [e for e in episodes if e[0] == robot]
                for i, (_, version, outcome, interventions) in enumerate(mine):
                    copy_episode(source, outbox / f"{robot}-{i}.mcap", robot_id=robot, episode_id=f"{robot}-{i}",
                                 policy_version=version, outcome=outcome, interventions=interventions)  # fmt: skip
                uploader = OutboxUploader(session, robot, outbox, BridgeConfig(), lambda *_: None)
                halt = threading.Event()
                worker = threading.Thread(target=uploader.run, args=(halt,))
                worker.start()
                try:
                    count = len(mine)
                    wait_for(lambda u=uploader, n=count: u.snapshot().uploaded == n, 60, what="the uploads")
                finally:
                    halt.set()
                    worker.join()
            wait_for(registry.rollouts, 120, what="the gate's verdict")
            seen = [None]  # the canary as last read: read once a poll, as the learner may move it on meanwhile

            def next_on_canary() -> bool:
                seen[0] = registry.canary()
                return seen[0] is not None and seen[0] != candidate

            wait_for(next_on_canary, 120, what="the next policy on canary")
            assert seen[0].robots == ["robot_9"] and seen[0].version != candidate.version
            # The learner's status names a candidate after the rolled-back one at its next write.
            wait_for(lambda: json.loads(status.read_text()).get("canary", {}).get("candidate") not in
                     ("", candidate.version), 60, what="the status to show the next candidate")  # fmt: skip
    finally:
        learner.send_signal(signal.SIGTERM)
        out, _ = learner.communicate(timeout=120)
    # 0/2 against 2/2 on one task: pooled 0.5, z = -1 / sqrt(0.25 x (1/2 + 1/2)) = -2, one-sided p = 0.023
    (verdict,) = registry.rollouts()
    assert (verdict["candidate"], verdict["incumbent"], verdict["decision"]) == (candidate.version,
                                                                                 incumbent.version, "rolled back")
    assert verdict["evidence"]["z"] == pytest.approx(-2.0) and registry.latest().stage == "rolled back"
    assert f"after the rollback, training goes on from the incumbent {incumbent.version}'s weights" in out
    shown = json.loads(status.read_text())["canary"]
    assert shown["verdicts"][0]["decision"] == "roll back" and shown["robots"] == ["robot_9"]
    assert shown["decided"] == {"roll back": 1}
