"""rviz/sop_ros.rviz: valid YAML in rviz2's layout, with the displays and topics the demo relies on.

rviz2 itself is not needed (nor available in CI): the file is checked structurally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

TIER = "unit"  # what the tests need: conftest.TIERS

RVIZ_PATH = Path(__file__).resolve().parents[1] / "rviz" / "sop_ros.rviz"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    with RVIZ_PATH.open() as f:
        loaded = yaml.safe_load(f)
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def displays(config: dict[str, Any]) -> list[dict[str, Any]]:
    return config["Visualization Manager"]["Displays"]


def _topic(display: dict[str, Any], key: str = "Topic") -> str:
    # rviz2 stores a topic as a QoS mapping whose Value is the name.
    return display[key]["Value"]


def test_top_level_sections(config: dict[str, Any]) -> None:
    assert {"Panels", "Visualization Manager", "Window Geometry"} <= config.keys()
    manager = config["Visualization Manager"]
    assert {"Displays", "Global Options", "Tools", "Views"} <= manager.keys()
    assert all(panel["Class"].startswith("rviz_common/") for panel in config["Panels"])


def test_fixed_frame_is_world(config: dict[str, Any]) -> None:
    # The root link of urdf/sawyer.urdf.
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "world"


def test_display_classes(displays: list[dict[str, Any]]) -> None:
    classes = [d["Class"] for d in displays]
    for wanted in ("Grid", "RobotModel", "TF", "MarkerArray"):
        assert f"rviz_default_plugins/{wanted}" in classes
    assert classes.count("rviz_default_plugins/Image") == 2
    assert all(d.get("Enabled") is True for d in displays)
    names = [d["Name"] for d in displays]
    assert len(names) == len(set(names)), "rviz2 keys dock widgets by display name"


def test_robot_model_reads_the_description_topic(displays: list[dict[str, Any]]) -> None:
    (robot_model,) = [d for d in displays if d["Class"] == "rviz_default_plugins/RobotModel"]
    assert robot_model["Description Source"] == "Topic"
    assert _topic(robot_model, "Description Topic") == "robot_description"
    # robot_state_publisher publishes the description once, latched.
    assert robot_model["Description Topic"]["Durability Policy"] == "Transient Local"


def test_topics(displays: list[dict[str, Any]]) -> None:
    images = {_topic(d) for d in displays if d["Class"] == "rviz_default_plugins/Image"}
    assert images == {"/robot_0/cameras/corner/image_raw", "/robot_0/cameras/gripperPOV/image_raw"}
    markers = [_topic(d) for d in displays if d["Class"] == "rviz_default_plugins/MarkerArray"]
    assert markers == ["/robot_0/policy/markers"]


def test_view_orbits_the_workspace(config: dict[str, Any]) -> None:
    view = config["Visualization Manager"]["Views"]["Current"]
    assert view["Class"] == "rviz_default_plugins/Orbit"
    focal = view["Focal Point"]
    # Between the arm's base and Meta-World's table centre (0, 0.6, 0).
    assert abs(focal["X"]) < 0.2 and 0.3 <= focal["Y"] <= 0.7 and 0 <= focal["Z"] <= 0.4
