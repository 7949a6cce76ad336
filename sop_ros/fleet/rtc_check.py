"""`sop rtc-check`: how chunks are joined under inference delay, measured in simulation.

One policy trained for real-time chunking (model rtc_max_prefix > 0: it can also run without a prefix) is
scored in process (sop_ros/fleet/in_process_eval.py: the exported ONNX, its runtime, the Meta-World env and the
evaluation seeds) with each way of joining chunks (blend, ensemble, rtc) under each simulated inference delay: a
chunk asked for at t is used from t + the delay, the chunks before it running on meanwhile (with rtc those
actions are its given prefix). Every arm replans every `replan_steps` (short enough that a chunk asked for is
ready before the running one ends at the longest delay) on the same seeds. Per arm: success per task with a 95%
Wilson interval, and the largest change of the commanded action where a new chunk takes over (per episode: its
largest; reported as the median and the maximum over episodes); rtc against blend and against ensemble at each
delay by a two-proportion z-test over the pooled tasks.
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

MODES = ("blend", "ensemble", "rtc")


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
    from sop_ros.fleet.in_process_eval import run_units
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
    arms = {}
    for delay_ms in config.delays_ms:
        for mode in MODES:
            policy_cfg = dataclasses.replace(base.nodes.policy or PolicyConfig(), execution=mode,
                                             replan_steps=config.replan_steps)  # fmt: skip
            arm_base = dataclasses.replace(base, nodes=dataclasses.replace(base.nodes, policy=policy_cfg))
            steps = delay_steps(delay_ms, control_hz)
            runs = run_units(str(path), arm_base, units, config.workers, delay_steps=steps)
            arm = arms[f"{mode} @ {delay_ms:g} ms"] = arm_summary(mode, delay_ms, steps, [e for r in runs for e in r],
                                                                  config.tasks)  # fmt: skip
            print(f"rtc-check: {mode} at {delay_ms:g} ms: {arm['success']:.1%}, largest jump (max over episodes) "
                  f"{arm['jump_max']:.3f}", flush=True)  # fmt: skip
    report = {"command": command_line(config), "policy": loaded.version, "control_hz": control_hz,
              "replan_steps": config.replan_steps, "seed": config.seed, "arms": arms,
              "comparisons": comparisons(arms, config.delays_ms)}  # fmt: skip
    write(report, Path(config.results))
    return report


def delay_steps(delay_ms: float, control_hz: float) -> int:
    """Control periods a delay spans, rounded up: a chunk later by any part of a period misses that tick."""
    return math.ceil(delay_ms * control_hz / 1000 - 1e-9)


def arm_summary(mode: str, delay_ms: float, steps: int, episodes: list, tasks: tuple[str, ...]) -> dict:
    from sop_ros.fleet.proportions import Rate

    def rate(chosen: list) -> dict:
        return Rate(sum(e.success for e in chosen), len(chosen)).as_dict()

    jumps = np.array([e.largest_jump for e in episodes])
    pooled = rate(episodes)
    return {"mode": mode, "delay_ms": delay_ms, "delay_steps": steps, "success": pooled["rate"], "pooled": pooled,
            "tasks": {t: rate([e for e in episodes if e.task == t]) for t in tasks},
            "jump_median": float(np.median(jumps)), "jump_max": float(jumps.max())}  # fmt: skip


def comparisons(arms: dict, delays_ms: tuple[float, ...]) -> list[dict]:
    from sop_ros.fleet.proportions import Rate, compare

    out = []
    for delay in delays_ms:
        rtc = arms[f"rtc @ {delay:g} ms"]["pooled"]
        for other in ("blend", "ensemble"):
            against = arms[f"{other} @ {delay:g} ms"]["pooled"]
            c = compare(Rate(rtc["successes"], rtc["episodes"]), Rate(against["successes"], against["episodes"]))
            out.append({"delay_ms": delay, "against": other, "difference": c.difference, "p": c.p_value,
                        "beyond_noise": c.beyond_noise, "text": str(c)})  # fmt: skip
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
    lines = ["# Joining action chunks under inference delay: blend, ensemble, real-time chunking", "",
             f"Made by `{report['command']}` on {described(report['machine'])}.", "",
             f"Policy {report['policy']}, scored in process on the evaluation seeds (from {report['seed']}); "
             f"control at {report['control_hz']:g} Hz, a new chunk asked for every {report['replan_steps']} steps and "
             "used from the delay's end. Intervals: 95% Wilson. Jump: the largest change of the commanded action "
             "where a new chunk took over, per episode (median and maximum over episodes).", "",
             "| delay | mode | success | 95% interval | " + " | ".join(next(iter(report["arms"].values()))["tasks"])
             + " | jump median | jump max |",
             "|---|---|---|---|" + "---|" * len(next(iter(report["arms"].values()))["tasks"]) + "---|---|"]  # fmt: skip
    for arm in report["arms"].values():
        low, high = arm["pooled"]["interval"]
        per_task = " | ".join(f"{r['successes']}/{r['episodes']}" for r in arm["tasks"].values())
        lines.append(f"| {arm['delay_ms']:g} ms ({arm['delay_steps']} steps) | {arm['mode']} | "
                     f"{arm['success']:.1%} | {low:.1%}-{high:.1%} | {per_task} | {arm['jump_median']:.3f} | "
                     f"{arm['jump_max']:.3f} |")  # fmt: skip
    lines += ["", "rtc against the others, pooled over the tasks (two-proportion z-test):", ""]
    lines += [f"- {c['delay_ms']:g} ms, against {c['against']}: {c['text']}" for c in report["comparisons"]]
    (results / "rtc.md").write_text("\n".join(lines) + "\n")
    plot(report, results / "rtc.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        arms = [a for a in report["arms"].values() if a["mode"] == mode]
        delays = [a["delay_ms"] for a in arms]
        low = [a["success"] - a["pooled"]["interval"][0] for a in arms]
        high = [a["pooled"]["interval"][1] - a["success"] for a in arms]
        left.errorbar(delays, [a["success"] for a in arms], yerr=[low, high], marker="o", capsize=3, label=mode)
        right.plot(delays, [a["jump_max"] for a in arms], marker="o", label=f"{mode} (max)")
    left.set(xlabel="inference delay (ms)", ylabel="success (95% interval)", ylim=(0, 1), title="success")
    right.set(xlabel="inference delay (ms)", ylabel="largest action jump at a chunk seam", title="seams")
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
