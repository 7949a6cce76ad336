"""`pip install .` gives the cloud-side parts without ROS, and the robot commands say what they need."""

import shutil
import subprocess
import sys
import zipfile

from conftest import REPO

TIER = "unit"  # what the tests need: conftest.TIERS

WITHOUT_ROS = "import sys; sys.modules['rclpy'] = None; from sop_ros.cli import main; sys.exit(main(sys.argv[1:]))"


def run_without_ros(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", WITHOUT_ROS, *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_configs_and_cli_work_without_rclpy():
    result = run_without_ros("check-config", "config/learner.yaml", "--kind", "learner")
    assert result.returncode == 0, result.stderr
    assert "valid learner config" in result.stdout


def test_robot_command_without_ros_says_what_is_missing():
    result = run_without_ros("robot", "--config", "config/sim.yaml")
    assert result.returncode == 1
    assert "sop robot: needs ROS 2 Jazzy and the built sop_ros interfaces" in result.stderr
    assert "Traceback" not in result.stderr


def test_wheel_holds_the_package_and_the_sop_command(tmp_path):
    # Built from a copy: setuptools leaves build/lib behind, and build/ is colcon's.
    src = tmp_path / "src"
    shutil.copytree(REPO / "sop_ros", src / "sop_ros", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.py", src)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist", "."]
    subprocess.run(cmd, check=True, capture_output=True, cwd=src, timeout=120)
    (wheel,) = (src / "dist").glob("sop_ros-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("sop_ros/cli.py", "sop_ros/configs/learner.py", "sop_ros/configs/tasks.py"):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sop = sop_ros.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
