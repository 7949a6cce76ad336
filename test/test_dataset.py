"""The learner's dataset on real recorded episodes, and the preprocessing the robot shares with it."""

import shutil
from collections import Counter

import cv2
import numpy as np
import pytest
import yaml
from conftest import DEMO_CAMERAS, DEMO_TASKS
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from sop_ros.configs import ConfigError, from_dict
from sop_ros.episodes.reader import copy_episode, episode_files, recorded_cameras
from sop_ros.learner.dataset import DatasetConfig, EpisodeDataset, align_commands, controller_at, index_episode
from sop_ros.learner.frames import DecodedFrames, JpegSpill, SpilledJpegs, fill_workers
from sop_ros.model.preprocess import decode_jpeg_rgb, image_to_input
from sop_ros.sim.metaworld_sim import MetaWorldSim

TIER = "unit"  # what the tests need: conftest.TIERS

TASKS = DEMO_TASKS


@pytest.fixture(scope="module")
def demos(recorded_demos):
    return recorded_demos


@pytest.fixture(scope="module")
def indexed(demos):
    lines = []
    return EpisodeDataset(demos, log=lines.append), lines


def recorded(path):
    """Read independently of the dataset: joint state times, (log time, command), (since, controller) of the
    intervention states, and (time, JPEG) per camera."""
    robot = path.parent.name
    states, commands, controllers, frames = [], [], [], {}
    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for _, channel, message, decoded in reader.iter_decoded_messages():
            if channel.topic == f"/{robot}/joint_states":
                states.append(message.log_time)
            elif channel.topic == f"/{robot}/command":
                commands.append((message.log_time, tuple(decoded.data)))
            elif channel.topic == f"/{robot}/teleop/intervention":
                controllers.append((decoded.since.sec * 10**9 + decoded.since.nanosec, decoded.controller))
            elif channel.topic.endswith("/image_raw/compressed"):
                frames.setdefault(channel.topic.split("/")[3], []).append((message.log_time, decoded.data))
    return states, commands, controllers, frames


# ---------------------------------------------------------------------------------------------------------
# Indexing real episodes
# ---------------------------------------------------------------------------------------------------------


def test_every_episode_has_an_observation_per_state_and_an_action_per_step(indexed, demos):
    dataset, lines = indexed
    assert len(dataset.episodes) == 4 and dataset.tasks == TASKS and dataset.skipped == []
    assert dataset.num_steps == sum(e.steps for e in dataset.episodes)
    assert set(dataset.instructions) == set(TASKS) and all(dataset.instructions.values())
    for episode in dataset.episodes:
        states, _, _, frames = recorded(episode.path)
        assert episode.steps == int(episode.metadata["steps"]) == len(states) - 1
        assert episode.proprio.shape == (episode.steps + 1, 9) and episode.proprio.dtype == np.float32
        assert episode.actions.shape == (episode.steps, 4) and episode.actions.dtype == np.float32
        assert list(episode.step_ns) == states and np.all(np.diff(episode.step_ns) > 0)
        assert episode.joint_names[-2:] == ("r_close", "l_close")
        for camera in DEMO_CAMERAS:
            assert list(episode.frame_ns[camera]) == [t for t, _ in frames[camera]]
            assert len(episode.frame_of_step[camera]) == episode.steps + 1
    assert len(lines) == 1 and lines[0].startswith(f"dataset {demos}: 4 episodes, {dataset.num_steps} steps")


def test_operator_flags_follow_the_intervention_states(indexed):
    dataset, _ = indexed
    for episode in dataset.episodes:
        states, _, controllers, _ = recorded(episode.path)
        assert episode.operator.shape == (episode.steps,) and episode.operator.dtype == bool
        # The scripted expert takes over once (at the start, or later if it came up late) and keeps control.
        takeover = min(since for since, controller in controllers if controller == 1)
        assert all(controller == 1 for since, controller in controllers if since >= takeover)
        for k in range(episode.steps):
            if states[max(k - 1, 0)] >= takeover:  # its command came after, even if logged a period early
                assert episode.operator[k], k
            elif k + 11 < len(states) and states[k + 11] <= takeover:  # its command, even late, came before
                assert not episode.operator[k], k


def test_actions_are_the_recorded_commands_in_order(indexed):
    dataset, _ = indexed
    for episode in dataset.episodes:
        states, commands, _, _ = recorded(episode.path)
        # Action k: a command logged from one window before t_k to ten after (the last steps: any time after),
        # each after the one before; or, counted in filled_actions, a repeat.
        previous, unmatched = -1, 0
        for k, action in enumerate(episode.actions):
            since, until = states[max(k - 1, 0)], states[k + 11] if k + 11 < len(states) else np.inf
            found = [
                i
                for i, (t, command) in enumerate(commands)
                if i > previous and since <= t < until and np.array_equal(action, np.float32(command))
            ]
            if found:
                previous = found[0]
            else:
                unmatched += 1
        assert unmatched <= episode.filled_actions
        assert episode.filled_actions <= 1 + episode.steps // 20


def test_each_steps_action_is_the_command_the_simulator_reports_running_from_that_steps_state(indexed):
    """Read independently of the dataset: the executed-command reports, by the stamp of the state they ran from."""
    dataset, _ = indexed
    for episode in dataset.episodes:
        reports = {}
        with open(episode.path, "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            for _, channel, _, decoded in reader.iter_decoded_messages():
                if channel.topic == f"/{episode.robot_id}/command/executed":
                    assert list(decoded.name) == ["x", "y", "z", "gripper"]
                    reports[decoded.header.stamp.sec * 10**9 + decoded.header.stamp.nanosec] = decoded.position
        assert len(reports) >= episode.steps
        expected = np.array([reports[int(t)] for t in episode.step_ns[:-1]], dtype=np.float32)
        np.testing.assert_array_equal(episode.actions, expected)
        assert episode.filled_actions == episode.shifted_commands == episode.unused_commands == 0


def test_the_reports_are_the_actions_and_without_one_for_every_step_commands_are_matched_by_time(indexed):
    import dataclasses

    from sop_ros.episodes.reader import read_streams
    from sop_ros.learner.dataset import _build

    dataset, _ = indexed
    episode = dataset.episodes[0]
    streams = read_streams(episode.path, DEMO_CAMERAS)
    assert len(streams.executed) >= episode.steps
    aligned = _build(episode.path, dataclasses.replace(streams, executed=[]), dataset.config)
    one_missing = _build(episode.path, dataclasses.replace(streams, executed=streams.executed[1:]), dataset.config)
    np.testing.assert_array_equal(one_missing.actions, aligned.actions)
    # With every report there, the reports are the actions: one changed by hand changes that step's action only.
    first_stamp = int(episode.step_ns[0])
    changed = [(t, [0.25, -0.5, 0.75, -1.0] if t == first_stamp else v) for t, v in streams.executed]
    reported = _build(episode.path, dataclasses.replace(streams, executed=changed), dataset.config)
    np.testing.assert_array_equal(reported.actions[0], np.float32([0.25, -0.5, 0.75, -1.0]))
    np.testing.assert_array_equal(reported.actions[1:], episode.actions[1:])
    # Commands arrive in the order they ran: matched by time, they are the reported ones, bar a late or lost one.
    assert np.mean(np.all(aligned.actions == episode.actions, axis=1)) > 0.9


def sim_units(demos):
    """Robot id -> (task, seed) of the simulated robot that recorded its episodes, from collect-demos' configs."""
    units = {}
    for path in (demos / "configs").glob("*.yaml"):
        config = yaml.safe_load(path.read_text())
        sim = config["nodes"]["sim_robot"]
        units[config["robot"]["id"]] = (sim["task"], sim["seed"])
    return units


def replay(task, seed, episode_number, actions):
    """The joint positions after the reset and after each action, in a new simulator at that episode."""
    sim = MetaWorldSim(task, seed)
    try:
        for _ in range(episode_number + 1):
            sim.reset()
        positions = [sim.joint_positions()]
        for action in actions:
            sim.step(action)
            positions.append(sim.joint_positions())
        return np.array(positions)
    finally:
        sim.close()


def test_replayed_in_the_simulator_the_actions_reproduce_the_recorded_joint_states(indexed, demos):
    """What ran, whatever the recorder's timing: Meta-World is deterministic for a seed, and every step's action
    is the one the simulator reports running (a hold of its own included)."""
    dataset, _ = indexed
    units = sim_units(demos)
    for episode in dataset.episodes:
        task, seed = units[episode.robot_id]
        positions = replay(task, seed, int(episode.episode_id.rsplit("-", 1)[1]), episode.actions.astype(np.float64))
        wrong = np.flatnonzero(np.abs(positions - episode.proprio).max(axis=1) > 1e-5)
        assert wrong.size == 0, f"{episode.episode_id}: from step {wrong[:1]} the replay runs elsewhere"


def test_images_are_the_latest_frame_of_each_camera_decoded_at_the_configured_size(indexed, demos):
    dataset, _ = indexed
    episode = dataset.episodes[0]
    _, _, _, frames = recorded(episode.path)
    for step in (0, 1, 3, episode.steps - 1):
        sample = dataset.get(0, step)
        images = sample["images"]
        assert images.shape == (2, 3, 64, 64) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.02
        for c, camera in enumerate(DEMO_CAMERAS):
            # Camera frames are best-effort: on a busy host an episode's first may be lost; then the first one counts.
            latest = ([jpeg for t, jpeg in frames[camera] if t <= episode.step_ns[step]] or [frames[camera][0][1]])[-1]
            np.testing.assert_array_equal(images[c], image_to_input(decode_jpeg_rgb(latest), 64))
        np.testing.assert_array_equal(sample["proprio"], episode.proprio[step])
    small = EpisodeDataset(demos, DatasetConfig(cameras=("topview",), image_size=32), log=lambda _: None)
    assert small.get(0, 0)["images"].shape == (1, 3, 32, 32)


def test_chunks_are_padded_with_the_last_action_past_the_episode_end(indexed):
    dataset, _ = indexed
    episode = dataset.episodes[1]
    first = dataset.get(1, 0)
    assert first["action_mask"].all() and np.array_equal(first["actions"], episode.actions[:16])
    near_end = dataset.get(1, episode.steps - 5)
    assert near_end["action_mask"].tolist() == [True] * 5 + [False] * 11
    np.testing.assert_array_equal(near_end["actions"][:5], episode.actions[-5:])
    np.testing.assert_array_equal(near_end["actions"][5:], np.repeat(episode.actions[-1:], 11, axis=0))
    last = dataset.get(1, episode.steps - 1)
    assert last["action_mask"].tolist() == [True] + [False] * 15 and (last["actions"] == episode.actions[-1]).all()
    assert last["step"] == episode.steps - 1 and last["episode_id"] == episode.episode_id
    with pytest.raises(IndexError, match="has steps 0.."):
        dataset.get(1, episode.steps)  # the final state has no action


def test_batches_are_task_balanced_and_uniform_over_a_tasks_steps(indexed):
    dataset, _ = indexed
    batch = dataset.sample(np.random.default_rng(0), 64)
    assert Counter(batch["task"]) == {"push-v3": 32, "reach-v3": 32}
    assert batch["images"].shape == (64, 2, 3, 64, 64) and batch["images"].dtype == np.float32
    assert batch["proprio"].shape == (64, 9) and batch["actions"].shape == (64, 16, 4)
    assert batch["action_mask"].shape == (64, 16) and batch["action_mask"].dtype == bool
    assert batch["operator"].dtype == bool and batch["step"].dtype == np.int64
    ids = [e.episode_id for e in dataset.episodes]
    for b in (0, 31, 63):
        one = dataset.get(ids.index(batch["episode_id"][b]), int(batch["step"][b]))
        assert one["task"] == batch["task"][b] and one["instruction"] == batch["instruction"][b]
        np.testing.assert_array_equal(one["actions"], batch["actions"][b])
        np.testing.assert_array_equal(one["images"], batch["images"][b])
    again = dataset.sample(np.random.default_rng(0), 64)
    assert again["episode_id"] == batch["episode_id"] and np.array_equal(again["step"], batch["step"])
    assert sorted(Counter(dataset.sample(np.random.default_rng(1), 65)["task"]).values()) == [32, 33]
    assert set(dataset.sample(np.random.default_rng(2), 8, tasks=["push-v3"])["task"]) == {"push-v3"}
    with pytest.raises(ValueError, match="the dataset has push-v3, reach-v3"):
        dataset.sample(np.random.default_rng(0), 8, tasks=["pick-place-v3"])
    # Within a task, each episode is drawn in proportion to its steps.
    rng, drawn = np.random.default_rng(3), Counter()
    for _ in range(30):
        drawn.update(dataset.sample(rng, 64)["episode_id"])
    for episode in dataset.episodes:
        task_steps = sum(e.steps for e in dataset.episodes if e.task == episode.task)
        assert abs(drawn[episode.episode_id] / 960 - episode.steps / task_steps) < 0.08


def test_a_frame_cache_gives_byte_identical_batches_and_keeps_within_its_budget(demos):
    plain = EpisodeDataset(demos, log=lambda _: None)
    frames = DecodedFrames(64, budget_mb=1024)
    cached = EpisodeDataset(demos, log=lambda _: None, frames=frames)
    for seed in (0, 1):
        expected, got = plain.sample(np.random.default_rng(seed), 64), cached.sample(np.random.default_rng(seed), 64)
        assert got["images"].tobytes() == expected["images"].tobytes()
    assert 0 < frames.misses == len(frames) and frames.hits + frames.misses == 2 * 64 * 2  # two cameras
    again = cached.sample(np.random.default_rng(0), 64)  # every frame from the cache now
    assert frames.misses == len(frames) and frames.hits > frames.misses  # more than half answered from the cache
    assert again["images"].tobytes() == plain.sample(np.random.default_rng(0), 64)["images"].tobytes()
    # Frames past the budget are decoded each time and not kept; a kept frame cannot be changed through a sample.
    tight = DecodedFrames(64, budget_mb=3 * 64 * 64 * 3 / 2**20)
    small = EpisodeDataset(demos, log=lambda _: None, frames=tight)
    batch = small.sample(np.random.default_rng(0), 64)
    assert len(tight) == 3 and tight.kept_bytes == 3 * 3 * 64 * 64
    assert batch["images"].tobytes() == plain.sample(np.random.default_rng(0), 64)["images"].tobytes()
    kept = next(iter(tight._frames.values()))
    with pytest.raises(ValueError, match="read-only"):
        kept[0, 0, 0] = 0
    # Forgetting frames (their episode left the data) makes room for others.
    first = list(tight._frames)[:2]
    assert tight.forget([*first, ("no such", "frame", 0)]) == 2 and len(tight) == 1
    assert tight.kept_bytes == 3 * 64 * 64 and tight.forget(first) == 0
    small.sample(np.random.default_rng(1), 64)
    assert len(tight) == 3 and tight.kept_bytes == 3 * 3 * 64 * 64
    with pytest.raises(ValueError, match="32 px frames, the dataset's are 64 px"):
        EpisodeDataset(demos, log=lambda _: None, frames=DecodedFrames(32, budget_mb=1))
    with pytest.raises(ValueError, match="must be >= 0"):
        DecodedFrames(64, budget_mb=-1)


def test_spilled_frames_read_back_the_same_bytes_from_one_unlinked_file(indexed, tmp_path):
    dataset, _ = indexed
    spill = JpegSpill(tmp_path / "learner")
    episodes = dataset.episodes[:2]
    kept = [{camera: spill.keep(jpegs) for camera, jpegs in e.frames.items()} for e in episodes]
    assert list((tmp_path / "learner").iterdir()) == []  # unlinked: its space goes back with the process
    for episode, frames in zip(episodes, kept, strict=True):
        for camera, jpegs in episode.frames.items():
            assert isinstance(frames[camera], SpilledJpegs) and len(frames[camera]) == len(jpegs)
            assert list(frames[camera]) == list(jpegs) and frames[camera][-1] == jpegs[-1]
    assert spill.bytes == sum(len(j) for e in episodes for jpegs in e.frames.values() for j in jpegs)
    spill.close()
    with pytest.raises(ValueError, match="spill .* is closed"):
        kept[0][DEMO_CAMERAS[0]][0]
    # Where no file can be made, the frames stay in memory, as they were.
    (tmp_path / "a_file").write_text("")
    jpegs = episodes[0].frames[DEMO_CAMERAS[0]]
    assert JpegSpill(tmp_path / "a_file" / "learner").keep(jpegs) is jpegs


def test_only_the_selected_steps_are_sampled(demos):
    lines = []
    dataset = EpisodeDataset(demos, log=lines.append, select=lambda e: np.arange(e.steps) < 5)
    batch = dataset.sample(np.random.default_rng(0), 64)
    assert set(batch["step"].tolist()) == set(range(5)) and Counter(batch["task"]) == {"push-v3": 32, "reach-v3": 32}
    assert dataset.num_selected == 20 and dataset.num_steps > 20 and "steps (20 selected)" in lines[0]
    push_only = EpisodeDataset(demos, log=lines.append, select=lambda e: np.full(e.steps, e.task == "push-v3"))
    assert push_only.tasks == ["push-v3"] and set(push_only.sample(np.random.default_rng(1), 8)["task"]) == {"push-v3"}
    with pytest.raises(ValueError, match=r"bool mask of shape \(\d+,\) for episode .*, got bool \(3,\)"):
        EpisodeDataset(demos, log=lines.append, select=lambda e: np.ones(3, dtype=bool))


def test_normalisation_statistics_cover_every_step(indexed):
    dataset, _ = indexed
    (action_mean, action_std), (proprio_mean, proprio_std) = dataset.action_stats(), dataset.proprio_stats()
    actions = np.concatenate([e.actions for e in dataset.episodes])
    assert action_mean.shape == action_std.shape == (4,) and action_mean.dtype == action_std.dtype == np.float32
    np.testing.assert_allclose(action_mean, actions.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(action_std, np.maximum(actions.std(axis=0), 1e-3), atol=1e-6)
    assert proprio_mean.shape == proprio_std.shape == (9,) and proprio_std.min() >= 1e-3


# ---------------------------------------------------------------------------------------------------------
# What is kept and what is skipped
# ---------------------------------------------------------------------------------------------------------


def test_only_the_configured_outcomes_are_kept(demos, tmp_path):
    shutil.copytree(demos, tmp_path / "d")
    source = episode_files(demos)[0]
    copy_episode(source, tmp_path / "d" / "robot_0" / "failed.mcap", outcome="failure", episode_id="failed-0")
    recorded_outcomes = Counter(index_episode(path, DatasetConfig()).outcome for path in episode_files(demos))
    lines = []
    successes = EpisodeDataset(tmp_path / "d", DatasetConfig(outcomes=("success",)), log=lines.append)
    assert len(successes.episodes) == recorded_outcomes["success"] >= 1
    assert {e.outcome for e in successes.episodes} == {"success"}
    assert f"{recorded_outcomes['failure'] + 1} failure" in lines[0].split("left out: ")[1]
    failures = EpisodeDataset(tmp_path / "d", DatasetConfig(outcomes=("failure",)), log=lines.append)
    assert "failed-0" in [e.episode_id for e in failures.episodes]
    assert {e.outcome for e in failures.episodes} == {"failure"}
    assert len(failures.episodes) == recorded_outcomes["failure"] + 1
    assert len(EpisodeDataset(tmp_path / "d", log=lines.append).episodes) == 5


def test_bad_files_are_skipped_with_a_reason_and_unfinished_ones_ignored(demos, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(demos, root)
    good = episode_files(demos)
    (root / "robot_0" / "garbage.mcap").write_bytes(b"not an mcap file at all" * 10)
    (root / "robot_0" / "truncated.mcap").write_bytes(good[0].read_bytes()[:5000])
    copy_episode(good[1], root / "robot_0" / "no_topview.mcap", drop_topic="topview/image_raw/compressed",
                 episode_id="x1")  # fmt: skip
    shutil.copy(good[2], root / "robot_1" / "z_copy.mcap")  # the same episode twice, found after the original
    # The recorder's unfinished and quarantined files: never read, whatever they hold.
    copy_episode(good[0], root / "robot_0" / ".partial" / "p.mcap", episode_id="partial-0")
    copy_episode(good[0], root / "robot_1" / "quarantine" / "q.mcap", episode_id="quarantined-0")
    lines = []
    dataset = EpisodeDataset(root, log=lines.append)
    assert sorted(e.episode_id for e in dataset.episodes) == sorted(p.stem for p in good)
    reasons = {path.name: reason for path, reason in dataset.skipped}
    assert set(reasons) == {"garbage.mcap", "truncated.mcap", "no_topview.mcap", "z_copy.mcap"}
    assert "not a readable MCAP episode file" in reasons["garbage.mcap"]
    # The dataset takes the cameras most episodes have: the one without is refused, not the others.
    assert dataset.config.cameras == DEMO_CAMERAS
    assert "no frames of camera 'topview'; the file has cameras: corner" in reasons["no_topview.mcap"]
    assert reasons["z_copy.mcap"].startswith(f"episode {good[2].stem} again")
    assert "skipped 4 files" in lines[0] and "garbage.mcap" in lines[0]


def test_a_file_without_joint_states_or_a_camera_is_refused_by_name(demos, tmp_path):
    source = episode_files(demos)[0]
    no_states = copy_episode(source, tmp_path / "no_states.mcap", drop_topic="/joint_states")
    with pytest.raises(ValueError, match=r"no_states\.mcap: no joint states"):
        index_episode(no_states, DatasetConfig())
    with pytest.raises(ValueError, match=r"no frames of camera 'wrist'; the file has cameras: corner, topview"):
        index_episode(source, DatasetConfig(cameras=("corner", "wrist")))
    with pytest.raises(FileNotFoundError, match="no such episode directory"):
        EpisodeDataset(tmp_path / "nowhere")


def test_a_dataset_keeps_only_the_tasks_it_is_given(demos):
    lines = []
    reach = EpisodeDataset(demos, DatasetConfig(tasks=("reach-v3",)), log=lines.append)
    assert reach.tasks == ["reach-v3"] and len(reach.episodes) == 2
    assert "left out: 2 another task" in lines[0]


def test_an_episodes_cameras_are_read_in_its_recorders_order(demos, tmp_path):
    source = episode_files(demos)[0]
    assert recorded_cameras(source) == DEMO_CAMERAS  # the recorder's order, not the alphabet's
    no_corner = copy_episode(source, tmp_path / "no_corner.mcap", drop_topic="corner/image_raw/compressed")
    assert recorded_cameras(no_corner) == DEMO_CAMERAS[1:]
    assert index_episode(source, DatasetConfig()).frame_ns.keys() == set(DEMO_CAMERAS)
    (tmp_path / "empty.mcap").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mcap"):
        recorded_cameras(tmp_path / "empty.mcap")


def test_config_names_the_bad_key_and_value():
    assert from_dict(DatasetConfig, {"cameras": ["corner"], "outcomes": ["success"]}).cameras == ("corner",)
    with pytest.raises(ConfigError, match=r"outcomes\[0\]='won': must be one of success, failure, abort, unknown"):
        DatasetConfig(outcomes=("won",))
    with pytest.raises(ConfigError, match="chunk=0: must be >= 1"):
        DatasetConfig(chunk=0)
    with pytest.raises(ConfigError, match="cameras"):
        DatasetConfig(cameras=("corner", "corner"))


# ---------------------------------------------------------------------------------------------------------
# Alignment rules on plain numbers
# ---------------------------------------------------------------------------------------------------------


def aligned(states, commands, delay=10):
    result = align_commands(np.array(states, dtype=np.int64), np.array(commands, dtype=np.int64), delay)
    return result.command.tolist(), result.filled, result.shifted, result.unused


def test_one_command_per_window_is_taken_as_it_is():
    assert aligned([0, 10, 20, 30], [1, 11, 21]) == ([0, 1, 2], 0, 0, 0)
    assert aligned([0, 10, 20, 30], [1, 11, 21, 30]) == ([0, 1, 2], 0, 0, 0)  # the final state's answer: no action
    assert aligned([0, 10, 20, 30], [1, 11, 30]) == ([0, 1, 2], 0, 1, 0)  # alone after the final state: late
    assert aligned([0, 10, 20, 30], [-5, 1, 11, 21]) == ([1, 2, 3], 0, 0, 0)  # before the episode: not its own
    assert aligned([0, 10, 20, 30], [1, 11, 21], delay=0) == ([0, 1, 2], 0, 0, 0)


def test_commands_logged_late_are_matched_in_order():
    # Step 1's command logged in step 2's window: shifted back rather than filled.
    assert aligned([0, 10, 20, 30], [0, 20, 20, 30]) == ([0, 1, 2], 0, 1, 0)
    # A long stall: the answers to steps 3..7 all logged in step 8's window, the last of them step 8's own.
    states = list(range(0, 100, 10))
    stalled = [0, 10, 20, *[80] * 6, 90]
    assert aligned(states, stalled) == ([0, 1, 2, 3, 4, 5, 6, 7, 8], 0, 5, 0)
    # A recorder catching up over several windows: nine empty, then 2 + 6 + 4 commands for steps 4..15.
    states = list(range(0, 180, 10))
    catching_up = [0, 10, 20, 30, *[130] * 2, *[140] * 6, *[150] * 4, 160, 170]
    assert aligned(states, catching_up) == (list(range(17)), 0, 11, 0)
    # Allowed fewer windows of delay than the stall lasted: what it cannot reach is filled, the rest in order.
    states = list(range(0, 100, 10))
    assert aligned(states, stalled, delay=2) == ([0, 1, 2, -1, -1, -1, 6, 7, 8], 3, 2, 3)
    # Now and then a command is logged a window early (the recorder's clock behind): a crowded window, then
    # an empty one.
    assert aligned([0, 10, 20, 30, 40], [0, 10, 10, 30, 40]) == ([0, 1, 2, 3], 0, 1, 0)
    # The plain window rule fills the empty windows and takes the first of the crowded one.
    assert aligned([0, 10, 20, 30], [0, 20, 20, 30], delay=0) == ([0, -1, 1], 1, 0, 1)


def test_a_lost_command_is_filled_and_an_extra_one_left():
    states = list(range(0, 80, 10))
    assert aligned(states, [0, 10, 30, 40, 50, 60]) == ([0, 1, -1, 2, 3, 4, 5], 1, 0, 0)
    # With an answer to the final state, the recorder may as well have fallen one window behind: it often does.
    assert aligned(states, [0, 10, 30, 40, 50, 60, 70]) == ([0, 1, 2, 3, 4, 5, 6], 0, 5, 0)
    # At the start, the arbiter's hold and the answer to the first state at once: the answer is the action.
    assert aligned(states, [0, 0, 10, 20, 30, 40, 50, 60, 70]) == ([1, 2, 3, 4, 5, 6, 7], 0, 0, 1)
    assert aligned(states, [0, 0, 10, 20, 30, 40, 50, 60, 70], delay=0) == ([0, 2, 3, 4, 5, 6, 7], 0, 0, 1)


def test_the_controller_in_effect_counts_from_its_since_time():
    hold, operator, policy = 2, 1, 0
    stamps, since = np.array([0, 10, 50]), np.array([0, 10, 40])
    at = np.array([5, 10, 39, 40, 60])
    assert controller_at(stamps, since, np.array([hold, operator, policy]), at).tolist() == [2, 1, 1, 0, 0]
    assert controller_at(np.zeros(0), np.zeros(0), np.zeros(0), at).tolist() == [-1] * 5


# ---------------------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------------------


def synthetic_rgb(height=120, width=160):
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]  # a green ramp left to right
    image[:40, :40] = (255, 0, 0)  # red top-left
    image[-40:, -40:] = (0, 0, 255)  # blue bottom-right
    return image


def test_a_jpeg_frame_round_trips_to_the_model_input():
    rgb = synthetic_rgb()
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = decode_jpeg_rgb(jpeg.tobytes())
    assert ok and decoded.shape == (120, 160, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - rgb).mean() < 3  # JPEG is lossy, the channel order is not
    assert decoded[10, 10, 0] > 200 > decoded[10, 10, 2] and decoded[-10, -10, 2] > 200 > decoded[-10, -10, 0]
    model_input = image_to_input(decoded, 96)
    assert model_input.shape == (3, 96, 96) and model_input.dtype == np.float32 and model_input.flags.c_contiguous
    assert model_input.min() >= 0.0 and model_input.max() <= 1.0
    expected = cv2.resize(decoded, (96, 96), interpolation=cv2.INTER_AREA).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(model_input, expected)
    assert model_input[0, 5, 5] > 0.8 and model_input[2, -5, -5] > 0.8
    np.testing.assert_array_equal(image_to_input(rgb[:96, :96], 96), rgb[:96, :96].transpose(2, 0, 1) / np.float32(255))


def test_undecodable_frames_and_wrong_images_are_refused():
    with pytest.raises(ValueError, match="cannot decode an image from 0 bytes"):
        decode_jpeg_rgb(b"")
    with pytest.raises(ValueError, match="not a JPEG or damaged"):
        decode_jpeg_rgb(b"\x00\x01garbage" * 20)
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB image"):
        image_to_input(np.zeros((96, 96, 3), dtype=np.float32), 96)
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) uint8 RGB image"):
        image_to_input(np.zeros((96, 96), dtype=np.uint8), 96)


def test_pretrain_and_export_on_recorded_demos(demos, tmp_path):
    """A few steps of pretraining on the recorded demos; the exported graph matches torch on a recorded input."""
    import json
    import threading

    import torch

    from sop_ros.configs.model import ModelConfig
    from sop_ros.learner.pretrain import PretrainConfig, pretrain, to_torch
    from sop_ros.model.export import export_onnx, parity
    from sop_ros.model.inputs import INPUTS
    from sop_ros.model.vla import load_checkpoint

    small = ModelConfig(image_size=32, cnn_channels=(8, 16), width=32, heads=2, depth=1, head_depth=1, chunk=16)
    ckpt = tmp_path / "base.pt"
    report = pretrain(PretrainConfig(demos=str(demos), out=str(ckpt), steps=6, batch_size=8, log_every=3, model=small))
    assert report["episodes"] == 4 and sorted(report["tasks"]) == TASKS and len(report["curve"]) == 2
    assert all(np.isfinite(p["loss"]) for p in report["curve"])
    # its batch producer ended with the training: a process that trains many times keeps no thread behind
    assert not any(thread.name == "batches" for thread in threading.enumerate())
    assert json.loads(ckpt.with_suffix(".loss.json").read_text())["version"] == report["version"]
    assert ckpt.with_suffix(".loss.png").stat().st_size > 0
    model, extra = load_checkpoint(ckpt)
    # No cameras named: the policy takes the demonstrations' own, in the order their recorder listed them.
    assert extra["tasks"] == sorted(TASKS) and extra["cameras"] == list(DEMO_CAMERAS) and model.config.cameras == 2
    export_onnx(ckpt, tmp_path / "base.onnx")
    dataset = EpisodeDataset(demos, DatasetConfig(image_size=32), log=lambda _: None)
    batch = to_torch(dataset.sample(np.random.default_rng(0), 2), model.config, torch.device("cpu"))
    recorded_inputs = tuple(batch[name] for name in INPUTS[:-1]) + (torch.randn(2, 16, 4),)
    assert parity(ckpt, tmp_path / "base.onnx", recorded_inputs) <= 1e-4


def test_interrupted_pretraining_resumes_from_its_last_save_only_with_its_own_settings(demos, tmp_path, monkeypatch):
    import dataclasses

    import torch

    from sop_ros.configs.model import ModelConfig
    from sop_ros.learner.pretrain import PretrainConfig, pretrain
    from sop_ros.model.vla import VLAPolicy

    small = ModelConfig(image_size=32, cnn_channels=(8, 16), width=32, heads=2, depth=1, head_depth=1, chunk=16)
    config = PretrainConfig(demos=str(demos), out=str(tmp_path / "base.pt"), steps=6, batch_size=8, log_every=2,
                            resume_every=2, model=small)  # fmt: skip
    partial = tmp_path / "base.partial.pt"
    real_loss, steps = VLAPolicy.loss, []

    def counted_loss(stop_at: int | None):
        def loss(self, batch):
            if len(steps) == stop_at:
                raise KeyboardInterrupt
            steps.append(1)
            return real_loss(self, batch)

        return loss

    # Stopped during its fifth step: saved after its second and fourth.
    monkeypatch.setattr(VLAPolicy, "loss", counted_loss(stop_at=4))
    with pytest.raises(KeyboardInterrupt):
        pretrain(config)
    assert torch.load(partial, weights_only=True)["step"] == 4 and not (tmp_path / "base.pt").exists()
    # Run again: the last two steps only, its loss curve whole, and the partial run gone.
    steps.clear()
    monkeypatch.setattr(VLAPolicy, "loss", counted_loss(stop_at=None))
    report = pretrain(config)
    assert len(steps) == 2 and [p["step"] for p in report["curve"]] == [2, 4, 6]
    assert (tmp_path / "base.pt").exists() and not partial.exists()
    # Bit for bit what the same run makes uninterrupted: it drew the very batches and noise it would have.
    pretrain(dataclasses.replace(config, out=str(tmp_path / "whole.pt")))
    resumed, whole = (torch.load(tmp_path / name, weights_only=False)["state_dict"] for name in ("base.pt", "whole.pt"))
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)
    steps.clear()
    # A partial run of other settings is not continued: the run starts over (and replaces it).
    steps.clear()
    monkeypatch.setattr(VLAPolicy, "loss", counted_loss(stop_at=3))
    with pytest.raises(KeyboardInterrupt):
        pretrain(config)
    assert torch.load(partial, weights_only=True)["step"] == 2
    steps.clear()
    monkeypatch.setattr(VLAPolicy, "loss", counted_loss(stop_at=None))
    pretrain(dataclasses.replace(config, learning_rate=1e-3))
    assert len(steps) == 6 and not partial.exists()


def test_frames_decoded_ahead_in_worker_processes_are_those_a_sample_would_decode(demos):
    plain = EpisodeDataset(demos, log=lambda _: None)
    frames = DecodedFrames(64, budget_mb=1024)
    filled = EpisodeDataset(demos, log=lambda _: None, frames=frames)
    sources = list(filled.frame_sources())
    assert frames.fill(sources, workers=2, chunk=50) == len(sources) == len(frames)
    assert frames.fill(sources, workers=2) == 0  # each frame once
    batch = filled.sample(np.random.default_rng(0), 64)
    assert frames.misses == 0 and frames.hits == 2 * 64  # every frame a sample shows was decoded ahead
    assert batch["images"].tobytes() == plain.sample(np.random.default_rng(0), 64)["images"].tobytes()
    # The budget holds: frames past it are left to be decoded when sampled.
    tight = DecodedFrames(64, budget_mb=5 * 3 * 64 * 64 / 2**20)
    assert tight.fill(sources, workers=1) == 5 and tight.kept_bytes == 5 * 3 * 64 * 64
    with pytest.raises(ValueError, match="workers 0 must be >= 1"):
        tight.fill(sources, workers=0)
    # Asked for: that many; by default, none on a CPU (the step needs the cores) and some on a GPU.
    assert fill_workers(3, "cpu") == 3 and fill_workers(-1, "cpu") == 0 and 1 <= fill_workers(-1, "cuda") <= 16


def test_a_batch_of_pixels_scaled_on_the_device_is_the_float_batch_bit_for_bit(demos):
    import torch

    from sop_ros.configs.model import ModelConfig
    from sop_ros.learner.pretrain import host_tensors, to_device, to_torch

    dataset = EpisodeDataset(demos, log=lambda _: None)
    floats = dataset.sample(np.random.default_rng(0), 32)
    pixels = dataset.sample(np.random.default_rng(0), 32, pixels=True)
    assert pixels["images"].dtype == np.uint8 and pixels["images"].nbytes * 4 == floats["images"].nbytes
    scaled = to_device(host_tensors(pixels, ModelConfig(), pin=False), torch.device("cpu"))
    expected = to_torch(floats, ModelConfig(), torch.device("cpu"))
    assert scaled["images"].dtype == torch.float32
    assert scaled["images"].numpy().tobytes() == expected["images"].numpy().tobytes()
    for key in ("proprio", "actions", "action_mask", "instruction", "indicator"):
        assert torch.equal(scaled[key], expected[key])


def test_a_learner_batch_of_two_sources_keeps_the_planned_row_order(demos):
    from sop_ros.learner.online import collate
    from sop_ros.learner.sampling import OFFLINE, ONLINE, Row

    class Sources:  # what `collate` asks of the learner's data: each source's dataset
        def __init__(self) -> None:
            self.by_source = {OFFLINE: EpisodeDataset(demos, log=lambda _: None),
                              ONLINE: EpisodeDataset(sorted(episode_files(demos))[::-1], log=lambda _: None)}

        def dataset(self, source: str) -> EpisodeDataset:
            return self.by_source[source]

    data = Sources()
    rng = np.random.default_rng(0)
    rows = [Row("", source, int(rng.integers(len(data.dataset(source).episodes))), int(rng.integers(3)))
            for source in rng.choice([OFFLINE, ONLINE], size=12)]  # fmt: skip
    mine = [0, 2, 3, 5, 7, 8, 11]
    assert {rows[i].source for i in mine} == {OFFLINE, ONLINE}
    for pixels in (False, True):
        batch = collate(data, rows, mine, pixels=pixels)
        assert batch["source"] == [rows[i].source for i in mine]
        for b, i in enumerate(mine):
            one = data.dataset(rows[i].source).collate([(rows[i].episode, rows[i].step)], pixels)
            for key, values in one.items():
                assert np.array_equal(np.asarray(batch[key][b]), np.asarray(values[0])), key
