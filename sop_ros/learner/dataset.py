"""Recorded episodes as training samples: index episode files, align observations with actions, sample batches.

Numpy only (no torch, no ROS): the learner's data loader, evaluation code and tools all read episodes through
here. An episode file is one MCAP file in the episode format (sop_ros/episodes), read by its reader. Camera
frames stay JPEG (in memory, or spilled to disk by a learner) and are decoded when a sample needs them, once if
a frame cache (frames.py) keeps them.

Alignment, for an episode with joint states 0..N (N = steps) at times t_0 < ... < t_N:

    observation k  joint state k (t_k) and, per camera, the latest frame with time <= t_k (before the first
                   frame: the first frame). Observation N, the final state, has no action: steps are 0..N-1.
    action k       the command executed after observation k. A robot that reports what it ran (the simulator:
                   EXECUTED_COMMAND, stamped t_k) says it exactly, and that is taken when every step has its
                   report. Otherwise, from the headerless commands: the first logged in [t_k, t_{k+1}) (the
                   last step: >= t_k). With none there (a dropped message), the previous action is repeated
                   (zeros at k = 0) and counted in the episode's `filled_actions`.
    late commands  a command's log time is when the recorder received it, on its own copy of the sim clock. A
                   recorder that falls behind logs commands late: by a period for a while, or (seen) by 9 in a
                   stall and its backlog, leaving windows empty and later ones crowded; one whose clock update
                   comes late logs a command a period early, now and then. So action k may also be a command
                   logged one window before to `command_delay_steps` windows after: commands are matched to
                   steps in order, using every command there is, with the recorder's delay changing as little
                   as possible (the costs are in align_commands); the final state takes its own answer when one
                   was logged. command_delay_steps 0 gives the plain window rule. Replayed in the simulator,
                   the matched commands reproduce the recorded joint states at 99.1% of 3835 steps (72
                   episodes, many recorded on a loaded host; the plain rule: 89%). The rest: a hold the
                   simulator ran of its own accord, unseen by the recorder, at some episodes' first step; and
                   two episodes whose file starts with the previous episode's last command (logged late) and a
                   delay, which the times alone do not tell apart from a command too many and no delay.
    operator k     whether the operator was in control when action k's command was logged (a filled or a
                   reported action: at t_k), from the intervention states: each says which controller has been
                   in control since its `since` time; a change at time t counts from t on.
    chunk at k     actions k..k+H-1; past the episode's end its last action is repeated, and the mask says
                   which actions are real (True).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sop_ros.configs import require
from sop_ros.configs.model import ModelConfig
from sop_ros.episodes.format import JOINT_STATES, ROBOT_COMMAND, Controller, Outcome
from sop_ros.episodes.reader import (
    RecordedStreams,
    common_recorded_cameras,
    episode_files,
    read_streams,
    recorded_cameras,
)
from sop_ros.learner.frames import DecodedFrames
from sop_ros.model.preprocess import to_unit_range

OUTCOMES = tuple(outcome.value for outcome in Outcome)  # plain strings: configs are written as YAML
STD_FLOOR = 1e-3  # normalisation: a joint or action that never moves must not divide by ~0


@dataclass(frozen=True)
class DatasetConfig:
    """What a sample holds and which episodes are kept."""

    # The model's input order; every episode must have them all (empty: those most episodes were recorded with).
    cameras: tuple[str, ...] = ()
    image_size: int = ModelConfig.image_size  # square model input, pixels
    chunk: int = 16  # action horizon H: actions per sample
    outcomes: tuple[str, ...] = OUTCOMES  # episodes kept; demos for pretraining use ("success",)
    command_delay_steps: int = 10  # control periods a command may be logged late (0: the plain window rule)
    # Keep at most this many episodes per task, the first by episode id (0: all); e.g. pretraining-scale runs.
    episodes_per_task: int = 0
    tasks: tuple[str, ...] = ()  # keep only these tasks' episodes (empty: every task found)

    def __post_init__(self) -> None:
        # Lists (from code rather than YAML) are accepted: a frozen config must hold tuples to stay hashable.
        object.__setattr__(self, "cameras", tuple(self.cameras))
        # Outcome members become their plain names: a config is written as YAML.
        object.__setattr__(self, "outcomes", tuple(str(o) if isinstance(o, str) else o for o in self.outcomes))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        for i, camera in enumerate(self.cameras):
            ok = isinstance(camera, str) and bool(camera) and "/" not in camera
            require(ok, f"cameras[{i}]", camera, "must be a camera name (as in cameras/<name>/image_raw)")
        require(len(set(self.cameras)) == len(self.cameras), "cameras", self.cameras, "must not repeat")
        require(_is_int(self.image_size) and self.image_size >= 1, "image_size", self.image_size, "must be >= 1")
        require(_is_int(self.chunk) and self.chunk >= 1, "chunk", self.chunk, "must be >= 1")
        require(bool(self.outcomes), "outcomes", self.outcomes, f"must list at least one of {', '.join(OUTCOMES)}")
        for i, outcome in enumerate(self.outcomes):
            require(outcome in OUTCOMES, f"outcomes[{i}]", outcome, f"must be one of {', '.join(OUTCOMES)}")
        require(len(set(self.outcomes)) == len(self.outcomes), "outcomes", self.outcomes, "must not repeat")
        delay = self.command_delay_steps
        require(_is_int(delay) and delay >= 0, "command_delay_steps", delay, "must be an integer >= 0")
        per_task = self.episodes_per_task
        require(_is_int(per_task) and per_task >= 0, "episodes_per_task", per_task, "must be an integer >= 0 (0: all)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------------
# Commands to steps
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alignment:
    command: np.ndarray  # (steps,) int64: the command taken as action k, -1 where the action is filled
    filled: int  # steps with no command: the previous action repeated
    shifted: int  # steps whose command was logged in another step's window (late, or a period early)
    unused: int  # commands logged during the episode that are no step's action nor the final state's answer


def align_commands(state_ns: np.ndarray, command_ns: np.ndarray, delay_steps: int) -> Alignment:
    """Match commands (log times, sorted) to the steps between joint states (times, increasing); see the module.

    delay_steps 0: the plain window rule. Otherwise each command is taken by one step, from one window before
    its own to `delay_steps` windows after, or by the final state, or left; in order, at the least cost
    (Viterbi over the states (next free command, delay of the last matched step)).
    """
    steps = len(state_ns) - 1
    if steps < 1:
        return Alignment(np.zeros(0, dtype=np.int64), 0, 0, 0)
    window = np.searchsorted(state_ns, command_ns, side="right") - 1  # -1: before the episode; steps: after it
    if delay_steps == 0:
        return _first_in_window(window, steps)
    # Costs. The recorder's delay persists (a stall, a backlog): 1 per window it changes between steps; a
    # command logged early (the recorder's clock behind) is a moment's exception: 3 more per step. Filling a
    # step or leaving a command costs more than any delay (delay + 1 each), so every command is used. An
    # episode starts on time: a first delay costs like fills. The final state's answer is sometimes not in the
    # file (logged into the next episode's): its absence costs 2 less than a step's fill, so a delay that
    # starts late in an episode and runs to its end is taken for one rather than for a lost command.
    fill = skip = delay_steps + 1
    end_fill, early = delay_steps - 1, 3
    begin, count = int(np.searchsorted(window, 0)), len(window)  # commands before `begin` precede the episode
    first = np.searchsorted(window, np.arange(steps + 1) - 1, side="left")  # those before: too early for step k
    last = np.searchsorted(window, np.arange(steps + 1) + delay_steps, side="right") - 1  # the last step k takes
    start = (begin, None)  # a state: (next free command, delay of the last matched step; None before any)
    layers: list[dict[tuple[int, int | None], _Reached]] = []
    layer = {start: _Reached(0, start, -1)}
    for k in range(steps + 1):  # step `steps` stands for the final state
        reached: dict[tuple[int, int | None], _Reached] = {}
        for (j, delay), path in layer.items():
            free = max(j, int(first[k]))
            cost = path.cost + skip * (free - j)  # commands logged too early for step k can no longer be taken
            for i in range(int(last[k]), free - 1, -1):  # later commands first: they win ties
                lateness = int(window[i]) - k
                change = fill * abs(lateness) if delay is None else abs(lateness - delay)
                cost_i = cost + skip * (i - free) + change + early * (lateness < 0)
                _reach(reached, (i + 1, lateness), _Reached(cost_i, (j, delay), i))
            _reach(reached, (free, delay), _Reached(cost + (fill if k < steps else end_fill), (j, delay), -1))
        layer = _undominated(reached)
        layers.append(layer)

    state = min(layer, key=lambda s: layer[s].cost + skip * (count - s[0]))
    taken = np.empty(steps + 1, dtype=np.int64)
    for k in range(steps, -1, -1):
        taken[k], state = layers[k][state].taken, layers[k][state].previous
    command = taken[:steps]
    used = command[command >= 0]
    shifted = int(np.sum(window[used] != np.flatnonzero(command >= 0)))
    unused = (count - begin) - len(used) - int(taken[steps] >= 0)
    return Alignment(command, int(np.sum(command < 0)), shifted, unused)


class _Reached(NamedTuple):
    cost: int  # of the cheapest way to the state
    previous: tuple[int, int | None]  # the state it came from
    taken: int  # the command the step took, -1: filled


def _reach(reached: dict[tuple[int, int | None], _Reached], state: tuple[int, int | None], path: _Reached) -> None:
    if state not in reached or path.cost < reached[state].cost:  # on a tie the first stays
        reached[state] = path


def _undominated(reached: dict[tuple[int, int | None], _Reached]) -> dict[tuple[int, int | None], _Reached]:
    """Drop a state that another with the same free commands beats whatever comes: a delay d' reached at a
    cost c' does as well as delay d at c if c' + |d' - d| <= c (a later change costs |d' - d| more at most)."""
    best: dict[int, list[tuple[int, int]]] = {}  # free command -> (delay, cost) of the states kept so far
    for (j, delay), path in sorted(reached.items(), key=lambda item: item[1].cost):
        if delay is not None:
            kept = best.setdefault(j, [])
            if any(cost + abs(other - delay) <= path.cost for other, cost in kept):
                del reached[(j, delay)]
            else:
                kept.append((delay, path.cost))
    return reached


def _first_in_window(window: np.ndarray, steps: int) -> Alignment:
    """The plain window rule: action k is the first command in [t_k, t_{k+1}) (the last step: >= t_k)."""
    clipped = np.minimum(window, steps - 1)  # logged after the final state: in the last step's window
    has = np.isin(np.arange(steps), clipped)
    command = np.where(has, np.searchsorted(clipped, np.arange(steps), side="left"), -1).astype(np.int64)
    during = int(np.sum((window >= 0) & (window < steps)))  # those logged after the final state answer it
    unused = during - int(np.sum(window[command[has]] < steps))
    return Alignment(command, int(np.sum(~has)), 0, unused)


def controller_at(times_ns: np.ndarray, since_ns: np.ndarray, controller: np.ndarray, at_ns: np.ndarray) -> np.ndarray:
    """The controller in effect at each of `at_ns`, from intervention states (in effect since `since_ns`).

    `times_ns` (the states' stamps) orders states that report the same `since`; before the first change the
    first state's controller is assumed. Returns an int array like `at_ns`; empty input gives -1 (unknown).
    """
    if len(controller) == 0:
        return np.full(len(at_ns), -1, dtype=np.int64)
    order = np.lexsort((np.arange(len(times_ns)), times_ns, since_ns))  # by since, then stamp, then file order
    since_sorted, controller_sorted = since_ns[order], controller[order]
    index = np.searchsorted(since_sorted, at_ns, side="right") - 1
    return controller_sorted[np.maximum(index, 0)].astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# One episode
# ---------------------------------------------------------------------------------------------------------


@dataclass
class EpisodeIndex:
    """Everything sampling needs from one episode file, with the frames still JPEG."""

    episode_id: str
    task: str
    instruction: str
    outcome: str  # one of OUTCOMES
    path: Path
    robot_id: str
    joint_names: tuple[str, ...]
    step_ns: np.ndarray  # (steps + 1,) int64: t_k, the time of joint state k
    proprio: np.ndarray  # (steps + 1, joints) float32: joint positions at observation k
    actions: np.ndarray  # (steps, action_dim) float32: action k, executed after observation k
    operator: np.ndarray  # (steps,) bool: the operator was in control when action k's command was logged
    frame_ns: dict[str, np.ndarray]  # camera -> (frames,) int64 frame times
    frames: dict[str, Sequence[bytes]]  # camera -> JPEG bytes of each frame (a list, or a learner's JpegSpill)
    frame_of_step: dict[str, np.ndarray]  # camera -> (steps + 1,) index of observation k's frame
    filled_actions: int = 0  # steps no command was matched to: the previous action repeated (zeros at 0)
    shifted_commands: int = 0  # actions whose command the recorder logged in another step's window
    unused_commands: int = 0  # commands no step took (an arbiter's hold beside the first answer, duplicates)
    metadata: dict[str, str] = field(default_factory=dict)  # the file's "episode" metadata as recorded

    @property
    def steps(self) -> int:
        return len(self.actions)


def index_episode(path: Path | str, config: DatasetConfig) -> EpisodeIndex:
    """Read one finished episode file; ValueError naming the file and what is wrong if it cannot be used."""
    path = Path(path)
    if not config.cameras:
        config = replace(config, cameras=recorded_cameras(path))
    return _build(path, read_streams(path, config.cameras), config)


def _build(path: Path, recorded: RecordedStreams, config: DatasetConfig) -> EpisodeIndex:
    """Align what was read into observations and actions (the rules are in the module docstring)."""
    metadata, topics = recorded.metadata, recorded.topics
    if not recorded.states:
        raise ValueError(f"{path}: no joint states on {topics[JOINT_STATES]}")
    step_ns = np.array([time for time, _, _ in recorded.states], dtype=np.int64)
    joint_names, proprio = _proprio(path, recorded.states)
    if len(step_ns) < 2:
        raise ValueError(f"{path}: only one joint state on {topics[JOINT_STATES]}: no step to learn from")
    repeated = np.flatnonzero(np.diff(step_ns) <= 0)
    if repeated.size:
        k = int(repeated[0])
        raise ValueError(f"{path}: joint states {k} and {k + 1} have the same time, {step_ns[k]} ns")
    empty = [camera for camera, items in recorded.frames.items() if not items]
    if not recorded.commands or empty:
        what = f"no frames of camera {', '.join(map(repr, empty))}" if empty else "no executed commands"
        raise ValueError(f"{path}: {what}")
    command_ns = np.array([time for time, _ in recorded.commands], dtype=np.int64)
    lengths = sorted({len(values) for _, values in recorded.commands})
    if len(lengths) > 1 or lengths == [0]:
        raise ValueError(f"{path}: commands on {topics[ROBOT_COMMAND]} have lengths {lengths}: need one length > 0")
    commands = np.array([values for _, values in recorded.commands], dtype=np.float32)
    if not np.all(np.isfinite(commands)):
        raise ValueError(f"{path}: a command on {topics[ROBOT_COMMAND]} is not finite (NaN or infinite)")

    executed = executed_actions(recorded.executed, step_ns, commands.shape[1])
    if executed is not None:  # reported: nothing to match, so none filled, shifted or left over
        actions, acted_ns, (filled, shifted, unused) = executed, step_ns[:-1], (0, 0, 0)
    else:
        alignment = align_commands(step_ns, command_ns, config.command_delay_steps)
        if alignment.filled == len(alignment.command):
            raise ValueError(f"{path}: none of the {len(commands)} commands on {topics[ROBOT_COMMAND]} fits a step")
        actions = np.zeros((len(step_ns) - 1, commands.shape[1]), dtype=np.float32)
        for k, i in enumerate(alignment.command):
            if i >= 0:
                actions[k] = commands[i]
            elif k > 0:
                actions[k] = actions[k - 1]
        acted_ns = np.where(alignment.command >= 0, command_ns[np.maximum(alignment.command, 0)], step_ns[:-1])
        filled, shifted, unused = alignment.filled, alignment.shifted, alignment.unused
    columns = np.array(recorded.interventions, dtype=np.int64).reshape(-1, 3).T
    operator_flags = controller_at(columns[0], columns[1], columns[2], acted_ns) == Controller.OPERATOR

    frame_ns, frames, frame_of_step = {}, {}, {}
    for camera, items in recorded.frames.items():
        frame_ns[camera] = np.array([time for time, _ in items], dtype=np.int64)
        frames[camera] = [jpeg for _, jpeg in items]
        frame_of_step[camera] = np.maximum(np.searchsorted(frame_ns[camera], step_ns, side="right") - 1, 0)

    return EpisodeIndex(
        episode_id=metadata.get("episode_id") or path.stem,
        task=metadata["task"],
        instruction=metadata.get("instruction", ""),
        outcome=Outcome.of(metadata.get("outcome", "")).value,
        path=path,
        robot_id=metadata.get("robot_id", ""),
        joint_names=joint_names,
        step_ns=step_ns,
        proprio=proprio,
        actions=actions,
        operator=operator_flags,
        frame_ns=frame_ns,
        frames=frames,
        frame_of_step=frame_of_step,
        filled_actions=filled,
        shifted_commands=shifted,
        unused_commands=unused,
        metadata=metadata,
    )


def executed_actions(executed: list[tuple[int, list[float]]], step_ns: np.ndarray, width: int) -> np.ndarray | None:
    """Each step's action as the robot reported running it from that step's state (stamped with its time); None
    unless every step has its report, of the commands' width and finite: then the commands are aligned instead."""
    by_stamp = {stamp: values for stamp, values in executed}
    if not all(int(t) in by_stamp for t in step_ns[:-1]):
        return None
    actions = np.array([by_stamp[int(t)] for t in step_ns[:-1]], dtype=np.float32)
    if actions.shape != (len(step_ns) - 1, width) or not np.all(np.isfinite(actions)):
        return None
    return actions


def _proprio(path: Path, states: list[tuple[int, tuple[str, ...], list[float]]]) -> tuple[tuple[str, ...], np.ndarray]:
    names = states[0][1]
    for k, (_, other, position) in enumerate(states):
        if other != names or len(position) != len(names):
            raise ValueError(
                f"{path}: joint state {k} has joints {list(other)} with {len(position)} positions; "
                f"joint state 0 has {list(names)}"
            )
    with np.errstate(over="ignore"):  # a position beyond float32's range becomes inf, refused just below
        proprio = np.array([position for _, _, position in states], dtype=np.float32).reshape(len(states), len(names))
    if not np.all(np.isfinite(proprio)):
        raise ValueError(f"{path}: a joint position is not finite (NaN or infinite)")
    return names, proprio


# ---------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------


class EpisodeDataset:
    """Indexed episodes of the configured outcomes; task-balanced samples of (observation, action chunk).

    `source` is a directory (searched recursively, see `episode_files`) or a list of files. Files that cannot
    be used are skipped, each listed in `skipped` with the reason and named in the summary logged at the end.
    `select` says which steps of an episode may be sampled (a bool mask over its steps, e.g. only where an
    operator drove, for HG-DAgger); None: every step. A task none of whose steps are selected is not sampled.
    `cache` (path -> index, filled as files are indexed) lets a dataset that grows, as the learner's online data
    does, be built again without reading the files it has read before; `frames`, a decoded-frame cache of the
    config's image size, lets it (and other datasets sharing it) decode each frame once.
    """

    def __init__(
        self,
        source: Path | str | Sequence[Path | str],
        config: DatasetConfig | None = None,
        log: Callable[[str], None] = print,
        select: Callable[[EpisodeIndex], np.ndarray] | None = None,
        cache: dict[Path, EpisodeIndex] | None = None,
        frames: DecodedFrames | None = None,
    ) -> None:
        self.config = config = config or DatasetConfig()
        if frames is not None and frames.size != config.image_size:
            raise ValueError(f"the frame cache holds {frames.size} px frames, the dataset's are {config.image_size} px")
        self.frames = frames if frames is not None else DecodedFrames(config.image_size, budget_mb=0)
        if isinstance(source, (str, Path)):
            root = Path(source)
            if not root.exists():
                raise FileNotFoundError(f"no such episode directory or file: {root}")
            paths = episode_files(root) if root.is_dir() else [root]
            where = str(root)
        else:
            paths, where = [Path(p) for p in source], f"{len(source)} files"
        if not config.cameras:  # one camera order for every sample
            self.config = config = replace(config, cameras=common_recorded_cameras(paths))
        self.episodes: list[EpisodeIndex] = []
        self.skipped: list[tuple[Path, str]] = []
        left_out: Counter[str] = Counter()
        seen: dict[str, Path] = {}
        for path in paths:
            try:
                episode = cache[path] if cache is not None and path in cache else index_episode(path, config)
            except ValueError as err:
                self.skipped.append((path, str(err).removeprefix(f"{path}: ")))
                continue
            if cache is not None:
                cache[path] = episode
            reason = self._refusal(episode, seen)
            if reason:
                self.skipped.append((path, reason))
            elif config.tasks and episode.task not in config.tasks:
                left_out["another task"] += 1
            elif episode.outcome not in config.outcomes:
                left_out[episode.outcome] += 1
            else:
                seen[episode.episode_id] = path
                self.episodes.append(episode)
        if config.episodes_per_task:
            self.episodes, dropped = _first_per_task(self.episodes, config.episodes_per_task)
            if dropped:
                left_out[f"beyond {config.episodes_per_task} per task"] = dropped
        # Each episode's steps that may be sampled, in order.
        self._selected: list[np.ndarray] = [
            np.arange(e.steps) if select is None else np.flatnonzero(_step_mask(select(e), e)) for e in self.episodes
        ]
        selected = zip(self.episodes, self._selected, strict=True)
        self.tasks: list[str] = sorted({e.task for e, steps in selected if len(steps)})
        self.instructions: dict[str, list[str]] = {
            task: sorted({e.instruction for e in self.episodes if e.task == task}) for task in self.tasks
        }
        self.num_steps: int = sum(e.steps for e in self.episodes)
        self.num_selected: int = sum(len(steps) for steps in self._selected)
        # Per task: its episodes and the cumulative selected-step counts, to draw a step uniformly over all of them.
        self._by_task: dict[str, np.ndarray] = {}  # task -> its episodes' indices
        self._ends: dict[str, np.ndarray] = {}  # task -> cumulative selected steps of those episodes
        for task in self.tasks:
            ids = np.array([i for i, e in enumerate(self.episodes) if e.task == task], dtype=np.int64)
            self._by_task[task] = ids
            self._ends[task] = np.cumsum([len(self._selected[i]) for i in ids])
        log(self._summary(where, left_out))

    def _refusal(self, episode: EpisodeIndex, seen: dict[str, Path]) -> str:
        """Why an indexed episode cannot join the others ("" if it can)."""
        if episode.episode_id in seen:
            return f"episode {episode.episode_id} again (first in {seen[episode.episode_id]})"
        if self.episodes:
            first = self.episodes[0]
            if episode.joint_names != first.joint_names:
                return f"joints {list(episode.joint_names)} differ from {list(first.joint_names)} of {first.path}"
            if episode.actions.shape[1] != first.actions.shape[1]:
                return f"{episode.actions.shape[1]} action values, not {first.actions.shape[1]} as in {first.path}"
        return ""

    def _summary(self, where: str, left_out: Counter[str]) -> str:
        per_task = ", ".join(
            f"{task} {len(ids)} ({int(self._ends[task][-1])} steps)" for task, ids in self._by_task.items()
        )
        filled = sum(e.filled_actions for e in self.episodes)
        shifted = sum(e.shifted_commands for e in self.episodes)
        line = f"dataset {where}: {len(self.episodes)} episodes, {self.num_steps} steps"
        line += f" ({self.num_selected} selected)" if self.num_selected != self.num_steps else ""
        line += f" [{per_task}]" if per_task else ""
        line += f"; {filled} actions filled, {shifted} commands logged in another step's window"
        if left_out:
            line += f"; left out: {', '.join(f'{n} {o}' for o, n in sorted(left_out.items()))}"
        if self.skipped:
            shown = "; ".join(f"{p.name}: {reason}" for p, reason in self.skipped[:3])
            more = f" (+{len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
            line += f"; skipped {len(self.skipped)} files: {shown}{more}"
        return line

    # -- samples --------------------------------------------------------------------------------------------
    def get(
        self, episode_index: int, step: int, images: np.ndarray | None = None
    ) -> dict[str, np.ndarray | str | int | bool]:
        """One sample: observation `step` of episode `episode_index` and the action chunk that follows it.

        Arrays are the sample's own (changing them changes no episode). `images`, if given, is a float32
        (cameras, 3, S, S) array to decode into (a batch's row: no copy), or a uint8 one for the pixels as
        decoded (the model's input is them / 255, `to_unit_range`).
        """
        if not 0 <= episode_index < len(self.episodes):
            raise IndexError(f"episode index {episode_index} out of range: {len(self.episodes)} episodes")
        episode = self.episodes[episode_index]
        if not 0 <= step < episode.steps:
            raise IndexError(f"step {step} out of range: episode {episode.episode_id} has steps 0..{episode.steps - 1}")
        size, horizon, cameras = self.config.image_size, self.config.chunk, self.config.cameras
        if images is None:
            images = np.empty((len(cameras), 3, size, size), dtype=np.float32)
        for c, camera in enumerate(cameras):
            frame = int(episode.frame_of_step[camera][step])
            pixels = self.frames.pixels((episode.path, camera, frame), episode.frames[camera][frame])
            images[c] = pixels if images.dtype == np.uint8 else to_unit_range(pixels)
        ahead = np.arange(step, step + horizon)
        return {
            "images": images,
            "proprio": episode.proprio[step].copy(),
            "actions": episode.actions[np.minimum(ahead, episode.steps - 1)],
            "action_mask": ahead < episode.steps,
            "operator": bool(episode.operator[step]),
            "task": episode.task,
            "instruction": episode.instruction,
            "episode_id": episode.episode_id,
            "step": step,
        }

    def sample(
        self, rng: np.random.Generator, batch_size: int, tasks: Sequence[str] | None = None, pixels: bool = False
    ) -> dict[str, np.ndarray | list[str]]:
        """A task-balanced batch, in random order: batch_size // M samples of each of the M tasks (all, or those
        named), the remainder one each to tasks the rng picks; within a task, a step drawn uniformly over all
        steps of its episodes. Fields as `get`'s with a batch dimension first; strings in lists; `pixels` as
        `collate`'s."""
        tasks = list(self.tasks if tasks is None else tasks)
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be >= 1")
        self._check_tasks(tasks)
        per_task = np.full(len(tasks), batch_size // len(tasks))
        per_task[rng.choice(len(tasks), batch_size % len(tasks), replace=False)] += 1
        picks = [pick for task, n in zip(tasks, per_task, strict=True) for pick in self.draw(rng, task, int(n))]
        return self.collate([picks[i] for i in rng.permutation(batch_size)], pixels)

    def frame_sources(self) -> Iterator[tuple[tuple[Path, str, int], bytes]]:
        """Every frame a sample of this dataset can show, as (frame cache key, JPEG bytes): what
        `DecodedFrames.fill` takes."""
        for episode, steps in zip(self.episodes, self._selected, strict=True):
            for camera in self.config.cameras:
                for frame in np.unique(episode.frame_of_step[camera][steps]).tolist():
                    yield (episode.path, camera, frame), episode.frames[camera][frame]

    def _check_tasks(self, tasks: Sequence[str]) -> None:
        unknown = [t for t in tasks if t not in self._by_task]
        if unknown or not tasks:
            have = ", ".join(self.tasks) or "no episodes"
            raise ValueError(f"cannot sample tasks {unknown or list(tasks)}: the dataset has {have}")

    def selected_steps(self, task: str) -> int:
        """How many steps of `task` a draw picks from (0 for a task it lacks)."""
        return int(self._ends[task][-1]) if task in self._ends else 0

    def draw(self, rng: np.random.Generator, task: str, n: int) -> list[tuple[int, int]]:
        """`n` (episode index, step) picks of `task`, each a selected step drawn uniformly over its episodes."""
        self._check_tasks([task])
        ends = self._ends[task]
        flat = rng.integers(0, ends[-1], size=n)  # a selected step of the task's episodes laid end to end
        which = np.searchsorted(ends, flat, side="right")
        starts = np.concatenate([[0], ends[:-1]])[which]
        episodes = self._by_task[task][which].tolist()
        return [(e, int(self._selected[e][k])) for e, k in zip(episodes, flat - starts, strict=True)]

    def collate(self, picks: Sequence[tuple[int, int]], pixels: bool = False) -> dict[str, np.ndarray | list[str]]:
        """The samples of `picks` (episode index, step) as one batch, in that order (images decoded here).
        `pixels`: images as uint8 pixels, a quarter of the bytes, for a GPU to scale (see `get`)."""
        size, cameras = self.config.image_size, len(self.config.cameras)
        images = np.empty((len(picks), cameras, 3, size, size), dtype=np.uint8 if pixels else np.float32)
        samples = [self.get(e, k, images=images[b]) for b, (e, k) in enumerate(picks)]
        return {
            "images": images,
            "proprio": np.stack([s["proprio"] for s in samples]),
            "actions": np.stack([s["actions"] for s in samples]),
            "action_mask": np.stack([s["action_mask"] for s in samples]),
            "operator": np.array([s["operator"] for s in samples], dtype=bool),
            "task": [s["task"] for s in samples],
            "instruction": [s["instruction"] for s in samples],
            "episode_id": [s["episode_id"] for s in samples],
            "step": np.array([s["step"] for s in samples], dtype=np.int64),
        }

    # -- normalisation ----------------------------------------------------------------------------------------
    def action_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (float32, std >= 1e-3) of the actions over all indexed steps."""
        return _stats([e.actions for e in self.episodes], "actions")

    def proprio_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (float32, std >= 1e-3) of the joint positions over all indexed steps' observations."""
        return _stats([e.proprio[:-1] for e in self.episodes], "joint positions")

    def __len__(self) -> int:
        return self.num_steps


def _step_mask(mask: np.ndarray, episode: EpisodeIndex) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (episode.steps,):
        raise ValueError(f"a step selection must be a bool mask of shape ({episode.steps},) for episode "
                         f"{episode.episode_id}, got {mask.dtype} {mask.shape}")  # fmt: skip
    return mask


def _first_per_task(episodes: list[EpisodeIndex], limit: int) -> tuple[list[EpisodeIndex], int]:
    """The first `limit` episodes of each task by episode id (robot, start time, counter), and how many were not."""
    kept: list[EpisodeIndex] = []
    per_task: Counter[str] = Counter()
    for episode in sorted(episodes, key=lambda e: e.episode_id):
        if per_task[episode.task] < limit:
            per_task[episode.task] += 1
            kept.append(episode)
    return kept, len(episodes) - len(kept)


def _stats(parts: list[np.ndarray], what: str) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        raise ValueError(f"no {what} to take statistics of: the dataset has no episodes")
    values = np.concatenate(parts).astype(np.float64)
    mean, std = values.mean(axis=0), values.std(axis=0)
    return mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32)
