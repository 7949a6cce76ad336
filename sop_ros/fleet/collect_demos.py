"""`sop collect-demos`: scripted demonstrations recorded by a fleet of simulated robots (and the fleet runner).

Each robot runs the same nodes as on a real robot (simulator, teleop arbiter, scripted operator in demo
mode, recorder), as its own `sop robot` process group, one task at a time; R robots work through the tasks
in parallel. Progress is read from the recorder's output: an episode counts once its file is published.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from sop_ros.configs import ConfigError, load_config, to_dict
from sop_ros.configs.robot import RecorderConfig, RobotLaunchConfig, ScriptedOperatorConfig
from sop_ros.configs.tasks import MT50
from sop_ros.episodes.format import Outcome
from sop_ros.episodes.reader import episode_counts
from sop_ros.host import sop_command, start_logged, stop_process


@dataclass(frozen=True)
class WorkUnit:
    task: str
    episodes: int
    seed: int


def plan_units(tasks: list[str], episodes_per_task: int, robots: int, seed: int) -> list[WorkUnit]:
    """Split each task's episodes so that every robot has work; longest units first."""
    parts = max(1, robots // len(tasks))
    units = []
    for t, task in enumerate(tasks):
        sizes = [episodes_per_task // parts + (i < episodes_per_task % parts) for i in range(parts)]
        units += [WorkUnit(task, n, seed + 1000 * t + i) for i, n in enumerate(sizes) if n > 0]
    return sorted(units, key=lambda u: -u.episodes)


def unit_config(base: RobotLaunchConfig, robot_id: str, unit: WorkUnit, out: Path, **nodes) -> dict:
    """The base sim config with this robot's id, clock, task, seed and episode count, in lockstep, recording
    into `out`; `nodes` replaces node sections (None leaves one out)."""
    if base.nodes.sim_robot is None:
        raise ConfigError("nodes.sim_robot: a simulated fleet needs a simulated robot in its base config")
    sim = dataclasses.replace(base.nodes.sim_robot, task=unit.task, seed=unit.seed, episodes=unit.episodes,
                              step_mode="lockstep", wait_for_nodes=())  # fmt: skip
    recorder = dataclasses.replace(base.nodes.recorder or RecorderConfig(cameras=sim.cameras), output_dir=str(out))
    robot = dataclasses.replace(base.robot, id=robot_id, clock_topic=f"/{robot_id}/clock", use_sim_time=True)
    node_configs = dataclasses.replace(base.nodes, sim_robot=sim, recorder=recorder, **nodes)
    return to_dict(RobotLaunchConfig(robot=robot, nodes=node_configs))


def robot_config(base: RobotLaunchConfig, robot_id: str, unit: WorkUnit, out: Path) -> dict:
    """A demonstrating robot: the scripted operator in control of every episode. A fleet config's arbiter hands
    control back to the policy at each episode's end (`end_takeover_with_episode`); with no policy here, that
    would leave the lockstep simulator waiting for a command, so the operator keeps control."""
    operator = base.nodes.scripted_operator or ScriptedOperatorConfig()
    operator = dataclasses.replace(operator, task=unit.task, mode="demo")
    nodes = {"scripted_operator": operator}
    if base.nodes.teleop_arbiter is not None:
        nodes["teleop_arbiter"] = dataclasses.replace(base.nodes.teleop_arbiter, end_takeover_with_episode=False)
    return unit_config(base, robot_id, unit, out, **nodes)


@dataclass
class TaskTally:
    episodes: int = 0
    successes: int = 0
    steps: int = 0
    frames: int = 0
    bytes: int = 0


def tally(paths: list[Path]) -> dict[str, TaskTally]:
    tallies: dict[str, TaskTally] = {}
    for path in sorted(paths):
        metadata, counts = episode_counts(path)
        t = tallies.setdefault(metadata.get("task", "?"), TaskTally())
        t.episodes += 1
        t.successes += metadata.get("outcome") == Outcome.SUCCESS
        t.steps += int(metadata.get("steps") or 0)
        t.frames += sum(n for topic, n in counts.items() if "/cameras/" in topic)
        t.bytes += path.stat().st_size
    return tallies


def progress_line(done: int, total: int, successes: int, elapsed: float) -> str:
    width = 30
    filled = round(width * done / total) if total else width
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    eta_text = f"{eta:4.0f} s" if eta == eta else "   ? s"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} episodes, {successes} successes, "
        f"{rate * 60:5.1f} episodes/min, ETA {eta_text}"
    )


ConfigMaker = Callable[[RobotLaunchConfig, str, WorkUnit, Path], dict]


def check_request(tasks: list[str], episodes_per_task: int, robots: int) -> None:
    for task in tasks:
        if task not in MT50:
            raise ConfigError(f"--tasks: {task!r} is not a Meta-World task; known: {', '.join(MT50)}")
    if not tasks:
        raise ConfigError("--tasks: name at least one Meta-World task")
    if episodes_per_task < 1 or robots < 1:
        raise ConfigError("--episodes-per-task and --robots must be >= 1")


def collect(base_config: str, tasks: list[str], episodes_per_task: int, robots: int, out: Path, seed: int = 0) -> dict:
    check_request(tasks, episodes_per_task, robots)
    base = load_config(RobotLaunchConfig, base_config)
    units = plan_units(tasks, episodes_per_task, robots, seed)
    return run_fleet("collect-demos", base, units, robots, out, robot_config)


def run_fleet(title: str, base: RobotLaunchConfig, units: list[WorkUnit], robots: int, out: Path,
              make_config: ConfigMaker) -> dict:  # fmt: skip
    """Run the work units on `robots` simulated robots at a time, with progress; the summary of what they recorded."""
    out = out.resolve()
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    before = set(out.glob("*/*.mcap"))  # a dataset may grow over several runs; this run reports its own
    units = list(units)
    total = sum(u.episodes for u in units)
    tasks = list(dict.fromkeys(u.task for u in units))
    print(f"{title}: {total} episodes of {', '.join(tasks)} on {robots} simulated robots -> {out}")
    free = [f"robot_{i}" for i in range(robots)]
    running: dict[str, tuple[subprocess.Popen, WorkUnit, float]] = {}
    outcomes: dict[Path, str] = {}
    start, failed, last_print, robot_seconds = time.monotonic(), [], 0.0, 0.0
    interactive = sys.stdout.isatty()
    interrupt_on_signals()
    try:
        while units or running:
            while units and free:
                robot_id, unit = free.pop(0), units.pop(0)
                config = make_config(base, robot_id, unit, out)
                running[robot_id] = (_launch(config, robot_id, unit, out), unit, time.monotonic())
            for robot_id, (proc, unit, started) in list(running.items()):
                if proc.poll() is None and time.monotonic() - started > _time_bound(base, unit):
                    stop_process(proc, timeout_s=30.0)
                    failed.append(f"{robot_id} {unit.task}: no end after {_time_bound(base, unit):.0f} s, stopped")
                if proc.poll() is not None:
                    robot_seconds += time.monotonic() - started
                    del running[robot_id]
                    free.append(robot_id)
                    if proc.returncode != 0:
                        failed.append(f"{robot_id} {unit.task}: exit code {proc.returncode} (see {out}/logs)")
            now = time.monotonic()
            if now - last_print >= (0.5 if interactive else 10.0) or not (units or running):
                for path in set(out.glob("*/*.mcap")) - before - outcomes.keys():
                    outcomes[path] = episode_counts(path)[0].get("outcome", "")
                successes = sum(o == Outcome.SUCCESS for o in outcomes.values())
                line = progress_line(len(outcomes), total, successes, now - start)
                print(f"\r{line}" if interactive else line, end="" if interactive else "\n", flush=True)
                last_print = now
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the robots")
        for proc, _, _ in running.values():
            stop_process(proc, timeout_s=30.0)
    if interactive:
        print()
    paths = sorted(set(out.glob("*/*.mcap")) - before)
    return _summary(out, paths, time.monotonic() - start, robot_seconds, failed)


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt in the main thread, so that a stopped run stops the robots
    it started rather than leaving them running (SIGINT may come in ignored when started in the background)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _time_bound(base: RobotLaunchConfig, unit: WorkUnit) -> float:
    """Generous: start-up plus every episode at its step limit at 5 steps/s (lockstep runs far faster)."""
    return 120.0 + unit.episodes * base.nodes.sim_robot.max_episode_steps / 5.0


def _launch(config: dict, robot_id: str, unit: WorkUnit, out: Path) -> subprocess.Popen:
    name = f"{robot_id}_{unit.task}_s{unit.seed}"
    path = out / "configs" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return start_logged(sop_command("robot", "--config", str(path)), out / "logs" / f"{name}.log")


def _summary(out: Path, paths: list[Path], elapsed: float, robot_seconds: float, failed: list[str]) -> dict:
    tallies = tally(paths)
    print(f"\n{'task':28s} {'episodes':>8s} {'success':>8s} {'steps':>7s} {'frames':>7s} {'MB':>7s}")
    for task, t in sorted(tallies.items()):
        rate = f"{100 * t.successes / t.episodes:.0f}%" if t.episodes else "-"
        print(f"{task:28s} {t.episodes:8d} {rate:>8s} {t.steps:7d} {t.frames:7d} {t.bytes / 1e6:7.2f}")
    total = TaskTally(*(sum(getattr(t, f.name) for t in tallies.values()) for f in dataclasses.fields(TaskTally)))
    rate = f"{100 * total.successes / total.episodes:.0f}%" if total.episodes else "-"
    print(
        f"{'all':28s} {total.episodes:8d} {rate:>8s} {total.steps:7d} {total.frames:7d} "
        f"{total.bytes / 1e6:7.2f}   in {elapsed:.0f} s"
    )
    per_robot_s = robot_seconds or float("nan")
    print(
        f"per simulated robot (start-up included): {total.steps / per_robot_s:.1f} steps/s, "
        f"{total.frames / per_robot_s:.1f} camera frames/s; {total.bytes / max(total.episodes, 1) / 1e3:.0f} kB "
        "per episode"
    )
    for problem in failed:
        print(f"failed: {problem}")
    summary = {
        "out": str(out),
        "elapsed_s": round(elapsed, 1),
        "robot_seconds": round(robot_seconds, 1),
        "steps_per_s_per_robot": round(total.steps / per_robot_s, 1),
        "frames_per_s_per_robot": round(total.frames / per_robot_s, 1),
        "bytes_per_episode": round(total.bytes / max(total.episodes, 1)),
        "tasks": {task: dataclasses.asdict(t) for task, t in sorted(tallies.items())},
        "total": dataclasses.asdict(total),
        "failed": failed,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
