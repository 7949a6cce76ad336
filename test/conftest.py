import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "install" / "sop_ros"
_domains = itertools.count(100 + (os.getpid() % 50) * 2)


@pytest.fixture(autouse=True)
def ros_env(monkeypatch):
    """Every test on localhost only, on a DDS domain of its own (inherited by the processes it starts)."""
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(next(_domains) % 230))
    monkeypatch.setenv("MUJOCO_GL", "egl")
    monkeypatch.setenv("ROS_LOG_DIR", str(REPO / "log" / "ros"))


@pytest.fixture
def rclpy_context():
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


def sop(*args: str) -> list[str]:
    return [sys.executable, "-m", "sop_ros.cli", *args]


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
