"""`sop observability`: the policy's input per placement, and a probe's distances on held-out placements."""

import json

import numpy as np
from conftest import REPO

from sop_ros.configs import load_config
from sop_ros.configs.robot import RobotLaunchConfig
from sop_ros.sim.observability import measure, render_placements


def test_placements_are_the_policys_input_and_the_report_names_each_varying_target(tmp_path):
    base = load_config(RobotLaunchConfig, str(REPO / "config" / "sim_policy.yaml"))
    placements = render_placements(base, "reach-v3", 3, seed=0)
    assert placements.frames.shape == (3, 2, 3, 64, 64) and placements.frames.dtype == np.uint8
    assert np.linalg.norm(placements.targets["goal"].std(axis=0)) > 0.01  # reach's goal moves between placements

    report = measure(str(REPO / "config" / "sim_policy.yaml"), ["reach-v3"], 8, 4, tmp_path / "probe.json", epochs=1)
    goal = report["tasks"]["reach-v3"]["goal"]
    assert 0 <= goal["within_radius"] <= 1 and goal["median_error_m"] > 0
    assert json.loads((tmp_path / "probe.json").read_text())["tasks"] == report["tasks"]
    assert (tmp_path / "probe.png").stat().st_size > 10_000
