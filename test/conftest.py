import itertools
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from sop_ros.host import sop_command as sop  # noqa: F401  (tests import it from here)
from sop_ros.robot import fastdds_fix

fastdds_fix.load()  # before any test imports rclpy: the tests' own nodes stop as the robots' do

# Each test module says what its tests need in `TIER`; a test that needs otherwise carries its own mark. Run one
# tier with `pytest -m unit` (or `make test PYTEST_ARGS="-m unit"`); `make test` runs them all.
TIERS = {
    "unit": "plain Python in the test's process (and short `sop` commands refused at their checks): no ROS graph, "
            "no Zenoh session; tests of recorded data read four episodes recorded once per session",
    "ros": "real ROS 2 nodes and topics, in the test's process or as node processes; no Zenoh",
    "zenoh": "Zenoh sessions on loopback: the bridge, the cloud's ingest and policy services, with or without ROS",
    "e2e": "whole runs of `sop` commands: robots recording, fleets with a learner, evaluations, learners training",
}


def pytest_configure(config):
    for tier, what in TIERS.items():
        config.addinivalue_line("markers", f"{tier}: {what}")


@pytest.hookimpl(tryfirst=True)  # before -m selects by marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        own = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(own) > 1:
            raise pytest.UsageError(f"{item.nodeid}: marked with more than one tier: {', '.join(sorted(own))}")
        if not own:
            tier = getattr(item.module, "TIER", None)
            if tier not in TIERS:
                raise pytest.UsageError(f"{item.nodeid}: no tier: set TIER in its module to one of "
                                        f"{', '.join(TIERS)}, or mark the test")  # fmt: skip
            item.add_marker(tier)


REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "install" / "sop_ros"
# DDS domain ids for tests: those whose ports stay out of Linux's ephemeral range (ROS 2's advice: 0-101, 215-232),
# less the default 0 and the Makefile's and CI's own (a demo running beside the tests stays apart).
DOMAINS = [d for d in (*range(1, 102), *range(215, 233)) if d not in (42, 61)]


def worker_domains() -> itertools.cycle:
    """The domains this pytest process gives its tests: with xdist's workers (`make test`) a share of DOMAINS
    each, so that no two tests running at once meet; within it, starting where the pid says, so that two test
    sessions at once rarely do."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = len(DOMAINS) // count
    share = DOMAINS[int(worker.removeprefix("gw")) * size:][:size]
    start = os.getpid() % size
    return itertools.cycle([*share[start:], *share[:start]])


_domains = worker_domains()


@pytest.fixture(autouse=True)
def ros_env(monkeypatch):
    """Every test on localhost only, on a DDS domain of its own (inherited by the processes it starts)."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(next(_domains)))
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setenv("ROS_LOG_DIR", str(REPO / "log" / "ros"))


DEMO_TASKS = ["push-v3", "reach-v3"]
DEMO_CAMERAS = ("corner", "topview")  # config/sim.yaml's, which `sop collect-demos` records with


@pytest.fixture(scope="session")
def recorded_demos(tmp_path_factory):
    """Four real episodes (two of each of DEMO_TASKS) recorded by two simulated robots over ROS 2, made once:
    tests read them, never change them."""
    from sop_ros.episodes.reader import episode_files

    out = tmp_path_factory.mktemp("demos")
    # The autouse ros_env fixture is per test, so not yet in force here: the same settings, by hand.
    env = {
        **os.environ,
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(next(_domains)),
        "MUJOCO_GL": "egl",
        "ROS_LOG_DIR": str(REPO / "log" / "ros"),
    }
    tasks = ",".join(DEMO_TASKS)
    cmd = sop("collect-demos", "--tasks", tasks, "--episodes-per-task", "2", "--robots", "2", "--out", str(out))
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(episode_files(out)) == 4
    return out


@pytest.fixture
def rclpy_context():
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


def wait_for(predicate, timeout: float, spin=None, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if spin is not None:
            spin()
        if predicate():
            return
        time.sleep(0.01 if spin is None else 0)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def pids_started(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"\(pid (\d+)\)", output)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a dead parent) is not running.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def start(cmd: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, **kwargs)
