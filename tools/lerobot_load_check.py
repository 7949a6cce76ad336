"""Two halves of tools/lerobot_load_check.sh, which runs them (read it first).

    reference  with the project's Python: what the export said it wrote (its printed summary) and, for a few
               frames, what they should hold: the recorded joint state, action and camera frames, and the frames
               as the project's own reader (learner/lerobot.py) decodes them from the videos. Writes an .npz.
    check      with LeRobot's Python (a venv of its own): loads the dataset with LeRobot's LeRobotDataset from its
               folder (no hub), checks it against the files and the reference, writes the JSON report and exits
               1 when a check fails.

The two halves share no imports: sop_ros is not installed beside LeRobot, and LeRobot is not installed in the
project's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import numpy as np

IMAGES = "observation.images."
STATE, ACTION = "observation.state", "action"
QUANTILES = ("q01", "q10", "q50", "q90", "q99")  # the quantiles LeRobot's own recorder keeps (pi0.5 needs q01/q99)
# Mean absolute difference (of 255) between a recorded camera frame and LeRobot's decoding of it after video: the
# project's tests allow the same for its own reader.
FRAME_TOLERANCE = 8.0
# Largest difference (of 255) allowed between LeRobot's decoding of a frame and the project's reader's decoding
# of the same frame: both decode the same video stream, with different FFmpeg builds converting it to RGB.
DECODE_TOLERANCE = 2
EXPORTED = re.compile(r"exported (\d+) episodes \((\d+) frames at (\d+) fps, tasks: (.*); cameras: (.*)\) to ")


# ---------------------------------------------------------------------------------------------------------
# reference: the project's side
# ---------------------------------------------------------------------------------------------------------


def sample_steps(length: int) -> list[int]:
    """The frames of an episode that are compared one by one: its first, middle and last."""
    return sorted({0, length // 2, length - 1})


def reference(args: argparse.Namespace) -> None:
    from sop_ros.episodes.reader import episode_files
    from sop_ros.learner.dataset import DatasetConfig, index_episode
    from sop_ros.learner.lerobot import LeRobotReader
    from sop_ros.model.preprocess import decode_jpeg_rgb

    printed = Path(args.export_log).read_text()
    found = EXPORTED.search(printed)
    if found is None:
        sys.exit(f"{args.export_log}: no 'exported N episodes (...)' line: did the export fail?\n{printed}")
    summary = {"episodes": int(found[1]), "frames": int(found[2]), "fps": int(found[3]),
               "tasks": found[4].split(", "), "cameras": found[5].split(", ")}  # fmt: skip
    reader = LeRobotReader(args.dataset)
    cameras = reader.cameras
    recorded = {}
    for path in episode_files(Path(args.demos)):
        episode = index_episode(path, DatasetConfig(cameras=cameras))
        recorded[episode.episode_id] = episode
    arrays: dict[str, list] = {"index": [], "state": [], "action": []}
    arrays |= {f"recorded/{c}": [] for c in cameras} | {f"reader/{c}": [] for c in cameras}
    start = 0
    for episode in reader:  # in episode_index order, as the data rows are
        original = recorded[episode.episode_id]
        for k in sample_steps(len(episode.actions)):
            arrays["index"].append(start + k)
            arrays["state"].append(original.proprio[k].astype(np.float32))
            arrays["action"].append(original.actions[k].astype(np.float32))
            for camera in cameras:
                frame = original.frames[camera][int(original.frame_of_step[camera][k])]
                arrays[f"recorded/{camera}"].append(decode_jpeg_rgb(frame))
                arrays[f"reader/{camera}"].append(episode.frames[camera][k])
        start += len(episode.actions)
    np.savez_compressed(args.out, summary=json.dumps(summary), cameras=np.array(cameras),
                        **{name: np.stack(values) for name, values in arrays.items()})  # fmt: skip
    print(f"reference: {len(arrays['index'])} frames of {len(reader)} episodes")


# ---------------------------------------------------------------------------------------------------------
# check: LeRobot's side
# ---------------------------------------------------------------------------------------------------------


def import_lerobot():
    """LeRobot's dataset module, importable beside a CPU-only torch.

    LeRobot imports torchvision wherever it decodes (datasets/utils.py, video_utils.py). PyPI's torchvision
    wheels are CUDA builds: their C++ ops (torchvision/_C.so) need libtorch_cuda, which a CPU torch lacks, so they
    do not load, and torchvision's import then stops where it registers a fake kernel for its `nms` op without
    asking whether the op exists ("operator torchvision::nms does not exist"). Declaring that one op's schema
    first lets the import finish. Nothing here runs torchvision's C++ ops: LeRobot's "pyav" backend decodes
    with torchvision's Python VideoReader over PyAV, and vectors need no torchvision at all. With a torchvision
    whose ops do load, nothing is declared.
    """
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    library = Path(spec.origin).parent / "_C.so" if spec and spec.origin else None
    declared = None
    try:
        torch.ops.load_library(str(library))
        loaded = True
    except (OSError, TypeError):
        loaded = False
        declared = torch.library.Library("torchvision", "DEF")
        declared.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's "failed to load image extension" and its video deprecation
        import torchvision  # noqa: F401
        from lerobot.datasets import lerobot_dataset
    lerobot_dataset._sop_declared_ops = declared  # kept alive with the module: the declaration lasts as long
    return lerobot_dataset, loaded


class Checks:
    def __init__(self) -> None:
        self.results: list[dict] = []

    def run(self, name: str, what: str, fn) -> None:
        started = time.monotonic()
        try:
            detail = fn() or {}
            failures = detail.pop("failures", [])
            passed = not failures
        except Exception as err:  # a check that cannot run has failed: say why
            detail, passed = {"error": f"{type(err).__name__}: {err}"}, False
            failures = [traceback.format_exc(limit=3).strip().splitlines()[-1]]
        result = {"name": name, "what": what, "passed": passed, **detail}
        if failures:
            result["failures"] = failures[:10]
        result["seconds"] = round(time.monotonic() - started, 2)
        self.results.append(result)
        print(f"{'PASS' if passed else 'FAIL'} {name}: " + (failures[0] if failures else what))


def plain(value):
    """Tuples as lists, all the way down (LeRobot reads shapes as tuples, info.json holds lists)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}  # fmt: skip


def check(args: argparse.Namespace) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"  # a dataset not found in its folder must fail here, not be downloaded
    import importlib.metadata
    import warnings

    # torchvision's notices that its video decoding is deprecated and that its image extension did not load.
    warnings.filterwarnings("ignore", message=".*(torchvision|image Python extension).*")

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    lerobot_dataset, torchvision_ops = import_lerobot()
    from lerobot.datasets.utils import dataset_to_policy_features

    LeRobotDataset = lerobot_dataset.LeRobotDataset  # noqa: N806
    root = Path(args.dataset)
    ref = np.load(args.reference)
    exported = json.loads(str(ref["summary"]))
    cameras = [str(c) for c in ref["cameras"]]
    video_keys = [IMAGES + c for c in cameras]
    info = json.loads((root / "meta/info.json").read_text())  # as written
    data = pa.concat_tables([pq.read_table(p) for p in sorted(root.glob("data/*/*.parquet"))])
    data = data.sort_by("index")
    column = {name: np.array(data[name].to_pylist()) for name in data.column_names}
    checks = Checks()

    started = time.monotonic()
    dataset = LeRobotDataset(args.repo_id, root=root, video_backend=args.video_backend)
    load_s = time.monotonic() - started
    meta = dataset.meta
    episodes = [dict(row) for row in meta.episodes]  # LeRobot's episodes table (a datasets.Dataset)
    tasks = list(meta.tasks.index)

    def counts():
        failures = []
        pairs = {"episodes": (dataset.num_episodes, exported["episodes"]),
                 "frames": (dataset.num_frames, exported["frames"]), "len(dataset)": (len(dataset), exported["frames"]),
                 "meta.total_episodes": (meta.total_episodes, exported["episodes"]),
                 "meta.total_frames": (meta.total_frames, exported["frames"]),
                 "episodes rows": (len(episodes), exported["episodes"]),
                 "tasks": (meta.total_tasks, len(exported["tasks"]))}  # fmt: skip
        for name, (loaded, expected) in pairs.items():
            if loaded != expected:
                failures.append(f"{name}: LeRobot reads {loaded}, the export reported {expected}")
        if sorted(tasks) != sorted(exported["tasks"]):
            failures.append(f"task texts {tasks} != exported {exported['tasks']}")
        return {"loaded": {name: loaded for name, (loaded, _) in pairs.items()}, "failures": failures}

    def metadata():
        failures = []
        if meta.info["codebase_version"] != "v3.0" or info["codebase_version"] != "v3.0":
            failures.append(f"codebase_version {meta.info['codebase_version']!r}, written {info['codebase_version']!r}")
        if dataset.fps != exported["fps"] or meta.fps != info["fps"]:
            failures.append(f"fps {dataset.fps}, exported {exported['fps']}, written {info['fps']}")
        if plain(dataset.features) != info["features"]:
            differ = [k for k in set(info["features"]) | set(dataset.features)
                      if plain(dataset.features.get(k)) != info["features"].get(k)]  # fmt: skip
            failures.append(f"features as LeRobot reads them differ from info.json in {sorted(differ)}")
        if list(meta.video_keys) != video_keys or list(meta.camera_keys) != video_keys:
            failures.append(f"video keys {meta.video_keys}, cameras {meta.camera_keys}; exported {video_keys}")
        for key in video_keys:
            height, width = info["features"][key]["shape"][:2]
            video = meta.info["features"][key]["info"]
            if (video["video.height"], video["video.width"]) != (height, width):
                failures.append(f"{key}: video info {video['video.width']}x{video['video.height']} != {width}x{height}")
        return {"codebase_version": meta.info["codebase_version"], "fps": dataset.fps,
                "features": sorted(dataset.features), "failures": failures}  # fmt: skip

    def stats():
        failures = []
        expected_keys = {"min", "max", "mean", "std", "count", *QUANTILES}
        numeric = [k for k, f in info["features"].items() if f["dtype"] not in ("video", "image", "string")]
        for key in [*numeric, *video_keys]:
            have = meta.stats.get(key)
            if have is None:
                failures.append(f"{key}: no statistics")
                continue
            missing = sorted(expected_keys - set(have))
            if missing:
                failures.append(f"{key}: statistics lack {', '.join(missing)} (LeRobot's recorder writes them)")
            shape = (3, 1, 1) if key in video_keys else tuple(info["features"][key]["shape"])
            for name, value in have.items():
                want = (1,) if name == "count" else shape
                if np.shape(value) != want:
                    failures.append(f"{key}/{name}: shape {np.shape(value)}, LeRobot expects {want}")
        return {"features": len(numeric) + len(video_keys), "failures": failures}

    def policy_features():
        features = dataset_to_policy_features(meta.features)
        found = {key: [feature.type.name, list(feature.shape)] for key, feature in features.items()}
        want = {STATE: ["STATE", info["features"][STATE]["shape"]],
                ACTION: ["ACTION", info["features"][ACTION]["shape"]]}  # fmt: skip
        for key in video_keys:
            height, width, channels = info["features"][key]["shape"]
            want[key] = ["VISUAL", [channels, height, width]]
        failures = [f"{key}: {found.get(key)}, not {value}" for key, value in want.items() if found.get(key) != value]
        return {"policy_features": found, "failures": failures}

    sampled = [int(i) for i in ref["index"]]
    frame_diffs = {"state_vs_parquet": 0.0, "action_vs_parquet": 0.0, "state_vs_recorded": 0.0,
                   "action_vs_recorded": 0.0, "image_vs_reader_max": 0, "image_vs_recorded_mean": 0.0}  # fmt: skip

    def frames():
        failures = []
        task_of = {int(row["episode_index"]): row["tasks"][0] for row in episodes}
        for n, i in enumerate(sampled):
            item = dataset[i]
            where = f"dataset[{i}]"
            for key, name in ((STATE, "state"), (ACTION, "action")):
                value = item[key]
                if value.dtype != torch.float32 or tuple(value.shape) != tuple(info["features"][key]["shape"]):
                    failures.append(f"{where}[{key!r}]: {value.dtype} {tuple(value.shape)}")
                    continue
                vs_parquet = float(np.abs(value.numpy() - column[key][i]).max())
                vs_recorded = float(np.abs(value.numpy() - ref[name][n]).max())
                frame_diffs[f"{name}_vs_parquet"] = max(frame_diffs[f"{name}_vs_parquet"], vs_parquet)
                frame_diffs[f"{name}_vs_recorded"] = max(frame_diffs[f"{name}_vs_recorded"], vs_recorded)
                if vs_parquet or vs_recorded:
                    failures.append(f"{where}[{key!r}] differs from the parquet row by {vs_parquet}, from the "
                                    f"recording by {vs_recorded}")  # fmt: skip
            for name in ("index", "frame_index", "episode_index", "task_index"):
                if int(item[name]) != int(column[name][i]):
                    failures.append(f"{where}[{name!r}] = {int(item[name])}, the parquet row has {column[name][i]}")
            if abs(float(item["timestamp"]) - float(column["timestamp"][i])) > 1e-6:
                failures.append(f"{where}['timestamp'] = {float(item['timestamp'])}, its row has "
                                f"{column['timestamp'][i]}")  # fmt: skip
            task = task_of[int(item["episode_index"])]
            if item["task"] != task:
                failures.append(f"{where}['task'] = {item['task']!r}, its episode's is {task!r}")
            for key, camera in zip(video_keys, cameras, strict=True):
                image = item[key]
                height, width, channels = info["features"][key]["shape"]
                if image.dtype != torch.float32 or tuple(image.shape) != (channels, height, width):
                    failures.append(f"{where}[{key!r}]: {image.dtype} {tuple(image.shape)}, not float32 "
                                    f"{(channels, height, width)}")  # fmt: skip
                    continue
                if float(image.min()) < 0 or float(image.max()) > 1:
                    failures.append(f"{where}[{key!r}]: values outside [0, 1]")
                rgb = np.round(image.permute(1, 2, 0).numpy() * 255).astype(np.int16)
                vs_reader = int(np.abs(rgb - ref[f"reader/{camera}"][n].astype(np.int16)).max())
                vs_recorded = float(np.abs(rgb - ref[f"recorded/{camera}"][n].astype(np.int16)).mean())
                frame_diffs["image_vs_reader_max"] = max(frame_diffs["image_vs_reader_max"], vs_reader)
                frame_diffs["image_vs_recorded_mean"] = max(frame_diffs["image_vs_recorded_mean"], vs_recorded)
                if vs_reader > DECODE_TOLERANCE:
                    failures.append(f"{where}[{key!r}]: up to {vs_reader}/255 from the project reader's frame")
                if vs_recorded > FRAME_TOLERANCE:
                    failures.append(f"{where}[{key!r}]: {vs_recorded:.2f}/255 on average from the recorded frame")
        diffs = {k: round(v, 4) if isinstance(v, float) else v for k, v in frame_diffs.items()}
        return {"indices": sampled, "max_abs_diff": diffs, "failures": failures}

    def every_row():
        # Every frame through __getitem__: vectors and indices against the parquet rows, images decoded.
        failures, state_diff, action_diff = [], 0.0, 0.0
        for i in range(len(dataset)):
            item = dataset[i]
            state_diff = max(state_diff, float(np.abs(item[STATE].numpy() - column[STATE][i]).max()))
            action_diff = max(action_diff, float(np.abs(item[ACTION].numpy() - column[ACTION][i]).max()))
            if int(item["index"]) != i or int(item["episode_index"]) != int(column["episode_index"][i]):
                failures.append(f"dataset[{i}]: index {int(item['index'])}, episode {int(item['episode_index'])}")
            for key in video_keys:
                if tuple(item[key].shape) != (3, *info["features"][key]["shape"][:2]):
                    failures.append(f"dataset[{i}][{key!r}]: shape {tuple(item[key].shape)}")
        if state_diff or action_diff:
            failures.append(f"state differs by up to {state_diff}, action by up to {action_diff}")
        return {"frames": len(dataset), "max_abs_diff": {"state": state_diff, "action": action_diff},
                "failures": failures}  # fmt: skip

    def boundaries():
        failures = []
        start = 0
        spans = []
        for row in sorted(episodes, key=lambda r: r["episode_index"]):
            index, length = int(row["episode_index"]), int(row["length"])
            first, last = int(row["dataset_from_index"]), int(row["dataset_to_index"])
            spans.append([index, first, last])
            if (first, last) != (start, start + length):
                failures.append(f"episode {index}: rows [{first}, {last}), expected [{start}, {start + length})")
            rows = np.flatnonzero(column["episode_index"] == index)
            if len(rows) != length or rows[0] != first or rows[-1] != last - 1:
                failures.append(f"episode {index}: its data rows are not [{first}, {last})")
            head, tail = dataset[first], dataset[last - 1]
            if int(head["episode_index"]) != index or int(head["frame_index"]) != 0:
                failures.append(f"episode {index}: dataset[{first}] is frame {int(head['frame_index'])} of episode "
                                f"{int(head['episode_index'])}")  # fmt: skip
            if int(tail["episode_index"]) != index or int(tail["frame_index"]) != length - 1:
                failures.append(f"episode {index}: dataset[{last - 1}] is frame {int(tail['frame_index'])} of "
                                f"episode {int(tail['episode_index'])}")  # fmt: skip
            for key in video_keys:
                span = (float(row[f"videos/{key}/from_timestamp"]), float(row[f"videos/{key}/to_timestamp"]))
                if abs(span[1] - span[0] - length / dataset.fps) > 1e-6:
                    failures.append(f"episode {index} {key}: video span {span} is not {length} frames")
            start += length
        # One episode on its own (LeRobot's `episodes=`), and an action chunk that runs past its end: LeRobot pads
        # by its episode's bounds.
        last = spans[-1]
        fps = dataset.fps
        chunk = LeRobotDataset(args.repo_id, root=root, video_backend=args.video_backend, episodes=[last[0]],
                               delta_timestamps={ACTION: [k / fps for k in range(4)],
                                                 video_keys[0]: [-1 / fps, 0.0]})  # fmt: skip
        if len(chunk) != last[2] - last[1] or chunk.num_episodes != 1:
            failures.append(f"episodes=[{last[0]}]: {len(chunk)} frames of {chunk.num_episodes} episodes")
        head = chunk[0]
        if int(head["index"]) != last[1] or head[f"{video_keys[0]}_is_pad"].tolist() != [True, False]:
            failures.append(f"episodes=[{last[0]}][0]: index {int(head['index'])}, image padding "
                            f"{head[f'{video_keys[0]}_is_pad'].tolist()}")  # fmt: skip
        near_end = chunk[len(chunk) - 2]
        if near_end["action_is_pad"].tolist() != [False, False, True, True]:
            failures.append(f"action chunk 2 frames before the end: padding {near_end['action_is_pad'].tolist()}")
        real = near_end[ACTION][:2].numpy()
        chunk_diff = float(np.abs(real - column[ACTION][last[2] - 2 : last[2]]).max())
        if chunk_diff:
            failures.append(f"action chunk differs from the parquet rows by {chunk_diff}")
        return {"episodes": spans, "max_abs_diff": {"action_chunk": chunk_diff}, "failures": failures}

    def batches():
        from lerobot.configs.types import FeatureType, NormalizationMode
        from lerobot.processor.converters import batch_to_transition
        from lerobot.processor.core import TransitionKey
        from lerobot.processor.normalize_processor import NormalizerProcessorStep

        failures = []
        batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True,
                                                      generator=torch.Generator().manual_seed(0))))  # fmt: skip
        shapes = {k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if shapes[STATE] != [8, *info["features"][STATE]["shape"]] or len(batch["task"]) != 8:
            failures.append(f"a batch of 8: {shapes}")
        # Normalised as a policy's preprocessor does: pi0.5's way (quantiles) for state and action.
        features = dataset_to_policy_features(meta.features)
        norm_map = {FeatureType.STATE: NormalizationMode.QUANTILES, FeatureType.ACTION: NormalizationMode.QUANTILES,
                    FeatureType.VISUAL: NormalizationMode.MEAN_STD}  # fmt: skip
        step = NormalizerProcessorStep.from_lerobot_dataset(dataset, features, norm_map)
        normalized = step(batch_to_transition(batch))
        observation = normalized[TransitionKey.OBSERVATION]
        for key, value in [*observation.items(), (ACTION, normalized[TransitionKey.ACTION])]:
            if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
                failures.append(f"{key}: normalised values that are not finite")
        return {"batch_shapes": shapes, "failures": failures}

    def edited():
        # LeRobot's own editing tool rewrites the dataset (data, videos, episodes metadata) without one episode.
        import contextlib
        import io
        import logging

        from lerobot.datasets.dataset_tools import delete_episodes

        failures = []
        out = Path(args.work) / "edited"
        quiet = io.StringIO()  # its progress bars, and its note that torchcodec is missing (pyav decodes here)
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            logging.disable(logging.WARNING)
            try:
                smaller = delete_episodes(dataset, episode_indices=[0], output_dir=out,
                                          repo_id=args.repo_id + "-edited")  # fmt: skip
            finally:
                logging.disable(logging.NOTSET)
        reloaded = LeRobotDataset(args.repo_id + "-edited", root=out, video_backend=args.video_backend)
        removed = int(episodes[0]["length"])
        if reloaded.num_episodes != dataset.num_episodes - 1 or reloaded.num_frames != len(dataset) - removed:
            failures.append(f"without episode 0: {reloaded.num_episodes} episodes, {reloaded.num_frames} frames")
        diff = float(np.abs(reloaded[0][STATE].numpy() - column[STATE][removed]).max())
        if diff or int(reloaded[0]["episode_index"]) != 0:
            failures.append(f"its first frame is not episode 1's first (state differs by {diff})")
        del smaller
        return {"episodes": reloaded.num_episodes, "frames": reloaded.num_frames, "failures": failures}

    checks.run("counts", "episodes, frames and tasks LeRobot reads are those the export reported", counts)
    checks.run("metadata", "codebase version, fps, features and video keys as info.json has them", metadata)
    checks.run("stats", "meta/stats.json loads with every statistic LeRobot keeps, in its shapes", stats)
    checks.run("policy_features", "a policy would see the state, action and cameras with these shapes",
               policy_features)  # fmt: skip
    checks.run("frames", "sampled dataset[i]: state/action equal to the parquet rows and the recording, camera "
               "images decoded by LeRobot of the right shape and equal to the project reader's", frames)  # fmt: skip
    checks.run("every_row", "every dataset[i]: state/action equal to the parquet rows, images of the right shape",
               every_row)  # fmt: skip
    checks.run("episode_boundaries", "each episode's rows and video span; one episode loaded alone; padding of "
               "action chunks and past frames at its ends", boundaries)  # fmt: skip
    checks.run("batches", "a DataLoader batch, normalised with quantiles as pi0.5's preprocessor does", batches)
    checks.run("edit", "LeRobot's delete_episodes rewrites it into a dataset LeRobot loads", edited)

    failed = [c["name"] for c in checks.results if not c["passed"]]
    packages = ("lerobot", "torch", "torchvision", "av", "datasets", "huggingface-hub", "pyarrow")
    versions = {name: importlib.metadata.version(name) for name in packages}
    report = {
        "what": "A dataset written by `sop dataset export --format lerobot`, loaded with LeRobot's own "
                "LeRobotDataset from its folder (no hub) and checked against the export's files and the recording",
        "command": "tools/lerobot_load_check.sh",
        "versions": versions,
        "torchvision_cpp_ops": torchvision_ops,
        "torchvision_note": "" if torchvision_ops else (
            "PyPI's torchvision is a CUDA build whose C++ ops do not load beside a CPU torch; its Python parts "
            "import once the nms op is declared (tools/lerobot_load_check.py: import_lerobot). None of its C++ "
            "ops is used: LeRobot's pyav backend decodes through torchvision's Python VideoReader and PyAV"),
        "video_backend": args.video_backend,
        "machine": machine(),
        "source": json.loads(args.source),
        "exported": exported,
        "loaded": {"episodes": dataset.num_episodes, "frames": dataset.num_frames, "fps": dataset.fps,
                   "codebase_version": meta.info["codebase_version"], "tasks": tasks, "video_keys": video_keys,
                   "load_s": round(load_s, 2)},  # fmt: skip
        "checks": checks.results,
        "passed": len(checks.results) - len(failed),
        "failed": failed,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(checks.results) - len(failed)} passed, {len(failed)} failed: LeRobot {versions['lerobot']} read "
          f"{dataset.num_episodes} episodes, {dataset.num_frames} frames at {dataset.fps} fps; report in {args.json}")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    ref = sub.add_parser("reference")
    ref.add_argument("--dataset", required=True)
    ref.add_argument("--demos", required=True)
    ref.add_argument("--export-log", required=True)
    ref.add_argument("--out", required=True)
    chk = sub.add_parser("check")
    chk.add_argument("--dataset", required=True)
    chk.add_argument("--reference", required=True)
    chk.add_argument("--repo-id", required=True)
    chk.add_argument("--json", required=True)
    chk.add_argument("--work", required=True)
    chk.add_argument("--source", default="{}", help="how the episodes were recorded (JSON), for the report")
    chk.add_argument("--video-backend", default="pyav")
    args = parser.parse_args()
    if args.mode == "reference":
        reference(args)
    else:
        sys.exit(check(args))


if __name__ == "__main__":
    main()
