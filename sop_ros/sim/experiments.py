"""`sop experiment`: the published system's three questions on a simulated fleet, each a sweep of paced fleet runs.

    fleet-scaling    1, 2 and 4 robots: the same learner budget per simulated minute, more experience
    pretrain-scale   base policies pretrained on three amounts of demonstrations, then the same online budget
    algorithms       pretrained only, offline HG-DAgger, SOP + HG-DAgger, SOP + RECAP at equal budgets

Every run is `sop fleet run` (sop_ros/sim/online_fleet.py): the real robot nodes and topics, the Zenoh bridge
and the learner, paced by simulated time so that results do not depend on this host's speed. A run lives in
<out>/<experiment>/<arm>/seed<k>; a finished one holds fleet_run.json and is not run again, so an interrupted
sweep resumes at its first unfinished run (which starts over). After every run the report is written again:
<results>/<experiment>.json, .png and .md. Each run in it carries its setup key (the settings, the YAMLs' contents,
the arm and its base policy's recipe; the recipe rather than the weights, as pretraining is not bit-for-bit
repeatable): a sweep on another clone or machine takes the committed report's runs with its own key as done, so
seeds add up across sweeps; a run made with another setup is made again.

Success is the policy's own, as `sop eval` scores it: every `eval_every_minutes` of simulated time, the policy the
learner had made by then runs on the simulated robots with no operator, on the same evaluation seeds for every arm
and run (so runs differ only by their policies; a policy scored once, by its sha256, is not scored again). "At the
budget" is the score of the run's final policy; "time to X" is the first scoring time at which it reached X. The
fleet's own episodes give the secondary figures: their success without intervention (the scripted operator takes
over when it judges the policy failing, so it reads lower than the policy's own score), episodes per simulated
hour, interventions per episode.

fleet-scaling also runs probes, to show why a fleet did or did not learn faster: a finished run's whole store
retrained offline from the same base with the run's learner steps, or twice as many, and scored the same way.
They sit in <out>/<experiment>/probes/ and are carried across clones by setup key, as the runs are.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
    eval_every_minutes: float = 1.0  # the learner's policy is scored at 0, this, 2 x this, ... simulated minutes
    eval_episodes_per_task: int = 10
    eval_robots: int = 2
    eval_robot_yaml: str = "config/sim_policy.yaml"
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
        require(0 < self.eval_every_minutes <= self.sim_minutes, "eval_every_minutes", self.eval_every_minutes,
                f"must be in (0, sim_minutes={self.sim_minutes:g}]")  # fmt: skip
        require(self.eval_episodes_per_task >= 1, "eval_episodes_per_task", self.eval_episodes_per_task, "must be >= 1")
        require(self.eval_robots >= 1, "eval_robots", self.eval_robots, "must be >= 1")

    @property
    def eval_minutes(self) -> list[float]:
        """When the learner's policy is scored: 0 (the base), every eval_every_minutes, and the budget's end."""
        n = int(self.sim_minutes / self.eval_every_minutes + 1e-9)
        minutes = [round(k * self.eval_every_minutes, 6) for k in range(n + 1)]
        return minutes if minutes[-1] >= self.sim_minutes - 1e-9 else [*minutes, self.sim_minutes]


# ---------------------------------------------------------------------------------------------------------
# Running the sweep
# ---------------------------------------------------------------------------------------------------------


def run_experiment(config: ExperimentConfig, report_only: bool = False) -> dict:
    """The sweep (its finished runs skipped), then its report; `report_only`: the report of the finished runs."""
    from sop_ros.sim.demo import prepare

    out = Path(config.out) / config.experiment
    learner = load_config(LearnerConfig, config.learner_yaml)
    if not learner.pace.steps_per_sim_minute:
        raise ConfigError(f"{config.learner_yaml}: pace.steps_per_sim_minute must be > 0 (experiments are paced)")
    arms = ARMS[config.experiment]
    keys = {arm.name: setup_key(config, arm) for arm in arms}
    committed, carried_probes = committed_runs(config, keys), committed_probes(config, keys)
    if report_only:
        return write_report(config, out, keys, committed, carried_probes)
    learner = prepare(Path(config.out) / "shared", learner)  # demonstrations and the base policy, once
    runs = [(arm, seed) for seed in config.seeds for arm in arms]  # seed by seed: every arm has data early
    started = time.monotonic()
    for i, (arm, seed) in enumerate(runs):
        if run_probes(config, out, keys, learner, carried_probes):
            write_report(config, out, keys, committed, carried_probes)
        run_dir = out / arm.slug / f"seed{seed}"
        name = f"sop experiment {config.experiment}: [{i + 1}/{len(runs)}] {arm.name}, seed {seed}"
        local = run_setup(run_dir)
        if is_finished(run_dir, keys[arm.name]):
            print(f"{name}: done before")
            continue
        if (arm.name, seed) in committed and local is None:
            print(f"{name}: done before, in {Path(config.results) / config.experiment}.json (setup {keys[arm.name]})")
            continue
        elapsed = (time.monotonic() - started) / 60
        if local != keys[arm.name] or not (run_dir / "fleet_run.json").exists():
            print(f"{name} -> {run_dir} ({elapsed:.0f} min into this sweep)", flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run, or one of another setup, starts over
            run_dir.mkdir(parents=True)
            (run_dir / SETUP).write_text(keys[arm.name] + "\n")
            run_arm(config, arm, seed, learner, run_dir)
        print(f"{name}: scoring its policies over simulated time", flush=True)
        score_run(config, run_dir, learner.pace.steps_per_sim_minute)
        write_report(config, out, keys, committed, carried_probes)
    run_probes(config, out, keys, learner, carried_probes)
    return write_report(config, out, keys, committed, carried_probes)


SETUP = "setup.txt"  # in a run's directory: the setup key it was made with


def setup_key(config: ExperimentConfig, arm: Arm) -> str:
    """What a run's figures depend on besides its seed and the code: the sweep's settings, the contents of the YAML
    files it names, the arm and the recipe of its base policy (16 hex digits of their sha256)."""
    from sop_ros.checksums import file_sha256
    from sop_ros.sim.demo import base_recipe

    ignored = ("experiment", "seeds", "wall_minutes", "out", "results")
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignored}
    for name in ("learner_yaml", "robot_yaml", "eval_robot_yaml"):
        settings[name] = file_sha256(settings[name])
    settings["arm"] = dataclasses.asdict(arm)
    settings["base_policy"] = base_recipe(arm.demos_per_task)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run_setup(run_dir: Path) -> str | None:
    return (run_dir / SETUP).read_text().strip() if (run_dir / SETUP).exists() else None


def is_finished(run_dir: Path, key: str) -> bool:
    """Whether the run in `run_dir` was made with setup `key` and scored."""
    return run_setup(run_dir) == key and (run_dir / SCORES).exists()


def committed_runs(config: ExperimentConfig, keys: dict[str, str]) -> dict[tuple[str, int], dict]:
    """The runs of the report already in `config.results` that match this sweep's arms, seeds and setup keys."""
    path = Path(config.results) / f"{config.experiment}.json"
    if not path.exists():
        return {}
    carried, other = {}, 0
    for name, arm in json.loads(path.read_text()).get("arms", {}).items():
        for run in arm.get("runs", []):
            if name in keys and run.get("setup") == keys[name] and run["seed"] in config.seeds:
                carried[(name, run["seed"])] = run
            else:
                other += 1
    if other:
        print(f"{path}: {other} runs of other arms, seeds or setups are not carried into this report")
    return carried


def run_arm(config: ExperimentConfig, arm: Arm, seed: int, learner: LearnerConfig, run_dir: Path) -> dict:
    """One paced fleet run of `arm` (two for offline HG-DAgger: the collection, then the deployment)."""
    learner, offline = arm_learner(arm, learner, Path(config.out) / "shared"), None
    if arm.offline:  # collect with the base policy for the budget, retrain once on it, deploy the result
        base_run = base_policy_run(config, arm, seed)
        if base_run is not None:  # the same fleet on the same seeds: its episodes are this collection's
            collect, collected = base_run / "fleet", json.loads((base_run / "fleet_run.json").read_text())
            print(f"offline HG-DAgger: collected by {base_run} (the base policy's run, same seed)", flush=True)
        else:
            collect = run_dir / "collection"
            collected = fleet(config, dataclasses.replace(learner, publish_every_steps=NEVER), arm.robots, seed,
                              collect)  # fmt: skip
        steps = budget_steps(config, learner)
        trained = train_offline(learner, collect, run_dir / "offline_learner", steps)
        learner = dataclasses.replace(learner, base_policy=str(trained), publish_every_steps=NEVER)
        offline = {"learner_steps": steps, "episodes": collected["episodes"]}
    if not arm.algorithm:
        learner = dataclasses.replace(learner, publish_every_steps=NEVER)
    return fleet(config, learner, arm.robots, seed, run_dir, results=True, offline_training=offline)


def base_policy_run(config: ExperimentConfig, arm: Arm, seed: int) -> Path | None:
    """This sweep's finished run whose robots kept the base policy (an arm with no online algorithm) with `arm`'s
    fleet and base, on `seed`: its fleet's store is the collection offline training needs."""
    for other in ARMS[config.experiment]:
        if other.algorithm or other.offline or (other.robots, other.demos_per_task) != (arm.robots, arm.demos_per_task):
            continue
        run_dir = Path(config.out) / config.experiment / other.slug / f"seed{seed}"
        if run_setup(run_dir) == setup_key(config, other) and (run_dir / "fleet_run.json").exists():
            return run_dir
    return None


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
          results: bool = False, offline_training: dict | None = None) -> dict:  # fmt: skip
    """A paced `sop fleet run`; with `results` its fleet_run.json marks the run done (with `offline_training`: the
    learner steps and collected episodes that made the policy it deployed)."""
    from sop_ros.sim.online_fleet import run

    run_dir.mkdir(parents=True, exist_ok=True)
    learner_yaml = run_dir / "experiment_learner.yaml"
    learner_yaml.write_text(yaml.safe_dump(to_dict(learner), sort_keys=False))
    work = run_dir / "fleet" if results else run_dir
    report = run(str(learner_yaml), config.robot_yaml, [], robots, config.wall_minutes, config.block, work, None,
                 config.bin_minutes, sim_minutes=config.sim_minutes, seed=seed)  # fmt: skip
    if report["sim_minutes"] is None or not report["episodes"]:
        raise RuntimeError(f"{work}: the run recorded no episodes (see its logs/)")
    if offline_training:
        report["offline_training"] = offline_training
    if results:
        (run_dir / "fleet_run.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def budget_steps(config: ExperimentConfig, learner: LearnerConfig) -> int:
    """A run's learner budget: its steps per simulated minute over the run's simulated minutes."""
    return round(config.sim_minutes * learner.pace.steps_per_sim_minute)


def train_offline(learner: LearnerConfig, fleet_dir: Path, out: Path, steps: int) -> Path:
    """`learner` trained from its base for `steps` unpaced steps on the finished store of the fleet run in
    `fleet_dir` (no robots served), into `out`; returns its final policy."""
    from sop_ros.learner.online import FINAL_POLICY

    offline = dataclasses.replace(
        learner, store_dir=str(fleet_dir / "store"), serve_robots=False, checkpoint_dir=str(out),
        pace=PaceConfig(), max_steps=steps, publish_every_steps=NEVER, policies=dataclasses.replace(
            learner.policies, registry_dir=str(out / "policies"),
            private_key=str(fleet_dir / "keys" / "policy_signing.key")))  # fmt: skip
    learner_yaml = out.parent / f"{out.name}.yaml"
    learner_yaml.write_text(yaml.safe_dump(to_dict(offline), sort_keys=False))
    learn_offline(learner_yaml)
    return out / FINAL_POLICY


def learn_offline(learner_yaml: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-m", "sop_ros.cli", "learner", "--config", str(learner_yaml)]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"offline training with {learner_yaml} failed (exit {result.returncode})")


# ---------------------------------------------------------------------------------------------------------
# Probes: why a fleet did (not) learn faster, from a finished run's store retrained offline
# ---------------------------------------------------------------------------------------------------------

# (arm, times a run's learner budget): the largest fleet's store with the same steps (online, did the learner
# spend them before the data came?) and twice as many (learner-bound?), the smallest fleet's with the same steps
# (what the larger fleet's data is worth once the learner has time for it).
PROBES = {"fleet-scaling": (("1 robot", 1), ("4 robots", 1), ("4 robots", 2))}
PROBE = "probe.json"  # in <out>/<experiment>/probes/<arm>-x<times>: the probe's result; it is done


def probe_dir(out: Path, arm: str, times: int) -> Path:
    return out / "probes" / f"{Arm(arm).slug}-x{times}"


def run_probes(config: ExperimentConfig, out: Path, keys: dict[str, str], learner: LearnerConfig,
               carried: dict[tuple[str, int], dict]) -> bool:  # fmt: skip
    """Run every probe of the experiment whose arm has a finished run here and that is not done or carried;
    whether any ran."""
    from sop_ros.learner.episode_store import stored_episodes
    from sop_ros.model.export import export_onnx

    arms, ran = {arm.name: arm for arm in ARMS[config.experiment]}, False
    for name, times in PROBES.get(config.experiment, ()):
        where = probe_dir(out, name, times)
        if (name, times) in carried or run_setup(where) == keys[name] and (where / PROBE).exists():
            continue
        finished = [s for s in config.seeds if is_finished(out / arms[name].slug / f"seed{s}", keys[name])]
        if not finished:
            continue  # no finished run of this arm here yet
        seed, run_dir = finished[0], out / arms[name].slug / f"seed{finished[0]}"
        steps = times * budget_steps(config, learner)
        print(f"sop experiment {config.experiment}: probe: {name} seed {seed}'s store retrained offline for {steps} "
              f"learner steps -> {where}", flush=True)  # fmt: skip
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        (where / SETUP).write_text(keys[name] + "\n")
        policy = train_offline(arm_learner(arms[name], learner, Path(config.out) / "shared"), run_dir / "fleet",
                               where / "learner", steps)  # fmt: skip
        export_onnx(policy, policy.with_suffix(".onnx"))  # scored as the online runs' policies are: ONNX
        score = evaluate_once(config, policy.with_suffix(".onnx"))
        online = json.loads((run_dir / SCORES).read_text())[-1]
        (where / PROBE).write_text(json.dumps({
            "arm": name, "seed": seed, "times_budget": times, "learner_steps": steps,
            "episodes": len(stored_episodes(run_dir / "fleet" / "store")), "online_success": online["success"],
            "success": score["mean_success_rate"],
            "per_task": {t: v["success_rate"] for t, v in score["tasks"].items()}, "setup": keys[name],
        }, indent=2) + "\n")  # fmt: skip
        ran = True
    return ran


def probes_made(config: ExperimentConfig, out: Path, keys: dict[str, str],
                carried: dict[tuple[str, int], dict]) -> list[dict]:  # fmt: skip
    """The experiment's probes done: here with the arm's setup key, else carried from the committed report."""
    made = []
    for name, times in PROBES.get(config.experiment, ()):
        where = probe_dir(out, name, times)
        if run_setup(where) == keys[name] and (where / PROBE).exists():
            made.append(json.loads((where / PROBE).read_text()))
        elif (name, times) in carried:
            made.append(carried[(name, times)])
    return made


def committed_probes(config: ExperimentConfig, keys: dict[str, str]) -> dict[tuple[str, int], dict]:
    """The committed report's probes made with this sweep's setup keys."""
    path = Path(config.results) / f"{config.experiment}.json"
    probes = json.loads(path.read_text()).get("probes", []) if path.exists() else []
    return {(p["arm"], p["times_budget"]): p for p in probes if p.get("setup") == keys.get(p["arm"])}


# ---------------------------------------------------------------------------------------------------------
# Scoring: the learner's policy over simulated time, by `sop eval`
# ---------------------------------------------------------------------------------------------------------

SCORES = "scores.json"  # beside a run's fleet_run.json: its policy's score at every scoring time; the run is done


def policies_made(registry_dir: Path) -> list[tuple[int, str]]:
    """(learner step that made it, version) of every published policy; the base, published first, at step 0."""
    from sop_ros.learner.policy_registry import LATEST, PolicyRegistry

    registry = PolicyRegistry(registry_dir)
    made = []
    for path in sorted(registry_dir.glob("*.json")):
        if path.name != LATEST:
            announcement = registry.announcement(path.name)
            made.append((int(announcement.metrics.get("step", 0)), announcement.version))
    return made


def publishes_nothing(report: dict) -> bool:
    """Whether the learner of the fleet run in `report` sent its robots no policy: they ran the one they started on."""
    return report["learner"]["publish_every_steps"] >= NEVER


def score_run(config: ExperimentConfig, run_dir: Path, steps_per_sim_minute: float) -> list[dict]:
    """The run's policy at each of `config.eval_minutes`: the newest the learner had made by then, scored; for a
    learner that publishes nothing to its robots, the policy they started on (its final checkpoint never ran)."""
    from sop_ros.sim.pace import scheduled_policy

    registry = run_dir / "fleet" / "policies"
    made = policies_made(registry)
    if not made:
        raise RuntimeError(f"{registry}: no published policy to score")
    if publishes_nothing(json.loads((run_dir / "fleet_run.json").read_text())):
        made = made[:1]
    points = []
    for minute in config.eval_minutes:
        version = scheduled_policy(made, int(minute * steps_per_sim_minute + 1e-9))
        score = evaluate_once(config, registry / f"{version}.onnx")
        points.append({"minute": minute, "version": version, "success": score["mean_success_rate"],
                       "per_task": {t: v["success_rate"] for t, v in score["tasks"].items()}})  # fmt: skip
    (run_dir / SCORES).write_text(json.dumps(points, indent=2) + "\n")
    return points


def evaluate_once(config: ExperimentConfig, policy: Path) -> dict:
    """`sop eval` of `policy` on the experiment's tasks and evaluation seeds, kept under the policy's sha256."""
    from sop_ros.checksums import file_sha256
    from sop_ros.sim.evaluate import evaluate

    learner = load_config(LearnerConfig, config.learner_yaml)
    key = f"{file_sha256(policy)[:16]}-{config.eval_episodes_per_task}x{len(learner.tasks)}"
    out = Path(config.out) / "scores" / key
    if (out / "eval.json").exists():
        report = json.loads((out / "eval.json").read_text())
        if scored_in_full(report, config.eval_episodes_per_task):
            return report
    shutil.rmtree(out, ignore_errors=True)
    report = evaluate(str(policy), config.eval_robot_yaml, list(learner.tasks), config.eval_episodes_per_task,
                      config.eval_robots, out)  # fmt: skip
    if not scored_in_full(report, config.eval_episodes_per_task):
        raise RuntimeError(f"scoring {policy} failed ({report['failed']}, missing {report['missing_tasks']}): "
                           f"see {out}")  # fmt: skip
    if report["failed"]:  # e.g. a node killed at its stop, after the last episode was recorded
        print(f"scoring {policy}: every episode recorded, though {'; '.join(report['failed'])}", flush=True)
    return report


def scored_in_full(report: dict, episodes_per_task: int) -> bool:
    """Every task has all its evaluation episodes recorded: the score stands, whatever a robot's exit code."""
    return not report["missing_tasks"] and all(t["episodes"] == episodes_per_task for t in report["tasks"].values())


# ---------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------


def run_summary(report: dict, scores: list[dict], config: ExperimentConfig, setup: str, made_on: str) -> dict:
    """One run: its policy's score over simulated time, at the budget and time to thresholds; and its fleet's
    episodes (those that ended past the budget, as robots run up to lead_steps beyond the learner's last step, are
    left out)."""
    curve = [p for p in report["curve"] if p["minute"] <= config.sim_minutes + 1e-9]
    final = [p for p in curve if p["minute"] > config.sim_minutes - config.final_minutes + 1e-9]
    episodes = sum(p["episodes"] for p in curve)
    final_episodes = sum(p["episodes"] for p in final)
    reached = {f"{t:g}": next((p["minute"] for p in scores if p["success"] >= t), None) for t in config.thresholds}
    return {
        "seed": report.get("seed"), "robots": report["robots"], "episodes": episodes,
        "success_at_budget": scores[-1]["success"], "per_task_at_budget": scores[-1]["per_task"],
        "minutes_to": reached, "scores": [(p["minute"], p["success"], p["version"]) for p in scores],
        "fleet_autonomous_at_budget": round(sum(p["autonomous_success_rate"] * p["episodes"] for p in final)
                                            / final_episodes, 3) if final_episodes else None,
        "labelled_success": round(sum(p["success_rate"] * p["episodes"] for p in curve) / max(1, episodes), 3),
        "episodes_per_sim_hour": round(episodes / (config.sim_minutes / 60), 1),
        "interventions_per_episode": round(np.mean([p["interventions_per_episode"] for p in curve]), 3),
        "learner_steps": report.get("learner_steps"), "wall_minutes": report["wall_minutes"],
        "samples_per_episode": samples_per_episode(report, episodes),
        "fleet_curve": [(p["minute"], p["autonomous_success_rate"], p["episodes"]) for p in curve],
        "setup": setup, "machine": made_on,
    }  # fmt: skip


def samples_per_episode(report: dict, episodes: int) -> float | None:
    """Learner-bound or data-bound: the training samples the learner drew per episode the fleet brought (offline
    HG-DAgger: per episode of its collection; none for a learner that publishes nothing to its robots)."""
    batch, offline = report["learner"]["batch_size"], report.get("offline_training")
    if offline:
        return round(offline["learner_steps"] * batch / max(1, offline["episodes"]), 1)
    if publishes_nothing(report):
        return None
    return round((report.get("learner_steps") or 0) * batch / max(1, episodes), 1)


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
        "per_task_at_budget": {t: spread([r["per_task_at_budget"].get(t) for r in runs])
                               for t in (runs[0]["per_task_at_budget"] if runs else {})},
        "fleet_autonomous_at_budget": spread([r["fleet_autonomous_at_budget"] for r in runs]),
        "episodes_per_sim_hour": spread([r["episodes_per_sim_hour"] for r in runs]),
        "interventions_per_episode": spread([r["interventions_per_episode"] for r in runs]),
        "samples_per_episode": spread([r["samples_per_episode"] for r in runs]),
        # Time to a threshold, over the seeds that reached it (and how many did).
        "minutes_to": {t: spread(v) | {"reached": sum(x is not None for x in v)} for t, v in reached.items()},
        "runs": runs,
    }


def speedup(first: dict, arm: dict, threshold: str, budget: float) -> str | None:
    """How many times sooner `arm` reached `threshold` than `first` (means over seeds, every seed reaching it);
    a lower bound (">") when `first` reached it in no seed within the budget."""
    mine, theirs = arm["minutes_to"].get(threshold, {}), first["minutes_to"].get(threshold, {})
    runs, first_runs = len(arm["runs"]), len(first["runs"])
    if not runs or mine.get("reached") != runs or not mine["mean"]:
        return None
    if first_runs and theirs.get("reached") == first_runs and theirs["mean"]:
        return f"{theirs['mean'] / mine['mean']:.2g}"
    if first_runs and theirs.get("reached") == 0:
        return f">{budget / mine['mean']:.2g}"
    return None


def write_report(config: ExperimentConfig, out: Path, keys: dict[str, str], committed: dict[tuple[str, int], dict],
                 carried_probes: dict[tuple[str, int], dict]) -> dict:  # fmt: skip
    """The report of this sweep's runs and probes (each: this clone's if made with the arm's setup key, else the
    committed report's)."""
    from sop_ros.bench.inference import machine

    host = machine()
    made_on = f"{host['cores']} CPU cores ({host['cpu']}), GPU: {host['gpu'] or 'none'}"  # this clone's runs
    arms = {}
    for arm in ARMS[config.experiment]:
        runs = []
        for seed in config.seeds:
            run_dir = out / arm.slug / f"seed{seed}"
            if is_finished(run_dir, keys[arm.name]):
                report, scores = (json.loads((run_dir / name).read_text()) for name in ("fleet_run.json", SCORES))
                runs.append(run_summary(report, scores, config, keys[arm.name], made_on))
            elif (arm.name, seed) in committed:
                runs.append(committed[(arm.name, seed)])
        arms[arm.name] = arm_summary(runs)
    first = next(iter(arms.values()))
    for summary in arms.values():  # speed-up to each threshold over the first arm (1 robot, smallest, baseline)
        summary["speedup"] = {t: speedup(first, summary, t, config.sim_minutes) for t in summary["minutes_to"]}
    report = {"experiment": config.experiment, "config": dataclasses.asdict(config), "arms": arms,
              "probes": probes_made(config, out, keys, carried_probes), "machine": host}  # fmt: skip
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
        minutes, mean, std = _mean_curve([r["scores"] for r in arm["runs"]])
        line = curve_ax.plot(minutes, mean, "o-", label=f"{name} ({len(arm['runs'])} seeds)")[0]
        curve_ax.fill_between(minutes, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        fleet_minutes, fleet_mean, _ = _mean_curve([r["fleet_curve"] for r in arm["runs"]])
        curve_ax.plot(fleet_minutes, fleet_mean, ":", color=line.get_color(), alpha=0.7)
    curve_ax.set(xlabel="simulated minutes", ylabel="success (sop eval; dotted: fleet, no intervention)",
                 ylim=(-0.02, 1.02), title=f"{report['experiment']}: success over simulated time")  # fmt: skip
    curve_ax.grid(alpha=0.3)
    curve_ax.legend(fontsize=8)
    final = [report["arms"][n]["success_at_budget"] for n in names]
    bar_ax.bar(range(len(names)), [f["mean"] or 0 for f in final], yerr=[f["std"] or 0 for f in final], capsize=4)
    bar_ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    bar_ax.set(ylabel="success at the budget", ylim=(0, 1.02),
               title=f"final policy ({report['config']['sim_minutes']:g} simulated min, sop eval)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mean_curve(curves: list[list]) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Mean and std over runs of (minute, value, ...) points, at every minute any run has."""
    minutes = sorted({point[0] for curve in curves for point in curve})
    values = [[point[1] for curve in curves for point in curve if point[0] == m] for m in minutes]
    return minutes, np.array([np.mean(v) for v in values]), np.array([np.std(v) for v in values])


def _minute_cells(success_at: dict[float, float], minutes: list[float]) -> str:
    """A table row's success cells, one per scoring minute ("-" where this row has none)."""
    return " | ".join(f"{success_at[m]:.0%}" if m in success_at else "-" for m in minutes)


def _cell(s: dict, percent: bool = True) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.0%} ± {s['std']:.0%}" if percent else f"{s['mean']:.4g} ± {s['std']:.3g}"


SPEEDUP_TARGET = {"fleet-scaling": ("4 robots", "0.8", 3.0)}  # arm, threshold, times faster than the first arm


def speedup_verdict(report: dict) -> str:
    """The target's line: met, missed, or not measured yet (and why)."""
    name, threshold, target = SPEEDUP_TARGET[report["experiment"]]
    first_name, first = next(iter(report["arms"].items()))
    arm, goal = report["arms"][name], f"{name} at least {target:g}x faster than {first_name} to {float(threshold):.0%}"
    value = arm.get("speedup", {}).get(threshold)
    if value is None:
        reached = {n: f"{a['minutes_to'][threshold]['reached']}/{len(a['runs'])}" for n, a in (
            (first_name, first), (name, arm)) if a["runs"]}  # fmt: skip
        return (f"Target ({goal}): not measured: runs that reached {float(threshold):.0%} within the budget: "
                + (", ".join(f"{n} {r}" for n, r in reached.items()) or "none yet") + ".")
    met = float(value.lstrip(">")) >= target
    bound = " (a lower bound: the first arm never reached it)" if value.startswith(">") else ""
    return f"Target ({goal}): {value}x{bound}, {'met' if met else 'missed'}."


def compare_scores(a: float, b: float, episodes_a: int, episodes_b: int, noise_of: str) -> tuple[str, bool]:
    """a - b, with the binomial standard error of a difference of two success rates over so many episodes; and
    whether the difference is beyond the noise (two standard errors)."""
    se = (a * (1 - a) / episodes_a + b * (1 - b) / episodes_b) ** 0.5
    beyond = abs(a - b) > 2 * se
    noise = "beyond" if beyond else "within"
    return f"{a:.0%} vs {b:.0%} ({a - b:+.0%} ± {se:.0%}, {noise} {noise_of})", beyond


# The published system's claims each experiment tests: (arm a, at the budget or at minute 0; arm b, ...; the claim).
CLAIMS = {
    "pretrain-scale": (
        (("2 demos per task", "budget"), ("10 demos per task", "base"),
         "online experience beats 5x more pretraining data (published: 4x)"),
        (("10 demos per task", "budget"), ("2 demos per task", "budget"),
         "more pretraining still helps after the same online budget"),
    ),
    "algorithms": (
        (("SOP + HG-DAgger", "budget"), ("offline HG-DAgger", "budget"),
         "online beats offline HG-DAgger on the same budget of experience"),
        (("SOP + HG-DAgger", "budget"), ("pretrained only", "budget"), "SOP + HG-DAgger improves on the base policy"),
        (("SOP + RECAP", "budget"), ("pretrained only", "budget"), "SOP + RECAP improves on the base policy"),
        (("SOP + RECAP", "budget"), ("SOP + HG-DAgger", "budget"), "RECAP beats HG-DAgger online"),
    ),
}


def claim_lines(report: dict) -> list[str]:
    """Each claim of the experiment against its runs: the two arms' mean scores over seeds, and whether their
    difference is beyond the scores' noise (over the evaluation episodes of every distinct policy scored: a base
    policy, the same in every seed, is one score)."""
    c, arms = report["config"], report["arms"]
    label = {"budget": "at the budget", "base": "its base policy, before any online training"}
    lines = []
    for (a, when_a), (b, when_b), claim in CLAIMS.get(report["experiment"], ()):
        if not arms[a]["runs"] or not arms[b]["runs"]:
            continue
        score, episodes = {}, {}
        for name, when in ((a, when_a), (b, when_b)):
            runs = arms[name]["runs"]
            points = [r["scores"][-1 if when == "budget" else 0] for r in runs]  # (minute, success, version)
            score[name] = float(np.mean([p[1] for p in points]))
            policies = len({p[2] for p in points})
            episodes[name] = c["eval_episodes_per_task"] * len(runs[0]["per_task_at_budget"]) * policies
        verdict, beyond = compare_scores(score[a], score[b], episodes[a], episodes[b],
                                         f"the noise of {episodes[a]} and {episodes[b]} episodes")  # fmt: skip
        holds = "holds" if score[a] > score[b] and beyond else "not shown"
        lines.append(f"- {claim}: {holds}. {a} {label[when_a]} vs {b} {label[when_b]}: {verdict}.")
    return ["", "The published system's claims, tested (mean over seeds):", "", *lines] if lines else []


def probe_lines(report: dict) -> list[str]:
    """The probes' table and what each comparison shows, beyond the scores' noise or within it."""
    probes = {(p["arm"], p["times_budget"]): p for p in report.get("probes", [])}
    if not probes:
        return []
    c = report["config"]
    episodes = c["eval_episodes_per_task"] * max(len(p["per_task"]) for p in probes.values())
    lines = ["", "Why: is the learner or the data the limit? A finished run's whole store (demonstrations mixed in, "
             "as online) retrained offline from the same base with the run's learner steps or twice as many, "
             "scored by `sop eval` as above:", "",
             "| store of | seed | episodes | learner steps | online, at the budget | offline, after all its data |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for p in probes.values():
        lines.append(f"| {p['arm']} | {p['seed']} | {p['episodes']} | {p['learner_steps']} | "
                     f"{p['online_success']:.0%} | {p['success']:.0%} |")  # fmt: skip

    def compare(a: float, b: float) -> str:
        return compare_scores(a, b, episodes, episodes, f"the noise of {episodes} episodes a score")[0]

    (small, _), (large, _), _ = PROBES[report["experiment"]]
    small_store, same, double = probes.get((small, 1)), probes.get((large, 1)), probes.get((large, 2))
    if same:
        lines.append(f"\n- {large}: its budget spent after all its data had come, against online: "
                     + compare(same["success"], same["online_success"]) + ".")  # fmt: skip
    if same and double:
        lines.append(f"- {large}: twice the learner steps on the same store: "
                     + compare(double["success"], same["success"]) + ".")  # fmt: skip
    if same and small_store:
        lines.append(f"- The same learner steps on {large}' store against {small}'s: "
                     + compare(same["success"], small_store["success"]) + ".")  # fmt: skip
    return lines


def markdown(report: dict) -> str:
    c, m = report["config"], report["machine"]
    seeds = ",".join(str(s) for s in c["seeds"])
    thresholds = [f"{t:g}" for t in c["thresholds"]]
    lines = [
        f"# {report['experiment']}", "",
        f"Made by `sop experiment {report['experiment']} --seeds {seeds} --sim-minutes {c['sim_minutes']:g} "
        f"--bin-minutes {c['bin_minutes']:g} --final-minutes {c['final_minutes']:g} --block {c['block']} "
        f"--eval-every {c['eval_every_minutes']:g} --eval-episodes {c['eval_episodes_per_task']} --config "
        f"{c['learner_yaml']} --robot-config {c['robot_yaml']}`, on {m['cores']} CPU cores ({m['cpu']}), "
        f"{m['system']}, Python {m['python']}, torch {m['torch']}, GPU: {m['gpu'] or 'none'}.", "",
        "Every run went through the real robot nodes, topics, Zenoh bridge and learner, paced by simulated time. "
        f"Success: `sop eval` of the learner's policy every {c['eval_every_minutes']:g} simulated minutes "
        f"({c['eval_episodes_per_task']} episodes per task on the same evaluation seeds, no operator), mean ± std "
        f"over seeds; at the budget: its final policy, after {c['sim_minutes']:g} simulated minutes. Fleet: the "
        f"fleet's own episodes over the last {c['final_minutes']:g} simulated minutes that succeeded without an "
        "intervention.", "",
        "| arm | seeds | success at the budget | " + " | ".join(f"min to {float(t):.0%} (reached)" for t in thresholds)
        + " | speed-up | fleet, no intervention | episodes / sim h | interventions / episode | "
        "learner samples / episode |",
        "|---|---|---|" + "---|" * len(thresholds) + "---|---|---|---|---|",
    ]  # fmt: skip
    for name, arm in report["arms"].items():
        to = [f"{_cell(arm['minutes_to'][t], False)} ({arm['minutes_to'][t]['reached']}/{len(arm['runs'])})"
              if arm["runs"] else "-" for t in thresholds]  # fmt: skip
        speedups = ", ".join(f"{v}x to {float(t):.0%}" for t, v in arm.get("speedup", {}).items() if v) or "-"
        lines.append(f"| {name} | {len(arm['runs'])} | {_cell(arm['success_at_budget'])} | " + " | ".join(to) +
                     f" | {speedups} | {_cell(arm['fleet_autonomous_at_budget'])} | "
                     f"{_cell(arm['episodes_per_sim_hour'], False)} | {_cell(arm['interventions_per_episode'], False)}"
                     f" | {_cell(arm['samples_per_episode'], False)} |")  # fmt: skip
    if report["experiment"] in SPEEDUP_TARGET:
        lines += ["", speedup_verdict(report)]
    lines += claim_lines(report)
    lines += probe_lines(report)
    minutes = sorted({p[0] for arm in report["arms"].values() for run in arm["runs"] for p in run["scores"]})
    lines += ["", "Success over simulated time (`sop eval` of the learner's policy, mean over seeds; minute 0: the "
              "base policy):", "", "| arm | " + " | ".join(f"{m:g} min" for m in minutes) + " |",
              "|---|" + "---|" * len(minutes)]  # fmt: skip
    for name, arm in report["arms"].items():
        if arm["runs"]:
            at = dict(zip(*_mean_curve([run["scores"] for run in arm["runs"]])[:2], strict=True))
            lines.append(f"| {name} | {_minute_cells(at, minutes)} |")
    lines += run_lines(report, minutes)
    tasks = sorted({t for arm in report["arms"].values() for t in arm["per_task_at_budget"]})
    lines += ["", "Success at the budget per task (`sop eval`, mean ± std over seeds):", "",
              "| arm | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]  # fmt: skip
    for name, arm in report["arms"].items():
        cells = [_cell(arm["per_task_at_budget"][t]) if t in arm["per_task_at_budget"] else "-" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![success over simulated time]({report['experiment']}.png)", ""]
    return "\n".join(lines)


def run_lines(report: dict, minutes: list[float]) -> list[str]:
    """Run by run: the spread behind each mean, and what each run cost on the machine that made it."""
    lines = ["", "Run by run (`sop eval` of the learner's policy at each simulated minute):", "",
             "| arm | seed | " + " | ".join(f"{m:g} min" for m in minutes) + " | episodes | interventions / episode | "
             "learner samples / episode | wall min |", "|---|---|" + "---|" * (len(minutes) + 4)]  # fmt: skip
    for name, arm in report["arms"].items():
        for run in arm["runs"]:
            at = {p[0]: p[1] for p in run["scores"]}
            samples = "-" if run["samples_per_episode"] is None else f"{run['samples_per_episode']:.0f}"
            lines.append(f"| {name} | {run['seed']} | {_minute_cells(at, minutes)} | {run['episodes']} | "
                         f"{run['interventions_per_episode']:.2f} | {samples} | {run['wall_minutes']:.1f} |")
    return lines
