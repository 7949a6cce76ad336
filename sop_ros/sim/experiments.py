"""`sop experiment`: the published system's three questions on a simulated fleet, each a sweep of paced fleet runs.

    fleet-scaling    1, 2 and 4 robots: the same learner budget per simulated minute, more experience
    pretrain-scale   base policies pretrained on three amounts of demonstrations, then the same online budget
    algorithms       pretrained only, offline HG-DAgger, SOP + HG-DAgger, SOP + RECAP at equal budgets

Every run is `sop fleet run` (sop_ros/sim/online_fleet.py): the real robot nodes and topics, the Zenoh bridge
and the learner, paced by simulated time so that results do not depend on this host's speed. A run lives in
<out>/<experiment>/<arm>/seed<k>; a finished one holds fleet_run.json and is not run again, so an interrupted
sweep resumes at its first unfinished run (which starts over). After every run the report is written again:
<results>/<experiment>.json, .png and .md.

Success is the policy's own: the share of the fleet's episodes that succeeded without an intervention, per bin
of simulated time. "At the budget" is that share over the run's last `final_minutes`; "time to X" is the end of
the first bin at which it reached X.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from sop_ros.configs import ConfigError, load_config, require, to_dict
from sop_ros.configs.learner import LearnerConfig, PaceConfig

NEVER = 10**9  # publish_every_steps of a learner whose robots keep the base policy


@dataclass(frozen=True)
class Arm:
    """One condition of an experiment."""

    name: str
    robots: int = 2
    algorithm: str = "hg_dagger"  # the online learner's; "" for none: the base policy runs throughout
    demos_per_task: int = 0  # the base policy's pretraining size (0: the shared base, all demonstrations)
    offline: bool = False  # offline HG-DAgger: collect with the base policy, retrain once, deploy that

    @property
    def slug(self) -> str:
        return self.name.lower().replace(" + ", "-").replace(" ", "-")


ARMS = {
    "fleet-scaling": (Arm("1 robot", robots=1), Arm("2 robots", robots=2), Arm("4 robots", robots=4)),
    "pretrain-scale": tuple(Arm(f"{n} demos per task", demos_per_task=n) for n in (2, 5, 10)),
    "algorithms": (Arm("pretrained only", algorithm=""), Arm("offline HG-DAgger", offline=True),
                   Arm("SOP + HG-DAgger"), Arm("SOP + RECAP", algorithm="recap")),
}  # fmt: skip


@dataclass(frozen=True)
class ExperimentConfig:
    experiment: str
    seeds: tuple[int, ...] = (0, 1, 2)
    sim_minutes: float = 6.0  # each run's span of simulated time (the learner's budget: rate x this)
    bin_minutes: float = 0.5
    final_minutes: float = 1.0  # success at the budget: over this last stretch
    thresholds: tuple[float, ...] = (0.8, 0.5)  # time to each, and its speed-up over the first arm
    block: int = 3  # episodes of one task a robot runs before the next
    wall_minutes: float = 180.0  # bound on any one run
    learner_yaml: str = "config/experiment_learner.yaml"
    robot_yaml: str = "config/fleet_sim.yaml"
    out: str = "runs/experiments"
    results: str = "docs/results"

    def __post_init__(self) -> None:
        require(self.experiment in ARMS, "experiment", self.experiment, f"must be one of {', '.join(ARMS)}")
        require(bool(self.seeds), "seeds", self.seeds, "must name at least one seed")
        require(self.sim_minutes > 0, "sim_minutes", self.sim_minutes, "must be > 0")
        require(self.bin_minutes > 0, "bin_minutes", self.bin_minutes, "must be > 0")
        require(self.block >= 1, "block", self.block, "must be >= 1")
        require(0 < self.final_minutes <= self.sim_minutes, "final_minutes", self.final_minutes,
                f"must be in (0, sim_minutes={self.sim_minutes:g}]")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Running the sweep
# ---------------------------------------------------------------------------------------------------------


def run_experiment(config: ExperimentConfig) -> dict:
    from sop_ros.sim.demo import prepare

    out = Path(config.out) / config.experiment
    learner = load_config(LearnerConfig, config.learner_yaml)
    if not learner.pace.steps_per_sim_minute:
        raise ConfigError(f"{config.learner_yaml}: pace.steps_per_sim_minute must be > 0 (experiments are paced)")
    learner = prepare(Path(config.out) / "shared", learner)  # demonstrations and the base policy, once
    arms = ARMS[config.experiment]
    runs = [(arm, seed) for seed in config.seeds for arm in arms]  # seed by seed: every arm has data early
    started = time.monotonic()
    for i, (arm, seed) in enumerate(runs):
        run_dir = out / arm.slug / f"seed{seed}"
        if (run_dir / "fleet_run.json").exists():
            print(f"sop experiment {config.experiment}: [{i + 1}/{len(runs)}] {arm.name}, seed {seed}: done before")
            continue
        elapsed = (time.monotonic() - started) / 60
        print(f"sop experiment {config.experiment}: [{i + 1}/{len(runs)}] {arm.name}, seed {seed} -> {run_dir} "
              f"({elapsed:.0f} min into this sweep)", flush=True)  # fmt: skip
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts over
        run_arm(config, arm, seed, learner, run_dir)
        write_report(config, out)
    return write_report(config, out)


def run_arm(config: ExperimentConfig, arm: Arm, seed: int, learner: LearnerConfig, run_dir: Path) -> dict:
    """One paced fleet run of `arm` (two for offline HG-DAgger: the collection, then the deployment)."""
    from sop_ros.learner.online import FINAL_POLICY

    learner = arm_learner(arm, learner, Path(config.out) / "shared")
    if arm.offline:  # collect with the base policy for the budget, retrain once on it, deploy the result
        collect = run_dir / "collection"
        fleet(config, dataclasses.replace(learner, publish_every_steps=NEVER), arm.robots, seed, collect)
        trained = run_dir / "offline_learner"
        offline = dataclasses.replace(
            learner, store_dir=str(collect / "store"), serve_robots=False, checkpoint_dir=str(trained),
            pace=PaceConfig(), max_steps=round(config.sim_minutes * learner.pace.steps_per_sim_minute),
            publish_every_steps=NEVER, policies=dataclasses.replace(
                learner.policies, registry_dir=str(trained / "policies"),
                private_key=str(collect / "keys" / "policy_signing.key")))  # fmt: skip
        offline_yaml = run_dir / "offline_learner.yaml"  # the same learner budget, on the collection's store
        offline_yaml.write_text(yaml.safe_dump(to_dict(offline), sort_keys=False))
        learn_offline(offline_yaml)
        learner = dataclasses.replace(learner, base_policy=str(trained / FINAL_POLICY), publish_every_steps=NEVER)
    if not arm.algorithm:
        learner = dataclasses.replace(learner, publish_every_steps=NEVER)
    return fleet(config, learner, arm.robots, seed, run_dir, results=True)


def arm_learner(arm: Arm, learner: LearnerConfig, shared: Path) -> LearnerConfig:
    """The learner of `arm`: its algorithm, and its base policy pretrained on its share of demonstrations."""
    learner = dataclasses.replace(learner, algorithm=arm.algorithm or "hg_dagger")
    if not arm.demos_per_task:
        return learner
    from sop_ros.sim.demo import pretrain_base

    base = shared / f"base_{arm.demos_per_task}_per_task.pt"
    if not base.exists():
        print(f"pretraining a base policy on {arm.demos_per_task} demonstrations per task -> {base}", flush=True)
        pretrain_base(Path(learner.demos_dir), base, arm.demos_per_task)
    return dataclasses.replace(learner, base_policy=str(base), demos_per_task=arm.demos_per_task)


def fleet(config: ExperimentConfig, learner: LearnerConfig, robots: int, seed: int, run_dir: Path,
          results: bool = False) -> dict:  # fmt: skip
    """A paced `sop fleet run`; with `results` its fleet_run.json marks the run done."""
    from sop_ros.sim.online_fleet import run

    run_dir.mkdir(parents=True, exist_ok=True)
    learner_yaml = run_dir / "experiment_learner.yaml"
    learner_yaml.write_text(yaml.safe_dump(to_dict(learner), sort_keys=False))
    work = run_dir / "fleet" if results else run_dir
    report = run(str(learner_yaml), config.robot_yaml, [], robots, config.wall_minutes, config.block, work, None,
                 config.bin_minutes, sim_minutes=config.sim_minutes, seed=seed)  # fmt: skip
    if report["sim_minutes"] is None or not report["episodes"]:
        raise RuntimeError(f"{work}: the run recorded no episodes (see its logs/)")
    if results:
        (run_dir / "fleet_run.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def learn_offline(learner_yaml: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "sop_ros.cli", "learner", "--config", str(learner_yaml)]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"offline training with {learner_yaml} failed (exit {result.returncode})")


# ---------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------


def run_summary(report: dict, config: ExperimentConfig) -> dict:
    """One run: its success per bin of simulated time (the policy's own), at the budget, and time to thresholds.
    Episodes that ended past the budget (robots run up to lead_steps beyond the learner's last step) are left out."""
    curve = [p for p in report["curve"] if p["minute"] <= config.sim_minutes + 1e-9]
    final = [p for p in curve if p["minute"] > config.sim_minutes - config.final_minutes + 1e-9]
    episodes = sum(p["episodes"] for p in final)
    at_budget = sum(p["autonomous_success_rate"] * p["episodes"] for p in final) / episodes if episodes else None
    reached = {}
    for threshold in config.thresholds:
        hit = next((p["minute"] for p in curve if p["autonomous_success_rate"] >= threshold), None)
        reached[f"{threshold:g}"] = hit
    return {
        "seed": report.get("seed"), "robots": report["robots"], "episodes": sum(p["episodes"] for p in curve),
        "episodes_per_sim_hour": round(sum(p["episodes"] for p in curve) / (config.sim_minutes / 60), 1),
        "interventions_per_episode": round(np.mean([p["interventions_per_episode"] for p in curve]), 3),
        "success_at_budget": None if at_budget is None else round(at_budget, 3),
        "labelled_success": round(sum(p["success_rate"] * p["episodes"] for p in curve)
                                  / max(1, sum(p["episodes"] for p in curve)), 3),
        "minutes_to": reached, "learner_steps": report.get("learner_steps"), "wall_minutes": report["wall_minutes"],
        # Learner-bound or data-bound: how many training samples the learner drew per episode the fleet brought.
        "samples_per_episode": round((report.get("learner_steps") or 0) * report["learner"]["batch_size"]
                                     / max(1, sum(p["episodes"] for p in curve)), 1),
        "curve": [(p["minute"], p["autonomous_success_rate"], p["episodes"]) for p in curve],
        "per_task": report["per_task"],
    }  # fmt: skip


def spread(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(float(np.mean(values)), 3), "std": round(float(np.std(values)), 3), "n": len(values)}


def arm_summary(runs: list[dict]) -> dict:
    reached = {t: [r["minutes_to"][t] for r in runs] for t in runs[0]["minutes_to"]} if runs else {}
    return {
        "seeds": [r["seed"] for r in runs],
        "success_at_budget": spread([r["success_at_budget"] for r in runs]),
        "episodes_per_sim_hour": spread([r["episodes_per_sim_hour"] for r in runs]),
        "interventions_per_episode": spread([r["interventions_per_episode"] for r in runs]),
        "samples_per_episode": spread([r["samples_per_episode"] for r in runs]),
        # Time to a threshold, over the seeds that reached it (and how many did).
        "minutes_to": {t: spread(v) | {"reached": sum(x is not None for x in v)} for t, v in reached.items()},
        "runs": runs,
    }


def write_report(config: ExperimentConfig, out: Path) -> dict:
    arms = {}
    for arm in ARMS[config.experiment]:
        runs = []
        for seed in config.seeds:
            path = out / arm.slug / f"seed{seed}" / "fleet_run.json"
            if path.exists():
                runs.append(run_summary(json.loads(path.read_text()), config))
        arms[arm.name] = arm_summary(runs)
    first = next(iter(arms.values()))
    for summary in arms.values():  # speed-up to each threshold over the first arm (1 robot, smallest, baseline)
        summary["speedup"] = {
            t: round(first["minutes_to"][t]["mean"] / summary["minutes_to"][t]["mean"], 2)
            if first.get("minutes_to", {}).get(t, {}).get("mean") and summary["minutes_to"].get(t, {}).get("mean")
            else None for t in summary["minutes_to"]
        }  # fmt: skip
    from sop_ros.bench.inference import machine

    report = {"experiment": config.experiment, "config": dataclasses.asdict(config), "arms": arms,
              "machine": machine()}  # fmt: skip
    results = Path(config.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{config.experiment}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, results / f"{config.experiment}.png")
    (results / f"{config.experiment}.md").write_text(markdown(report))
    return report


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (curve_ax, bar_ax) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    names = list(report["arms"])
    for name, arm in report["arms"].items():
        if not arm["runs"]:
            continue
        minutes = sorted({m for r in arm["runs"] for m, _, _ in r["curve"]})
        per_bin = [[s for r in arm["runs"] for m2, s, _ in r["curve"] if m2 == m] for m in minutes]
        mean = np.array([np.mean(v) for v in per_bin])
        std = np.array([np.std(v) for v in per_bin])
        line = curve_ax.plot(minutes, mean, "o-", label=f"{name} ({len(arm['runs'])} seeds)")[0]
        curve_ax.fill_between(minutes, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    curve_ax.set(xlabel="simulated minutes", ylabel="success without intervention (per bin)", ylim=(-0.02, 1.02),
                 title=f"{report['experiment']}: success over simulated time")  # fmt: skip
    curve_ax.grid(alpha=0.3)
    curve_ax.legend(fontsize=8)
    final = [report["arms"][n]["success_at_budget"] for n in names]
    bar_ax.bar(range(len(names)), [f["mean"] or 0 for f in final], yerr=[f["std"] or 0 for f in final], capsize=4)
    bar_ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    bar_ax.set(ylabel="success at the budget", ylim=(0, 1.02),
               title=f"last {report['config']['final_minutes']:g} simulated min")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell(s: dict, percent: bool = True) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.0%} ± {s['std']:.0%}" if percent else f"{s['mean']:g} ± {s['std']:g}"


def markdown(report: dict) -> str:
    c, m = report["config"], report["machine"]
    seeds = ",".join(str(s) for s in c["seeds"])
    lines = [
        f"# {report['experiment']}", "",
        f"Made by `sop experiment {report['experiment']} --seeds {seeds} --sim-minutes {c['sim_minutes']:g} "
        f"--bin-minutes {c['bin_minutes']:g} --final-minutes {c['final_minutes']:g} --block {c['block']} --config "
        f"{c['learner_yaml']} --robot-config {c['robot_yaml']}`, on {m['cores']} CPU cores ({m['cpu']}), "
        f"{m['system']}, Python {m['python']}, torch {m['torch']}, GPU: {m['gpu'] or 'none'}.", "",
        "Every run went through the real robot nodes, topics, Zenoh bridge and learner, paced by simulated time. "
        "Success: episodes that succeeded without an operator's intervention (mean ± std over seeds). "
        f"At the budget: over the last {c['final_minutes']:g} of {c['sim_minutes']:g} simulated minutes.", "",
        "| arm | seeds | success at the budget | " + " | ".join(f"min to {t:.0%} (reached)" for t in c["thresholds"]) +
        " | speed-up | episodes / sim h | interventions / episode | learner samples / episode |",
        "|---|---|---|" + "---|" * len(c["thresholds"]) + "---|---|---|---|",
    ]  # fmt: skip
    for name, arm in report["arms"].items():
        to = [f"{_cell(arm['minutes_to'][f'{t:g}'], False)} ({arm['minutes_to'][f'{t:g}']['reached']}/"
              f"{len(arm['runs'])})" if arm["runs"] else "-" for t in c["thresholds"]]  # fmt: skip
        speedup = ", ".join(f"{v:g}x to {float(t):.0%}" for t, v in arm.get("speedup", {}).items() if v) or "-"
        lines.append(f"| {name} | {len(arm['runs'])} | {_cell(arm['success_at_budget'])} | " + " | ".join(to) +
                     f" | {speedup} | {_cell(arm['episodes_per_sim_hour'], False)} | "
                     f"{_cell(arm['interventions_per_episode'], False)} | "
                     f"{_cell(arm['samples_per_episode'], False)} |")  # fmt: skip
    lines += ["", f"![success over simulated time]({report['experiment']}.png)", ""]
    return "\n".join(lines)
