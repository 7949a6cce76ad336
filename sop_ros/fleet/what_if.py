"""`sop what-if`: what other learner settings would have made of a finished fleet run's data.

The run's store (every episode its robots recorded) is retrained offline from the run's base policy for the run's
learner steps, once with the run's own learner settings ("as run") and once with them changed by `--set KEY=VALUE`,
and both policies are scored the same way (in process, on the same tasks and seeds). The two scores are compared
by the two-proportion z-test. A candidate setting is so tried on data the fleet really produced in the time of a
training and a scoring, not of a fleet run; its baseline is the offline retraining, not the run's own online
policy, so that the two differ by the setting alone.

What it cannot show: a setting that would have changed what the robots did, and so what they recorded (an
operator's rules, the policies robots ran), is tried on the data the run's own policies collected.

Each variant lives in <run>/what-if/<name>/ and is not made again; <run>/what-if/what_if.json holds them all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from sop_ros.configs import ConfigError, from_dict, load_config, to_dict
from sop_ros.configs.learner import LearnerConfig
from sop_ros.fleet.headroom import SELECTION_SEED
from sop_ros.fleet.proportions import Rate, compare
from sop_ros.host import machine

AS_RUN = "as-run"
REPORT = "what_if.json"


@dataclass(frozen=True)
class WhatIfConfig:
    run: str  # a finished run: experiment_learner.yaml and fleet/store (an `sop experiment` run's folder)
    overrides: tuple[tuple[str, object], ...]  # (dotted LearnerConfig key, value)
    name: str = ""  # the variant's folder (default: from its settings)
    steps: int = 0  # learner steps (0: the run's own)
    episodes_per_task: int = 50
    seed: int = SELECTION_SEED  # the scoring's first seed: choices are made on the selection seeds
    workers: int = 2
    eval_config: str = "config/sim_policy.yaml"
    # Retrain each setting once per learner seed and pool the scores (empty: the run's own seed only). Two
    # retrainings of one setting differ by a few points; a task also moves with the other tasks' data.
    learner_seeds: tuple[int, ...] = ()


def parse_override(text: str) -> tuple[str, object]:
    """'sampling.online_share_max=0.2' -> ('sampling.online_share_max', 0.2); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. sampling.online_share_max=0.2)")
    return key.strip(), yaml.safe_load(value)


def with_overrides(learner: LearnerConfig, overrides: tuple[tuple[str, object], ...]) -> LearnerConfig:
    """`learner` with each dotted key set, checked by the config's own rules (a wrong key or value is named)."""
    data = to_dict(learner)
    for key, value in overrides:
        *parents, leaf = key.split(".")
        node = data
        for i, part in enumerate(parents):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--set {key}: {'.'.join(parents[: i + 1])} is not a section of the learner config")
            node = node[part]
        node[leaf] = value
    return from_dict(LearnerConfig, data)


def variant_name(overrides: tuple[tuple[str, object], ...]) -> str:
    if not overrides:
        return AS_RUN
    text = ",".join(f"{k}={v}" for k, v in overrides)
    return f"{text[:60]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}".replace("/", "_").replace(" ", "")


def what_if(config: WhatIfConfig) -> dict:
    """Train and score the as-run baseline (once) and the variant (once); their comparison, also in what_if.json."""
    run = Path(config.run)
    if not all((run / f).exists() for f in ("experiment_learner.yaml", "fleet_run.json", "fleet/store")):
        raise ConfigError(f"{run}: not a finished run (needs experiment_learner.yaml, fleet_run.json, fleet/store)")
    as_run = load_config(LearnerConfig, run / "experiment_learner.yaml")
    variant = with_overrides(as_run, config.overrides)
    run_steps = json.loads((run / "fleet_run.json").read_text())["learner_steps"]
    steps = config.steps or run_steps
    baseline = AS_RUN if steps == run_steps else f"{AS_RUN}-{steps}-steps"  # each budget has its own baseline
    seeds = tuple(dict.fromkeys(config.learner_seeds)) or (as_run.seed,)
    pooled = f"-learner-seeds-{'-'.join(map(str, seeds))}" if seeds != (as_run.seed,) else ""
    made = {name + pooled: retrained(config, learner, run / "what-if", name, steps, seeds)
            for name, learner in ((baseline, as_run), (config.name or variant_name(config.overrides), variant))}
    (base_name, base), (name, result) = made.items()
    result = {**result, "baseline": base_name,
              "against_as_run": comparison_of((result["successes"], result["episodes"]),
                                              (base["successes"], base["episodes"])),
              "per_task_against_as_run": {task: comparison_of(result["per_task"][task], base["per_task"][task])
                                          for task in result["per_task"]}}  # fmt: skip
    report_path = run / "what-if" / REPORT
    report = json.loads(report_path.read_text()) if report_path.exists() else {"run": str(run), "variants": {}}
    report["machine"] = machine()
    report["variants"][base_name] = base
    report["variants"][name] = result
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    report_path.with_suffix(".md").write_text(report_markdown(report))
    return result


def retrained(config: WhatIfConfig, learner: LearnerConfig, what_if_dir: Path, name: str, steps: int,
              seeds: tuple[int, ...]) -> dict:  # fmt: skip
    """`learner` retrained and scored once per learner seed (the run's own seed in <name>/, another in
    <name>-learner-seed-<s>/), the scores pooled; one seed's result as it is."""
    results = {s: trained_and_scored(config, dataclasses.replace(learner, seed=s),
                                     what_if_dir / (name if s == learner.seed else f"{name}-learner-seed-{s}"), steps)
               for s in seeds}  # fmt: skip
    if len(results) == 1:
        return next(iter(results.values()))
    first = next(iter(results.values()))
    successes, episodes = (sum(r[key] for r in results.values()) for key in ("successes", "episodes"))
    per_task = {task: [sum(r["per_task"][task][i] for r in results.values()) for i in (0, 1)]
                for task in first["per_task"]}  # fmt: skip
    return {**first, "command": command_line(config), "successes": successes, "episodes": episodes,
            "success": round(successes / episodes, 4),
            "per_task": per_task, "learner_seeds": list(results),
            "per_seed_success": {str(s): r["success"] for s, r in results.items()}}  # fmt: skip


def comparison_of(variant: tuple[int, int] | list[int], baseline: tuple[int, int] | list[int]) -> dict:
    """A variant's (successes, episodes) against its baseline's: the difference, its interval and the test."""
    comparison = compare(Rate(*variant), Rate(*baseline))
    return {"difference": round(comparison.difference, 4), "interval": [round(v, 4) for v in comparison.interval],
            "z": round(comparison.z, 3), "p_value": comparison.p_value, "beyond_noise": comparison.beyond_noise,
            "text": str(comparison)}  # fmt: skip


def report_markdown(report: dict) -> str:
    """what_if.md: every variant's score, per task, each against its budget's retraining as run."""
    from sop_ros.host import described

    variants = report["variants"]
    tasks = list(next(iter(variants.values()))["per_task"])
    lines = [f"# What-if: {report['run']} retrained offline", "",
             f"On {described(report['machine'])}. Each variant is retrained from the run's base on its store and "
             "scored in process on the selection seeds; it is compared with the retraining as run for the same "
             "steps (two-proportion z-test; beyond noise: p < 0.05; Newcombe's 95% interval of the difference).",
             "", "| variant | steps | success | " + " | ".join(tasks) + " | against as run |",
             "|---|---|---|" + "---|" * len(tasks) + "---|"]  # fmt: skip
    for name, v in variants.items():
        against = v.get("against_as_run")
        cells = []
        for task in tasks:
            k, n = v["per_task"][task]
            versus = v.get("per_task_against_as_run", {}).get(task)
            cells.append(f"{k}/{n}" + (f" ({versus['difference'] * 100:+.0f}, p = {versus['p_value']:.2g})"
                                       if versus else ""))  # fmt: skip
        text = (f"{against['difference'] * 100:+.1f} points, p = {against['p_value']:.2g}"
                f"{', beyond noise' if against['beyond_noise'] else ''}" if against else "-")
        seeds = v.get("per_seed_success")
        score = f"{v['success'] * 100:.1f}%" + (" (learner seeds " + ", ".join(
            f"{s}: {r * 100:.1f}%" for s, r in seeds.items()) + ")" if seeds else "")  # fmt: skip
        lines.append(f"| {name} | {v['settings']['steps']} | {score} | " + " | ".join(cells)
                     + f" | {text} |")  # fmt: skip
    lines += ["", "Commands:", ""] + [
        f"- {name}: " + ("the run's own settings, retrained beside the first variant of its budget: "
                         if name.startswith(AS_RUN) else "") + f"`{v['command']}`"
        for name, v in variants.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def command_line(config: WhatIfConfig) -> str:
    """The `sop what-if` command that made a variant (an as-run baseline: the first command of its budget)."""
    sets = "".join(f" --set '{key}={json.dumps(value) if isinstance(value, list | dict) else value}'"
                   for key, value in config.overrides)  # fmt: skip
    steps = f" --steps {config.steps}" if config.steps else ""
    if config.learner_seeds:
        steps += f" --learner-seeds {','.join(map(str, config.learner_seeds))}"
    name = f" --name {config.name}" if config.name else ""
    return (f"sop what-if {config.run}{sets}{steps}{name} --episodes-per-task {config.episodes_per_task} "
            f"--seed {config.seed} --eval-config {config.eval_config}")


def trained_and_scored(config: WhatIfConfig, learner: LearnerConfig, where: Path, steps: int) -> dict:
    """`learner` trained offline on the run's store for `steps` and its policy scored; kept in `where`."""
    from sop_ros.fleet.experiments import score_point, train_offline
    from sop_ros.fleet.in_process_eval import evaluate_in_process
    from sop_ros.model.export import export_onnx

    done = where / "result.json"
    settings = {"learner": to_dict(learner), "steps": steps, "episodes_per_task": config.episodes_per_task,
                "seed": config.seed, "eval_config": config.eval_config}  # fmt: skip
    if done.exists() and json.loads(done.read_text())["settings"] == settings:
        return json.loads(done.read_text())
    where.mkdir(parents=True, exist_ok=True)
    print(f"sop what-if: training {where.name} for {steps} steps on {Path(config.run) / 'fleet' / 'store'}", flush=True)
    policy = train_offline(learner, Path(config.run) / "fleet", where / "learner", steps)
    onnx = policy.with_suffix(".onnx")
    export_onnx(policy, onnx)
    score = score_point(evaluate_in_process(str(onnx), config.eval_config, list(learner.tasks),
                                            config.episodes_per_task, config.workers, where / "eval",
                                            seed=config.seed))  # fmt: skip
    overrides = {} if where.name.startswith(AS_RUN) else dict(config.overrides)
    result = {"command": command_line(config), "settings": settings, "overrides": overrides, **score}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result
