"""`sop headroom`: which Meta-World tasks leave a base policy room to improve, measured before any experiment.

An online learner can only show its effect on tasks its base policy neither always solves nor never solves. For the
candidate tasks: scripted experts record demonstrations of each through the robot nodes (`sop collect-demos`), one
multi-task base policy is pretrained on all of them together (the experiments' recipe: sop_ros.fleet.demo), exported,
and scored in process (`sop eval --in-process`) on evaluation seeds. A task has headroom when its base success is
within [low, high] (20% and 70% by default); each score carries its 95% Wilson interval.

With `--base`, the base is a checkpoint made elsewhere (the experiments' own: runs/experiments/shared/base_*.pt,
the base_policy of a run's learner YAML), scored the same way: the tasks an experiment runs are then chosen on the
very policy it starts from.

Every stage is kept in `--out` and skipped when done (demonstrations task by task, the base, the scores), so an
interrupted measurement resumes. The report goes to `--results`: headroom.json, .md and .png.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from sop_ros.configs import require

SELECTION_SEED = 200_000


@dataclass(frozen=True)
class HeadroomConfig:
    tasks: tuple[str, ...]
    demos_per_task: int = 10
    pretrain_steps: int = 1500
    pretrain_batch: int = 32
    episodes_per_task: int = 100
    low: float = 0.2
    high: float = 0.7
    workers: int = 2
    demo_robot_yaml: str = "config/sim.yaml"
    eval_robot_yaml: str = "config/sim_policy.yaml"
    out: str = "runs/headroom"
    results: str = "docs/results"
    # Seeds of its own: choosing the experiments' tasks on their evaluation seeds (EVAL_SEED, 100000 on) would tune
    # on them. Demonstrations use 0 on.
    seed: int = SELECTION_SEED
    base: str = ""  # a base checkpoint to score instead of recording demonstrations and pretraining one

    def __post_init__(self) -> None:
        require(bool(self.tasks), "tasks", self.tasks, "must name at least one task")
        require(self.demos_per_task >= 1, "demos_per_task", self.demos_per_task, "must be >= 1")
        require(self.episodes_per_task >= 1, "episodes_per_task", self.episodes_per_task, "must be >= 1")
        require(0 <= self.low < self.high <= 1, "high", self.high, f"must be above low ({self.low}) and <= 1")


def measure(config: HeadroomConfig) -> dict:
    from sop_ros.checksums import file_sha256
    from sop_ros.fleet.collect_demos import collect
    from sop_ros.learner.pretrain import PretrainConfig, pretrain
    from sop_ros.model.export import export_onnx

    out = Path(config.out)
    if config.base:
        return _score(config, _given_base(config.base, out))
    # Demonstrations by the demo robot config's contents: another camera or marker records them again.
    demo_config = file_sha256(config.demo_robot_yaml)
    demos = out / f"demos-{demo_config[:12]}"
    by_task = recorded_episodes(demos)  # read once: a task's recording below touches only its own files
    for i, task in enumerate(config.tasks):
        recorded = by_task.get(task, [])
        # Recorded in full: as many episodes as asked, whatever the expert's outcomes (it fails a few of some tasks:
        # recording again would only repeat them, the seeds being the same).
        if len(recorded) >= config.demos_per_task:
            continue
        for path in recorded:  # an interrupted recording starts over: the same seeds, no duplicates
            path.unlink()
        print(f"sop headroom [1/3]: recording {config.demos_per_task} demonstrations of {task}", flush=True)
        # Seeds by the task's place in the list, whatever was recorded before: the same demonstrations every time.
        summary = collect(config.demo_robot_yaml, [task], config.demos_per_task, config.workers, demos, seed=1000 * i)
        if summary["failed"]:
            raise RuntimeError(f"recording demonstrations failed: {summary['failed']} (see {demos}/logs)")
    made_with = ("tasks", "demos_per_task", "pretrain_steps", "pretrain_batch", "demo_robot_yaml")
    recipe = json.loads(json.dumps({k: v for k, v in asdict(config).items() if k in made_with}))  # as read back
    recipe["demo_robot_yaml_sha256"] = demo_config
    base, made_by = out / "base.pt", out / "base_recipe.json"
    if not base.exists() or not made_by.exists() or json.loads(made_by.read_text()) != recipe:
        print(f"sop headroom [2/3]: pretraining one base policy on all {len(config.tasks)} tasks -> {base}", flush=True)
        pretrain(PretrainConfig(demos=str(demos), out=str(base), steps=config.pretrain_steps,
                                batch_size=config.pretrain_batch, demos_per_task=config.demos_per_task,
                                tasks=config.tasks))  # fmt: skip
        made_by.write_text(json.dumps(recipe, indent=2) + "\n")
        (out / "base.onnx").unlink(missing_ok=True)
        (out / "eval" / "eval.json").unlink(missing_ok=True)
    if not (out / "base.onnx").exists():
        export_onnx(base, out / "base.onnx")
    return _score(config, out / "base.onnx")


def _given_base(checkpoint: str, out: Path) -> Path:
    """The given checkpoint exported once, named by its contents: another base is scored afresh."""
    from sop_ros.checksums import file_sha256
    from sop_ros.model.export import export_onnx

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--base {checkpoint}: no such checkpoint")
    onnx = out / f"base-{file_sha256(checkpoint)[:12]}.onnx"
    if not onnx.exists():
        out.mkdir(parents=True, exist_ok=True)
        export_onnx(checkpoint, onnx)
    return onnx


def _score(config: HeadroomConfig, onnx: Path) -> dict:
    """Score the base `onnx` in process (kept in <out>/eval-<its name>/), then report."""
    from sop_ros.fleet.in_process_eval import evaluate_in_process

    where = Path(config.out) / ("eval" if onnx.stem == "base" else f"eval-{onnx.stem}")
    scores = where / "eval.json"
    scored = json.loads(scores.read_text()) if scores.exists() else {}
    if (scored.get("episodes_per_task"), scored.get("seed")) != (config.episodes_per_task, config.seed):
        print(f"sop headroom [3/3]: scoring {onnx} in process, {config.episodes_per_task} episodes per task",
              flush=True)  # fmt: skip
        evaluate_in_process(str(onnx), config.eval_robot_yaml, list(config.tasks), config.episodes_per_task,
                            config.workers, where, config.seed)  # fmt: skip
    report = headroom_report(config, json.loads(scores.read_text()))
    write_report(report, Path(config.results))
    return report


def recorded_episodes(demos: Path) -> dict[str, list[Path]]:
    """The episodes recorded so far, by task."""
    from sop_ros.episodes.reader import episode_counts

    by_task: dict[str, list[Path]] = {}
    for path in sorted(demos.glob("*/*.mcap")):
        by_task.setdefault(episode_counts(path)[0].get("task", ""), []).append(path)
    return by_task


def headroom_report(config: HeadroomConfig, scores: dict) -> dict:
    """Per task: the base's success with its interval, and whether it is within [low, high]."""
    from sop_ros.fleet.proportions import Rate
    from sop_ros.host import machine

    tasks = {}
    for task in config.tasks:
        t = scores["tasks"][task]
        rate = Rate(t["successes"], t["episodes"])
        low, high = rate.interval()
        tasks[task] = {"episodes": t["episodes"], "successes": t["successes"], "success_rate": round(rate.value, 3),
                       "interval95": [round(low, 3), round(high, 3)],
                       "headroom": config.low <= rate.value <= config.high}  # fmt: skip
    with_room = [t for t, v in tasks.items() if v["headroom"]]
    made = (f"--base {config.base}" if config.base else f"--demos-per-task {config.demos_per_task} --pretrain-steps "
            f"{config.pretrain_steps} --demo-config {config.demo_robot_yaml}")  # fmt: skip
    command = (f"sop headroom --tasks {','.join(config.tasks)} {made} --episodes-per-task "
               f"{config.episodes_per_task} --eval-config {config.eval_robot_yaml} --out {config.out} "
               f"--seed {config.seed} --results {config.results}")  # fmt: skip
    return {
        "command": command,
        "machine": machine(),
        "config": {k: v for k, v in asdict(config).items() if k not in ("out", "results")},
        "base_policy": scores["version"],
        "tasks": tasks,
        "with_headroom": with_room,
        "verdict": (f"{len(with_room)} of {len(tasks)} tasks have a base success within "
                    f"[{config.low:.0%}, {config.high:.0%}]: {', '.join(with_room) or 'none'}"),
    }  # fmt: skip


def write_report(report: dict, results: Path) -> None:
    from sop_ros.host import described

    results.mkdir(parents=True, exist_ok=True)
    (results / "headroom.json").write_text(json.dumps(report, indent=2) + "\n")
    c, m = report["config"], report["machine"]
    made = (f"The base policy `{c['base']}` ({report['base_policy']})" if c.get("base") else
            f"One base policy pretrained on {c['demos_per_task']} scripted demonstrations of each task "
            f"({c['pretrain_steps']} steps, batch {c['pretrain_batch']})")  # fmt: skip
    lines = [
        "# Task headroom: the base policy's success per task",
        "",
        f"Made by `{report['command']}`, on {described(m)}.",
        "",
        f"{made}, scored in process on {c['episodes_per_task']} episodes per task (seeds from {c['seed']}; the "
        "experiments score on their own, from 100000). Intervals: 95% Wilson.",
        "",
        "| task | success | 95% interval | headroom |",
        "|---|---|---|---|",
    ]
    for task, t in report["tasks"].items():
        low, high = t["interval95"]
        lines.append(f"| {task} | {t['success_rate']:.0%} ({t['successes']}/{t['episodes']}) | "
                     f"{low:.0%}-{high:.0%} | {'yes' if t['headroom'] else 'no'} |")  # fmt: skip
    lines += ["", report["verdict"] + ".", "", "![base success per task](headroom.png)", ""]
    (results / "headroom.md").write_text("\n".join(lines))
    plot(report, results / "headroom.png")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    tasks = list(report["tasks"])
    rates = [report["tasks"][t]["success_rate"] for t in tasks]
    low = [r - report["tasks"][t]["interval95"][0] for t, r in zip(tasks, rates, strict=True)]
    high = [report["tasks"][t]["interval95"][1] - r for t, r in zip(tasks, rates, strict=True)]
    colours = ["C2" if report["tasks"][t]["headroom"] else "C7" for t in tasks]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(tasks)), 4))
    ax.bar(range(len(tasks)), rates, yerr=[low, high], capsize=3, color=colours)
    c = report["config"]
    ax.axhspan(c["low"], c["high"], color="C2", alpha=0.08, label=f"headroom: {c['low']:.0%}-{c['high']:.0%}")
    ax.set_xticks(range(len(tasks)), [t.removesuffix("-v3") for t in tasks], rotation=30, ha="right")
    ax.set(ylabel="base policy success (95% interval)", ylim=(0, 1.02),
           title=f"{c['demos_per_task']} demos per task, {c['episodes_per_task']} episodes per task")  # fmt: skip
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
