"""`sop observability`: is what a task needs visible in the policy's input? A probe, and the frames themselves.

For each task, the simulator is reset on many placements; each reset's camera frames go through the robot's own
preprocessing (the sim's JPEG at its quality when compressed, the ingest's resize to the model's input) exactly as
the policy would get them. A probe, the project's image encoder with a linear head, trained from scratch on some
placements, then predicts each varying target's position (the goal, the object) on placements it has not seen;
the figure is the share of held-out placements it puts within the success radius. A target invisible at the
policy's resolution cannot be found this way; one that is found is at least perceivable.

The panel shows the very frames: each task's policy input, per camera, for a few placements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sop_ros.configs import load_config
from sop_ros.configs.robot import RobotLaunchConfig

# Where Meta-World's 39-dim observation holds each target: the first object's position, and the goal.
TARGETS = {"object": slice(4, 7), "goal": slice(36, 39)}
VARIES_M = 0.01  # a target whose position spreads less than this over placements is fixed: nothing to find
SUCCESS_RADIUS_M = 0.05  # reach's and push's success radius in Meta-World
PLACEMENTS_PER_SEED = 20


@dataclass(frozen=True)
class Placements:
    frames: np.ndarray  # uint8 (N, cameras, 3, S, S): the policy's input
    targets: dict[str, np.ndarray]  # name -> (N, 3) positions, metres


def render_placements(base: RobotLaunchConfig, task: str, count: int, seed: int) -> Placements:
    """`count` resets of `task` as the policy sees them (cameras, preprocessing and marker from `base`)."""
    from sop_ros.fleet.in_process_eval import policy_input, rendered
    from sop_ros.sim.metaworld_sim import MetaWorldSim, goal_marker

    sim_cfg = base.nodes.sim_robot
    cameras = base.nodes.sim_ingest().cameras
    frames, positions = [], {name: [] for name in TARGETS}
    # One benchmark seed holds 50 placements of a task; a new seed every few resets gives distinct ones.
    for first in range(0, count, PLACEMENTS_PER_SEED):
        sim = MetaWorldSim(task, seed + first, (sim_cfg.image_height, sim_cfg.image_width), goal_marker(sim_cfg))
        try:
            for _ in range(min(PLACEMENTS_PER_SEED, count - first)):
                _, state = sim.reset()
                frames.append(policy_input(base, rendered(sim, cameras), cameras))
                for name, where in TARGETS.items():
                    positions[name].append(state[where])
        finally:
            sim.close()
    return Placements(np.stack(frames), {name: np.array(p) for name, p in positions.items()})


def probe(train: Placements, test: Placements, target: str, epochs: int = 60, seed: int = 0) -> np.ndarray:
    """Distances (m) from each held-out placement's `target` to where a probe trained on `train` puts it."""
    import torch
    from torch import nn

    from sop_ros.configs.model import ModelConfig
    from sop_ros.model.preprocess import to_unit_range
    from sop_ros.model.vla import ImageEncoder

    torch.manual_seed(seed)
    cameras, size = train.frames.shape[1], train.frames.shape[-1]
    encoder = ImageEncoder(ModelConfig(cameras=cameras, image_size=size))
    tokens = cameras * encoder.config.feature_size**2 * encoder.config.width
    model = nn.Sequential(encoder, nn.Flatten(), nn.Linear(tokens, 3))
    x_train = torch.from_numpy(to_unit_range(train.frames))
    y = train.targets[target]
    mean, scale = y.mean(axis=0), y.std(axis=0) + 1e-6
    y_train = torch.from_numpy(((y - mean) / scale).astype(np.float32))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x_train), generator=generator).split(32):
            loss = nn.functional.mse_loss(model(x_train[batch]), y_train[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(to_unit_range(test.frames))).numpy() * scale + mean
    return np.linalg.norm(predicted - test.targets[target], axis=1)


def measure(base_config: str, tasks: list[str], train_count: int, test_count: int, json_path: Path,
            epochs: int = 60) -> dict:  # fmt: skip
    base = load_config(RobotLaunchConfig, base_config)
    report = {"command": (f"sop observability --config {base_config} --tasks {','.join(tasks)} --train {train_count} "
                          f"--test {test_count} --epochs {epochs} --json {json_path}"),
              "config": base_config, "success_radius_m": SUCCESS_RADIUS_M, "tasks": {}}  # fmt: skip
    panels = {}
    for i, task in enumerate(tasks):
        # Training and held-out placements from different seeds: the probe never sees a test placement.
        train = render_placements(base, task, train_count, seed=300_000 + 1000 * i)
        test = render_placements(base, task, test_count, seed=400_000 + 1000 * i)
        panels[task] = test.frames[:3]
        found = {}
        for target in TARGETS:
            spread = float(np.linalg.norm(train.targets[target].std(axis=0)))
            if spread < VARIES_M:
                continue
            distances = probe(train, test, target, epochs)
            # A blind guess, the training placements' mean, is what the probe must beat: a target that barely
            # moves is "found" without looking.
            blind = np.linalg.norm(test.targets[target] - train.targets[target].mean(axis=0), axis=1)
            found[target] = {"spread_m": round(spread, 4), "median_error_m": round(float(np.median(distances)), 4),
                             "within_radius": round(float(np.mean(distances <= SUCCESS_RADIUS_M)), 3),
                             "blind_within_radius": round(float(np.mean(blind <= SUCCESS_RADIUS_M)), 3)}  # fmt: skip
            print(f"{task}: {target} within {SUCCESS_RADIUS_M * 100:.0f} cm on {found[target]['within_radius']:.0%} "
                  f"of {test_count} held-out placements (median error {found[target]['median_error_m'] * 100:.1f} cm; "
                  f"the training mean, blind: {found[target]['blind_within_radius']:.0%})", flush=True)  # fmt: skip
        report["tasks"][task] = found
    from sop_ros.host import machine

    report["machine"] = machine()
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown(report, json_path.with_suffix(".png").name))
    panel(panels, json_path.with_suffix(".png"), list(base.nodes.sim_ingest().cameras))
    return report


def markdown(report: dict, figure: str) -> str:
    from sop_ros.host import described

    m = report["machine"]
    lines = [
        "# What the policy can see: a probe per task", "",
        f"Made by `{report['command']}`, on {described(m)}.", "",
        "Each task's placements rendered as the policy gets them (the config's cameras and goal marker, JPEG, the "
        "resize to the model's input); a probe (the project's image encoder with a linear head, trained from scratch "
        "on placements from many benchmark seeds) predicts each varying target on held-out placements. Within: the "
        f"share it puts within {report['success_radius_m'] * 100:.0f} cm; blind: the share the training placements' "
        "mean alone puts there.", "",
        "| task | target | spread (m) | within | blind | median error (cm) |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for task, targets in report["tasks"].items():
        for target, t in targets.items():
            lines.append(f"| {task} | {target} | {t['spread_m']:.3f} | {t['within_radius']:.0%} | "
                         f"{t['blind_within_radius']:.0%} | {t['median_error_m'] * 100:.1f} |")  # fmt: skip
    return "\n".join([*lines, "", f"![the policy's input, three placements per task]({figure})", ""])


def panel(frames: dict[str, np.ndarray], path: Path, cameras: list[str]) -> None:
    """Rows: tasks; columns: each camera for a few placements, as the policy gets them (pixels shown 1:1 x 3)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    shown = next(iter(frames.values())).shape[0]
    columns = shown * len(cameras)
    fig, axes = plt.subplots(len(frames), columns, figsize=(1.6 * columns, 1.7 * len(frames)), squeeze=False)
    for row, (task, views) in enumerate(frames.items()):
        for k in range(shown):
            for c, camera in enumerate(cameras):
                ax = axes[row][k * len(cameras) + c]
                ax.imshow(views[k, c].transpose(1, 2, 0), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{camera}, #{k + 1}", fontsize=7)
                if k == 0 and c == 0:
                    ax.set_ylabel(task.removesuffix("-v3"), fontsize=8)
    fig.suptitle("the policy's input (after the robot's preprocessing), three placements per task", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
