"""LeRobot datasets (format v3.0) written from the project's episodes, and read back as plain episodes.

ML engineers keep robot data as LeRobot datasets; `sop dataset export --format lerobot` writes a store's or a
demonstrations folder's episodes as one, `sop dataset import --format lerobot` reads one back (writing the episode
files is fleet/lerobot_import.py's part). No ROS: pyarrow for the tables, PyAV for the videos, numpy.

The layout, as LeRobot v3.0 defines it (every path relative to the dataset's root):

    meta/info.json                                    codebase_version "v3.0", fps, features, totals, chunking
                                                      limits and the path templates below
    meta/stats.json                                   per feature: min, max, mean, std, count and the quantiles
                                                      q01, q10, q50, q90, q99 over every frame (videos: per
                                                      channel, pixels in [0, 1], shape (3, 1, 1))
    meta/tasks.parquet                                one row per task text: task_index (pandas reads the text as
                                                      the index, as LeRobot does)
    meta/episodes/chunk-000/file-000.parquet          one row per episode: episode_index, tasks, length,
                                                      dataset_from_index/dataset_to_index (its rows of the data),
                                                      data/chunk_index, data/file_index, for each video key
                                                      videos/<key>/{chunk_index,file_index,from_timestamp,
                                                      to_timestamp}, meta/episodes/{chunk_index,file_index} and
                                                      stats/<feature>/<stat> (the episode's own statistics)
    data/chunk-000/file-000.parquet                   one row per frame: observation.state, action, timestamp,
                                                      frame_index, episode_index, index, task_index
    videos/observation.images.<camera>/chunk-000/file-000.mp4   each camera's frames, one per data row, every
                                                      episode after the one before (H.264, yuv420p)
    README.md                                         a dataset card naming the repo id

Every episode goes into file 000 of chunk 000 (LeRobot reads files of any size; its own recorder starts a new file
at `data_files_size_in_mb` / `video_files_size_in_mb`). The reader follows each episode's chunk and file indices,
so datasets LeRobot split across files are read too.

What a frame is. Episode files hold joint states 0..N and, after each of the first N, the action executed from it
(learner/dataset.py aligns them). Frame k (0 <= k < N) is observation k and action k: observation.state the joint
positions of state k, action the action executed from it, observation.images.<camera> the camera's latest frame at
state k (repeated when the camera ticks slower than the control loop), timestamp k / fps. The task text is the
episode's instruction (what a language-conditioned policy reads), its task's name when it has none.

Kept beside LeRobot's columns so that nothing the learner reads is lost (LeRobot carries them along unread):
    per frame   sop.operator (bool): the operator was in control when the action was executed (an intervention)
                sop.time_ns (int64): the state's time on the robot's clock, ns
    per episode sop/episode_id, sop/robot_id, sop/task, sop/instruction, sop/outcome (success, failure, abort,
                unknown), sop/metadata (the episode file's metadata record, JSON), sop/final_state (the joint
                positions of state N, which has no action and so no frame), sop/final_time_ns, and per video key
                sop/final_frame/<key> (JPEG bytes of state N's camera frame as recorded)
Joint and action names are the features' `names`. Not exported: joint velocities, the policy's action chunks and
the episode events (the learner reads none of them).

A dataset from elsewhere (no sop columns) reads as teleoperated demonstrations: each episode's outcome "success",
the operator in control at every step, the robot id the dataset's robot_type (else "lerobot"), the last frame's
state and images repeated as the final state's.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from sop_ros.configs import ConfigError, require
from sop_ros.episodes.format import EXECUTED_COMMAND, Outcome
from sop_ros.episodes.reader import common_recorded_cameras, episode_files
from sop_ros.learner.dataset import DatasetConfig, EpisodeIndex, index_episode
from sop_ros.model.preprocess import decode_jpeg_rgb

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = EPISODES_DIR + "/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# LeRobot's own limits, written into info.json: files per chunk folder, MB per data / video file.
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500

STATE, ACTION = "observation.state", "action"
IMAGES = "observation.images."  # + camera: a video feature
# LeRobot's per-frame columns every dataset has, besides its own features.
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
OPERATOR, TIME_NS = "sop.operator", "sop.time_ns"  # the project's per-frame extras
EXTRA = "sop/"  # prefix of the project's per-episode extras

# Video: H.264, one of the codecs LeRobot's recorder offers, at x264's default crf (LeRobot's 30 loses detail at
# 96 px) with a key frame every 2 frames (a frame anywhere decodes quickly); yuv420p, which every decoder reads, needs
# even widths and heights. Not AV1, LeRobot's default: the only AV1 encoder in PyAV's wheels, SVT-AV1, switches the
# calling thread to real-time scheduling (SCHED_FIFO 99) when run as root, and every process started from it
# afterwards inherits that (seen: a CPU burner started later by the same process starved a 2-core machine).
CODEC, PIX_FMT = "h264", "yuv420p"
ENCODER_OPTIONS = {"crf": "23", "g": "2"}

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
STEP_RATE_TOLERANCE = 0.05  # an episode whose step rate is further than this from the dataset's fps is refused
# The quantiles LeRobot's recorder keeps beside min/max/mean/std (stats q01 ... q99), for the dataset and each
# episode; policies that normalise by quantiles (pi0.5: q01 and q99) refuse a dataset without them.
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


class LeRobotFormatError(ValueError):
    """A LeRobot dataset that cannot be read: the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportConfig:
    out: Path  # the dataset's root: must not exist yet, or be empty
    store: Path | None = None  # an episode store (the cloud's): its indexed episodes, in the order stored
    demos: Path | None = None  # a folder of episode files (`sop collect-demos --out`), searched recursively
    fps: int = 0  # frames per second (0: the episodes' own step rate); episodes at another rate are refused
    repo_id: str = ""  # the dataset's name on the Hugging Face Hub (empty: sop_ros/<out's name>)
    tasks: tuple[str, ...] = ()  # only these tasks' episodes (empty: all)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        for name in ("store", "demos"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        require((self.store is None) != (self.demos is None), "store/demos", (self.store, self.demos),
                "give exactly one source: an episode store or a folder of episode files")  # fmt: skip
        fps_ok = isinstance(self.fps, int) and not isinstance(self.fps, bool) and self.fps >= 0
        require(fps_ok, "fps", self.fps, "must be an integer >= 0 (0: the episodes' own step rate)")
        require(self.repo_id == "" or _REPO_ID.fullmatch(self.repo_id) is not None, "repo_id", self.repo_id,
                "must be <owner>/<name> of letters, digits, '.', '_' and '-', e.g. my-lab/pick-place")  # fmt: skip
        require(not self.out.exists() or (self.out.is_dir() and not any(self.out.iterdir())), "out", str(self.out),
                "must be a new or empty folder: a dataset is never written over another")  # fmt: skip


@dataclass
class ExportSummary:
    out: Path
    episodes: int
    frames: int
    fps: int
    tasks: list[str]
    cameras: tuple[str, ...]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files not exported, each with the reason


def export_lerobot(config: ExportConfig, log: Callable[[str], None] = print) -> ExportSummary:
    """Write the source's episodes (every outcome) as a LeRobot v3.0 dataset in `config.out`.

    Files that cannot be exported (unreadable, another robot's joints, another step rate, ...) are skipped, each
    with its reason in the summary. ConfigError for a bad source; ValueError when no episode is left. The dataset
    is built beside `out` and renamed into place when complete: a failed export leaves nothing behind.
    """
    paths = _source_files(config)
    if not paths:
        raise ValueError(f"{config.store or config.demos}: no recorded episodes to export; record them first, e.g. "
                         f"`sop collect-demos --tasks reach-v3,push-v3 --episodes-per-task 10 --out DIR`")  # fmt: skip
    cameras = common_recorded_cameras(paths)
    if not cameras:
        raise ValueError(f"{config.store or config.demos}: no episode file has camera frames")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{config.out.name}.", dir=config.out.parent))
    try:
        writer = _DatasetWriter(building, config, cameras)
        skipped = []
        for path in paths:
            try:
                episode = index_episode(path, DatasetConfig(cameras=cameras))
            except ValueError as err:
                skipped.append((path, str(err).removeprefix(f"{path}: ")))
                continue
            if config.tasks and episode.task not in config.tasks:
                continue
            reason = writer.add(episode)
            if reason:
                skipped.append((path, reason))
        if not writer.episodes:
            reasons = "; ".join(f"{p.name}: {r}" for p, r in skipped[:3]) or "none of the tasks asked for"
            raise ValueError(f"{config.store or config.demos}: no episode to export ({reasons})")
        writer.finish()
        if config.out.exists():
            config.out.rmdir()  # checked empty by the config
        building.rename(config.out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    summary = ExportSummary(config.out, len(writer.episodes), writer.frames, writer.fps, list(writer.tasks), cameras,
                            skipped)  # fmt: skip
    log(f"exported {summary.episodes} episodes ({summary.frames} frames at {summary.fps} fps, tasks: "
        f"{', '.join(summary.tasks)}; cameras: {', '.join(cameras)}) to {config.out}"
        + (f"; skipped {len(skipped)}: " + "; ".join(f"{p.name}: {r}" for p, r in skipped) if skipped else ""))
    return summary


def _source_files(config: ExportConfig) -> list[Path]:
    from sop_ros.cloud.episode_store import stored_episodes

    if config.store is not None:
        # Opening a store creates one: look before touching it.
        if not (config.store / "index.sqlite").is_file():
            raise ConfigError(f"store={str(config.store)!r}: no episode store there (no index.sqlite); "
                              "give the folder a learner or cloud ran with as its store")  # fmt: skip
        return [config.store / stored.path for stored in stored_episodes(config.store)]
    if not config.demos.is_dir():
        raise ConfigError(f"demos={str(config.demos)!r}: no such folder")
    return episode_files(config.demos)


class _DatasetWriter:
    """Episodes appended one at a time: frames kept as columns, camera frames encoded into one video per camera
    as they come (so only one episode's JPEGs are in memory), and every file written by `finish`."""

    def __init__(self, root: Path, config: ExportConfig, cameras: tuple[str, ...]) -> None:
        self.root, self.config, self.cameras = root, config, cameras
        self.fps = config.fps  # 0 until the first episode gives its step rate
        self.episodes: list[dict] = []  # rows of meta/episodes
        self.columns: dict[str, list[np.ndarray]] = {}  # per-frame columns, one array per episode
        self.tasks: dict[str, int] = {}  # task text -> task_index
        self.frames = 0
        self.first: EpisodeIndex | None = None
        self.action_names: tuple[str, ...] = ()
        self.frame_size: dict[str, tuple[int, int]] = {}  # camera -> (height, width)
        self.videos: dict[str, _VideoEncoder] = {}
        self.image_stats: dict[str, _PixelStats] = {camera: _PixelStats() for camera in cameras}
        self.ids: set[str] = set()

    def add(self, episode: EpisodeIndex) -> str:
        """Append an episode; the reason it cannot join the others instead ("" when added)."""
        fps = self.fps or max(1, round(_step_rate(episode)))  # the first episode's rate, unless one was asked for
        reason, sizes = self._refusal(episode, fps)
        if reason:
            return reason
        self.fps, self.frame_size = fps, sizes
        if self.first is None:
            self.first = episode
            self.action_names = _action_names(episode.path, episode.actions.shape[1])
        n, start, episode_index = episode.steps, self.frames, len(self.episodes)
        task_text = episode.instruction or episode.task
        task_index = self.tasks.setdefault(task_text, len(self.tasks))
        frame_index = np.arange(n, dtype=np.int64)
        columns = {
            STATE: episode.proprio[:-1].astype(np.float32),
            ACTION: episode.actions.astype(np.float32),
            "timestamp": (frame_index / self.fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(n, episode_index, dtype=np.int64),
            "index": np.arange(start, start + n, dtype=np.int64),
            "task_index": np.full(n, task_index, dtype=np.int64),
            OPERATOR: episode.operator.astype(bool),
            TIME_NS: episode.step_ns[:-1].astype(np.int64),
        }
        for name, values in columns.items():
            self.columns.setdefault(name, []).append(values)
        row = {
            "episode_index": episode_index,
            "tasks": [task_text],
            "length": n,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": start,
            "dataset_to_index": start + n,
        }
        for name, values in columns.items():
            for stat, value in _stats(values).items():
                row[f"stats/{name}/{stat}"] = value
        for camera in self.cameras:
            key = IMAGES + camera
            row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": start / self.fps,
                    f"videos/{key}/to_timestamp": (start + n) / self.fps}  # fmt: skip
            pixels = self._encode(camera, episode)
            for stat, value in pixels.as_lists().items():
                row[f"stats/{key}/{stat}"] = value
            self.image_stats[camera].merge(pixels)
        row |= {
            EXTRA + "episode_id": episode.episode_id,
            EXTRA + "robot_id": episode.robot_id,
            EXTRA + "task": episode.task,
            EXTRA + "instruction": episode.instruction,
            EXTRA + "outcome": episode.outcome,
            EXTRA + "metadata": json.dumps(episode.metadata, sort_keys=True),
            EXTRA + "final_state": episode.proprio[-1].astype(np.float32).tolist(),
            EXTRA + "final_time_ns": int(episode.step_ns[-1]),
        }
        for camera in self.cameras:
            final = int(episode.frame_of_step[camera][-1])
            row[f"{EXTRA}final_frame/{IMAGES}{camera}"] = episode.frames[camera][final]
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        self.episodes.append(row)
        self.ids.add(episode.episode_id)
        self.frames += n
        return ""

    def _refusal(self, episode: EpisodeIndex, fps: int) -> tuple[str, dict[str, tuple[int, int]]]:
        """Why the episode cannot join the dataset ("" if it can), and its cameras' frame sizes. Every frame it
        uses is decoded here, before any goes into a video: a damaged one refuses the episode, not the export."""
        if episode.episode_id in self.ids:
            return f"episode {episode.episode_id} again", {}
        rate = _step_rate(episode)
        if abs(rate - fps) > STEP_RATE_TOLERANCE * fps:
            return (f"steps at {rate:.2f} Hz, not the dataset's {fps} fps (a dataset has one frame rate: "
                    f"export it on its own, with fps {round(rate)})"), {}  # fmt: skip
        first = self.first
        if first is not None and episode.joint_names != first.joint_names:
            return f"joints {list(episode.joint_names)} differ from {list(first.joint_names)} of {first.path.name}", {}
        if first is not None and episode.actions.shape[1] != first.actions.shape[1]:
            return f"{episode.actions.shape[1]} action values, not {first.actions.shape[1]} as in {first.path.name}", {}
        sizes = {}
        for camera in self.cameras:
            for i in np.unique(episode.frame_of_step[camera]):
                try:
                    height, width = decode_jpeg_rgb(episode.frames[camera][int(i)]).shape[:2]
                except ValueError as err:
                    return f"camera {camera!r} frame {i}: {err}", {}
                size = sizes.setdefault(camera, self.frame_size.get(camera, (height, width)))
                if (height, width) != size:
                    return f"camera {camera!r} frame {i} is {width}x{height}, the dataset's are {size[1]}x{size[0]}", {}
                if height % 2 or width % 2:
                    return f"camera {camera!r} frames are {width}x{height}: {PIX_FMT} video needs even sizes", {}
        return "", sizes

    def _encode(self, camera: str, episode: EpisodeIndex) -> _PixelStats:
        """Observation k's frame of `camera` for every step, into its video; the pixel statistics of those."""
        if camera not in self.videos:
            path = self.root / VIDEO_PATH.format(video_key=IMAGES + camera, chunk_index=0, file_index=0)
            self.videos[camera] = _VideoEncoder(path, self.fps, *self.frame_size[camera])
        stats = _PixelStats()
        decoded: dict[int, np.ndarray] = {}
        for k in range(episode.steps):
            i = int(episode.frame_of_step[camera][k])
            if i not in decoded:
                decoded = {i: decode_jpeg_rgb(episode.frames[camera][i])}  # frames come in order: keep the latest
            self.videos[camera].add(decoded[i])
            stats.add(decoded[i])
        return stats

    def finish(self) -> None:
        for video in self.videos.values():
            video.close()
        columns = {name: np.concatenate(parts) for name, parts in self.columns.items()}
        _write_parquet(self.root / DATA_PATH.format(chunk_index=0, file_index=0),
                       pa.table({name: _column(values) for name, values in columns.items()}))  # fmt: skip
        _write_parquet(self.root / EPISODES_PATH.format(chunk_index=0, file_index=0), _episodes_table(self.episodes))
        _write_parquet(self.root / TASKS_PATH, _tasks_table(self.tasks))
        stats = {name: _stats(values) for name, values in columns.items()}
        stats |= {IMAGES + camera: pixels.as_lists() for camera, pixels in self.image_stats.items()}
        _write_json(self.root / STATS_PATH, stats)
        _write_json(self.root / INFO_PATH, self._info(columns))
        repo_id = self.config.repo_id or f"sop_ros/{self.config.out.name}"
        card = _card(repo_id, len(self.episodes), self.frames, self.fps, list(self.tasks))
        (self.root / "README.md").write_text(card)

    def _info(self, columns: dict[str, np.ndarray]) -> dict:
        assert self.first is not None
        features: dict[str, dict] = {
            STATE: {"dtype": "float32", "shape": [len(self.first.joint_names)], "names": list(self.first.joint_names)},
            ACTION: {"dtype": "float32", "shape": [len(self.action_names)], "names": list(self.action_names)},
        }
        for camera in self.cameras:
            height, width = self.frame_size[camera]
            features[IMAGES + camera] = {
                "dtype": "video",
                "shape": [height, width, 3],
                "names": ["height", "width", "channels"],
                "info": {"video.height": height, "video.width": width, "video.codec": CODEC, "video.pix_fmt": PIX_FMT,
                         "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3, "has_audio": False},
            }  # fmt: skip
        for name in (*INDEX_FEATURES, OPERATOR, TIME_NS):
            features[name] = {"dtype": str(columns[name].dtype), "shape": [1], "names": None}
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": None,  # the robot's model: not in the episode files
            "total_episodes": len(self.episodes),
            "total_frames": self.frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH,
            "features": features,
        }


def _step_rate(episode: EpisodeIndex) -> float:
    """Steps per second: the median of the episode's step periods (a late state now and then changes nothing)."""
    return 1e9 / float(np.median(np.diff(episode.step_ns)))


def _action_names(path: Path, width: int) -> tuple[str, ...]:
    """The names the robot gives its action's values (in its executed-command reports), else action_0, ..."""
    generic = tuple(f"action_{i}" for i in range(width))
    with open(path, "rb") as file:
        reader = make_reader(file, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        topics = [c.topic for c in summary.channels.values() if c.topic.endswith("/" + EXECUTED_COMMAND)]
        if not topics:
            return generic
        for _, _, _, decoded in reader.iter_decoded_messages(topics=topics):
            names = tuple(decoded.name)
            return names if len(names) == width and all(names) else generic
    return generic


def _stats(values: np.ndarray) -> dict[str, list]:
    """LeRobot's statistics of a per-frame column over its frames: one value per dimension (scalars: a list of
    one), count the frames. Quantiles exact, interpolated between frames (numpy's default)."""
    values = values.reshape(len(values), -1).astype(np.float64)
    return {
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "count": [len(values)],
        **{name: np.quantile(values, q, axis=0).tolist() for name, q in QUANTILES.items()},
    }


class _PixelStats:
    """Per-channel statistics of frames, pixels scaled to [0, 1] as LeRobot's are; mergeable across episodes.
    Quantiles from a count of each channel's 256 values: exact, each one a pixel value (no interpolation)."""

    def __init__(self) -> None:
        self.frames, self.pixels = 0, 0
        self.sum, self.sum_sq = np.zeros(3), np.zeros(3)
        self.min, self.max = np.full(3, np.inf), np.full(3, -np.inf)
        self.histogram = np.zeros((3, 256), dtype=np.int64)

    def add(self, rgb: np.ndarray) -> None:
        pixels = rgb.reshape(-1, 3)
        values = pixels.astype(np.float64) / 255.0
        self.frames += 1
        self.pixels += len(values)
        self.sum += values.sum(axis=0)
        self.sum_sq += (values**2).sum(axis=0)
        self.min, self.max = np.minimum(self.min, values.min(axis=0)), np.maximum(self.max, values.max(axis=0))
        for channel in range(3):
            self.histogram[channel] += np.bincount(pixels[:, channel], minlength=256)

    def merge(self, other: _PixelStats) -> None:
        self.frames, self.pixels = self.frames + other.frames, self.pixels + other.pixels
        self.sum, self.sum_sq = self.sum + other.sum, self.sum_sq + other.sum_sq
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.histogram += other.histogram

    def quantile(self, q: float) -> np.ndarray:
        """Per channel, the smallest pixel value (in [0, 1]) that at least a fraction q of the pixels do not
        exceed (numpy's "inverted_cdf" quantile)."""
        below = np.cumsum(self.histogram, axis=1)
        return np.array([np.searchsorted(row, q * self.pixels, side="left") for row in below]) / 255.0

    def as_lists(self) -> dict[str, list]:
        """Shaped (3, 1, 1) as LeRobot keeps image statistics; count the frames."""
        mean = self.sum / self.pixels
        std = np.sqrt(np.maximum(self.sum_sq / self.pixels - mean**2, 0.0))

        def per_channel(v: np.ndarray) -> list:
            return [[[float(c)]] for c in v]

        return {"min": per_channel(self.min), "max": per_channel(self.max), "mean": per_channel(mean),
                "std": per_channel(std), "count": [self.frames],
                **{name: per_channel(self.quantile(q)) for name, q in QUANTILES.items()}}  # fmt: skip


class _VideoEncoder:
    """One camera's frames into an mp4, frame i at i / fps."""

    def __init__(self, path: Path, fps: int, height: int, width: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w", format="mp4")
        self.stream = self.container.add_stream(CODEC, rate=fps, options=ENCODER_OPTIONS)
        self.stream.height, self.stream.width, self.stream.pix_fmt = height, width, PIX_FMT
        self.time_base = Fraction(1, fps)
        self.count = 0

    def add(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts, frame.time_base = self.count, self.time_base
        self.container.mux(self.stream.encode(frame))
        self.count += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))  # what the encoder still holds
        self.container.close()


def _column(values: np.ndarray) -> pa.Array:
    """A per-frame column: vectors as fixed-size lists (as LeRobot's writer stores them), scalars as they are."""
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.array(values)


def _episodes_table(rows: list[dict]) -> pa.Table:
    names = list(rows[0])
    types = {name: pa.binary() for name in names if name.startswith(f"{EXTRA}final_frame/")}
    types |= {name: pa.list_(pa.int64()) for name in names if name.endswith("/count")}
    return pa.table({name: pa.array([row[name] for row in rows], type=types.get(name)) for name in names})


def _tasks_table(tasks: dict[str, int]) -> pa.Table:
    """meta/tasks.parquet: task_index per task text, with the pandas metadata that makes the text the index (LeRobot
    looks tasks up by it with pandas)."""
    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()), "task": pa.array(list(tasks))})
    pandas = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],  # fmt: skip
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],  # fmt: skip
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas).encode()})


def _write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n")


def _card(repo_id: str, episodes: int, frames: int, fps: int, tasks: list[str]) -> str:
    return (
        "---\ntags:\n- LeRobot\n- sop_ros\nconfigs:\n- config_name: default\n  data_files: data/*/*.parquet\n---\n"
        f"# {repo_id}\n\nA LeRobot dataset (codebase v3.0) exported by sop_ros (`sop dataset export --format "
        f"lerobot`): {episodes} episodes, {frames} frames at {fps} fps.\n\nTasks: {', '.join(tasks)}.\n\n"
        "Besides LeRobot's columns, each frame says whether an operator was in control (`sop.operator`) and each "
        "episode its outcome, robot and recorded metadata (`sop/...` in meta/episodes).\n"
    )


# ---------------------------------------------------------------------------------------------------------
# Import: a dataset read back as plain episodes
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LeRobotEpisode:
    """One episode of a dataset, shaped as the project's episode files hold it: states 0..N, actions 0..N-1."""

    episode_id: str
    robot_id: str
    task: str
    instruction: str
    metadata: dict[str, str]  # the episode file's metadata (outcome, ...): recorded, or what a dataset implies
    joint_names: tuple[str, ...]
    action_names: tuple[str, ...]
    step_ns: np.ndarray  # (N + 1,) int64: the time of each state
    proprio: np.ndarray  # (N + 1, joints) float32
    actions: np.ndarray  # (N, action values) float32
    operator: np.ndarray  # (N,) bool
    frames: dict[str, list[np.ndarray]]  # camera -> N + 1 RGB frames, state k's at k

    @property
    def outcome(self) -> str:
        return self.metadata.get("outcome", Outcome.UNKNOWN.value)


class LeRobotReader:
    """A LeRobot v3.0 dataset, checked when opened (info, tasks, episodes, each episode's rows and video frames
    counted); iterating decodes one episode at a time. LeRobotFormatError names the file and what is wrong."""

    def __init__(self, root: Path | str) -> None:
        self.root = root = Path(root)
        if not root.is_dir():
            raise LeRobotFormatError(f"{root}: no such dataset folder")
        self.info = info = _read_info(root)
        self.fps = int(info["fps"])
        features = info["features"]
        self.video_keys = [key for key, feature in features.items() if feature.get("dtype") == "video"]
        if not self.video_keys:
            raise LeRobotFormatError(f"{root / INFO_PATH}: no video feature: the learner needs camera frames")
        images = [key for key, feature in features.items() if feature.get("dtype") == "image"]
        if images:
            raise LeRobotFormatError(f"{root / INFO_PATH}: features {', '.join(images)} are images stored in the "
                                     "parquet files (dtype 'image'); only video features are read")  # fmt: skip
        self.cameras = _camera_names(root, self.video_keys)
        self.joint_names = _names(features[STATE], "joint")
        self.action_names = _names(features[ACTION], "action")
        self.tasks = _read_tasks(root)
        self.episodes = _read_episodes(root, self.video_keys)
        self._check_totals()
        self._check_rows()
        self._check_videos()

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[LeRobotEpisode]:
        tables: dict[Path, pa.Table] = {}
        videos: dict[Path, _VideoFrames] = {}
        try:
            for row in self.episodes:
                yield self._episode(row, tables, videos)
        finally:
            for video in videos.values():
                video.close()

    # -- checks ------------------------------------------------------------------------------------------------
    def _check_totals(self) -> None:
        for key, actual in (("total_episodes", len(self.episodes)),
                            ("total_frames", sum(int(row["length"]) for row in self.episodes))):  # fmt: skip
            if key in self.info and self.info[key] != actual:
                raise LeRobotFormatError(f"{self.root / INFO_PATH}: {key} is {self.info[key]}, but "
                                         f"{EPISODES_DIR} lists {actual}")  # fmt: skip

    def _check_rows(self) -> None:
        """Each episode's rows in its data file: as many as its length, frame_index 0..length-1 in order."""
        for path, rows in _group(self.episodes, self._data_path).items():
            if not path.is_file():
                raise LeRobotFormatError(f"{path}: missing (episode {rows[0]['episode_index']}'s data)")
            table = pq.read_table(path, columns=["episode_index", "frame_index"])
            episode_index = table["episode_index"].to_numpy()
            frame_index = table["frame_index"].to_numpy()
            for row in rows:
                frames = frame_index[episode_index == row["episode_index"]]
                if len(frames) != row["length"]:
                    raise LeRobotFormatError(
                        f"{self.root}: episode {row['episode_index']}: {EPISODES_DIR} says length {row['length']}, "
                        f"{path.relative_to(self.root)} has {len(frames)} rows of it"
                    )
                if not np.array_equal(np.sort(frames), np.arange(len(frames))):
                    raise LeRobotFormatError(f"{path}: episode {row['episode_index']}'s frame_index is not "
                                             f"0..{len(frames) - 1}")  # fmt: skip

    def _check_videos(self) -> None:
        """Each video file holds the frames its episodes' time spans need (as far as its header counts frames)."""
        for key in self.video_keys:
            for path, rows in _group(self.episodes, lambda row, key=key: self._video_path(row, key)).items():
                if not path.is_file():
                    raise LeRobotFormatError(f"{path}: missing (episode {rows[0]['episode_index']}'s {key} video)")
                try:
                    with av.open(str(path)) as container:
                        counted = container.streams.video[0].frames if container.streams.video else -1
                except av.FFmpegError as err:
                    raise LeRobotFormatError(f"{path}: not a readable video: {err}") from None
                if counted < 0:
                    raise LeRobotFormatError(f"{path}: no video stream")
                needed = max(_first_frame(row, key, self.fps) + int(row["length"]) for row in rows)
                if counted and counted < needed:
                    raise LeRobotFormatError(f"{path}: {counted} frames, but its episodes need {needed} (to "
                                             f"{needed / self.fps:.3f} s at {self.fps} fps)")  # fmt: skip

    # -- one episode -----------------------------------------------------------------------------------------
    def _episode(self, row: dict, tables: dict[Path, pa.Table], videos: dict[Path, _VideoFrames]) -> LeRobotEpisode:
        index, n = int(row["episode_index"]), int(row["length"])
        where = f"{self.root}: episode {index}"
        path = self._data_path(row)
        if path not in tables:
            tables.clear()  # episodes come file by file: keep one data file in memory
            tables[path] = pq.read_table(path)
        table = tables[path]
        rows = table.filter(pc.equal(table["episode_index"], index)).sort_by("frame_index")
        state = _vectors(rows, STATE, len(self.joint_names), where)
        actions = _vectors(rows, ACTION, len(self.action_names), where)
        if OPERATOR in rows.column_names:
            operator = rows[OPERATOR].to_numpy(zero_copy_only=False).astype(bool)
        else:
            operator = np.ones(n, dtype=bool)  # a dataset from elsewhere: teleoperated demonstrations
        if TIME_NS in rows.column_names:
            step_ns = rows[TIME_NS].to_numpy().astype(np.int64)
        else:
            # Timestamps are frame numbers over the frame rate, stored as float32: counted back in frames first so
            # that their rounding (tens of ns) does not make steps uneven.
            frame = np.round(rows["timestamp"].to_numpy().astype(np.float64) * self.fps)
            step_ns = np.round(frame * 1e9 / self.fps).astype(np.int64)
        if np.any(np.diff(step_ns) <= 0):
            raise LeRobotFormatError(f"{where}: its frames' times do not increase")
        final_ns = row.get(EXTRA + "final_time_ns")
        step_ns = np.append(step_ns, final_ns if final_ns is not None else step_ns[-1] + round(1e9 / self.fps))
        final_state = row.get(EXTRA + "final_state")
        final = np.asarray(final_state if final_state is not None else state[-1], dtype=np.float32)
        if final.shape != (len(self.joint_names),):
            raise LeRobotFormatError(
                f"{where}: {EXTRA}final_state has {final.size} values, not {len(self.joint_names)}"
            )

        frames = {}
        for key, camera in zip(self.video_keys, self.cameras, strict=True):
            video_path = self._video_path(row, key)
            if video_path not in videos:
                videos[video_path] = _VideoFrames(video_path, self.fps)
            images = videos[video_path].take(_first_frame(row, key, self.fps), n, f"{where}, {key}")
            jpeg = row.get(f"{EXTRA}final_frame/{key}")
            try:
                images.append(decode_jpeg_rgb(jpeg) if jpeg else images[-1])
            except ValueError as err:
                raise LeRobotFormatError(f"{where}: {EXTRA}final_frame/{key}: {err}") from None
            frames[camera] = images

        task_text = self._task_text(row, rows, where)
        metadata = self._metadata(row, where)
        task = row.get(EXTRA + "task") or metadata.get("task") or task_text
        instruction = row.get(EXTRA + "instruction")
        instruction = task_text if instruction is None else instruction
        robot_id, episode_id = self.identity(row)
        metadata = {"episode_id": episode_id, "robot_id": robot_id, "task": task, "instruction": instruction,
                    "outcome": row.get(EXTRA + "outcome") or Outcome.SUCCESS.value, "outcome_source": "lerobot",
                    **metadata}  # fmt: skip
        return LeRobotEpisode(episode_id, robot_id, task, instruction, metadata, self.joint_names, self.action_names,
                              step_ns, np.vstack([state, final]), actions, operator, frames)  # fmt: skip

    def identity(self, row: dict) -> tuple[str, str]:
        """(robot id, episode id) of an episode's row: as recorded, else made from the dataset's names."""
        metadata = self._metadata(row, f"{self.root}: episode {row['episode_index']}")
        robot_id = row.get(EXTRA + "robot_id") or metadata.get("robot_id") or _robot_id(self.info)
        episode_id = row.get(EXTRA + "episode_id") or metadata.get("episode_id")
        return robot_id, episode_id or _episode_id(self.root, int(row["episode_index"]))

    def _task_text(self, row: dict, rows: pa.Table, where: str) -> str:
        if row.get("tasks"):
            return str(row["tasks"][0])
        task_index = int(rows["task_index"][0].as_py())
        if task_index not in self.tasks:
            raise LeRobotFormatError(f"{where}: task_index {task_index} is not in {TASKS_PATH}")
        return self.tasks[task_index]

    def _metadata(self, row: dict, where: str) -> dict[str, str]:
        text = row.get(EXTRA + "metadata")
        if not text:
            return {}
        try:
            metadata = json.loads(text)
        except json.JSONDecodeError as err:
            raise LeRobotFormatError(f"{where}: {EXTRA}metadata is not JSON: {err}") from None
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise LeRobotFormatError(f"{where}: {EXTRA}metadata must map names to strings")
        return metadata

    def _data_path(self, row: dict) -> Path:
        return self.root / self.info["data_path"].format(chunk_index=int(row["data/chunk_index"]),
                                                         file_index=int(row["data/file_index"]))  # fmt: skip

    def _video_path(self, row: dict, key: str) -> Path:
        return self.root / self.info["video_path"].format(video_key=key,
                                                          chunk_index=int(row[f"videos/{key}/chunk_index"]),
                                                          file_index=int(row[f"videos/{key}/file_index"]))  # fmt: skip


def _read_info(root: Path) -> dict:
    path = root / INFO_PATH
    if not path.is_file():
        raise LeRobotFormatError(f"{root}: no {INFO_PATH}: not a LeRobot dataset (v3.0 has {INFO_PATH}, "
                                 f"{TASKS_PATH}, {EPISODES_DIR}/, data/ and videos/)")  # fmt: skip
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LeRobotFormatError(f"{path}: not JSON: {err}") from None
    if not isinstance(info, dict):
        raise LeRobotFormatError(f"{path}: not a JSON object")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        raise LeRobotFormatError(f"{path}: codebase_version {version!r}; only {CODEBASE_VERSION!r} datasets are read "
                                 f"(convert an older one with LeRobot's v2.1 -> v3.0 converter first)")  # fmt: skip
    fps = info.get("fps")
    if not isinstance(fps, int | float) or isinstance(fps, bool) or fps <= 0 or fps != int(fps):
        raise LeRobotFormatError(f"{path}: fps {fps!r}: must be a whole number of frames per second > 0")
    for key in ("data_path", "video_path"):
        if not isinstance(info.get(key), str):
            raise LeRobotFormatError(f"{path}: no {key} template")
    features = info.get("features")
    if not isinstance(features, dict):
        raise LeRobotFormatError(f"{path}: no features")
    for key in (STATE, ACTION):
        feature = features.get(key)
        if not isinstance(feature, dict):
            raise LeRobotFormatError(f"{path}: no {key!r} feature: the learner needs joint states and actions")
        shape = feature.get("shape")
        if feature.get("dtype") not in ("float32", "float64") or not isinstance(shape, list) or len(shape) != 1:
            raise LeRobotFormatError(f"{path}: feature {key!r} is {feature.get('dtype')} {shape}; a 1-D float "
                                     "vector is read")  # fmt: skip
    return info


def _read_tasks(root: Path) -> dict[int, str]:
    path = root / TASKS_PATH
    if not path.is_file():
        raise LeRobotFormatError(f"{root}: {TASKS_PATH} is missing")
    table = pq.read_table(path)
    text = "task" if "task" in table.column_names else "__index_level_0__"  # pandas' name for an unnamed index
    if "task_index" not in table.column_names or text not in table.column_names:
        raise LeRobotFormatError(f"{path}: needs the columns task_index and task, has {table.column_names}")
    return dict(zip(table["task_index"].to_pylist(), table[text].to_pylist(), strict=True))


def _read_episodes(root: Path, video_keys: list[str]) -> list[dict]:
    paths = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not paths:
        raise LeRobotFormatError(f"{root}: {EPISODES_DIR}/chunk-*/file-*.parquet is missing")
    required = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    required += [f"videos/{key}/{name}" for key in video_keys
                 for name in ("chunk_index", "file_index", "from_timestamp")]  # fmt: skip
    rows = []
    for path in paths:
        names = pq.read_schema(path).names
        missing = [name for name in required if name not in names]
        if missing:
            raise LeRobotFormatError(f"{path}: no column {', '.join(missing)}")
        # The statistics are not needed to read the episodes back.
        rows += pq.read_table(path, columns=[n for n in names if not n.startswith("stats/")]).to_pylist()
    rows.sort(key=lambda row: row["episode_index"])
    indices = [row["episode_index"] for row in rows]
    if len(set(indices)) != len(indices):
        raise LeRobotFormatError(f"{root}: {EPISODES_DIR} lists an episode_index more than once")
    for row in rows:
        if not isinstance(row["length"], int) or row["length"] < 1:
            raise LeRobotFormatError(f"{root}: episode {row['episode_index']}: length {row['length']!r} is not >= 1")
    return rows


def _group(rows: list[dict], key: Callable[[dict], Path]) -> dict[Path, list[dict]]:
    groups: dict[Path, list[dict]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _first_frame(row: dict, key: str, fps: int) -> int:
    """The number (time x fps) of an episode's first frame in its video file."""
    return round(float(row[f"videos/{key}/from_timestamp"]) * fps)


def _camera_names(root: Path, video_keys: list[str]) -> tuple[str, ...]:
    """Camera names for topic names (cameras/<name>/...): the key after observation.images., other characters
    than letters, digits and '_' made '_'."""
    names = tuple(re.sub(r"\W", "_", key.removeprefix(IMAGES).removeprefix("observation."), flags=re.ASCII)
                  for key in video_keys)  # fmt: skip
    if len(set(names)) != len(names):
        raise LeRobotFormatError(f"{root / INFO_PATH}: video keys {video_keys} give camera names {list(names)} "
                                 "that repeat")  # fmt: skip
    return names


def _names(feature: dict, kind: str) -> tuple[str, ...]:
    """A vector feature's value names: its `names` list (or a dict's one list), else <kind>_0, ..."""
    width, names = int(feature["shape"][0]), feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == width and all(isinstance(n, str) and n for n in names):
        return tuple(names)
    return tuple(f"{kind}_{i}" for i in range(width))


def _robot_id(info: dict) -> str:
    robot_type = info.get("robot_type")
    valid = isinstance(robot_type, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", robot_type) is not None
    return robot_type if valid else "lerobot"


def _episode_id(root: Path, index: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', root.name).strip('.') or 'lerobot'}-{index:06d}"


def _vectors(rows: pa.Table, name: str, width: int, where: str) -> np.ndarray:
    """A vector column as an (rows, width) float32 array."""
    if name not in rows.column_names:
        raise LeRobotFormatError(f"{where}: no {name!r} column in its data")
    column = rows[name].combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)
            or pa.types.is_large_list(column.type)):  # fmt: skip
        raise LeRobotFormatError(f"{where}: column {name!r} is {column.type}, not a list of numbers")
    values = column.flatten().to_numpy(zero_copy_only=False)
    if column.null_count or len(values) != len(column) * width:
        raise LeRobotFormatError(f"{where}: column {name!r} does not hold {width} values in every row")
    with np.errstate(over="ignore"):
        vectors = values.astype(np.float32).reshape(len(column), width)
    if not np.all(np.isfinite(vectors)):
        raise LeRobotFormatError(f"{where}: column {name!r} has a value that is not finite")
    return vectors


class _VideoFrames:
    """A video's frames by number (time x fps), decoded forward as episodes ask for them; asking for an earlier
    frame than the last decoded opens the file again."""

    def __init__(self, path: Path, fps: int) -> None:
        self.path, self.fps = path, fps
        self._open()

    def _open(self) -> None:
        self.container = av.open(str(self.path))
        self.decoded = (frame for frame in self.container.decode(self.container.streams.video[0]))
        self.held = None  # a frame read past the last request, for the next
        self.position = 0  # the frame number the next request may start at without opening again

    def take(self, first: int, count: int, where: str) -> list[np.ndarray]:
        if first < self.position:
            self.close()
            self._open()
        images: list[np.ndarray] = []
        while len(images) < count:
            frame = self.held or next(self.decoded, None)
            self.held = None
            if frame is None:
                break
            if frame.time is None:
                raise LeRobotFormatError(f"{self.path}: a frame without a time")
            number = round(frame.time * self.fps)
            if number < first:
                continue
            if number >= first + count:
                self.held = frame
                break
            if number != first + len(images):
                missing = (first + len(images)) / self.fps
                raise LeRobotFormatError(f"{where}: {self.path.name} has no frame at {missing:.3f} s")
            images.append(frame.to_ndarray(format="rgb24"))
        if len(images) != count:
            raise LeRobotFormatError(f"{where}: {count} frames from {first / self.fps:.3f} s in {self.path}, the video "
                                     f"has {len(images)}")  # fmt: skip
        self.position = first + count
        return images

    def close(self) -> None:
        self.container.close()

