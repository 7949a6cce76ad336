"""`sop eval`: a policy on simulated robots through the real nodes, scored by Meta-World's own success signal.

Each robot runs sim_robot -> ingest -> policy -> teleop arbiter (and a recorder), in lockstep, on seeds that no
demonstration used, so the score is generalisation to new object and goal positions, not recall.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from sop_ros.configs import ConfigError, load_config
from sop_ros.configs.robot import PolicyConfig, RobotLaunchConfig
from sop_ros.fleet.collect_demos import ConfigMaker, WorkUnit, check_request, plan_units, run_fleet, unit_config

if TYPE_CHECKING:
    from sop_ros.model.policy import ChunkPolicy

EVAL_SEED = 100_000  # collect-demos uses seeds from 0 (1000 apart per task): evaluation stays clear of them


def eval_config(policy_path: Path) -> ConfigMaker:
    def make(base: RobotLaunchConfig, robot_id: str, unit: WorkUnit, out: Path) -> dict:
        ingest = base.nodes.sim_ingest()
        policy = dataclasses.replace(
            base.nodes.policy or PolicyConfig(),
            policy_path=str(policy_path),
            wait_for_chunk=True,  # lockstep: each replanning tick waits for its own chunk, whatever the host
            act_between_episodes=True,
        )
        return unit_config(base, robot_id, unit, out, ingest=ingest, policy=policy, scripted_operator=None)

    return make


def eval_setup(policy: str, base_config: str) -> tuple[RobotLaunchConfig, Path, ChunkPolicy]:
    """The robot config an evaluation runs on, and the policy file's absolute path and loaded policy; a bad
    config or file is refused here, with the reason, rather than in every robot's log."""
    from sop_ros.model.policy import load_policy

    base = load_config(RobotLaunchConfig, base_config)
    if base.nodes.sim_robot is None or base.nodes.teleop_arbiter is None:
        raise ConfigError(f"{base_config}: eval needs nodes.sim_robot and nodes.teleop_arbiter")
    path = Path(policy).resolve()
    if not path.exists():
        raise ConfigError(f"--policy {policy}: no such file; make it first: `sop export --policy CKPT --out {policy}` "
                          "(or give a `sop pretrain` checkpoint, .pt)")  # fmt: skip
    try:  # checked against the robot's cameras too: with others, it would hold at its first observation
        loaded = load_policy(path, len(base.nodes.teleop_arbiter.action_names), cameras=base.nodes.sim_ingest().cameras)
    except ValueError as err:
        raise ConfigError(f"--policy: {err} (robot config {base_config})") from None
    return base, path, loaded


def evaluate(policy: str, base_config: str, tasks: list[str], episodes_per_task: int, robots: int, out: Path,
             seed: int = EVAL_SEED) -> dict:  # fmt: skip
    check_request(tasks, episodes_per_task, robots)
    base, path, loaded = eval_setup(policy, base_config)
    units = plan_units(tasks, episodes_per_task, robots, seed)
    summary = run_fleet(f"eval {loaded.version}", base, units, robots, out, eval_config(path))
    per_task = {
        task: {
            "episodes": t["episodes"],
            "successes": t["successes"],
            "success_rate": round(t["successes"] / t["episodes"], 3) if t["episodes"] else None,
            "mean_steps": round(t["steps"] / t["episodes"], 1) if t["episodes"] else None,
        }
        for task, t in summary["tasks"].items()
    }
    rates = [t["success_rate"] for t in per_task.values() if t["success_rate"] is not None]
    report = {
        "policy": policy,  # as given: reports carry no host paths
        "version": loaded.version,
        "seed": seed,
        "episodes_per_task": episodes_per_task,
        "tasks": per_task,
        "mean_success_rate": round(sum(rates) / len(rates), 3) if rates else None,
        "missing_tasks": sorted(set(tasks) - set(per_task)),
        "failed": summary["failed"],
        "elapsed_s": summary["elapsed_s"],
    }
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"mean success over {len(rates)} tasks: {report['mean_success_rate']}; report: {out / 'eval.json'}")
    return report
