"""`sop rtc-check`: how chunks are joined under inference delay, measured in simulation.

One policy trained for real-time chunking (model rtc_max_prefix > 0: it can also run without a prefix) is
scored in process (sop_ros/fleet/in_process_eval.py: the exported ONNX, its runtime, the Meta-World env and the
evaluation seeds) with each way of joining chunks under each simulated inference delay: a chunk asked for at t is
used from t + the delay, the chunks before it running on meanwhile (with rtc those actions are its given prefix).
The arms: switch (each chunk takes over at once: blend with 0 steps, the control that shows what rtc's prefix
does), blend, ensemble and rtc. Every arm replans every `replan_steps` (short enough that a chunk asked for is
ready before the running one ends at the longest delay) on the same seeds. Per arm: success per task with a 95%
Wilson interval, and what each seam cost in motion: the largest change of the commanded action over the
`replan_steps` ticks from a new chunk's first use (chunks.seam_changes; the same window for every arm, so a
blend's spread-out takeover counts in full), as the median, 90th percentile and largest over all seams. rtc
against each other arm at each delay: success by a two-proportion z-test, seams by a Mann-Whitney U test, over
the pooled tasks. Each arm is kept in `out` as it ends: a run stopped midway goes on from the next arm.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sop_ros.configs import ConfigError, require
from sop_ros.configs.robot import PolicyConfig
from sop_ros.fleet.evaluate import EVAL_SEED
from sop_ros.robot.chunks import seam_changes

# Arm -> (execution, blend steps; None: the robot YAML's).
ARMS = {"switch": ("blend", 0), "blend": ("blend", None), "ensemble": ("ensemble", None), "rtc": ("rtc", None)}


@dataclass(frozen=True)
class RtcCheckConfig:
    policy: str  # a checkpoint (.pt) or exported policy (.onnx) trained with rtc_max_prefix > 0
    tasks: tuple[str, ...]
    episodes_per_task: int = 50
    delays_ms: tuple[float, ...] = (0.0, 100.0, 300.0)
    replan_steps: int = 4
    robot_yaml: str = "config/sim_policy.yaml"
    workers: int = 2
    seed: int = EVAL_SEED
    out: str = "runs/rtc-check"
    results: str = "docs/results/rtc"

    def __post_init__(self) -> None:
        require(bool(self.tasks), "tasks", self.tasks, "must name at least one task")
        require(self.episodes_per_task >= 1, "episodes_per_task", self.episodes_per_task, "must be >= 1")
        require(all(d >= 0 for d in self.delays_ms), "delays_ms", self.delays_ms, "must be >= 0")
        require(self.replan_steps >= 1, "replan_steps", self.replan_steps, "must be >= 1")


def rtc_check(config: RtcCheckConfig) -> dict:
    from sop_ros.fleet.collect_demos import plan_units
    from sop_ros.fleet.evaluate import eval_setup
    from sop_ros.model.export import export_onnx

    policy = Path(config.policy)
    if policy.suffix == ".pt":  # exported once, beside the runs
        onnx_path = Path(config.out) / f"{policy.stem}.onnx"
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        if not onnx_path.exists():
            export_onnx(policy, onnx_path)
        policy = onnx_path
    base, path, loaded = eval_setup(str(policy), config.robot_yaml)
    if not loaded.rtc_max_prefix:
        raise ConfigError(f"--policy {config.policy}: not trained for real-time chunking (model rtc_max_prefix 0): "
                          "pretrain it with a model YAML that sets rtc_max_prefix")  # fmt: skip
    control_hz = base.nodes.sim_robot.control_hz
    longest = max(delay_steps(d, control_hz) for d in config.delays_ms)
    if longest > loaded.rtc_max_prefix or config.replan_steps + longest >= loaded.chunk:
        raise ConfigError(f"delays up to {max(config.delays_ms):g} ms are {longest} control steps: the policy takes "
                          f"prefixes up to {loaded.rtc_max_prefix}, and replan_steps + delay must stay under its "
                          f"chunk of {loaded.chunk}")  # fmt: skip
    units = plan_units(list(config.tasks), config.episodes_per_task, config.workers, config.seed)
    kept = Path(config.out) / "arms"
    kept.mkdir(parents=True, exist_ok=True)
    # What an arm's episodes depend on (as JSON gives it back): a kept arm made otherwise is run again.
    made_by = {"policy": loaded.version, "units": [dataclasses.astuple(u) for u in units],
               "replan_steps": config.replan_steps, "robot_yaml": config.robot_yaml}  # fmt: skip
    made_by = json.loads(json.dumps(made_by))
    arms, seams = {}, {}
    for delay_ms in config.delays_ms:
        for name in ARMS:
            key, arm_file = f"{name} @ {delay_ms:g} ms", kept / f"{name}-{delay_ms:g}ms.json"
            saved = json.loads(arm_file.read_text()) if arm_file.exists() else {}
            if saved.get("made_by") != made_by:
                saved = {"made_by": made_by, **run_arm(name, delay_ms, base, path, units, config)}
                arm_file.write_text(json.dumps(saved) + "\n")
            seams[key] = saved["seams"]
            arm = arms[key] = saved["arm"] | seam_stats(saved["seams"])
            print(f"rtc-check: {name} at {delay_ms:g} ms: {arm['success']:.1%}, seam change median "
                  f"{arm['seam_median']:.3f}, 90th percentile {arm['seam_p90']:.3f}", flush=True)  # fmt: skip
    report = {"command": command_line(config), "policy": loaded.version, "control_hz": control_hz,
              "replan_steps": config.replan_steps, "seed": config.seed, "arms": arms,
              "comparisons": comparisons(arms, seams, config.delays_ms)}  # fmt: skip
    write(report, Path(config.results))
    return report


def run_arm(name: str, delay_ms: float, base, path: Path, units: list, config: RtcCheckConfig) -> dict:
    """One arm's episodes at a simulated inference delay: its summary and every seam's change."""
    from sop_ros.fleet.in_process_eval import run_units

    execution, blend_steps = ARMS[name]
    policy_cfg = dataclasses.replace(base.nodes.policy or PolicyConfig(), execution=execution,
                                     replan_steps=config.replan_steps)  # fmt: skip
    if blend_steps is not None:
        policy_cfg = dataclasses.replace(policy_cfg, blend_steps=blend_steps)
    arm_base = dataclasses.replace(base, nodes=dataclasses.replace(base.nodes, policy=policy_cfg))
    steps = delay_steps(delay_ms, base.nodes.sim_robot.control_hz)
    episodes = [e for run in run_units(str(path), arm_base, units, config.workers, delay_steps=steps) for e in run]
    changes = [c for e in episodes for c in seam_changes(e.action_changes, e.takeovers, config.replan_steps)]
    return {"arm": arm_summary(name, delay_ms, steps, episodes, config.tasks), "seams": changes}


def delay_steps(delay_ms: float, control_hz: float) -> int:
    """Control periods a delay spans, rounded up: a chunk later by any part of a period misses that tick."""
    return math.ceil(delay_ms * control_hz / 1000 - 1e-9)


def arm_summary(mode: str, delay_ms: float, steps: int, episodes: list, tasks: tuple[str, ...]) -> dict:
    """An arm's success, pooled and per task."""
    from sop_ros.fleet.proportions import Rate

    def rate(chosen: list) -> dict:
        return Rate(sum(e.success for e in chosen), len(chosen)).as_dict()

    pooled = rate(episodes)
    return {"mode": mode, "delay_ms": delay_ms, "delay_steps": steps, "success": pooled["rate"], "pooled": pooled,
            "tasks": {t: rate([e for e in episodes if e.task == t]) for t in tasks}}  # fmt: skip


def seam_stats(seams: list[float]) -> dict:
    """What an arm's seams cost: how many, their change's median, 90th percentile and largest (NaN: no seam)."""
    changes = np.array(seams or [np.nan])
    return {"seams": len(seams), "seam_median": float(np.median(changes)),
            "seam_p90": float(np.quantile(changes, 0.9)), "seam_max": float(changes.max())}  # fmt: skip


def comparisons(arms: dict, seams: dict[str, list[float]], delays_ms: tuple[float, ...],
                alpha: float = 0.05) -> list[dict]:  # fmt: skip
    """rtc against each other arm at each delay: success (two-proportion z-test) and seam changes (two-sided Mann-
    Whitney U: is a seam's change under rtc drawn from the same distribution as under the other arm)."""
    from scipy.stats import mannwhitneyu

    from sop_ros.fleet.proportions import Rate, compare

    out = []
    for delay in delays_ms:
        rtc = arms[f"rtc @ {delay:g} ms"]
        for other in (name for name in ARMS if name != "rtc"):
            against = arms[f"{other} @ {delay:g} ms"]
            c = compare(Rate(rtc["pooled"]["successes"], rtc["pooled"]["episodes"]),
                        Rate(against["pooled"]["successes"], against["pooled"]["episodes"]))  # fmt: skip
            u = mannwhitneyu(seams[f"rtc @ {delay:g} ms"], seams[f"{other} @ {delay:g} ms"])
            ratio = rtc["seam_median"] / against["seam_median"]
            out.append({"delay_ms": delay, "against": other, "difference": c.difference, "p": c.p_value,
                        "beyond_noise": c.beyond_noise, "text": str(c), "seam_median_ratio": ratio,
                        "seam_p": float(u.pvalue), "seams_differ": bool(u.pvalue < alpha)})  # fmt: skip
    return out


def command_line(config: RtcCheckConfig) -> str:
    return (f"sop rtc-check --policy {config.policy} --tasks {','.join(config.tasks)} --episodes-per-task "
            f"{config.episodes_per_task} --delays-ms {','.join(f'{d:g}' for d in config.delays_ms)} --replan-steps "
            f"{config.replan_steps} --results {config.results}")  # fmt: skip


def write(report: dict, results: Path) -> None:
    from sop_ros.host import described, machine

    report["machine"] = machine()
    results.mkdir(parents=True, exist_ok=True)
    (results / "rtc.json").write_text(json.dumps(report, indent=2) + "\n")
    tasks = list(next(iter(report["arms"].values()))["tasks"])
    lines = ["# Joining action chunks under inference delay: switch, blend, ensemble, real-time chunking", "",
             f"Made by `{report['command']}` on {described(report['machine'])}.", "",
             f"Policy {report['policy']}, scored in process on the evaluation seeds (from {report['seed']}); "
             f"control at {report['control_hz']:g} Hz, a new chunk asked for every {report['replan_steps']} steps and "
             "used from the delay's end. Switch: each chunk takes over at once, without a prefix (what rtc does "
             "without one). Intervals: 95% Wilson. Seam change: the largest change of the commanded action (over "
             f"its dimensions, robot units) in the {report['replan_steps']} ticks from a new chunk's first use, "
             "median, 90th percentile and largest over all seams.", "",
             "| delay | arm | success | 95% interval | " + " | ".join(tasks)
             + " | seams | seam change median | p90 | largest |",
             "|---|---|---|---|" + "---|" * len(tasks) + "---|---|---|---|"]  # fmt: skip
    for arm in report["arms"].values():
        low, high = arm["pooled"]["interval"]
        per_task = " | ".join(f"{r['successes']}/{r['episodes']}" for r in arm["tasks"].values())
        lines.append(f"| {arm['delay_ms']:g} ms ({arm['delay_steps']} steps) | {arm['mode']} | "
                     f"{arm['success']:.1%} | {low:.1%}-{high:.1%} | {per_task} | {arm['seams']} | "
                     f"{arm['seam_median']:.3f} | {arm['seam_p90']:.3f} | {arm['seam_max']:.3f} |")  # fmt: skip
    lines += ["", "rtc against the others, pooled over the tasks: success by a two-proportion z-test; seam changes by "
              "a two-sided Mann-Whitney U test at 0.05:", ""]  # fmt: skip
    lines += [f"- {c['delay_ms']:g} ms, against {c['against']}: success {c['text']}; seam change median "
              f"{c['seam_median_ratio']:.2f}x, {'differs' if c['seams_differ'] else 'within noise'} "
              f"(p = {c['seam_p']:.2g})" for c in report["comparisons"]]  # fmt: skip
    (results / "rtc.md").write_text("\n".join(lines) + "\n")
    plot(report, results / "rtc.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ARMS:
        arms = [a for a in report["arms"].values() if a["mode"] == name]
        delays = [a["delay_ms"] for a in arms]
        low = [a["success"] - a["pooled"]["interval"][0] for a in arms]
        high = [a["pooled"]["interval"][1] - a["success"] for a in arms]
        left.errorbar(delays, [a["success"] for a in arms], yerr=[low, high], marker="o", capsize=3, label=name)
        line = right.plot(delays, [a["seam_median"] for a in arms], marker="o", label=f"{name} (median)")[0]
        right.plot(delays, [a["seam_p90"] for a in arms], marker="x", linestyle=":", color=line.get_color())
    left.set(xlabel="inference delay (ms)", ylabel="success (95% interval)", ylim=(0, 1), title="success")
    right.set(xlabel="inference delay (ms)", ylabel="action change at a seam (dotted: 90th pct.)", title="seams")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
