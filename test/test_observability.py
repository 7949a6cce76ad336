"""`sop observability`: the policy's input per placement, and a probe's distances on held-out placements."""

import json

import numpy as np
from conftest import REPO

from sop_ros.configs import load_config
from sop_ros.configs.robot import RobotLaunchConfig
from sop_ros.fleet.observability import measure, render_placements

TIER = "unit"  # what the tests need: conftest.TIERS


def test_placements_are_the_policys_input_and_the_report_names_each_varying_target(tmp_path):
    base = load_config(RobotLaunchConfig, str(REPO / "config" / "sim_policy.yaml"))
    placements = render_placements(base, "reach-v3", 3, seed=0)
    assert placements.frames.shape == (3, 2, 3, 64, 64) and placements.frames.dtype == np.uint8
    assert np.linalg.norm(placements.targets["goal"].std(axis=0)) > 0.01  # reach's goal moves between placements
    # The committed config's goal marker is in the policy's input (after JPEG and the resize to 64 px), in both
    # cameras, and where it is follows the goal.
    for camera in range(2):
        centres = []
        for frame in placements.frames[:, camera]:
            r, g, b = (frame[c].astype(int) for c in range(3))
            green = np.argwhere((g > 150) & (r < 100) & (b < 100))
            assert len(green) >= 4, (camera, len(green))
            centres.append(green.mean(axis=0))
        assert max(np.linalg.norm(c - centres[0]) for c in centres[1:]) > 1.0

    report = measure(str(REPO / "config" / "sim_policy.yaml"), ["reach-v3"], 8, 4, tmp_path / "probe.json", epochs=1)
    goal = report["tasks"]["reach-v3"]["goal"]
    assert 0 <= goal["within_radius"] <= 1 and goal["median_error_m"] > 0
    assert json.loads((tmp_path / "probe.json").read_text())["tasks"] == report["tasks"]
    assert (tmp_path / "probe.png").stat().st_size > 10_000
    assert "| reach-v3 | goal |" in (tmp_path / "probe.md").read_text()
