"""`sop dagger-round`: one round of HG-DAgger stepped in this process, as a finished run for `sop what-if`.

The experiment's base policy drives episodes of each task (in_process_eval.run_unit: the same simulator,
cameras, policy runtime, chunk execution, arbiter and scripted operator as a fleet robot), the operator takes
over as the robot config says, and every episode is written as a robot's recorder writes it (episode_files.py)
into <out>/fleet/store. With the learner's YAML and a step budget beside it, the folder reads as a finished fleet
run: `sop what-if <out>` retrains its store offline from the base ("as run": the learner's HG-DAgger on these
corrections) against changed settings, e.g. `--set algorithm=bc` (the demonstrations alone), scored on the
selection seeds. A fleet run takes half an hour a setting on two cores; a round takes minutes, so what an
operator's rules or a task's corrections are worth to the learner can be measured before a fleet is run.

What it leaves out: the online loop (the base drives every episode: one round, not a policy that changes as it
learns) and the transport (topics, Zenoh, processes). Seeds are their own (from COLLECT_SEED), apart from the
demonstrations', the selection's and the evaluation's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from sop_ros.configs import ConfigError, from_dict, load_config, to_dict
from sop_ros.configs.learner import LearnerConfig
from sop_ros.configs.robot import RobotLaunchConfig, ScriptedOperatorConfig

COLLECT_SEED = 300_000
ROUND = "round.json"  # in <out>: the round's settings and what its operator did; the round is done


@dataclass(frozen=True)
class DaggerRoundConfig:
    out: str
    learner_yaml: str = "config/experiment_learner.yaml"  # tasks, base policy, demonstrations, learner settings
    robot_config: str = "config/fleet_sim.yaml"  # a fleet robot's: its intervening operator's rules
    operator: tuple[tuple[str, object], ...] = ()  # (ScriptedOperatorConfig field, value) changed for this round
    episodes_per_task: int = 40
    steps: int = 900  # the learner budget `sop what-if` retrains for (as a fleet run's learner_steps)
    seed: int = COLLECT_SEED
    workers: int = 2


def with_operator(base: RobotLaunchConfig, changes: tuple[tuple[str, object], ...]) -> RobotLaunchConfig:
    """`base` with its intervening operator's fields changed, checked by the operator config's own rules."""
    operator = base.nodes.scripted_operator
    if operator is None or operator.mode != "intervene":
        raise ConfigError("nodes.scripted_operator must be an intervening operator (mode: intervene)")
    data = to_dict(operator)
    for key, value in changes:
        if key not in data:
            raise ConfigError(f"--operator {key}: not a scripted operator setting; known: {', '.join(data)}")
        data[key] = value
    operator = from_dict(ScriptedOperatorConfig, data)
    return dataclasses.replace(base, nodes=dataclasses.replace(base.nodes, scripted_operator=operator))


def dagger_round(config: DaggerRoundConfig) -> dict:
    """Collect the round (once for its settings) and lay it out as a finished run; the round's summary."""
    from sop_ros.bridge.artifacts import make_signing_keys
    from sop_ros.fleet.collect_demos import check_request, plan_units
    from sop_ros.fleet.in_process_eval import run_units
    from sop_ros.host import machine
    from sop_ros.model.export import export_onnx

    out = Path(config.out)
    learner = load_config(LearnerConfig, config.learner_yaml)
    robot = with_operator(load_config(RobotLaunchConfig, config.robot_config), config.operator)
    tasks = list(learner.tasks)
    check_request(tasks, config.episodes_per_task, config.workers)
    if not Path(learner.base_policy).exists():
        raise ConfigError(f"{config.learner_yaml}: base_policy {learner.base_policy} does not exist (pretrain it "
                          "first, e.g. `sop experiment learner-settings --prepare`)")  # fmt: skip
    settings = {"learner": to_dict(learner), "robot": to_dict(robot), "episodes_per_task": config.episodes_per_task,
                "seed": config.seed}  # fmt: skip
    done = out / ROUND
    if done.exists() and json.loads(done.read_text())["settings"] == settings:
        return json.loads(done.read_text())
    store = out / "fleet" / "store"
    if store.exists():
        raise ConfigError(f"{out}: holds a round of other settings (or an unfinished one): use another --out")
    out.mkdir(parents=True, exist_ok=True)
    base_onnx = out / "base.onnx"
    export_onnx(Path(learner.base_policy), base_onnx)
    units = plan_units(tasks, config.episodes_per_task, config.workers, config.seed)
    print(f"sop dagger-round: the base drives {config.episodes_per_task} episodes of each of {', '.join(tasks)}; "
          f"the operator takes over as {config.robot_config} says -> {store}", flush=True)  # fmt: skip
    episodes = []
    for done_unit in run_units(str(base_onnx), robot, units, config.workers, record=store / "episodes"):
        episodes += done_unit
        print(f"  {len(episodes)}/{len(tasks) * config.episodes_per_task} episodes", flush=True)
    make_signing_keys(out / "fleet" / "keys")
    (out / "experiment_learner.yaml").write_text(yaml.safe_dump(to_dict(learner), sort_keys=False))
    (out / "fleet_run.json").write_text(json.dumps({"learner_steps": config.steps, "in_process_round": True}) + "\n")
    summary = {
        "command": command_line(config),
        "machine": machine(),
        "settings": settings,
        "tasks": {task: round_counts([e for e in episodes if e.task == task]) for task in tasks},
    }
    done.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def round_counts(episodes: list) -> dict:
    """What the round recorded of one task: episodes the policy finished alone, takeovers, their successes, and
    the operator's steps (the corrections HG-DAgger learns from)."""
    took = [e for e in episodes if e.took_over_at is not None]
    alone = [e for e in episodes if e.took_over_at is None]
    return {"episodes": len(episodes), "autonomous_successes": sum(e.success for e in alone),
            "takeovers": len(took), "takeover_successes": sum(e.success for e in took),
            "operator_steps": sum(e.operator_steps for e in took),
            "successful_operator_steps": sum(e.operator_steps for e in took if e.success)}  # fmt: skip


def command_line(config: DaggerRoundConfig) -> str:
    operator = "".join(f" --operator '{k}={json.dumps(v) if isinstance(v, list | dict) else v}'"
                       for k, v in config.operator)  # fmt: skip
    return (f"sop dagger-round --out {config.out} --config {config.learner_yaml} --robot-config "
            f"{config.robot_config}{operator} --episodes-per-task {config.episodes_per_task} --steps {config.steps} "
            f"--seed {config.seed}")
