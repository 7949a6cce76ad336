"""What colcon installs: node executables, launch files and the files they name; launch files themselves."""

import importlib.util
import re

import pytest
from conftest import INSTALL, REPO

from sop_ros.configs import load_config
from sop_ros.configs.robot import RobotLaunchConfig
from sop_ros.launch.plan import NODE_TYPES, plan

TIER = "unit"  # what the tests need: conftest.TIERS

SHARE = INSTALL / "share" / "sop_ros"


def test_every_node_type_is_an_installed_executable():
    cmake_nodes = dict(re.findall(r'"(\w+)=([\w.]+)"', (REPO / "CMakeLists.txt").read_text()))
    # Nodes a robot config can start, plus ones run by hand (keyboard_teleop needs a terminal).
    assert {t.executable: t.module for t in NODE_TYPES.values()}.items() <= cmake_nodes.items()
    for executable, module in cmake_nodes.items():
        exe = INSTALL / "lib" / "sop_ros" / executable
        assert exe.is_file() and exe.stat().st_mode & 0o111, f"{exe} missing or not executable"
        # Through node_process: stop signals are caught before the node's module loads.
        assert f'run("{module}")' in exe.read_text()
        assert hasattr(importlib.import_module(module), "main")
    for node_type in NODE_TYPES.values():
        assert hasattr(importlib.import_module(node_type.module), node_type.node_class)


def test_launch_files_and_what_they_name_are_installed():
    for name in ("robot.launch.py", "sim.launch.py"):
        assert (SHARE / "launch" / name).exists()
    text = (REPO / "launch" / "robot.launch.py").read_text()
    urdf = re.search(r'URDF = "([^"]+)"', text).group(1)
    assert (SHARE / urdf).is_file()
    for config in ("robot.yaml", "sim.yaml", "learner.yaml"):
        assert (SHARE / "config" / config).is_file()
    assert 'SIM_CONFIG = "sim.yaml"' in (REPO / "launch" / "sim.launch.py").read_text()
    assert (SHARE / "rviz" / "sop_ros.rviz").is_file()
    for name in ("sim.yaml", "robot.yaml"):
        for spec in plan(load_config(RobotLaunchConfig, SHARE / "config" / name)):
            assert (INSTALL / "lib" / "sop_ros" / spec.type.executable).is_file()


def test_interfaces_are_installed_for_other_packages():
    for name in ("ActionChunk", "EpisodeEvent", "InterventionState", "PolicyStatus"):
        assert (SHARE / "msg" / f"{name}.msg").is_file()
    for name in ("LabelEpisode", "LoadPolicy"):
        assert (SHARE / "srv" / f"{name}.srv").is_file()


def test_launch_description_builds():
    pytest.importorskip("launch_ros", reason="ROS 2 'launch'/'launch_ros' are not installable from PyPI here")
    spec = importlib.util.spec_from_file_location("sim_launch", SHARE / "launch" / "sim.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate_launch_description().entities
