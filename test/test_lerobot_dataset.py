"""LeRobot datasets (v3.0): recorded episodes exported, checked file by file with pyarrow and PyAV against the
layout LeRobot defines, imported back into episode files the learner reads the same, and bad datasets refused by
name. The episodes: the four demonstrations recorded once per session, and one written here in which an operator
takes over mid-episode and the episode fails."""

import itertools
import json
import os
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import DEMO_CAMERAS

from sop_ros.cli import main
from sop_ros.cloud.episode_store import EpisodeStore, stored_episodes
from sop_ros.configs import ConfigError
from sop_ros.episodes.format import Controller
from sop_ros.episodes.reader import copy_episode, episode_files
from sop_ros.fleet.episode_files import EpisodeFiles
from sop_ros.fleet.lerobot_import import import_lerobot
from sop_ros.learner.dataset import DatasetConfig, EpisodeDataset, index_episode
from sop_ros.learner.lerobot import ExportConfig, LeRobotFormatError, export_lerobot
from sop_ros.model.preprocess import decode_jpeg_rgb

TIER = "unit"  # what the tests need: conftest.TIERS

FPS = 30  # the simulated robots' control rate
TAKEOVER = "robot_9-takeover"  # the episode written here
TAKEOVER_STEPS = 12
OPERATOR_STEPS = range(5, 10)  # the operator answers these steps' states
# Mean absolute pixel difference (of 255) allowed between a recorded frame and the same frame after video and JPEG:
# the round trip measured about 2.5 on average and at most 4.3.
FRAME_TOLERANCE = 8.0

V3_INFO_KEYS = {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
                "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
                "features"}  # fmt: skip
FRAME_COLUMNS = {"observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index"}


def smooth_image(seed: int) -> np.ndarray:
    """A 96x96 frame a video codec keeps well: gradients and a bright square that moves with the seed."""
    y, x = np.mgrid[0:96, 0:96]
    image = np.stack([x * 2, y * 2, np.full_like(x, 40 + 10 * (seed % 8))], axis=-1).astype(np.uint8)
    image[20 + seed % 40 : 40 + seed % 40, 30:50] = 230
    return image


@pytest.fixture(scope="module")
def source(recorded_demos, tmp_path_factory):
    """The four demonstrations and the takeover episode in one folder."""
    root = tmp_path_factory.mktemp("episodes")
    shutil.copytree(recorded_demos, root, dirs_exist_ok=True)
    demo = index_episode(episode_files(recorded_demos)[0], DatasetConfig())
    files = EpisodeFiles(root / "robot_9", "robot_9", DEMO_CAMERAS, jpeg_quality=90)
    t0, period = 5_000_000_000, 1_000_000_000 // FPS
    files.start(t0, "push-v3", "push it by hand", "v7", episode_id=TAKEOVER)
    rng = np.random.default_rng(0)
    for k in range(TAKEOVER_STEPS + 1):
        t = t0 + k * period
        files.state(t, demo.joint_names, rng.normal(size=len(demo.joint_names)), np.zeros(0))
        if k % 3 == 0:  # the cameras tick at a third of the control rate, as the simulator's do
            files.frames(t, {camera: smooth_image(k + i) for i, camera in enumerate(DEMO_CAMERAS)})
        if k == TAKEOVER_STEPS:
            break
        if k in (OPERATOR_STEPS.start, OPERATOR_STEPS.stop):
            files.control(t, Controller.OPERATOR if k == OPERATOR_STEPS.start else Controller.POLICY)
        files.executed(t, ("x", "y", "z", "gripper"), rng.uniform(-1, 1, size=4))
    files.end(t0 + TAKEOVER_STEPS * period, success=False, steps=TAKEOVER_STEPS)
    return root


@pytest.fixture(scope="module")
def originals(source):
    """Episode id -> the episode as the learner indexes it."""
    indexed = [index_episode(path, DatasetConfig(cameras=DEMO_CAMERAS)) for path in episode_files(source)]
    return {episode.episode_id: episode for episode in indexed}


@pytest.fixture(scope="module")
def dataset(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot") / "sop-demos"
    summary = export_lerobot(ExportConfig(out=out, demos=source, repo_id="my-lab/sop-demos"), log=lambda _: None)
    assert summary.skipped == []
    return out


def read_table(dataset: Path, relative: str) -> pa.Table:
    return pq.read_table(dataset / relative)


def episodes_table(dataset: Path) -> list[dict]:
    return read_table(dataset, "meta/episodes/chunk-000/file-000.parquet").to_pylist()


def frames_by_episode(dataset: Path) -> dict[str, dict[str, np.ndarray]]:
    """Episode id -> its data rows, column by column."""
    data = read_table(dataset, "data/chunk-000/file-000.parquet")
    ids = {row["episode_index"]: row["sop/episode_id"] for row in episodes_table(dataset)}
    found = {}
    for index, episode_id in ids.items():
        rows = data.filter(pc.equal(data["episode_index"], index))
        found[episode_id] = {name: np.array(rows[name].to_pylist()) for name in rows.column_names}
    return found


def decoded_video(path: Path) -> tuple[list[np.ndarray], list[float], int, str, tuple[int, int]]:
    """Every frame and its time, the frame count its header gives, its codec and its size (width, height)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(frame.to_ndarray(format="rgb24"), frame.time) for frame in container.decode(stream)]
        size = (stream.codec_context.width, stream.codec_context.height)
        return [f for f, _ in frames], [t for _, t in frames], stream.frames, stream.codec_context.name, size


def observation_frame(episode, camera: str, k: int) -> np.ndarray:
    return decode_jpeg_rgb(episode.frames[camera][int(episode.frame_of_step[camera][k])])


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------------------------------------------------
# The exported files, read with pyarrow and PyAV
# ---------------------------------------------------------------------------------------------------------


def test_an_export_leaves_its_threads_scheduling_as_it_was(source, tmp_path):
    """An encoder may switch its caller to real-time scheduling (SVT-AV1 does, as root), which every process
    started afterwards would inherit: a CPU-bound one then starves the machine."""
    before = os.sched_getscheduler(0), os.sched_getparam(0).sched_priority
    export_lerobot(ExportConfig(out=tmp_path / "out", demos=source), log=lambda _: None)
    assert (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) == before


def test_the_dataset_has_the_v3_layout_and_nothing_else(dataset):
    files = {str(p.relative_to(dataset)) for p in dataset.rglob("*") if p.is_file()}
    assert files == {
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "data/chunk-000/file-000.parquet",
        *(f"videos/observation.images.{camera}/chunk-000/file-000.mp4" for camera in DEMO_CAMERAS),
        "README.md",
    }
    assert "my-lab/sop-demos" in (dataset / "README.md").read_text()


def test_info_json_holds_the_v3_keys_features_and_totals(dataset, originals):
    info = json.loads((dataset / "meta/info.json").read_text())
    assert set(info) == V3_INFO_KEYS
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == FPS
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["total_episodes"] == len(originals) == 5
    assert info["total_frames"] == sum(e.steps for e in originals.values())
    assert info["total_tasks"] == len({e.instruction for e in originals.values()})
    assert info["splits"] == {"train": "0:5"}
    features = info["features"]
    some = next(iter(originals.values()))
    assert features["observation.state"] == {"dtype": "float32", "shape": [len(some.joint_names)],
                                             "names": list(some.joint_names)}  # fmt: skip
    assert features["action"] == {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]}
    for camera in DEMO_CAMERAS:
        video = features[f"observation.images.{camera}"]
        assert video["dtype"] == "video" and video["shape"] == [96, 96, 3]
        assert video["names"] == ["height", "width", "channels"]
        assert video["info"]["video.codec"] == "h264" and video["info"]["video.fps"] == FPS
    for name in ("frame_index", "episode_index", "index", "task_index"):
        assert features[name] == {"dtype": "int64", "shape": [1], "names": None}
    assert features["timestamp"]["dtype"] == "float32"
    assert features["sop.operator"]["dtype"] == "bool"


def test_data_rows_are_each_episodes_steps_in_order(dataset, originals):
    data = read_table(dataset, "data/chunk-000/file-000.parquet")
    assert set(data.column_names) == FRAME_COLUMNS | {"sop.operator", "sop.time_ns"}
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 9)
    assert data.num_rows == sum(e.steps for e in originals.values())
    assert data["index"].to_pylist() == list(range(data.num_rows))
    tasks = read_table(dataset, "meta/tasks.parquet")
    task_text = dict(zip(tasks["task_index"].to_pylist(), tasks["task"].to_pylist(), strict=True))
    for episode_id, rows in frames_by_episode(dataset).items():
        episode = originals[episode_id]
        assert len(rows["index"]) == episode.steps
        np.testing.assert_array_equal(rows["observation.state"], episode.proprio[:-1])
        np.testing.assert_array_equal(rows["action"], episode.actions)
        np.testing.assert_array_equal(rows["sop.operator"], episode.operator)
        np.testing.assert_array_equal(rows["sop.time_ns"], episode.step_ns[:-1])
        np.testing.assert_array_equal(rows["frame_index"], np.arange(episode.steps))
        np.testing.assert_allclose(rows["timestamp"], np.arange(episode.steps) / FPS, rtol=1e-6)
        assert {task_text[i] for i in rows["task_index"]} == {episode.instruction}
    takeover = frames_by_episode(dataset)[TAKEOVER]["sop.operator"]
    assert np.flatnonzero(takeover).tolist() == list(OPERATOR_STEPS)


def test_each_episodes_row_points_at_its_data_rows_and_video_span_and_keeps_the_extras(dataset, originals):
    rows = episodes_table(dataset)
    assert [row["episode_index"] for row in rows] == list(range(len(originals)))
    start = 0
    for row in rows:
        episode = originals[row["sop/episode_id"]]
        assert row["length"] == episode.steps
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (start, start + episode.steps)
        assert row["tasks"] == [episode.instruction]
        assert (row["data/chunk_index"], row["data/file_index"]) == (0, 0)
        for camera in DEMO_CAMERAS:
            key = f"videos/observation.images.{camera}"
            assert row[f"{key}/from_timestamp"] == pytest.approx(start / FPS)
            assert row[f"{key}/to_timestamp"] == pytest.approx((start + episode.steps) / FPS)
            final = episode.frames[camera][int(episode.frame_of_step[camera][-1])]
            assert row[f"sop/final_frame/observation.images.{camera}"] == final
        assert (row["sop/robot_id"], row["sop/task"], row["sop/outcome"]) == (episode.robot_id, episode.task,
                                                                              episode.outcome)  # fmt: skip
        assert json.loads(row["sop/metadata"]) == episode.metadata
        np.testing.assert_array_equal(np.float32(row["sop/final_state"]), episode.proprio[-1])
        assert row["sop/final_time_ns"] == episode.step_ns[-1]
        start += episode.steps
    assert {row["sop/outcome"] for row in rows} == {"success", "failure"}


def test_each_video_holds_one_frame_per_data_row_at_its_timestamp(dataset, originals):
    rows = episodes_table(dataset)
    total = sum(row["length"] for row in rows)
    for camera in DEMO_CAMERAS:
        video = dataset / f"videos/observation.images.{camera}/chunk-000/file-000.mp4"
        frames, times, counted, codec, size = decoded_video(video)
        assert len(frames) == total == counted
        assert size == (96, 96) and codec == "h264"
        np.testing.assert_allclose(times, np.arange(total) / FPS, atol=1e-3)
        for row in rows:  # every episode's first and last frame where its row says
            episode = originals[row["sop/episode_id"]]
            first = round(row[f"videos/observation.images.{camera}/from_timestamp"] * FPS)
            assert difference(frames[first], observation_frame(episode, camera, 0)) < FRAME_TOLERANCE
            last = first + episode.steps - 1
            assert difference(frames[last], observation_frame(episode, camera, episode.steps - 1)) < FRAME_TOLERANCE


def test_stats_are_those_of_the_data_and_of_each_episode(dataset, originals):
    stats = json.loads((dataset / "meta/stats.json").read_text())
    data = read_table(dataset, "data/chunk-000/file-000.parquet")
    for name in ("observation.state", "action", "timestamp", "index", "sop.operator"):
        values = np.array(data[name].to_pylist(), dtype=np.float64).reshape(data.num_rows, -1)
        assert stats[name]["count"] == [data.num_rows]
        for stat, numpy_stat in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
            np.testing.assert_allclose(stats[name][stat], numpy_stat(values, axis=0), rtol=1e-5, atol=1e-6)
    for row, rows in zip(episodes_table(dataset), frames_by_episode(dataset).values(), strict=True):
        np.testing.assert_allclose(row["stats/action/mean"], rows["action"].mean(axis=0), rtol=1e-5, atol=1e-6)
        assert row["stats/action/count"] == [row["length"]]
    for camera in DEMO_CAMERAS:
        image = stats[f"observation.images.{camera}"]
        assert np.shape(image["mean"]) == np.shape(image["std"]) == (3, 1, 1)
        assert image["count"] == [data.num_rows]
        pixels = np.stack([observation_frame(e, camera, k) for e in originals.values() for k in range(e.steps)])
        pixels = pixels.reshape(-1, 3) / 255.0
        np.testing.assert_allclose(np.ravel(image["mean"]), pixels.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(np.ravel(image["std"]), pixels.std(axis=0), rtol=1e-5)
        np.testing.assert_allclose(np.ravel(image["max"]), pixels.max(axis=0))


QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def test_stats_hold_the_quantiles_lerobot_keeps_for_the_dataset_and_each_episode(dataset, originals):
    # LeRobot's recorder writes q01..q99 beside min/max/mean/std, and a policy normalising by quantiles (pi0.5)
    # refuses a dataset without them: LeRobot's own load of an export found them missing.
    stats = json.loads((dataset / "meta/stats.json").read_text())
    data = read_table(dataset, "data/chunk-000/file-000.parquet")
    for name in ("observation.state", "action", "timestamp", "sop.operator"):
        values = np.array(data[name].to_pylist(), dtype=np.float64).reshape(data.num_rows, -1)
        for key, q in QUANTILES.items():
            np.testing.assert_allclose(stats[name][key], np.quantile(values, q, axis=0), rtol=1e-6, atol=1e-9)
    for row, rows in zip(episodes_table(dataset), frames_by_episode(dataset).values(), strict=True):
        for key, q in QUANTILES.items():
            np.testing.assert_allclose(row[f"stats/action/{key}"], np.quantile(rows["action"], q, axis=0), rtol=1e-6)
            assert np.shape(row[f"stats/observation.images.corner/{key}"]) == (3, 1, 1)
    for camera in DEMO_CAMERAS:
        image = stats[f"observation.images.{camera}"]
        pixels = np.stack([observation_frame(e, camera, k) for e in originals.values() for k in range(e.steps)])
        pixels = pixels.reshape(-1, 3)
        for key, q in QUANTILES.items():
            assert np.shape(image[key]) == (3, 1, 1)
            expected = np.quantile(pixels, q, axis=0, method="inverted_cdf") / 255.0
            np.testing.assert_allclose(np.ravel(image[key]), expected, atol=1 / 255 + 1e-9)
        ordered = [np.ravel(image[key]) for key in ("min", *QUANTILES, "max")]
        assert all(np.all(a <= b) for a, b in zip(ordered, ordered[1:], strict=False))


def test_tasks_parquet_lists_each_task_text_once_as_pandas_index(dataset, originals):
    tasks = read_table(dataset, "meta/tasks.parquet")
    instructions = list(dict.fromkeys(e.instruction for e in sorted(originals.values(), key=lambda e: str(e.path))))
    assert tasks["task"].to_pylist() == instructions
    assert tasks["task_index"].to_pylist() == list(range(len(instructions)))
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]


def test_only_the_tasks_asked_for_are_exported(source, originals, tmp_path):
    export_lerobot(ExportConfig(out=tmp_path / "reach", demos=source, tasks=("reach-v3",)), log=lambda _: None)
    ids = {row["sop/episode_id"] for row in episodes_table(tmp_path / "reach")}
    assert ids == {i for i, e in originals.items() if e.task == "reach-v3"} and ids


# ---------------------------------------------------------------------------------------------------------
# Import: back into episode files
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imported(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported")
    summary = import_lerobot(dataset, out, log=lambda _: None)
    return {p.stem: index_episode(p, DatasetConfig(cameras=DEMO_CAMERAS)) for p in summary.paths}


def test_a_round_trip_gives_the_learner_the_same_episodes(imported, originals):
    assert set(imported) == set(originals)
    for episode_id, back in imported.items():
        episode = originals[episode_id]
        np.testing.assert_array_equal(back.proprio, episode.proprio)
        np.testing.assert_array_equal(back.actions, episode.actions)
        np.testing.assert_array_equal(back.operator, episode.operator)
        np.testing.assert_array_equal(back.step_ns, episode.step_ns)
        said = (back.outcome, back.task, back.instruction, back.robot_id)
        assert said == (episode.outcome, episode.task, episode.instruction, episode.robot_id)
        assert back.metadata == episode.metadata
        assert back.filled_actions == 0
        for camera in DEMO_CAMERAS:
            for k in range(episode.steps + 1):
                seen = difference(observation_frame(back, camera, k), observation_frame(episode, camera, k))
                assert seen < FRAME_TOLERANCE, (episode_id, camera, k, seen)
    assert imported[TAKEOVER].outcome == "failure"
    assert np.flatnonzero(imported[TAKEOVER].operator).tolist() == list(OPERATOR_STEPS)


def test_imported_demonstrations_are_what_pretraining_reads(dataset, tmp_path):
    import_lerobot(dataset, tmp_path, log=lambda _: None)
    demos = EpisodeDataset(tmp_path, DatasetConfig(outcomes=("success",)), log=lambda _: None)
    assert len(demos.episodes) == 4 and demos.skipped == []
    assert demos.config.cameras == DEMO_CAMERAS


def test_into_a_store_the_episodes_are_indexed_and_export_again_alike(dataset, originals, tmp_path):
    EpisodeStore(tmp_path / "store").close()
    import_lerobot(dataset, tmp_path / "store", log=lambda _: None)
    stored = {e.episode_id: e for e in stored_episodes(tmp_path / "store")}
    assert {i: e.outcome for i, e in stored.items()} == {i: e.outcome for i, e in originals.items()}
    export_lerobot(ExportConfig(out=tmp_path / "again", store=tmp_path / "store"), log=lambda _: None)
    again = frames_by_episode(tmp_path / "again")
    for episode_id, rows in frames_by_episode(dataset).items():
        np.testing.assert_array_equal(again[episode_id]["observation.state"], rows["observation.state"])
        np.testing.assert_array_equal(again[episode_id]["action"], rows["action"])


def test_an_episode_already_there_is_refused_before_anything_is_written(dataset, tmp_path):
    summary = import_lerobot(dataset, tmp_path, log=lambda _: None)
    last = sorted(summary.paths)[-1]
    kept = last.read_bytes()
    for path in summary.paths:
        if path != last:
            path.unlink()
    with pytest.raises(FileExistsError, match=f"1 of the dataset's episodes are already recorded .*{last.name}"):
        import_lerobot(dataset, tmp_path, log=lambda _: None)
    assert episode_files(tmp_path) == [last] and last.read_bytes() == kept


def without_sop_columns(dataset: Path, copy: Path) -> Path:
    """The dataset as a tool that knows only LeRobot's columns would write it."""
    shutil.copytree(dataset, copy)
    for relative in ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet"):
        table = read_table(copy, relative)
        pq.write_table(table.drop([n for n in table.column_names if n.startswith("sop")]), copy / relative)
    info = json.loads((copy / "meta/info.json").read_text())
    info["features"] = {k: v for k, v in info["features"].items() if not k.startswith("sop")}
    (copy / "meta/info.json").write_text(json.dumps(info))
    return copy


def test_a_dataset_from_elsewhere_reads_as_teleoperated_successful_demonstrations(dataset, originals, tmp_path):
    plain = without_sop_columns(dataset, tmp_path / "plain")
    summary = import_lerobot(plain, tmp_path / "out", log=lambda _: None)
    back = [index_episode(p, DatasetConfig()) for p in summary.paths]
    assert [e.episode_id for e in back] == [f"plain-{i:06d}" for i in range(len(originals))]
    by_steps = sorted(originals.values(), key=lambda e: str(e.path))  # the order they were exported in
    for episode, original in zip(back, by_steps, strict=True):
        assert (episode.outcome, episode.robot_id, episode.task) == ("success", "lerobot", original.instruction)
        assert episode.operator.all()
        np.testing.assert_array_equal(episode.actions, original.actions)
        np.testing.assert_array_equal(episode.proprio[:-1], original.proprio[:-1])
        np.testing.assert_array_equal(episode.proprio[-1], original.proprio[-2])  # its last state, again
        np.testing.assert_allclose(np.diff(episode.step_ns), 1e9 / FPS, atol=1)


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------


def broken(dataset: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(dataset, copy)
    change(copy)
    return copy


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def edit_episodes(root: Path, name: str, values: list) -> None:
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    column = table.schema.get_field_index(name)
    pq.write_table(table.set_column(column, name, pa.array(values, table.schema.field(name).type)), path)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: (d / "meta/info.json").unlink(), "no meta/info.json: not a LeRobot dataset"),
        (lambda d: (d / "meta/tasks.parquet").unlink(), "meta/tasks.parquet is missing"),
        (lambda d: shutil.rmtree(d / "meta/episodes"), "meta/episodes/chunk-*/file-*.parquet is missing"),
        (lambda d: (d / "data/chunk-000/file-000.parquet").unlink(), "file-000.parquet: missing"),
        (lambda d: (d / "videos/observation.images.corner/chunk-000/file-000.mp4").unlink(), "file-000.mp4: missing"),
        (lambda d: edit_json(d / "meta/info.json", codebase_version="v2.1"),
         "codebase_version 'v2.1'; only 'v3.0' datasets are read"),
        (lambda d: edit_json(d / "meta/info.json", total_frames=3), "total_frames is 3, but meta/episodes lists"),
    ],
    ids=["no-info", "no-tasks", "no-episodes", "no-data", "no-video", "v2.1", "total-frames"],
)  # fmt: skip
def test_a_bad_dataset_is_refused_naming_what_is_wrong_and_nothing_is_written(dataset, tmp_path, change, named):
    bad = broken(dataset, tmp_path, change)
    with pytest.raises(LeRobotFormatError, match=re.escape(named)):
        import_lerobot(bad, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists() or episode_files(tmp_path / "out") == []


def test_mismatched_lengths_name_the_episode_and_both_counts(dataset, tmp_path):
    lengths = [r["length"] for r in episodes_table(dataset)]
    bad = broken(dataset, tmp_path, lambda d: edit_episodes(d, "length", [n - (i == 2) for i, n in enumerate(lengths)]))
    edit_json(bad / "meta/info.json", total_frames=sum(lengths) - 1)
    with pytest.raises(LeRobotFormatError) as refused:
        import_lerobot(bad, tmp_path / "out", log=lambda _: None)
    assert f"episode 2: meta/episodes says length {lengths[2] - 1}" in str(refused.value)
    assert f"data/chunk-000/file-000.parquet has {lengths[2]} rows of it" in str(refused.value)


def test_export_refuses_a_used_folder_a_missing_store_and_a_bad_repo_id(source, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="out=.*must be a new or empty folder"):
        ExportConfig(out=tmp_path / "used", demos=source)
    with pytest.raises(ConfigError, match="no episode store there"):
        export_lerobot(ExportConfig(out=tmp_path / "a", store=tmp_path / "nothing"), log=lambda _: None)
    assert not (tmp_path / "nothing").exists()  # looked at, not created
    with pytest.raises(ConfigError, match="repo_id='no owner'"):
        ExportConfig(out=tmp_path / "b", demos=source, repo_id="no owner")
    with pytest.raises(ConfigError, match="exactly one source"):
        ExportConfig(out=tmp_path / "c", demos=source, store=source)


def with_a_damaged_frame(source: Path, target: Path, camera: str, frame: int) -> Path:
    """A copy of an episode file under a new id, one of whose JPEG frames no longer starts like a JPEG."""
    topic, seen = f"/cameras/{camera}/image_raw/compressed", itertools.count()

    def damage(on: str, data: bytes) -> bytes:
        return data.replace(b"\xff\xd8\xff", b"\x00\x00\x00", 1) if on.endswith(topic) and next(seen) == frame else data

    return copy_episode(source, target, rewrite=damage, episode_id=target.stem)


def test_an_episode_with_a_damaged_frame_is_left_out_by_name_and_the_rest_exported(recorded_demos, tmp_path):
    good = episode_files(recorded_demos)[0]
    (tmp_path / "in" / "robot_0").mkdir(parents=True)
    shutil.copy(good, tmp_path / "in" / "robot_0" / good.name)
    damaged = with_a_damaged_frame(good, tmp_path / "in" / "robot_0" / "robot_0-damaged.mcap", "topview", 2)
    summary = export_lerobot(ExportConfig(out=tmp_path / "out", demos=tmp_path / "in"), log=lambda _: None)
    assert [(p, reason.split(":")[0]) for p, reason in summary.skipped] == [(damaged, "camera 'topview' frame 2")]
    assert "cannot decode" in summary.skipped[0][1]
    steps = index_episode(good, DatasetConfig()).steps
    assert json.loads((tmp_path / "out/meta/info.json").read_text())["total_frames"] == steps
    frames, *_ = decoded_video(tmp_path / "out/videos/observation.images.topview/chunk-000/file-000.mp4")
    assert len(frames) == steps  # nothing of the refused episode went into the video


def test_episodes_at_another_step_rate_than_asked_are_left_out_with_their_rate(source, tmp_path):
    with pytest.raises(ValueError, match=r"no episode to export .*steps at 30\.00 Hz, not the dataset's 10 fps"):
        export_lerobot(ExportConfig(out=tmp_path / "slow", demos=source, fps=10), log=lambda _: None)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


# ---------------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------------


def test_sop_dataset_export_and_import_on_the_command_line(source, tmp_path, capsys):
    out = tmp_path / "dataset"
    assert main(["dataset", "export", "--format", "lerobot", "--out", str(out), "--demos", str(source),
                 "--tasks", "push-v3"]) == 0  # fmt: skip
    assert json.loads((out / "meta/info.json").read_text())["total_episodes"] == 3  # two demos and the takeover
    assert main(["dataset", "import", "--format", "lerobot", str(out), "--out", str(tmp_path / "demos")]) == 0
    assert len(episode_files(tmp_path / "demos")) == 3
    edit_json(out / "meta/info.json", codebase_version="v2.0")
    assert main(["dataset", "import", "--format", "lerobot", str(out), "--out", str(tmp_path / "more")]) == 2
    assert "codebase_version 'v2.0'" in capsys.readouterr().err
