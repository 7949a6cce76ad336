"""`sop demo` (`make demo`): the whole SOP loop on this host, on embedded defaults.

1. Demonstrations: scripted experts on two simulated robots record 40 episodes of each task (once; kept).
2. The base policy: behaviour cloning on them, with progress (once; kept).
3. The loop, bounded in wall time: two robots run the base policy with scripted operators who take over when it
   fails; the bridge ships every episode to the learner (SOP + HG-DAgger, paced by simulated time); the learner's
   new policies come back signed and are hot-swapped into every robot at an episode boundary. Live: per-task
   success, interventions, and the policy each robot runs.
4. A summary: success over the run (PNG + JSON), and the policy versions each robot ran.
"""

from __future__ import annotations

import dataclasses
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from sop_ros.configs import load_config, to_dict
from sop_ros.configs.learner import LearnerConfig

if TYPE_CHECKING:
    from sop_ros.learner.pretrain import PretrainConfig

LEARNER_YAML = "config/demo_learner.yaml"
ROBOT_YAML = "config/fleet_sim.yaml"
DEMO_ROBOT_YAML = "config/sim.yaml"
# The base policy of the demo and the experiments: a generalist behaviour-cloned on scripted demonstrations of 22
# Meta-World tasks, then post-trained online on the learner's tasks, those of the 22 whose base leaves room to
# improve and whose operator's takeovers succeed (docs/results/headroom.md, operator_takeovers.md). 6000 pretraining
# steps, not 1500: from a 1500-step base the online learner's control arm, training on the demonstrations alone,
# doubled its success, so online gains measured from it were mostly more training (docs/results/README.md). About
# 10 minutes of pretraining on 2 CPU cores for the default model.
BASE_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "plate-slide-v3", "window-open-v3", "door-open-v3",
              "button-press-topdown-v3", "sweep-into-v3", "faucet-open-v3", "drawer-close-v3", "push-wall-v3",
              "reach-wall-v3", "coffee-push-v3", "hammer-v3", "lever-pull-v3", "dial-turn-v3", "handle-pull-v3",
              "push-back-v3", "basketball-v3", "soccer-v3", "peg-unplug-side-v3", "hand-insert-v3")  # fmt: skip
DEMOS_PER_TASK = 40
DEMO_BIN_MINUTES = 2.0  # the summary's bins of simulated time
PRETRAIN_STEPS = 6000  # the demo's; the experiments pretrain 4x longer (sop_ros/fleet/experiments.py)
PRETRAIN_BATCH = 32


def pretrain_base(demos: Path, out: Path, demos_per_task: int = 0, steps: int | None = None) -> None:
    """A base policy by behaviour cloning on `demos` (the first `demos_per_task` of each task; 0: all) for `steps`
    (None: PRETRAIN_STEPS)."""
    from sop_ros.learner.pretrain import pretrain

    pretrain(base_pretraining(demos, out, demos_per_task, steps))


def base_pretraining(demos: Path, out: Path, demos_per_task: int = 0, steps: int | None = None) -> PretrainConfig:
    from sop_ros.learner.pretrain import PretrainConfig

    return PretrainConfig(demos=str(demos), out=str(out), steps=steps or PRETRAIN_STEPS, batch_size=PRETRAIN_BATCH,
                          demos_per_task=demos_per_task)  # fmt: skip


def base_recipe(demos_per_task: int = 0, recorded_per_task: int = DEMOS_PER_TASK, steps: int | None = None) -> dict:
    """How `prepare` and `pretrain_base` make a base policy: the demonstrations' robot config and count, and the
    pretraining settings. On one machine a recipe gives the same weights every time, resumed or not (recording and
    pretraining are seeded); another CPU's kernels may round differently and a long pretraining amplifies that, so
    results made on two machines are matched by the recipe, not the weights."""
    from sop_ros.checksums import file_sha256
    from sop_ros.learner.pretrain import WHERE_AND_HOW_FAST

    pretraining = to_dict(base_pretraining(Path(), Path(), demos_per_task, steps))
    for unrelated in ("demos", *WHERE_AND_HOW_FAST):  # the demonstrations are named by the robot config and counts
        del pretraining[unrelated]
    if not pretraining["model"].get("rtc_max_prefix"):  # trained without real-time chunking: its settings unused
        for unused in ("rtc_max_prefix", "rtc_no_prefix_share"):
            pretraining["model"].pop(unused, None)
    return {"demo_robot_yaml": file_sha256(DEMO_ROBOT_YAML), "tasks": BASE_TASKS,
            "demos_recorded_per_task": recorded_per_task, "pretraining": pretraining}  # fmt: skip


def prepare(out: Path, learner: LearnerConfig) -> LearnerConfig:
    """Demonstrations and base policy under `out`, made if missing; the learner's config pointed at them."""
    demos, base = out / "demos", out / "base.pt"
    record_demos(demos, demo_tasks(learner), DEMOS_PER_TASK, say="sop demo [1/3]: ")
    if not base.exists():
        print(f"sop demo [2/3]: pretraining the base policy on them, {PRETRAIN_STEPS} steps -> {base}", flush=True)
        pretrain_base(demos, base)
    else:
        print(f"sop demo [2/3]: base policy {base} (delete it to pretrain again)")
    return dataclasses.replace(learner, demos_dir=str(demos), base_policy=str(base))


def demo_tasks(learner: LearnerConfig) -> list[str]:
    """The tasks demonstrations are recorded of: the base's, and any of the learner's it lacks."""
    return [*BASE_TASKS, *(t for t in learner.tasks if t not in BASE_TASKS)]


def record_demos(demos: Path, tasks: list[str], per_task: int, say: str = "") -> None:
    """`per_task` scripted demonstrations of each task into `demos`, unless a recording there finished (its
    summary.json is written last); an interrupted one starts over."""
    from sop_ros.fleet.collect_demos import collect

    if (demos / "summary.json").exists():
        print(f"{say}demonstrations in {demos} (delete it to record them again)")
        return
    shutil.rmtree(demos, ignore_errors=True)
    print(f"{say}recording {per_task} scripted demonstrations per task into {demos}", flush=True)
    summary = collect(DEMO_ROBOT_YAML, tasks, per_task, 2, demos)
    if summary["failed"] or not summary["total"]["episodes"]:
        raise RuntimeError(f"recording demonstrations failed: see {demos}/logs")


def hot_swaps(store_dir: Path) -> dict[str, list[str]]:
    """Per robot, the policy versions its stored episodes ran, in the order it first ran them (an episode cut short
    by the robot's stop has no end time: it was the robot's last)."""
    from sop_ros.cloud.episode_store import stored_episodes

    versions: dict[str, list[str]] = {}
    for e in sorted(stored_episodes(store_dir), key=lambda e: (e.robot_id, e.ended_ns or float("inf"))):
        ran = versions.setdefault(e.robot_id, [])
        if e.policy_version and e.policy_version not in ran:
            ran.append(e.policy_version)
    return versions


def short_version(version: str) -> str:
    """'base' for the base policy, else the learner step that made it (versions end in -<step>)."""
    tail = version.rsplit("-", 1)[-1]
    return f"step {int(tail)}" if version.startswith("sop-") and tail.isdigit() else version.split("-", 1)[0]


def run_demo(out: Path, minutes: float, robots: int) -> int:
    from sop_ros.fleet.online_fleet import run

    learner = load_config(LearnerConfig, LEARNER_YAML)
    learner = prepare(out, learner)
    run_dir = out / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True)
    learner_yaml = run_dir / "demo_learner.yaml"
    learner_yaml.write_text(yaml.safe_dump(to_dict(learner), sort_keys=False))
    print(f"sop demo [3/3]: {robots} robots, scripted operators, bridge and learner for {minutes:g} min "
          f"(progress every 30 s)", flush=True)  # fmt: skip
    # Paced (a fixed learner budget per simulated minute), ended by the wall-time bound.
    # 2-minute bins: about 14 episodes of each task per bin, so that a task's interval says something.
    report = run(str(learner_yaml), ROBOT_YAML, [], robots, minutes, 3, run_dir, None, bin_minutes=DEMO_BIN_MINUTES)
    swaps = hot_swaps(run_dir / "store")
    print("\nsop demo: policy versions each robot ran (each change a hot-swap at an episode boundary):")
    for robot, versions in sorted(swaps.items()):
        print(f"  {robot}: {len(versions) - 1} hot-swaps: {' -> '.join(short_version(v) for v in versions)}")
    print(f"sop demo: {report['episodes']} labelled episodes, {report.get('learner_steps', 0)} learner steps; "
          f"success over the run: {run_dir / 'fleet_run.png'}")  # fmt: skip
    every_robot_swapped = len(swaps) == robots and all(len(v) >= 2 for v in swaps.values())
    if not every_robot_swapped:
        print("sop demo: not every robot took a new policy within the bound (a longer --minutes gives more)")
    return 0 if report["episodes"] else 1
