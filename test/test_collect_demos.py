"""`sop collect-demos`: a fleet of simulated robots recording demonstrations, end to end."""

import json
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, sop, wait_for
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from sop_ros.configs import load_config
from sop_ros.configs.robot import RobotLaunchConfig
from sop_ros.fleet.collect_demos import WorkUnit, plan_units, robot_config

TIER = "e2e"  # what the tests need: conftest.TIERS


@pytest.mark.unit
def test_every_robot_gets_work_and_every_episode_is_planned():
    assert plan_units(["reach-v3", "push-v3", "pick-place-v3"], 5, 2, 0) == [
        WorkUnit("reach-v3", 5, 0), WorkUnit("push-v3", 5, 1000), WorkUnit("pick-place-v3", 5, 2000)
    ]  # fmt: skip
    units = plan_units(["reach-v3"], 5, 2, 7)
    assert sorted(u.episodes for u in units) == [2, 3] and len({u.seed for u in units}) == 2


@pytest.mark.unit
def test_a_fleet_robots_config_demonstrates_with_the_operator_in_control_of_every_episode(tmp_path):
    """A fleet robot's arbiter hands control back to the policy at each episode's end; recording demonstrations
    there is no policy, so a lockstep simulator would wait for a command that never comes (it did: 270 s, then the
    unit failed)."""
    fleet = load_config(RobotLaunchConfig, str(REPO / "config" / "fleet_sim.yaml"))
    assert fleet.nodes.teleop_arbiter.end_takeover_with_episode and fleet.nodes.scripted_operator.mode == "intervene"
    nodes = robot_config(fleet, "robot_0", WorkUnit("reach-v3", 2, 0), tmp_path)["nodes"]
    assert nodes["teleop_arbiter"]["end_takeover_with_episode"] is False
    assert nodes["scripted_operator"]["mode"] == "demo" and nodes["scripted_operator"]["task"] == "reach-v3"


def test_two_robots_record_demonstrations_that_stock_readers_decode(tmp_path):
    out = tmp_path / "demos"
    cmd = sop("collect-demos", "--tasks", "reach-v3", "--episodes-per-task", "3", "--robots", "2", "--out", str(out))
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["reach-v3"]["episodes"] == 3 and summary["failed"] == []
    assert summary["tasks"]["reach-v3"]["successes"] == 3  # Meta-World's expert solves reach every time
    assert "reach-v3" in result.stdout and "100%" in result.stdout
    files = sorted(out.glob("robot_*/*.mcap"))
    assert len(files) == 3 and {f.parent.name for f in files} == {"robot_0", "robot_1"}
    for path in files:
        with open(path, "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            assert sum(1 for _ in reader.iter_decoded_messages(topics=[f"/{path.parent.name}/joint_states"])) > 1


def test_a_fleet_stopped_by_sigterm_stops_its_robots_first(tmp_path):
    out = tmp_path / "demos"
    cmd = sop("collect-demos", "--tasks", "reach-v3", "--episodes-per-task", "50", "--robots", "1", "--out", str(out))
    fleet = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def robots() -> list[int]:  # this fleet's robot processes: their command names a config in out/configs
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if str(out / "configs") in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue  # ended while listed
        return found

    wait_for(robots, 60, what="the fleet's robot to start")
    fleet.send_signal(signal.SIGTERM)
    output, _ = fleet.communicate(timeout=60)
    assert "interrupted: stopping the robots" in output
    # None left running without its fleet. One stopped while it was still starting its node ends by the node's
    # parent-death signal, a moment after the fleet.
    wait_for(lambda: not robots(), 30, what="the fleet's robot processes to end")


@pytest.mark.unit
def test_unknown_task_is_refused_by_name(tmp_path):
    cmd = sop("collect-demos", "--tasks", "reach-v3,fly-v3", "--episodes-per-task", "1", "--out", str(tmp_path))
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and "'fly-v3' is not a Meta-World task" in result.stderr


def joint_trajectory(path) -> list[tuple[float, ...]]:
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        topic = f"/{path.parent.name}/joint_states"
        return [tuple(d.position) for _, _, _, d in reader.iter_decoded_messages(topics=[topic])]


def test_the_same_seed_records_the_same_episode_through_the_whole_loop(tmp_path):
    """Lockstep: simulator, arbiter and expert over ROS 2 give the same joint trajectory for the same seed."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        cmd = sop("collect-demos", "--tasks", "push-v3", "--episodes-per-task", "1", "--out", str(out), "--seed", "5")
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        (path,) = out.glob("robot_0/*.mcap")
        runs.append(joint_trajectory(path))
    assert len(runs[0]) > 10 and runs[0] == runs[1]
