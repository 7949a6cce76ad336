"""urdf/sawyer.urdf: a well-formed single tree whose joints and kinematics match Meta-World's MuJoCo arm.

Plain pytest (no ROS): the URDF is parsed with ElementTree and its forward kinematics, computed here,
are compared with MuJoCo's own for the simulator's model.
"""

from __future__ import annotations

import os

# Headless rendering backend; must be set before mujoco is imported (Meta-World imports it).
os.environ.setdefault("MUJOCO_GL", "egl")

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import metaworld
import mujoco
import numpy as np
import pytest

TIER = "unit"  # what the tests need: conftest.TIERS

URDF_PATH = Path(__file__).resolve().parents[1] / "urdf" / "sawyer.urdf"
# The simulator's movable joints, named as in its sensor_msgs/JointState.
MOVABLE_JOINTS = (
    "right_j0", "right_j1", "right_j2", "right_j3", "right_j4", "right_j5", "right_j6", "r_close", "l_close",
)  # fmt: skip
# URDF links that are not MuJoCo bodies of the same name, mapped to the MuJoCo site they stand for.
LINK_SITES = {"end_effector": "endEffector"}
FK_TOLERANCE_M = 1e-3


@pytest.fixture(scope="module")
def robot() -> ET.Element:
    return ET.parse(URDF_PATH).getroot()


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    # The arm (xyz_base.xml) is shared by every Meta-World task, so one task's model suffices. MT1 builds
    # the same reach-v3 class as MT10(seed=0).train_classes["reach-v3"] in ~0.5 s instead of ~5 s.
    benchmark = metaworld.MT1("reach-v3", seed=0)
    return benchmark.train_classes["reach-v3"]().model


def _floats(text: str | None) -> np.ndarray:
    return np.array([float(v) for v in (text or "0 0 0").split()])


def _rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """URDF rpy: fixed-axis X, then Y, then Z, i.e. R = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' formula."""
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def forward_kinematics(robot: ET.Element, q: dict[str, float]) -> dict[str, np.ndarray]:
    """4x4 pose in the root frame of every link, for joint positions q (movable joints by name)."""
    by_child: dict[str, ET.Element] = {j.find("child").get("link"): j for j in robot.findall("joint")}
    poses: dict[str, np.ndarray] = {}

    def pose(link: str) -> np.ndarray:
        if link not in poses:
            joint = by_child.get(link)
            if joint is None:  # the root
                poses[link] = np.eye(4)
                return poses[link]
            origin = joint.find("origin")
            fixed = np.eye(4)
            if origin is not None:
                fixed[:3, :3] = _rpy_matrix(*_floats(origin.get("rpy")))
                fixed[:3, 3] = _floats(origin.get("xyz"))
            motion = np.eye(4)
            axis_el = joint.find("axis")
            axis = _floats(axis_el.get("xyz")) if axis_el is not None else np.array([1.0, 0.0, 0.0])
            if joint.get("type") in ("revolute", "continuous"):
                motion[:3, :3] = _axis_rotation(axis, q[joint.get("name")])
            elif joint.get("type") == "prismatic":
                motion[:3, 3] = axis * q[joint.get("name")]
            poses[link] = pose(joint.find("parent").get("link")) @ fixed @ motion
        return poses[link]

    for link in robot.findall("link"):
        pose(link.get("name"))
    return poses


def test_is_a_robot(robot: ET.Element) -> None:
    # ET.parse in the fixture already raised if the XML were malformed.
    assert robot.tag == "robot"
    assert robot.get("name")


def test_joint_links_exist(robot: ET.Element) -> None:
    links = {link.get("name") for link in robot.findall("link")}
    for joint in robot.findall("joint"):
        for end in ("parent", "child"):
            assert joint.find(end).get("link") in links, f"{joint.get('name')}: {end} link missing"


def test_links_form_a_single_tree(robot: ET.Element) -> None:
    links = [link.get("name") for link in robot.findall("link")]
    assert len(links) == len(set(links)), "duplicate link names"
    joints = robot.findall("joint")
    names = [joint.get("name") for joint in joints]
    assert len(names) == len(set(names)), "duplicate joint names"
    children = [joint.find("child").get("link") for joint in joints]
    assert len(children) == len(set(children)), "a link has two parents"
    roots = set(links) - set(children)
    assert roots == {"world"}, f"expected the single root 'world', got {roots}"
    # Every link reachable from the root (with one parent each, this also rules out cycles).
    kids: dict[str, list[str]] = {}
    for joint in joints:
        kids.setdefault(joint.find("parent").get("link"), []).append(joint.find("child").get("link"))
    seen, stack = set(), ["world"]
    while stack:
        link = stack.pop()
        seen.add(link)
        stack.extend(kids.get(link, []))
    assert seen == set(links)


def test_materials_are_defined(robot: ET.Element) -> None:
    # A visual naming an undefined material renders without colour and makes RViz complain.
    defined = {material.get("name") for material in robot.findall("material")}
    used = {material.get("name") for material in robot.iter("material")} - defined
    assert not used, f"undefined materials: {used}"


def test_movable_joints_are_the_simulators(robot: ET.Element) -> None:
    movable = {j.get("name") for j in robot.findall("joint") if j.get("type") != "fixed"}
    assert movable == set(MOVABLE_JOINTS)


def test_limits_equal_mujoco_ranges(robot: ET.Element, model: mujoco.MjModel) -> None:
    for joint in robot.findall("joint"):
        if joint.get("type") == "fixed":
            continue
        limit = joint.find("limit")
        lower, upper = model.joint(joint.get("name")).range
        assert (float(limit.get("lower")), float(limit.get("upper"))) == (lower, upper), joint.get("name")
        assert float(limit.get("effort")) > 0 and float(limit.get("velocity")) > 0


@pytest.mark.parametrize("seed", range(5))
def test_forward_kinematics_matches_mujoco(robot: ET.Element, model: mujoco.MjModel, seed: int) -> None:
    rng = np.random.default_rng(seed)
    q = {name: float(rng.uniform(*model.joint(name).range)) for name in MOVABLE_JOINTS}
    data = mujoco.MjData(model)
    for name, value in q.items():
        data.qpos[model.joint(name).qposadr[0]] = value
    # Kinematics only: Meta-World's mocap weld acts in the dynamics, so here bodies follow the joints.
    mujoco.mj_kinematics(model, data)
    body_names = {model.body(i).name for i in range(model.nbody)}
    poses = forward_kinematics(robot, q)
    compared = 0
    for link, pose in poses.items():
        if link in LINK_SITES:
            site = data.site(LINK_SITES[link])
            position, rotation = site.xpos, site.xmat.reshape(3, 3)
        elif link in body_names and link != "world":
            body = data.body(link)
            position, rotation = body.xpos, body.xmat.reshape(3, 3)
        else:
            continue
        np.testing.assert_allclose(pose[:3, 3], position, atol=FK_TOLERANCE_M, err_msg=link)
        np.testing.assert_allclose(pose[:3, :3], rotation, atol=FK_TOLERANCE_M, err_msg=link)
        compared += 1
    # Every link but the root stands for a simulator body or site; the hand above all.
    assert compared == len(poses) - 1
    assert "hand" in poses
