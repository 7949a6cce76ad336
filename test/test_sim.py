"""The simulated robot's core on Meta-World: deterministic for a seed, solvable by the expert, URDF names."""

import xml.etree.ElementTree as ET

import numpy as np
from conftest import REPO

from sop_ros.configs.tasks import instructions_for
from sop_ros.sim.metaworld_sim import (
    JOINT_NAMES,
    GoalMarker,
    MetaWorldSim,
    expert_for,
    sim_state,
    split_sim_state,
)

TIER = "unit"  # what the tests need: conftest.TIERS


def run_episode(sim: MetaWorldSim, expert) -> tuple[bool, np.ndarray, str]:
    episode, state = sim.reset()
    result = None
    for _ in range(150):
        result = sim.step(expert(state))
        state = result.state
        if result.success:
            break
    return result.success, sim.joint_positions(), episode.instruction


def test_same_seed_same_episodes_and_the_expert_succeeds():
    runs = []
    for _ in range(2):
        sim = MetaWorldSim("reach-v3", seed=3, image_size=(32, 32))
        runs.append([run_episode(sim, expert_for("reach-v3")) for _ in range(2)])
        sim.close()
    for (ok_a, q_a, text_a), (ok_b, q_b, text_b) in zip(*runs, strict=True):
        assert ok_a and ok_b
        np.testing.assert_array_equal(q_a, q_b)
        assert text_a == text_b and text_a in instructions_for("reach-v3")


def test_renders_each_camera_and_joint_names_match_the_urdf():
    sim = MetaWorldSim("pick-place-v3", seed=0, image_size=(24, 40))
    sim.reset()
    image = sim.render("corner")
    assert image.shape == (24, 40, 3) and image.dtype == np.uint8 and image.std() > 0
    sim.close()
    urdf = ET.parse(REPO / "urdf" / "sawyer.urdf").getroot()
    movable = [j.get("name") for j in urdf.iter("joint") if j.get("type") != "fixed"]
    assert movable == list(JOINT_NAMES)


def test_sim_state_carries_the_command_applied_to_reach_it():
    sim = MetaWorldSim("reach-v3", seed=3, image_size=(24, 24))
    _, first = sim.reset()
    applied = np.array([0.5, -0.25, 1.0, -1.0])
    reached = sim.step(applied).state
    sim.close()
    observation, none = split_sim_state(sim_state(first, None))  # an episode's first state: nothing applied yet
    np.testing.assert_array_equal(observation, first)
    assert none is None and observation.shape == (39,)
    observation, executed = split_sim_state(sim_state(reached, applied))
    np.testing.assert_array_equal(observation, reached)
    np.testing.assert_array_equal(executed, applied)
    assert expert_for("reach-v3")(observation).shape == (4,)  # the expert reads the observation as before


def green_pixels(sim: MetaWorldSim, camera: str) -> np.ndarray:
    """Where the policy's input (the camera image resized to the model's 64 pixels) is marker-green."""
    from sop_ros.model.preprocess import resize_chw

    r, g, b = resize_chw(sim.render(camera), 64).astype(int)
    return np.argwhere((g > 150) & (r < 90) & (b < 90))


def test_a_goal_marker_shows_each_episodes_goal_in_the_policys_input():
    plain = MetaWorldSim("reach-v3", seed=3, image_size=(96, 96))  # Meta-World's goal: a 2 cm red sphere
    plain.reset()
    assert plain.target_sites() == ["goal"] and len(green_pixels(plain, "corner")) == 0
    plain.close()

    sim = MetaWorldSim("reach-v3", seed=3, image_size=(96, 96), goal_marker=GoalMarker(0.04, (0.0, 1.0, 0.0, 1.0)))
    centres = []
    for _ in range(2):
        _, state = sim.reset()
        pixels = green_pixels(sim, "corner")
        assert len(pixels) >= 6, len(pixels)  # a 4 cm sphere: a blob of pixels, not a speck
        centres.append((pixels.mean(axis=0), state[-3:]))  # the observation ends with the goal's xyz
    sim.close()
    (first, goal_a), (second, goal_b) = centres
    assert np.linalg.norm(goal_a - goal_b) > 0.05 and np.linalg.norm(first - second) > 2  # it follows the goal
