"""The whole loop, paced by simulated time: a robot (real nodes, bridge over Zenoh) and the learner, ending by
itself when the fleet has simulated its span, with the learner's budget spent exactly and new policies taken."""

import json

import numpy as np
import pytest
import yaml
from conftest import DEMO_TASKS, REPO
from test_learner import learner_yaml, run_sop

from sop_ros.cloud.episode_store import stored_episodes
from sop_ros.episodes.reader import episode_files, read_streams
from sop_ros.fleet.demo import hot_swaps, short_version
from sop_ros.learner.dataset import executed_actions

TIER = "unit"  # what the tests need: conftest.TIERS


# Two whole runs of the loop, ~2.5 minutes each on two cores: more than the suite's default per-test bound.
@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_paced_fleet_run_spends_its_learner_budget_and_the_robot_takes_new_policies(tmp_path, recorded_demos):
    base = tmp_path / "base.pt"
    pretrained = run_sop("pretrain", "--demos", str(recorded_demos), "--out", str(base), "--steps", "2",
                         "--batch-size", "8")  # fmt: skip
    assert pretrained.returncode == 0, pretrained.stderr
    # Two learner steps per simulated second, a policy every 4: over 12 simulated seconds, 24 steps, 6 policies.
    config = learner_yaml(tmp_path, recorded_demos, base_policy=str(base), publish_every_steps=4,
                          pace={"steps_per_sim_minute": 120, "lead_steps": 2})  # fmt: skip
    robot = yaml.safe_load((REPO / "config" / "fleet_sim.yaml").read_text())
    robot["nodes"]["sim_robot"] |= {"max_episode_steps": 60, "image_width": 48, "image_height": 48}
    robot_yaml = tmp_path / "robot.yaml"
    robot_yaml.write_text(yaml.safe_dump(robot))
    out = tmp_path / "run"
    result = run_sop("fleet", "run", "--config", config, "--robot-config", str(robot_yaml), "--robots", "1",
                     "--sim-minutes", "0.2", "--minutes", "8", "--block", "2", "--bin-minutes", "0.1",
                     "--out", str(out), timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "fleet_run.json").read_text())
    assert report["robot_failures"] == []  # else: which block's process failed, and the error its log names
    assert report["clock"] == "simulated" and report["learner_steps"] == 24 and report["ended"] == "learner budget"
    assert report["episodes"] >= 2 and {p["minute"] for p in report["curve"]} <= {0.1, 0.2, 0.3}
    assert [p["partial"] for p in report["curve"] if p["minute"] <= 0.2] == [False, False]  # before the budget's end
    assert set(report["tasks"]) == set(DEMO_TASKS)
    # SOP's online share of each task over the run, from the learner's TensorBoard scalars, within its bounds.
    assert set(report["online_share"]) == set(DEMO_TASKS)
    assert all(0.2 <= s["min"] <= s["last"] <= s["max"] <= 0.8 for s in report["online_share"].values())
    # Episodes ended on the fleet's clock, which went on across the robot's blocks of episodes, and no further
    # than lead_steps past the learner's last step: (24 + 2) steps of 0.5 s.
    ended = sorted(e.ended_ns for e in stored_episodes(out / "store"))
    assert len(set(ended)) == len(ended) and 0 < ended[0] and ended[-1] <= 13e9
    versions = hot_swaps(out / "store")["robot_0"]
    assert short_version(versions[0]) == "base" and len(versions) >= 2, versions
    assert all(short_version(v).startswith("step ") for v in versions[1:])
    # Every step of every stored episode, takeovers included, has the command the simulator reports running.
    for path in episode_files(out / "store"):
        streams = read_streams(path, ())
        state_ns = np.array([t for t, _, _ in streams.states])
        assert executed_actions(streams.executed, state_ns, 4) is not None, path

    # Same seeds, same result: a second run takes the same episodes, with the same outcomes, interventions and
    # policies (each episode runs the policy the learner's schedule gives it, not whichever arrived first).
    again = tmp_path / "again"
    result = run_sop("fleet", "run", "--config", config, "--robot-config", str(robot_yaml), "--robots", "1",
                     "--sim-minutes", "0.2", "--minutes", "8", "--block", "2", "--bin-minutes", "0.1",
                     "--out", str(again), timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # Compared: the episodes the learner waited for (ended by its last step's data cutoff, 24 x 0.5 s less the
    # 5 s ingest delay). Later ones race the learner's exit at its budget: stored in one run, not in another.
    first, second = episode_summary(out / "store", 7e9), episode_summary(again / "store", 7e9)
    assert len(first) >= 2 and second == first


def episode_summary(store, ended_by_ns: float) -> list[tuple]:
    """What a run did, episode by episode, without its names (versions name the learner's run)."""
    return [(e.robot_id, e.task, e.ended_ns, e.outcome, e.interventions, short_version(e.policy_version))
            for e in sorted(stored_episodes(store), key=lambda e: (e.ended_ns, e.robot_id))
            if e.ended_ns <= ended_by_ns]  # fmt: skip



def test_a_robot_block_that_fails_is_reported_with_the_error_its_log_names(tmp_path, capsys):
    import subprocess
    import sys

    from sop_ros.fleet.online_fleet import block_failure

    log = tmp_path / "logs" / "robot_1_block003.log"
    log.parent.mkdir()
    with open(log, "w") as f:
        script = "print('[INFO] started'); print('[FATAL] [sim_robot]: simulator failed: OSError: disk'); exit(1)"
        failed = subprocess.Popen([sys.executable, "-c", script], stdout=f)
        finished = subprocess.Popen([sys.executable, "-c", "exit(0)"], stdout=f)
    failed.wait(), finished.wait()
    assert block_failure("robot_1", log, finished, tmp_path) == []
    assert block_failure("robot_1", log, failed, tmp_path) == [{
        "robot": "robot_1", "block": "robot_1_block003", "exit_code": 1, "log": "logs/robot_1_block003.log",
        "error": "[FATAL] [sim_robot]: simulator failed: OSError: disk"}]  # fmt: skip
    assert "robot_1: robot_1_block003 exited with 1 ([FATAL]" in capsys.readouterr().out


def test_hot_swaps_are_the_versions_in_the_order_run_with_a_cut_episode_last(tmp_path):
    from test_bridge_upload import make_episode

    from sop_ros.cloud.episode_store import EpisodeStore

    robot_dir = tmp_path / "episodes" / "robot_0"
    robot_dir.mkdir(parents=True)
    for episode, version, end in [("e1", "base-1", "2000"), ("e2", "sop-1-0000100", "4000"),
                                  ("e3", "sop-1-0000200", ""), ("e0", "base-1", "1000")]:  # fmt: skip
        make_episode(robot_dir, episode, frames=2, robot="robot_0", policy_version=version, end_ns=end)
    EpisodeStore(tmp_path).close()  # indexes the files it finds
    # e3 was cut short by the robot's stop (no END): it came last, not first.
    assert [short_version(v) for v in hot_swaps(tmp_path)["robot_0"]] == ["base", "step 100", "step 200"]


def test_the_curve_counts_autonomous_success_per_task_marks_a_partial_bin_and_finds_the_hot_swaps(tmp_path):
    from sop_ros.cloud.episode_store import StoredEpisode
    from sop_ros.fleet.online_fleet import curve_of, plot_success

    def episode(robot, task, ended_s, outcome, interventions, version):
        return StoredEpisode(f"{robot}-{ended_s}", robot, task, outcome, version, 60, interventions, 1, "", "", 0.0,
                             int(ended_s * 1e9))  # fmt: skip

    episodes = [
        episode("r0", "reach-v3", 10, "success", 0, "base"),
        episode("r1", "push-v3", 20, "success", 1, "base"),  # the operator finished it: not autonomous
        episode("r0", "reach-v3", 40, "failure", 0, "base"),
        episode("r0", "reach-v3", 70, "success", 0, "sop-x-0000100"),  # r0 swapped at its episode boundary, 40 s
        episode("r1", "push-v3", 80, "aborted", 0, "sop-x-0000100"),  # unlabelled: not counted
        episode("r1", "push-v3", 100, "success", 0, "sop-x-0000100"),
    ]
    report = curve_of(episodes, lambda e: e.ended_ns / 1e9, bin_s=60, end_s=100)
    first, last = report["curve"]
    assert (first["minute"], first["partial"], last["minute"], last["partial"]) == (1.0, False, 2.0, True)
    assert first["per_task"] == {"push-v3": {"episodes": 1, "autonomous_successes": 0},
                                 "reach-v3": {"episodes": 2, "autonomous_successes": 1}}  # fmt: skip
    assert last["per_task"]["push-v3"] == {"episodes": 1, "autonomous_successes": 1}
    assert report["hot_swaps"] == [{"minute": 0.333, "robot": "r1", "version": "sop-x-0000100"},
                                   {"minute": 0.667, "robot": "r0", "version": "sop-x-0000100"}]  # fmt: skip
    plot_success(report | {"clock": "simulated"}, tmp_path / "curve.png", "two robots")
    assert (tmp_path / "curve.png").stat().st_size > 10_000
