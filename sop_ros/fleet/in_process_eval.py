"""`sop eval --in-process`: the nodes' evaluation, stepped in this process without ROS, for scores of hundreds of
episodes.

Each step does what the lockstep robot does, with the same code: the simulator (MetaWorldSim, the same work
units, seeds and episode limit), its cameras on their tick (JPEG at the simulator's quality when its transport is
compressed, decoded and resized as the ingest node does), the policy (ChunkPolicy on the same exported file, its
noise stream restarted each episode), chunk execution (ChunkExecutor, replanning every replan_steps and waiting
for the chunk, as `sop eval` runs the policy node) and the teleop arbiter's clamp and rate limit (Arbiter), on
the simulator's clock. What it leaves out is the transport: topics, Zenoh, processes and their timing.

Whether that changes outcomes is measured, not assumed: `sop eval-check` runs the same episodes both ways and
reports how many end the same (results/eval-check/).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sop_ros.configs.robot import PolicyConfig, RobotLaunchConfig
from sop_ros.episodes.format import Outcome
from sop_ros.fleet.collect_demos import WorkUnit, check_request, plan_units
from sop_ros.fleet.evaluate import EVAL_SEED


@dataclass(frozen=True)
class EpisodeResult:
    task: str
    unit_seed: int  # the work unit's simulator seed
    index: int  # the episode's place in its unit (the robot's episode counter)
    success: bool
    steps: int
    took_over_at: int | None = None  # the step an intervening operator took control at (None: it did not)
    judged_at: int | None = None  # the step it judged the policy failing at (watching only: it did not take over)
    operator_steps: int = 0  # steps the operator commanded
    operator_rising: int = 0  # of them, commands more than half upward (z > 0.5): re-approaching from above
    # The policy's commanded actions: each tick's change and the ticks where a new chunk took over (ChunkExecutor).
    action_changes: tuple[float, ...] = ()
    takeovers: tuple[int, ...] = ()


def camera_tick(t_ns: int, period_ns: int, every_steps: int) -> bool:
    """The simulator's cameras capture on this tick of its clock (as SimRobotNode.on_camera_tick)."""
    return round(t_ns / period_ns) % every_steps == 0


def rendered(sim, cameras) -> dict[str, np.ndarray]:
    """Each camera's RGB frame of the simulator's current state, rendered once."""
    return {camera: sim.render(camera) for camera in dict.fromkeys(cameras)}


def policy_input(base: RobotLaunchConfig, rendered: dict[str, np.ndarray], cameras: tuple[str, ...]) -> np.ndarray:
    """The cameras' `rendered` frames as the policy gets them, uint8 (cameras, 3, S, S): the simulator's JPEG at
    its quality when its transport is compressed, decoded and resized as the ingest node does."""
    from sop_ros.model.preprocess import decode_jpeg_rgb, encode_jpeg_rgb, resize_chw

    sim_cfg = base.nodes.sim_robot
    ingest = base.nodes.sim_ingest()
    compressed = sim_cfg.image_transport != "raw" and ingest.camera_transport == "compressed"
    views = []
    for camera in cameras:
        rgb = rendered[camera]
        if compressed:
            rgb = decode_jpeg_rgb(encode_jpeg_rgb(rgb, sim_cfg.jpeg_quality))
        views.append(resize_chw(rgb, ingest.image_size))
    return np.stack(views)


def run_unit(policy_path: str, base: RobotLaunchConfig, unit: WorkUnit, commands: list[list[np.ndarray]] | None = None,
             watch_only: bool = False, record: Path | None = None,
             delay_steps: int = 0) -> list[EpisodeResult]:  # fmt: skip
    """One work unit's episodes, as one lockstep robot runs them under `sop eval`; with `commands`, each
    episode's commands to the simulator are appended to it (a list per episode). A config with an intervening
    scripted operator (a fleet's) has it watch and take over as ScriptedOperatorNode does: judged on one state,
    in control from the next, backing off first if configured, until the episode ends. `watch_only`: it judges
    but never takes over, so that the episode shows whether the policy would have finished alone. `record`: every
    episode is also written there as the robot's recorder writes it (episode_files.py), one folder per unit.
    `delay_steps`: an inference delay, simulated: a chunk asked for at t is used from t + delay_steps control
    periods, the chunks before it running on meanwhile (with execution: rtc, those actions are its prefix)."""
    from sop_ros.episodes.format import Controller
    from sop_ros.model.policy import Observation, load_policy
    from sop_ros.model.preprocess import to_unit_range
    from sop_ros.robot.arbitration import Arbiter
    from sop_ros.robot.chunks import ChunkExecutor
    from sop_ros.sim.metaworld_sim import HAND_XYZ, MetaWorldSim, expert_for, goal_marker
    from sop_ros.sim.takeover import Correction, TakeoverMonitor

    sim_cfg, arbiter_cfg = base.nodes.sim_robot, base.nodes.teleop_arbiter
    ingest = base.nodes.sim_ingest()
    policy_cfg = base.nodes.policy or PolicyConfig()
    policy = load_policy(policy_path, len(arbiter_cfg.action_names), seed=policy_cfg.seed,
                         advantage_conditioned=policy_cfg.advantage_conditioned,
                         threads=policy_cfg.inference_threads, runtime_order=policy_cfg.runtime_order)  # fmt: skip
    sim = MetaWorldSim(unit.task, unit.seed, (sim_cfg.image_height, sim_cfg.image_width), goal_marker(sim_cfg))
    arbiter = Arbiter(arbiter_cfg)
    chunks = ChunkExecutor(round(1e9 / policy_cfg.control_hz), policy_cfg.execution, policy_cfg.blend_steps,
                           policy_cfg.ensemble_decay)  # fmt: skip
    rtc = policy_cfg.execution == "rtc" and policy.rtc_max_prefix > 0
    period_ns = round(1e9 / sim_cfg.control_hz)
    operator = base.nodes.scripted_operator
    if operator is not None and operator.mode == "intervene":
        operator = dataclasses.replace(operator, task=unit.task)
        expert, monitor, correction = expert_for(unit.task), TakeoverMonitor(operator), Correction(operator)
    else:
        operator = None

    recorded_cameras = (base.nodes.recorder.cameras if base.nodes.recorder else ingest.cameras) if record else ()
    cameras = ingest.cameras + recorded_cameras  # each rendered once (rendered())
    if record is not None:
        from sop_ros.fleet.episode_files import EpisodeFiles
        from sop_ros.sim.metaworld_sim import ACTION_NAMES, JOINT_NAMES

        robot_id = f"robot_{unit.task.removesuffix('-v3').replace('-', '_')}_{unit.seed}"
        files = EpisodeFiles(record / robot_id, robot_id, recorded_cameras, sim_cfg.jpeg_quality)

    results, t_ns = [], 0
    try:
        for index in range(unit.episodes):
            episode, state = sim.reset()
            # A reset takes a control period, and an episode starts on the cameras' tick (SimRobotNode).
            t_ns += period_ns
            while not camera_tick(t_ns, period_ns, sim_cfg.camera_every_steps):
                t_ns += period_ns
            policy.reset()
            chunks.clear()
            arbiter.new_episode()
            frames = rendered(sim, cameras)
            pixels = policy_input(base, frames, ingest.cameras)
            if record is not None:
                files.start(t_ns, unit.task, episode.instruction, policy.version)
                files.state(t_ns, JOINT_NAMES, sim.joint_positions(), sim.joint_velocities())
                files.frames(t_ns, frames)
            success, steps, judged, judged_at, took_over_at, executed = False, 0, None, None, None, None
            operator_steps = operator_rising = 0
            if operator is not None:
                monitor.reset()
                correction.reset()
            if commands is not None:
                commands.append([])
            while True:
                if judged and judged_at is None:  # judged failing on the last state: in control from this one
                    judged_at = steps
                    if not watch_only:
                        took_over_at = steps
                        correction.start(state[HAND_XYZ])
                        if record is not None:
                            files.control(t_ns, Controller.OPERATOR)
                if took_over_at is not None:
                    operator_command = correction.command(state[HAND_XYZ], expert(state))
                    arbiter.submit(Controller.OPERATOR, operator_command, t_ns * 1e-9)
                else:
                    if operator is not None and executed is not None and judged_at is None:
                        judged = monitor.observe(state[HAND_XYZ], executed, expert(state))
                    obs = Observation(to_unit_range(pixels), sim.joint_positions().astype(np.float32),
                                      episode.instruction)  # fmt: skip
                    due = chunks.steps_into_newest(t_ns)
                    if due is None or due >= policy_cfg.replan_steps:
                        prefix = chunks.upcoming(t_ns, delay_steps) if rtc else None
                        ready = t_ns + delay_steps * chunks.period_ns
                        chunks.add(policy.infer(obs, prefix=prefix).actions, t_ns, ready)
                    action = chunks.action(t_ns)
                    if action is not None:  # none ready yet (a delayed first chunk): the arbiter holds
                        arbiter.submit(Controller.POLICY, action, t_ns * 1e-9)
                command = executed = arbiter.tick(t_ns * 1e-9).command
                if took_over_at is not None:
                    operator_steps += 1
                    operator_rising += bool(command[2] > 0.5)
                if commands is not None:
                    commands[-1].append(command)
                if record is not None:
                    files.executed(t_ns, ACTION_NAMES, command)
                t_ns += period_ns
                result = sim.step(command)
                steps, state = result.steps, result.state
                if record is not None:
                    files.state(t_ns, JOINT_NAMES, sim.joint_positions(), sim.joint_velocities())
                if camera_tick(t_ns, period_ns, sim_cfg.camera_every_steps):
                    frames = rendered(sim, cameras)
                    pixels = policy_input(base, frames, ingest.cameras)
                    if record is not None:
                        files.frames(t_ns, frames)
                if result.success or steps >= sim_cfg.max_episode_steps:
                    success = result.success
                    break
            if record is not None:
                files.end(t_ns, success, steps)
            if took_over_at is not None:
                arbiter.release_operator()  # as the arbiter node does at an END (end_takeover_with_episode)
            results.append(EpisodeResult(unit.task, unit.seed, index, success, steps, took_over_at, judged_at,
                                         operator_steps, operator_rising, tuple(chunks.changes),
                                         tuple(chunks.takeovers)))  # fmt: skip
    finally:
        sim.close()
    return results


def _run_unit(args: tuple[str, RobotLaunchConfig, WorkUnit, bool, Path | None, int]) -> list[EpisodeResult]:
    policy_path, base, unit, watch_only, record, delay_steps = args
    return run_unit(policy_path, base, unit, watch_only=watch_only, record=record, delay_steps=delay_steps)


def _leave_stop_signals_to_the_parent() -> None:
    # Ctrl-C reaches the whole process group: a worker that raised KeyboardInterrupt mid-episode would print a
    # traceback per worker. The parent decides; it ends the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_units(policy_path: str, base: RobotLaunchConfig, units: list[WorkUnit], workers: int,
              watch_only: bool = False, record: Path | None = None,
              delay_steps: int = 0) -> Iterator[list]:  # fmt: skip
    """Each unit's results in order as it finishes, `workers` units at a time (one process each: the GIL and
    Mesa's renderer are per process). Interrupted (KeyboardInterrupt, which SIGTERM raises in the experiments),
    the workers are terminated at once: a pool that drained its queue first would keep scoring for minutes."""
    if workers <= 1:
        for unit in units:
            yield run_unit(policy_path, base, unit, watch_only=watch_only, record=record, delay_steps=delay_steps)
        return
    with multiprocessing.get_context("fork").Pool(workers, _leave_stop_signals_to_the_parent) as pool:
        yield from pool.imap(_run_unit, [(policy_path, base, u, watch_only, record, delay_steps) for u in units])
    # leaving the block, normally or by an exception, terminates the workers (Pool.__exit__)


def evaluate_in_process(policy: str, base_config: str, tasks: list[str], episodes_per_task: int, workers: int,
                        out: Path, seed: int = EVAL_SEED) -> dict:  # fmt: skip
    """`sop eval`'s report, from episodes stepped in this process (see the module's note)."""
    from sop_ros.fleet.evaluate import eval_setup

    check_request(tasks, episodes_per_task, workers)
    base, path, loaded = eval_setup(policy, base_config)
    # The units `sop eval` would give as many robots: the same seeds, episode for episode.
    units = plan_units(tasks, episodes_per_task, workers, seed)
    start, episodes = time.monotonic(), []
    print(f"eval {loaded.version} in process: {episodes_per_task} episodes of each of {', '.join(tasks)} "
          f"on {workers} workers")  # fmt: skip
    for done in run_units(str(path), base, units, workers):
        episodes += done
        print(f"  {len(episodes)}/{sum(u.episodes for u in units)} episodes, "
              f"{sum(e.success for e in episodes)} successes", flush=True)  # fmt: skip
    report = in_process_report(policy, loaded.version, seed, episodes_per_task, tasks, episodes)
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"mean success over {len(tasks)} tasks: {report['mean_success_rate']}; report: {out / 'eval.json'}")
    return report


def in_process_report(policy: str, version: str, seed: int, episodes_per_task: int, tasks: list[str],
                      episodes: list[EpisodeResult]) -> dict:  # fmt: skip
    """The report `sop eval` writes (same keys), with every episode's result."""
    per_task = {}
    for task in tasks:
        mine = [e for e in episodes if e.task == task]
        successes = sum(e.success for e in mine)
        per_task[task] = {
            "episodes": len(mine),
            "successes": successes,
            "success_rate": round(successes / len(mine), 3) if mine else None,
            "mean_steps": round(sum(e.steps for e in mine) / len(mine), 1) if mine else None,
        }
    rates = [t["success_rate"] for t in per_task.values() if t["success_rate"] is not None]
    return {
        "policy": policy,
        "version": version,
        "path": "in-process",
        "seed": seed,
        "episodes_per_task": episodes_per_task,
        "tasks": per_task,
        "mean_success_rate": round(sum(rates) / len(rates), 3) if rates else None,
        "missing_tasks": [],
        "failed": [],
        "episodes": [asdict(e) for e in sorted(episodes, key=lambda e: (e.task, e.unit_seed, e.index))],
    }


AGREEMENT_TARGET = 0.95  # in-process scores stand in for the nodes' only if this share of paired episodes agree
MIN_PAIRS = 100


def check_agreement(policy: str, base_config: str, tasks: list[str], episodes_per_task: int, out: Path,
                    seed: int = EVAL_SEED, results: Path | None = None) -> dict:  # fmt: skip
    """The same episodes through the nodes (`sop eval`) and in process: how many end the same way. The report,
    eval_check.json and .md, goes to `results` (default: `out`).

    One work unit per task (so that a recorded episode's task and counter name its pair), run on up to two robots.
    """
    from sop_ros.episodes.reader import episode_counts, episode_files
    from sop_ros.fleet.evaluate import evaluate
    from sop_ros.fleet.proportions import Rate, compare
    from sop_ros.host import machine

    robots = min(2, len(tasks))
    nodes = evaluate(policy, base_config, tasks, episodes_per_task, robots, out / "nodes", seed)
    in_process = evaluate_in_process(policy, base_config, tasks, episodes_per_task, robots, out / "in_process", seed)
    by_nodes = {}
    for path in episode_files(out / "nodes"):
        metadata, _ = episode_counts(path)
        index = int(metadata["episode_id"].rsplit("-", 1)[1])
        by_nodes[metadata["task"], index] = metadata["outcome"] == Outcome.SUCCESS
    pairs = [(by_nodes[e["task"], e["index"]], e["success"], e["task"]) for e in in_process["episodes"]
             if (e["task"], e["index"]) in by_nodes]  # fmt: skip
    agree = sum(a == b for a, b, _ in pairs)
    per_task = {}
    for task in tasks:
        mine = [(a, b) for a, b, t in pairs if t == task]
        per_task[task] = {"pairs": len(mine), "agree": sum(a == b for a, b in mine),
                          "nodes_success": sum(a for a, _ in mine), "in_process_success": sum(b for _, b in mine)}
    nodes_rate = Rate(sum(a for a, _, _ in pairs), len(pairs)) if pairs else None
    in_process_rate = Rate(sum(b for _, b, _ in pairs), len(pairs)) if pairs else None
    report = {
        "command": (f"sop eval-check --policy {policy} --tasks {','.join(tasks)} --episodes-per-task "
                    f"{episodes_per_task} --config {base_config} --seed {seed} --out {out}"
                    + (f" --results {results}" if results else "")),
        "machine": machine(),
        "policy": policy,
        "version": nodes["version"],
        "config": base_config,
        "seed": seed,
        "episodes_per_task": episodes_per_task,
        "pairs": len(pairs),
        "agree": agree,
        "agreement": round(agree / len(pairs), 4) if pairs else None,
        "nodes_only_success": sum(a and not b for a, b, _ in pairs),
        "in_process_only_success": sum(b and not a for a, b, _ in pairs),
        "per_task": per_task,
        "success_nodes_vs_in_process": str(compare(nodes_rate, in_process_rate)) if pairs else None,
        "target": f">= {AGREEMENT_TARGET:.0%} of >= {MIN_PAIRS} paired episodes end the same way",
        "passed": len(pairs) >= MIN_PAIRS and agree / len(pairs) >= AGREEMENT_TARGET if pairs else False,
        "unpaired_node_episodes": len(by_nodes) - len(pairs),
        "node_failures": nodes["failed"],
    }
    results = results or out
    results.mkdir(parents=True, exist_ok=True)
    (results / "eval_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / "eval_check.md").write_text(agreement_markdown(report))
    verdict = "passed" if report["passed"] else "not passed"
    print(f"eval check: {agree}/{len(pairs)} paired episodes end the same way ({report['agreement']}); "
          f"target {report['target']}: {verdict}; {results / 'eval_check.json'}, .md")  # fmt: skip
    return report


def agreement_markdown(report: dict) -> str:
    from sop_ros.host import described

    m = report["machine"]
    lines = [
        "# In-process scoring against the robot nodes", "",
        f"Made by `{report['command']}`, on {described(m)}.", "",
        f"The policy {report['version']} ran the same episodes (task, seed, episode counter) through the robot nodes "
        "(`sop eval`: ROS topics, lockstep) and in process (the same ONNX runtime, preprocessing and Meta-World env, "
        "no ROS). A pair agrees when both end in success or both do not.", "",
        f"Target {report['target']}: {'met' if report['passed'] else 'missed'}: {report['agree']} of "
        f"{report['pairs']} pairs agree ({report['agreement']:.1%}); success only through the nodes "
        f"{report['nodes_only_success']}, only in process {report['in_process_only_success']}.", "",
        f"Success, nodes vs in process: {report['success_nodes_vs_in_process']}.", "",
        "| task | pairs | agree | success, nodes | success, in process |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for task, t in report["per_task"].items():
        lines.append(f"| {task} | {t['pairs']} | {t['agree']} | {t['nodes_success']} | {t['in_process_success']} |")
    return "\n".join(lines) + "\n"
