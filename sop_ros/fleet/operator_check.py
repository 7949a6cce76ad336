"""`sop operator-check`: how often the scripted operator's takeovers end in success, per task, with its back-off
as configured and without it.

An online learner learns from the operator's corrections: a takeover that ends in failure is a correction that
did not correct, and a task whose operator often fails teaches little or worse. The policy drives episodes in
process (in_process_eval.run_unit, with the config's intervening operator, as ScriptedOperatorNode runs it) on
seeds of their own, once with the operator as configured and once with back_off_m 0; the same policy and seeds,
so the two arms differ only after a takeover. A third run has the operator watch only (judge, never take over):
a judged episode that the policy then finishes alone is a takeover the operator should not have made, and its
corrections teach the policy to leave what it was about to finish. Each rate has its 95% interval and the two
arms' takeover success is compared by a two-proportion test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sop_ros.configs import ConfigError
from sop_ros.fleet.collect_demos import check_request, plan_units
from sop_ros.fleet.headroom import SELECTION_SEED

ARMS = ("as configured", "no back-off")
WATCHING = "watching only"


def check_operator(policy: str, base_config: str, tasks: list[str], episodes_per_task: int, workers: int,
                   results: Path, seed: int = SELECTION_SEED, lift_cap_m: float = 0.0) -> dict:  # fmt: skip
    from sop_ros.fleet.evaluate import eval_setup
    from sop_ros.fleet.in_process_eval import run_units
    from sop_ros.host import machine

    check_request(tasks, episodes_per_task, workers)
    base, path, loaded = eval_setup(policy, base_config)
    operator = base.nodes.scripted_operator
    if operator is None or operator.mode != "intervene":
        raise ConfigError(f"{base_config}: nodes.scripted_operator must be an intervening operator (mode: intervene)")
    def with_operator(**changes) -> object:
        return dataclasses.replace(base, nodes=dataclasses.replace(
            base.nodes, scripted_operator=dataclasses.replace(operator, **changes)))  # fmt: skip

    configs = {ARMS[0]: base, ARMS[1]: with_operator(back_off_m=0.0)}
    capped = f"lift cap {lift_cap_m:g} m" if lift_cap_m > 0 else None
    if capped:
        configs[capped] = with_operator(lift_cap_m=lift_cap_m)
    units = plan_units(tasks, episodes_per_task, workers, seed)
    arms = {}
    for arm, config in configs.items():
        print(f"operator-check [{arm}]: {episodes_per_task} episodes of each of {', '.join(tasks)}", flush=True)
        episodes = [e for done in run_units(str(path), config, units, workers) for e in done]
        arms[arm] = {task: takeover_counts([e for e in episodes if e.task == task]) for task in tasks}
    print(f"operator-check [{WATCHING}]: the same episodes, the operator judging but never taking over", flush=True)
    watched = [e for done in run_units(str(path), base, units, workers, watch_only=True) for e in done]
    watching = {task: judged_counts([e for e in watched if e.task == task]) for task in tasks}
    report = {
        "command": (f"sop operator-check --policy {policy} --config {base_config} --tasks {','.join(tasks)} "
                    f"--episodes-per-task {episodes_per_task} --seed {seed} --results {results}"
                    + (f" --lift-cap {lift_cap_m:g}" if lift_cap_m > 0 else "")),
        "machine": machine(),
        "policy": loaded.version,
        "operator": dataclasses.asdict(operator) | {"task": "per episode"},
        "seed": seed,
        "episodes_per_task": episodes_per_task,
        "arms": arms,
        "comparison": {task: takeover_comparison(arms[ARMS[0]][task], arms[ARMS[1]][task]) for task in tasks},
        # Capped against as configured (which has no cap, or its own): what the cap costs in takeover success.
        "capped_arm": capped,
        "cap_comparison": {task: takeover_comparison(arms[capped][task], arms[ARMS[0]][task])
                           for task in tasks} if capped else None,
        "watching": watching,
    }
    write_report(report, results)
    return report


def takeover_counts(episodes: list) -> dict:
    """Episodes the policy finished alone, and those the operator took over, with how many of each succeeded."""
    from sop_ros.fleet.proportions import Rate

    took = [e for e in episodes if e.took_over_at is not None]
    alone = [e for e in episodes if e.took_over_at is None]
    operator_steps, rising = sum(e.operator_steps for e in took), sum(e.operator_rising for e in took)
    counts = {"episodes": len(episodes), "autonomous": len(alone),
              "autonomous_successes": sum(e.success for e in alone), "takeovers": len(took),
              "takeover_successes": sum(e.success for e in took), "operator_steps": operator_steps,
              "rising_share": round(rising / operator_steps, 3) if operator_steps else None}  # fmt: skip
    if took:
        rate = Rate(counts["takeover_successes"], len(took))
        counts["takeover_success_rate"] = round(rate.value, 3)
        counts["takeover_interval95"] = [round(x, 3) for x in rate.interval()]
    return counts


def judged_counts(episodes: list) -> dict:
    """Watching only: the episodes the operator judged failing, how many of them the policy finished alone
    anyway (premature judgements), and the steps the judgements came at."""
    judged = [e for e in episodes if e.judged_at is not None]
    counts = {"episodes": len(episodes), "judged": len(judged),
              "judged_then_succeeded": sum(e.success for e in judged),
              "not_judged_successes": sum(e.success for e in episodes if e.judged_at is None),
              "judged_at_steps": sorted(e.judged_at for e in judged)}  # fmt: skip
    if judged:
        counts["premature_share"] = round(counts["judged_then_succeeded"] / len(judged), 3)
    return counts


def takeover_comparison(configured: dict, without: dict) -> dict | None:
    from sop_ros.fleet.proportions import Rate, compare

    if not configured["takeovers"] or not without["takeovers"]:
        return None
    result = compare(Rate(configured["takeover_successes"], configured["takeovers"]),
                     Rate(without["takeover_successes"], without["takeovers"]))  # fmt: skip
    return {"difference": round(result.difference, 3), "p_value": round(result.p_value, 5),
            "beyond_noise": result.beyond_noise, "text": str(result)}  # fmt: skip


def write_report(report: dict, results: Path) -> None:
    from sop_ros.host import described

    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    m, op = report["machine"], report["operator"]
    lines = [
        "# The scripted operator's takeovers: how many end in success",
        "",
        f"Made by `{report['command']}`, on {described(m)}.",
        "",
        f"Policy {report['policy']} drives {report['episodes_per_task']} episodes per task (seeds from "
        f"{report['seed']}, apart from the evaluation's); the operator takes over as configured (stall "
        f"{op['stall_steps']} steps, heading window {op['drift_window']}, time budget {op['time_budget_steps']} "
        f"steps) and keeps control to the episode's end. Back-off as configured: {op['back_off_m']} m for "
        f"{', '.join(op['back_off_tasks']) or 'every task'}. Intervals: 95% Wilson; test: two-proportion z.",
        "",
        "| task | arm | autonomous successes | takeovers | takeover successes | 95% interval | operator steps "
        "rising (z > 0.5) |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in report["comparison"]:
        for arm, per_task in report["arms"].items():
            t = per_task[task]
            low, high = t.get("takeover_interval95", (0, 0))
            rate = (f"{t['takeover_success_rate']:.0%} ({t['takeover_successes']}/{t['takeovers']}) | "
                    f"{low:.0%}-{high:.0%}" if t["takeovers"] else "- | -")  # fmt: skip
            rising = f"{t['rising_share']:.0%} of {t['operator_steps']}" if t.get("rising_share") is not None else "-"
            lines.append(f"| {task} | {arm} | {t['autonomous_successes']}/{t['autonomous']} | {t['takeovers']} | "
                         f"{rate} | {rising} |")  # fmt: skip
    lines += ["", "Takeover success, as configured vs without the back-off:", ""]
    for task, c in report["comparison"].items():
        lines.append(f"- {task}: {c['text'] if c else 'no takeovers to compare'}")
    if report.get("cap_comparison"):
        lines += ["", f"Takeover success, {report['capped_arm']} vs as configured:", ""]
        for task, c in report["cap_comparison"].items():
            lines.append(f"- {task}: {c['text'] if c else 'no takeovers to compare'}")
    if report.get("watching"):
        lines += ["", "Watching only (the operator judges, the policy drives every episode to its end): judged "
                  "episodes the policy then finished alone were judged too soon.", "",
                  "| task | judged | of them finished alone | median step judged | not judged, succeeded |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for task, w in report["watching"].items():
            steps = w["judged_at_steps"]
            median = f"{steps[len(steps) // 2]}" if steps else "-"
            alone = f"{w['judged_then_succeeded']} ({w['premature_share']:.0%})" if w["judged"] else "-"
            lines.append(f"| {task} | {w['judged']}/{w['episodes']} | {alone} | {median} | "
                         f"{w['not_judged_successes']}/{w['episodes'] - w['judged']} |")
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
