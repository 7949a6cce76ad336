"""`sop dataset import --format lerobot`: a LeRobot v3.0 dataset as episode files, one MCAP file per episode as a
robot's recorder writes them, so that `sop pretrain --demos` and the learner train on it.

The dataset is read and checked by learner/lerobot.py (which says how its columns map to an episode); each episode
is written here through EpisodeFiles, the writer of episodes stepped in process: joint states at every state, the
camera frames (JPEG) at every state, each action reported as executed from its state, who was in control, and the
episode's metadata as recorded. `out` is a folder of episodes (<out>/<robot id>/<episode id>.mcap, as
`sop collect-demos` writes) or an episode store (it holds index.sqlite), whose index then takes the new files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sop_ros.cloud.episode_store import EpisodeStore
from sop_ros.episodes.format import Controller, Outcome
from sop_ros.fleet.episode_files import EpisodeFiles
from sop_ros.learner.lerobot import LeRobotEpisode, LeRobotReader

IMPORTED_DEVICE = "lerobot"  # the teleop device an imported operator step names (the dataset does not say)


@dataclass(frozen=True)
class ImportSummary:
    out: Path
    paths: list[Path]  # the episode files written
    store: bool  # `out` is an episode store, and indexes them


def import_lerobot(source: Path | str, out: Path | str, jpeg_quality: int = 90,
                   log: Callable[[str], None] = print) -> ImportSummary:  # fmt: skip
    """Write every episode of the dataset at `source` into `out`. Its meta files, each episode's rows and the
    videos' frame counts are checked before the first file is written (LeRobotFormatError naming what is wrong),
    and so is whether `out` already holds one of its episodes (FileExistsError: nothing is written over)."""
    reader = LeRobotReader(source)
    out = Path(out)
    store = (out / "index.sqlite").is_file()
    root = out / "episodes" if store else out
    there = [path for robot_id, episode_id in map(reader.identity, reader.episodes)
             if (path := root / robot_id / f"{episode_id}.mcap").exists()]  # fmt: skip
    if there:
        raise FileExistsError(f"{len(there)} of the dataset's episodes are already recorded in {root} (e.g. "
                              f"{there[0]}): an episode is never written over; import into another folder")  # fmt: skip
    files: dict[str, EpisodeFiles] = {}
    paths = []
    for episode in reader:
        if episode.robot_id not in files:
            files[episode.robot_id] = EpisodeFiles(root / episode.robot_id, episode.robot_id, reader.cameras,
                                                   jpeg_quality, device=IMPORTED_DEVICE)  # fmt: skip
        paths.append(write_episode(files[episode.robot_id], episode))
    if store:
        EpisodeStore(out).close()  # opening it indexes the files it lacks
    log(f"imported {len(paths)} episodes of {source} into {'the episode store ' if store else ''}{out}")
    return ImportSummary(out, paths, store)


def write_episode(files: EpisodeFiles, episode: LeRobotEpisode) -> Path:
    """One episode, in the order a recorder receives it: at each state its joint state and camera frames, then who
    answers it (when that changes) and the action executed from it."""
    steps = len(episode.actions)
    metadata = episode.metadata
    files.start(int(episode.step_ns[0]), episode.task, episode.instruction, metadata.get("policy_version", ""),
                episode_id=episode.episode_id)  # fmt: skip
    controller = Controller.POLICY  # what start() said
    velocities = np.zeros(0)
    for k, t_ns in enumerate(int(t) for t in episode.step_ns):
        files.state(t_ns, episode.joint_names, episode.proprio[k], velocities)
        files.frames(t_ns, {camera: frames[k] for camera, frames in episode.frames.items()})
        if k == steps:
            break
        now = Controller.OPERATOR if episode.operator[k] else Controller.POLICY
        if now != controller:  # in effect from this state on: the step's action is the new controller's
            files.control(t_ns, now)
            controller = now
        files.executed(t_ns, episode.action_names, episode.actions[k])
    return files.end(int(episode.step_ns[-1]), episode.outcome == Outcome.SUCCESS.value, steps, metadata)
