"""`sop headroom`'s verdict per task, from scores made up for the test."""

import json

import pytest

from sop_ros.configs import ConfigError
from sop_ros.fleet.headroom import HeadroomConfig, headroom_report, write_report

TIER = "unit"  # what the tests need: conftest.TIERS


def test_a_task_has_headroom_when_its_base_success_is_within_the_bounds(tmp_path):
    config = HeadroomConfig(("reach-v3", "push-v3", "drawer-open-v3"), episodes_per_task=100)
    scores = {"version": "base-x", "tasks": {
        "reach-v3": {"episodes": 100, "successes": 45},
        "push-v3": {"episodes": 100, "successes": 10},  # hopeless
        "drawer-open-v3": {"episodes": 100, "successes": 97},  # saturated
    }}  # fmt: skip
    report = headroom_report(config, scores)
    assert report["with_headroom"] == ["reach-v3"]
    assert report["tasks"]["reach-v3"]["interval95"] == pytest.approx([0.356, 0.548], abs=1e-3)
    assert report["verdict"] == "1 of 3 tasks have a base success within [20%, 70%]: reach-v3"
    write_report(report, tmp_path)
    assert json.loads((tmp_path / "headroom.json").read_text())["with_headroom"] == ["reach-v3"]
    assert "| push-v3 | 10% (10/100) | 6%-17% | no |" in (tmp_path / "headroom.md").read_text()
    assert (tmp_path / "headroom.png").stat().st_size > 10_000


def test_bounds_out_of_order_are_refused():
    with pytest.raises(ConfigError, match="high=0.1: must be above low"):
        HeadroomConfig(("reach-v3",), low=0.2, high=0.1)


def test_a_given_base_is_named_in_the_command_and_the_report(tmp_path):
    config = HeadroomConfig(("reach-v3",), episodes_per_task=50, base="runs/experiments/shared/base.pt")
    report = headroom_report(config, {"version": "base-y", "tasks": {"reach-v3": {"episodes": 50, "successes": 20}}})
    assert "--base runs/experiments/shared/base.pt" in report["command"] and "--demos-per-task" not in report["command"]
    write_report(report, tmp_path)
    assert "The base policy `runs/experiments/shared/base.pt` (base-y), scored in process on 50 episodes" in (
        tmp_path / "headroom.md"
    ).read_text()
