"""`sop fleet run`: the whole SOP loop on this host: simulated robots, operators, bridge, learner.

Every robot is a `sop robot` process group with the nodes a real robot runs (simulator, ingest, policy,
teleop arbiter, recorder, bridge) plus a scripted operator in intervene mode, who takes over when the policy
fails, as a field operator would, and labels each episode. Robots work through the tasks in blocks of
episodes (a block: one task, its own seeds), each robot on a different task. The learner (`sop learner`)
serves the robots: their episodes go into its store over Zenoh, and its new policies come back signed, each
taken at an episode boundary. The base policy is published first, so every robot starts on it.

The result is the fleet's success over time from the episodes' labels: the labelled success rate, and the
rate without any intervention (what the policy did alone), per time bin, as JSON and PNG.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path

import yaml

from sop_ros.configs import ConfigError, load_config, to_dict
from sop_ros.configs.bridge import BridgeConfig, PolicyDownloadConfig, ZenohConfig
from sop_ros.configs.learner import LearnerConfig, learner_status_path
from sop_ros.configs.robot import PolicyConfig, RobotLaunchConfig, ScriptedOperatorConfig
from sop_ros.episodes.format import LABELLED, Outcome
from sop_ros.fleet.collect_demos import WorkUnit, interrupt_on_signals, unit_config
from sop_ros.host import free_endpoint, sop_command, start_logged, stop_process

# On one host the learner stands for the cloud's own machines: robots yield the CPU to it. Lockstep robots
# otherwise run as fast as the cores allow and starve it (20 samples/s instead of 60 on 2 cores).
ROBOT_NICENESS = 10
BLOCK_SEED = 200_000  # seeds of fleet episodes: clear of demonstrations (0...) and evaluation (100000...)
RUN_SEEDS = 1_000_000  # a run's seed shifts its episodes' seeds by this much

LEARNER_DIR = "learner"  # in a fleet run's directory: the learner's checkpoints, spill and status


def learner_config(base: LearnerConfig, tasks: list[str], out: Path, endpoint: str) -> LearnerConfig:
    """The learner's config for this run: its files under `out`, robots served on `endpoint`."""
    return dataclasses.replace(
        base,
        tasks=tuple(tasks),
        store_dir=str(out / "store"),
        checkpoint_dir=str(out / LEARNER_DIR),
        serve_robots=True,
        ingest=dataclasses.replace(base.ingest, zenoh=ZenohConfig(listen=(endpoint,))),
        policies=dataclasses.replace(base.policies, registry_dir=str(out / "policies"),
                                     private_key=str(out / "keys" / "policy_signing.key")),
    )  # fmt: skip


def robot_config(base: RobotLaunchConfig, robot_id: str, unit: WorkUnit, out: Path, endpoint: str,
                 paced: bool = False) -> dict:  # fmt: skip
    """A fleet robot: the policy drives, the scripted operator intervenes, the bridge ships episodes and
    fetches policies; `paced`: its simulator keeps the learner's budget of steps per simulated minute."""
    sim = dataclasses.replace(base.nodes.sim_robot, step_mode="lockstep", pace_connect=endpoint if paced else "")
    base = dataclasses.replace(base, nodes=dataclasses.replace(base.nodes, sim_robot=sim))
    operator = dataclasses.replace(base.nodes.scripted_operator or ScriptedOperatorConfig(), task=unit.task,
                                   mode="intervene")  # fmt: skip
    policy = dataclasses.replace(base.nodes.policy or PolicyConfig(), policy_path="", wait_for_chunk=True,
                                 act_between_episodes=True, swap_at="episode_boundary")  # fmt: skip
    outbox = out / "outbox"
    bridge = BridgeConfig(
        outbox_dir=str(outbox),
        zenoh=ZenohConfig(connect=(endpoint,)),
        policies=PolicyDownloadConfig(public_key=str(out / "keys" / "policy_signing.pub"),
                                      cache_dir=str(out / "robot_policies"), swap="episode_boundary"),
    )  # fmt: skip
    return unit_config(base, robot_id, unit, outbox, scripted_operator=operator, policy=policy, bridge=bridge,
                       ingest=base.nodes.sim_ingest())  # fmt: skip


def publish_base(learner: LearnerConfig) -> str:
    """The base policy, exported and signed as the fleet's first version."""
    from sop_ros.bridge.artifacts import load_private_key
    from sop_ros.cloud.policy_registry import PolicyRegistry
    from sop_ros.model.export import export_onnx

    registry = PolicyRegistry(learner.policies.registry_dir)
    if registry.latest():
        return registry.latest().version
    onnx_path = Path(learner.checkpoint_dir) / "base.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(learner.base_policy, onnx_path)
    return registry.publish(onnx_path, load_private_key(learner.policies.private_key)).version


def success_curve(store_dir: Path, start: float, bin_s: float, simulated: bool = False,
                  end_s: float | None = None) -> dict:  # fmt: skip
    """The run's curve (`curve_of`) from its store: bins of wall time since `start` (when each episode was
    stored), or with `simulated`, of the fleet's simulated clock (when each episode ended)."""
    from sop_ros.cloud.episode_store import stored_episodes

    def at(e) -> float:
        return e.ended_ns / 1e9 if simulated else e.stored_at - start

    return {"clock": "simulated" if simulated else "wall"} | curve_of(stored_episodes(store_dir), at, bin_s, end_s)


def curve_of(episodes: list, at: Callable[[object], float], bin_s: float, end_s: float | None = None) -> dict:
    """Per time bin of `bin_s` seconds (`at(episode)`: when it ended): labelled episodes, success rate, success
    without intervention, overall and per task; and the hot-swaps. A bin that reaches past `end_s` (the run's end)
    is marked partial: it holds only the episodes that ended before the run did."""
    episodes = sorted((e for e in episodes if e.outcome in LABELLED), key=at)
    bins: dict[int, list] = {}
    for e in episodes:
        bins.setdefault(int(at(e) // bin_s), []).append(e)
    curve = []
    for b in sorted(bins):
        members, tasks = bins[b], sorted({e.task for e in bins[b]})
        curve.append({
            "minute": round((b + 1) * bin_s / 60, 2),
            "partial": end_s is not None and (b + 1) * bin_s > end_s + 1e-6,
            **rates(members),
            "interventions_per_episode": round(sum(e.interventions for e in members) / len(members), 3),
            "tasks": tasks,
            "policy_versions": sorted({e.policy_version for e in members}),
            "per_task": {t: autonomous_counts([e for e in members if e.task == t]) for t in tasks},
        })  # fmt: skip
    tasks = sorted({e.task for e in episodes})
    per_task = {t: rates([e for e in episodes if e.task == t]) for t in tasks}
    return {"bin_s": bin_s, "episodes": len(episodes), "curve": curve, "per_task": per_task,
            "hot_swaps": hot_swap_times(episodes, at)}  # fmt: skip


def rates(episodes: list) -> dict:
    """Labelled episodes: how many, the success rate, and the rate of successes without any intervention."""
    n, autonomous = len(episodes), autonomous_counts(episodes)["autonomous_successes"]
    return {"episodes": n, "success_rate": round(sum(e.outcome == Outcome.SUCCESS for e in episodes) / n, 3),
            "autonomous_success_rate": round(autonomous / n, 3)}  # fmt: skip


def autonomous_counts(episodes: list) -> dict:
    """Episodes and how many of them succeeded without any intervention: what an interval is computed from."""
    successes = sum(e.autonomous_success for e in episodes)
    return {"episodes": len(episodes), "autonomous_successes": successes}


def hot_swap_times(episodes: list, at) -> list[dict]:
    """When each robot began running a new policy: the end of its last episode on the previous one (robots swap
    at episode boundaries). `episodes` in time order, `at(episode)` its end in seconds on the curve's clock."""
    swaps, previous = [], {}
    for e in episodes:
        before = previous.get(e.robot_id)
        if before is not None and e.policy_version and e.policy_version != before.policy_version:
            swaps.append({"minute": round(at(before) / 60, 3), "robot": e.robot_id, "version": e.policy_version})
        previous[e.robot_id] = e
    return sorted(swaps, key=lambda s: (s["minute"], s["robot"]))


def plot_success(report: dict, path: Path, title: str) -> None:
    """Success without intervention per task (95% Wilson intervals), pooled over tasks, interventions per
    episode, and the hot-swaps; a partial last bin is drawn hollow. Labelled success is not drawn: the operator
    finishes what the policy fails, so it says more about the operator than about the policy."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from sop_ros.fleet.proportions import wilson_interval

    curve = report["curve"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1.2))
    tasks = sorted({t for p in curve for t in p.get("per_task", {})})
    width = report["bin_s"] / 60
    for i, task in enumerate([*tasks, "all tasks"]):
        points = []
        for p in curve:
            counts = list(p["per_task"].values()) if task == "all tasks" else [p["per_task"].get(task)]
            n = sum(c["episodes"] for c in counts if c)
            k = sum(c["autonomous_successes"] for c in counts if c)
            if n:
                low, high = wilson_interval(k, n)
                points.append((p["minute"] - width / 2, k / n, low, high, p.get("partial", False)))
        if not points:
            continue
        pooled = task == "all tasks"
        style = {"color": "black", "linewidth": 2.2, "zorder": 3} if pooled else {"color": f"C{i}", "alpha": 0.85}
        shift = 0.0 if pooled else (i - (len(tasks) - 1) / 2) * width * 0.06  # intervals side by side
        full = [q for q in points if not q[4]]
        xs = [q[0] + shift for q in full]
        top.errorbar(xs, [q[1] for q in full], yerr=[[q[1] - q[2] for q in full], [q[3] - q[1] for q in full]],
                     fmt="o-", capsize=2, markersize=4, label=task, **style)  # fmt: skip
        for q in points:
            if q[4]:
                top.plot([q[0] + shift], [q[1]], "o", markerfacecolor="none", color=style["color"])
    # Hot-swaps as a rug along the top: each tick a robot taking a new policy (dozens in a run: lines across the
    # plot would hide the curves).
    swaps = sorted({s["minute"] for s in report.get("hot_swaps", [])})
    if swaps:
        top.plot(swaps, [1.0] * len(swaps), "|", color="grey", markersize=9, label="a robot takes a new policy")
    full = [p for p in curve if not p.get("partial", False)]
    bottom.bar([p["minute"] - width / 2 for p in full], [p["interventions_per_episode"] for p in full],
               width=width * 0.8, color="C7")  # fmt: skip
    partial = [p for p in curve if p.get("partial", False)]
    bottom.bar([p["minute"] - width / 2 for p in partial], [p["interventions_per_episode"] for p in partial],
               width=width * 0.8, fill=False, hatch="//", edgecolor="C7")  # fmt: skip
    note = " (hollow: a partial last bin)" if partial else ""
    top.set(ylabel="success without intervention", ylim=(-0.02, 1.04), title=title)
    top.legend(fontsize=8, loc="upper left", ncol=2)
    bottom.set(xlabel=f"minutes into the run ({report['clock']} time){note}", ylabel="interventions\nper episode")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def block_failure(robot_id: str, log: Path, proc: subprocess.Popen, out: Path) -> list[dict]:
    """A robot's finished block, as a failure to report if its process did not exit 0 (its episode then running
    was cut short: kept by the recorder without an END), else nothing."""
    if proc.returncode == 0:
        return []
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    said = next((line for line in reversed(lines) if "fatal" in line.lower() or "error" in line.lower()), "")
    print(f"{robot_id}: {log.stem} exited with {proc.returncode} ({said.strip() or 'no error logged'}); "
          f"see {log}", flush=True)  # fmt: skip
    return [{"robot": robot_id, "block": log.stem, "exit_code": proc.returncode, "log": str(log.relative_to(out)),
             "error": said.strip()}]  # fmt: skip


def run(learner_yaml: str, base_yaml: str, tasks: list[str], robots: int, minutes: float, block: int, out: Path,
        results: Path | None, bin_minutes: float = 5.0, frozen: bool = False,
        sim_minutes: float = 0.0, seed: int = 0, single_process: bool = True,
        done: Callable[[], bool] | None = None, restart_learner: bool = False) -> dict:  # fmt: skip
    """Run for `minutes` of wall time, or paced (the learner config's pace.steps_per_sim_minute > 0) until the
    fleet's simulated clock reaches `sim_minutes` (the learner stops at its budget for them).

    `frozen`: the cloud serves the base policy and stores episodes, nothing trains (offline HG-DAgger's
    collection phase, and the no-learning baseline). `seed`: the learner's, and the fleet's episodes' (the same seed,
    the same run). `single_process`: each robot's nodes share one process (`sop robot
    --single-process`): the same nodes and topics, one interpreter's imports and start-up instead of seven.
    `done`: asked every second while the fleet runs (e.g. a scenario publishing policies); True ends the run.
    `restart_learner`: a learner killed by a signal is started again (it resumes from its checkpoint), as a
    supervisor would; otherwise, or when it exits by itself (a config error), its stop ends the run."""
    from sop_ros.bridge.artifacts import make_signing_keys

    base_learner = load_config(LearnerConfig, learner_yaml)
    base_robot = load_config(RobotLaunchConfig, base_yaml)
    if base_learner.base_policy and not Path(base_learner.base_policy).is_file():
        raise ConfigError(f"{learner_yaml}: base_policy={base_learner.base_policy!r}: no such file; make it first: "
                          f"`sop pretrain --demos <recorded demos> --out {base_learner.base_policy}`")  # fmt: skip
    tasks = tasks or list(base_learner.tasks)
    if robots < 1 or minutes <= 0 or block < 1 or sim_minutes < 0:
        raise ConfigError("--robots and --block must be >= 1, --minutes > 0, --sim-minutes >= 0")
    rate = base_learner.pace.steps_per_sim_minute
    paced = rate > 0 and not frozen
    if sim_minutes and not paced:
        raise ConfigError("--sim-minutes needs a paced learner: pace.steps_per_sim_minute > 0 in its config "
                          "(and no --frozen)")  # fmt: skip
    base_learner = dataclasses.replace(base_learner, seed=seed)
    if paced:
        base_learner = dataclasses.replace(base_learner, max_steps=round(sim_minutes * rate),
                                           pace=dataclasses.replace(base_learner.pace, robots=robots))  # fmt: skip
    out = out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "configs").mkdir(exist_ok=True)
    make_signing_keys(out / "keys", force=True)
    endpoint = free_endpoint()
    learner = learner_config(base_learner, tasks, out, endpoint)
    (out / "configs" / "learner.yaml").write_text(yaml.safe_dump(to_dict(learner), sort_keys=False))
    if paced and sim_minutes:
        span = f"{sim_minutes:g} simulated min ({rate:g} learner steps each)"
    else:
        span = f"{minutes:g} min" + (f", paced at {rate:g} learner steps per simulated min" if paced else "")
    print(f"fleet run: {robots} robots on {', '.join(tasks)} for {span}; base policy "
          f"{publish_base(learner)}; {'frozen' if frozen else 'learner ' + learner.algorithm} -> {out}",
          flush=True)  # fmt: skip
    interrupt_on_signals()  # Ctrl-C and SIGTERM both stop the fleet and the learner first
    start = time.time()
    cloud = ["cloud"] if frozen else ["learner"]
    learner_cmd = sop_command(*cloud, "--config", str(out / "configs" / "learner.yaml"))
    learner_proc = start_logged(learner_cmd, out / "logs" / "learner.log")
    learner_restarts = 0
    blocks = [count(i, robots) for i in range(robots)]  # robot i's blocks: i, i + R, ...: the same every run
    running: dict[str, tuple[Path, subprocess.Popen]] = {}  # robot -> its block's log, its process
    failed: list[dict] = []  # blocks whose robot process exited non-zero (the fleet goes on with the next)
    deadline, last_print = time.monotonic() + minutes * 60, 0.0
    ended = "wall time"  # or what else ended the run: a report says which (an experiment takes only whole runs)
    try:
        while time.monotonic() < deadline:
            if learner_proc.poll() is not None:
                if paced and learner_proc.returncode == 0:
                    ended = "learner budget"  # its budget for sim_minutes is spent
                    break
                if not restart_learner or learner_proc.returncode >= 0:  # a crash is restarted, an error is not
                    raise RuntimeError(f"the learner stopped (exit {learner_proc.returncode}): see "
                                       f"{out}/logs/learner.log")  # fmt: skip
                print(f"fleet run: the learner stopped (exit {learner_proc.returncode}): started again", flush=True)
                learner_proc = start_logged(learner_cmd, out / "logs" / "learner.log", append=True)
                learner_restarts += 1
            for i in range(robots):
                robot_id = f"robot_{i}"
                if robot_id in running and running[robot_id][1].poll() is None:
                    continue
                if robot_id in running:
                    failed += block_failure(robot_id, *running[robot_id], out)
                n = next(blocks[i])
                unit = WorkUnit(tasks[n % len(tasks)], block, BLOCK_SEED + RUN_SEEDS * seed + 1000 * n)
                config = robot_config(base_robot, robot_id, unit, out, endpoint, paced)
                path = out / "configs" / f"{robot_id}_block{n:03d}.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                cmd = sop_command("robot", "--config", str(path), *(["--single-process"] if single_process else []))
                log = out / "logs" / f"{robot_id}_block{n:03d}.log"
                running[robot_id] = (log, start_logged(cmd, log, niceness=ROBOT_NICENESS))
            if time.monotonic() - last_print >= 30:
                print(_progress(learner, start), flush=True)
                last_print = time.monotonic()
            if done is not None and done():
                ended = "scenario done"
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the fleet and the learner")
        ended = "interrupted"
    finally:
        for _, proc in running.values():
            stop_process(proc)
        time.sleep(5.0)  # the last episodes' uploads
        stop_process(learner_proc, timeout_s=120.0)
    last = learner_status(out)
    # Where the run ended on the clock its episodes are binned by: a paced run stopped by wall time ends where the
    # fleet's simulated clock last stood (the learner's status), not at a span it was never given.
    end_s = (sim_minutes * 60 if sim_minutes else last.get("fleet_sim_s")) if paced else time.time() - start
    report = {
        "robots": robots, "tasks": tasks, "seed": seed, "minutes": minutes,
        "sim_minutes": sim_minutes if paced else None,
        "block": block, "wall_minutes": round((time.time() - start) / 60, 2), "ended": ended,
        "robot_failures": failed, "learner_restarts": learner_restarts,
        "algorithm": "none (frozen base policy)" if frozen else learner.algorithm,
        "base_policy": base_learner.base_policy,
        "learner": to_dict(learner) | {"store_dir": "store", "checkpoint_dir": LEARNER_DIR},  # in the run directory
        **success_curve(out / "store", start, bin_minutes * 60, simulated=paced, end_s=end_s),
    }  # fmt: skip
    report["learner"] = {k: v for k, v in report["learner"].items() if k not in ("ingest", "policies")}
    if last:
        report["learner_steps"], report["policies_published"] = last["step"], last["latest_policy"]
    report["online_share"] = online_share_range(out / LEARNER_DIR / "tensorboard")
    if last.get("value_check_online"):  # RECAP: how well its value network knew the fleet's episodes
        report["value_check"] = last["value_check_online"]
    target = results or out
    target.mkdir(parents=True, exist_ok=True)
    (target / "fleet_run.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_success(report, target / "fleet_run.png", f"{robots} robots, " +
                 ("frozen base policy" if frozen else f"SOP + {learner.algorithm}"))  # fmt: skip
    for p in report["curve"]:
        print(f"  min {p['minute']:5.1f}: {p['episodes']:3d} episodes, success {p['success_rate']:.0%}, "
              f"without intervention {p['autonomous_success_rate']:.0%}, "
              f"{p['interventions_per_episode']:.2f} interventions/episode"
              + (" (partial bin: the run ended in it)" if p["partial"] else ""))  # fmt: skip
    print(f"fleet run: {report['episodes']} labelled episodes; {target / 'fleet_run.json'}, {target / 'fleet_run.png'}")
    if ended == "interrupted":
        raise KeyboardInterrupt  # the report covers what ran; the caller stops as it was told to
    return report


def online_share_range(tensorboard: Path) -> dict[str, dict]:
    """Per task, the share of online rows SOP gave it over the run (from the learner's TensorBoard scalars)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    if not tensorboard.is_dir():
        return {}
    events = EventAccumulator(str(tensorboard), size_guidance={SCALARS: 0}).Reload()
    shares = {}
    for tag in events.Tags()[SCALARS]:
        if tag.startswith("online_share/"):
            values = [e.value for e in events.Scalars(tag)]
            shares[tag.removeprefix("online_share/")] = {"min": round(min(values), 3), "max": round(max(values), 3),
                                                         "last": round(values[-1], 3)}  # fmt: skip
    return shares


def learner_status(out: Path) -> dict:
    """The last status the learner of the fleet run in `out` wrote ({} before its first)."""
    status = learner_status_path(out / LEARNER_DIR)
    return json.loads(status.read_text()) if status.exists() else {}


def _progress(learner: LearnerConfig, start: float) -> str:
    status = learner_status_path(learner.checkpoint_dir)
    minutes = (time.time() - start) / 60
    if not status.exists():
        return f"{minutes:5.1f} min: learner starting"
    s = json.loads(status.read_text())
    fleet = s["fleet"]
    simulated = f" (simulated {s['fleet_sim_s'] / 60:.1f} min)" if s.get("fleet_sim_s") is not None else ""
    lines = [f"{minutes:5.1f} min{simulated}: learner step {s['step']} ({s['samples_per_s']:.0f} samples/s), "
             f"{fleet['episodes']} episodes stored, {fleet['interventions_per_hour']:.0f} interventions/h, "
             f"latest policy {s['latest_policy'] or 'base'}"]  # fmt: skip
    for task in s["tasks"]:
        if task in fleet["success"]:
            lines.append(f"    {task:<16} success {fleet['success'][task]:4.0%}, without intervention "
                         f"{fleet['autonomous_success'][task]:4.0%} (last 20 episodes)")  # fmt: skip
    for robot, version in sorted(s.get("robot_versions", {}).items()):
        lag = s["version_lag"].get(robot, 0)
        lines.append(f"    {robot:<16} runs {version or 'nothing yet'}" + (f" ({lag} behind)" if lag else ""))
    return "\n".join(lines)
