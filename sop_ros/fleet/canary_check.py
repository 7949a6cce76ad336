"""`sop canary-check`: canary rollout on a simulated fleet, with a candidate that must be stopped and one that
must go through.

A fleet (`sop fleet run`'s robots, bridges and cloud, the incumbent policy frozen) runs until every robot has
ended a few episodes; then two candidates go out through the canary gate (sop_ros/cloud/canary.py), one after
the other:

    broken   the incumbent with its actions mirrored about their mean (the sign error a units or frame bug makes)
    better   another checkpoint (e.g. the incumbent pretrained longer)

each on canary with a share of the robots until the gate decides. The report says what each verdict was and on
what evidence, whether any robot outside a canary ran a candidate before its promotion, and what the gate saved
and cost in episodes: the broken candidate's failures that the robots outside its canary were spared during
its canary (they ran the incumbent instead: what the gate saved), the episodes the canaries ran on it (what the
gate cost), and the episodes the rest of the fleet ran on the incumbent while the better candidate was on canary
(what waiting for its verdict cost).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from sop_ros.configs import require, to_dict
from sop_ros.configs.learner import CanaryConfig

BROKEN, BETTER = "broken", "better"


@dataclass(frozen=True)
class CanaryCheckConfig:
    base: str  # the incumbent: a `sop pretrain` checkpoint
    better: str  # the candidate that should be promoted
    robots: int = 4
    tasks: tuple[str, ...] = ()  # empty: the learner YAML's
    warmup_episodes: int = 12  # ended with the incumbent before the first candidate goes out
    canary: CanaryConfig = CanaryConfig(enabled=True, share=0.25, min_episodes=20)
    minutes: float = 60.0  # wall-time bound on the whole run
    block: int = 3
    learner_yaml: str = "config/experiment_learner.yaml"
    robot_yaml: str = "config/fleet_sim.yaml"
    out: str = "runs/canary-check"
    results: str = "docs/results/canary"

    def __post_init__(self) -> None:
        require(self.robots >= 2, "robots", self.robots, "must be >= 2: a canary needs robots that keep the incumbent")
        require(self.warmup_episodes >= 1, "warmup_episodes", self.warmup_episodes, "must be >= 1")


def exported_as(checkpoint: str, out: Path, version: str, mirror: bool = False) -> Path:
    """A checkpoint exported under a version of this run's (the registry takes each version once); `mirror`: with
    every action mirrored about its mean, a policy that loads, runs and fails."""
    from sop_ros.model.export import export_onnx
    from sop_ros.model.vla import load_checkpoint, save_checkpoint

    policy, extra = load_checkpoint(checkpoint)
    if mirror:
        with torch.no_grad():
            policy.action_std.neg_()
    saved = out / f"{version}.pt"
    save_checkpoint(saved, policy, version=version, tasks=extra.get("tasks"), cameras=extra.get("cameras"))
    export_onnx(saved, out / f"{version}.onnx")
    return out / f"{version}.onnx"


class Scenario:
    """Asked every second while the fleet runs: sends the candidates out through the gate, one at a time."""

    def __init__(self, gate, store_dir: Path, candidates: list[tuple[str, Path]], warmup_episodes: int) -> None:
        self.gate, self.store_dir, self.warmup = gate, store_dir, warmup_episodes
        self.waiting = list(candidates)  # (name, onnx) still to go out
        self.rollouts: list[dict] = []  # per candidate: its name, version, canaries, times, verdict

    def __call__(self) -> bool:
        from sop_ros.cloud.canary import ended
        from sop_ros.cloud.episode_store import indexed_episodes
        from sop_ros.episodes.format import LABELLED

        episodes = [e for e in indexed_episodes(self.store_dir) if e.outcome in LABELLED]
        current = self.rollouts[-1] if self.rollouts else None
        if current is not None and "verdict" not in current:
            verdict = self.gate.check(ended(episodes))
            if verdict is None or verdict.decision == "wait":
                return False
            current.update(decided_at=time.time(), verdict=verdict.decision, reason=verdict.reason,
                           evidence=verdict.evidence())  # fmt: skip
            print(f"canary-check: {current['name']} candidate {current['version']}: {verdict.decision} "
                  f"({verdict.reason})", flush=True)  # fmt: skip
        if not self.waiting:
            return True
        if len(episodes) < self.warmup:
            return False
        name, onnx_path = self.waiting.pop(0)
        incumbent = self.gate.registry.latest().version
        announcement = self.gate.publish(str(onnx_path), {})
        self.rollouts.append({"name": name, "version": announcement.version, "incumbent": incumbent,
                              "canaries": announcement.robots, "published_at": time.time()})  # fmt: skip
        print(f"canary-check: {name} candidate {announcement.version} on canary with "
              f"{', '.join(announcement.robots)}", flush=True)  # fmt: skip
        return False


def canary_check(config: CanaryCheckConfig) -> dict:
    from sop_ros.bridge.artifacts import load_private_key
    from sop_ros.cloud.canary import CanaryGate
    from sop_ros.cloud.episode_store import stored_episodes
    from sop_ros.cloud.policy_registry import PolicyRegistry
    from sop_ros.configs import load_config
    from sop_ros.configs.learner import LearnerConfig
    from sop_ros.fleet.online_fleet import run

    out = Path(config.out).resolve()
    candidates_dir = out / "candidates"
    candidates_dir.mkdir(parents=True, exist_ok=True)
    learner = load_config(LearnerConfig, config.learner_yaml)
    tasks = list(config.tasks or learner.tasks)
    learner_yaml = out / "learner.yaml"  # the frozen cloud serves this base; the scenario publishes the rest
    frozen = dataclasses.replace(learner, base_policy=config.base, tasks=tuple(tasks),
                                 pace=dataclasses.replace(learner.pace, steps_per_sim_minute=0.0))  # fmt: skip
    learner_yaml.write_text(yaml.safe_dump(to_dict(frozen), sort_keys=False))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    candidates = [(BROKEN, exported_as(config.base, candidates_dir, f"broken-{stamp}", mirror=True)),
                  (BETTER, exported_as(config.better, candidates_dir, f"better-{stamp}"))]  # fmt: skip
    fleet_dir = out / "fleet"
    robots = [f"robot_{i}" for i in range(config.robots)]
    scenario: Scenario | None = None

    def done() -> bool:
        nonlocal scenario
        if scenario is None:  # the run made the keys and published the base: the gate signs with them
            registry = PolicyRegistry(fleet_dir / "policies")
            key = load_private_key(fleet_dir / "keys" / "policy_signing.key")

            def publish(onnx_path: str, metrics: dict, canary: list[str] | None):
                return registry.publish(onnx_path, key, metrics, canary=canary)

            gate = CanaryGate(config.canary, registry, key, publish, lambda: robots)
            scenario = Scenario(gate, fleet_dir / "store", candidates, config.warmup_episodes)
        return scenario()

    fleet = run(str(learner_yaml), config.robot_yaml, tasks, config.robots, config.minutes, config.block, fleet_dir,
                None, frozen=True, done=done)  # fmt: skip
    episodes = stored_episodes(fleet_dir / "store")
    report = summarise(config, scenario.rollouts if scenario else [], episodes, fleet)
    results = Path(config.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "canary.json").write_text(json.dumps(report, indent=2) + "\n")
    (results / "canary.md").write_text(markdown(report))
    return report


def summarise(config: CanaryCheckConfig, rollouts: list[dict], episodes: list, fleet: dict) -> dict:
    """What each candidate's canary showed, who ran what, and the episodes the gate saved and cost."""
    from sop_ros.episodes.format import LABELLED
    from sop_ros.fleet.proportions import Rate
    from sop_ros.host import machine

    labelled = [e for e in episodes if e.outcome in LABELLED]
    by_version, stages = {}, {}
    for version in sorted({e.policy_version for e in labelled}):
        ran = [e for e in labelled if e.policy_version == version]
        by_version[version] = Rate(sum(e.autonomous_success for e in ran), len(ran)).as_dict()
        # The stage its episodes' files say it ran at (signed into the announcement, passed on by the robot).
        stages[version] = dict(Counter(e.rollout_stage or "none" for e in ran))
    report_rollouts = []
    for r in rollouts:
        end = r.get("decided_at", float("inf"))
        during = [e for e in labelled if r["published_at"] <= e.stored_at <= end]
        on_canary = [e for e in during if e.policy_version == r["version"]]
        outside = [e for e in labelled if e.policy_version == r["version"] and e.robot_id not in r["canaries"]
                   and e.stored_at <= end]  # fmt: skip
        others = [e for e in during if e.robot_id not in r["canaries"]]
        entry = {**r, "canary_episodes": len(on_canary), "fleet_episodes_outside_the_canary": len(others),
                 "outside_the_canary_ran_it_before_the_verdict": len(outside)}  # fmt: skip
        if r.get("verdict") == "roll back":  # saved: the rest ran the incumbent; cost: the canaries ran it
            ran_it = [e for e in labelled if e.policy_version == r["version"] and e.robot_id in r["canaries"]]
            entry["episodes_spared_it"], entry["canary_episodes_on_it"] = len(others), len(ran_it)
        elif r.get("verdict") == "promote":  # cost: the rest waited for it
            entry["episodes_that_waited_for_it"] = len(others)
        report_rollouts.append(entry)
    return {
        "command": command_line(config), "machine": machine(), "robots": config.robots,
        "tasks": list(fleet.get("tasks", [])), "canary": dataclasses.asdict(config.canary),
        "incumbent": rollouts[0]["incumbent"] if rollouts else "", "success_without_help": by_version,
        "episodes_by_recorded_stage": stages,
        "rollouts": report_rollouts,
        "fleet_episodes": len(labelled), "wall_minutes": fleet.get("wall_minutes"), "ended": fleet.get("ended"),
    }  # fmt: skip


def command_line(config: CanaryCheckConfig) -> str:
    return (f"sop canary-check --base {config.base} --better {config.better} --robots {config.robots} "
            f"--min-episodes {config.canary.min_episodes} --share {config.canary.share:g} --out {config.out} "
            f"--results {config.results}")  # fmt: skip


def markdown(report: dict) -> str:
    from sop_ros.host import described

    lines = ["# Canary rollout on a simulated fleet", "",
             f"Made by `{report['command']}` on {described(report['machine'])}.", "",
             f"{report['robots']} robots on {', '.join(report['tasks'])}; incumbent {report['incumbent']}; a canary "
             f"is {report['canary']['share']:g} of the robots until {report['canary']['min_episodes']} of its "
             f"episodes end, then a one-sided stratified test at alpha {report['canary']['alpha']:g} "
             "(sop_ros/cloud/canary.py). Success is the policy's own (no intervention); intervals 95% Wilson.", "",
             "| policy | success without help | 95% interval |", "|---|---|---|"]  # fmt: skip
    for version, r in report["success_without_help"].items():
        lines.append(f"| {version} | {r['rate']:.0%} ({r['successes']}/{r['episodes']}) | "
                     f"{r['interval'][0]:.0%}-{r['interval'][1]:.0%} |")  # fmt: skip
    lines += ["", "| candidate | canaries | verdict | canary episodes | outside the canary: episodes meanwhile, ran "
              "it before the verdict | saved / cost (episodes) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["rollouts"]:
        effect = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r.items() if k.startswith("episodes_") or
                           k == "canary_episodes_on_it")  # fmt: skip
        lines.append(f"| {r['name']} ({r['version']}) | {', '.join(r['canaries'])} | {r.get('verdict', 'none')}: "
                     f"{r.get('reason', '-')} | {r['canary_episodes']} | {r['fleet_episodes_outside_the_canary']}, "
                     f"{r['outside_the_canary_ran_it_before_the_verdict']} | {effect or '-'} |")  # fmt: skip
    stages = "; ".join(f"{version}: " + ", ".join(f"{n} {stage}" for stage, n in counts.items())
                       for version, counts in report.get("episodes_by_recorded_stage", {}).items())
    if stages:
        lines += ["", f"The rollout stage each episode's file records for its policy: {stages}."]
    return "\n".join(lines) + "\n"
