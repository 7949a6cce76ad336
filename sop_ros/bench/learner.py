"""`sop bench learner`: the learner's samples/s alone, and while it ingests the episodes of a fleet of 8 robots.

Both runs are the real `sop learner` loop (run_learner, in this process, serving the robots' side on Zenoh) on
the same demonstrations, with the same seed and steps. In the second, another process plays the fleet: one
robot uploader per robot (the bridge's own), each sending recorded episodes (copies of the demonstrations
under fresh ids) at the rate a robot records them, one per `max_episode_steps / control_hz` seconds, so the
learner stores, indexes and trains on them while it runs. Target: with-ingest >= 0.9x alone.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from sop_ros.bench.bridge import zenoh_config
from sop_ros.configs import ConfigError
from sop_ros.configs.bridge import ZenohConfig
from sop_ros.configs.learner import LearnerConfig
from sop_ros.configs.robot import SimRobotConfig
from sop_ros.episodes.reader import copy_episode, episode_files
from sop_ros.host import free_endpoint, machine
from sop_ros.learner.dataset import DatasetConfig, index_episode


def _fleet_process(endpoint: str, staged: str, robots: int, per_robot: int, period_s: float, stop, counts) -> None:
    """Robots' uploaders: every period_s each robot 'records' its next staged episode into its outbox."""
    from sop_ros.bridge.uploader import OutboxUploader
    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.configs.bridge import BridgeConfig

    staged_dir = Path(staged)
    with open_session(zenoh_config(connect=endpoint)) as session:
        uploaders, threads, halt = [], [], threading.Event()
        for r in range(robots):
            outbox = staged_dir / "outbox" / f"robot_{r}"
            outbox.mkdir(parents=True, exist_ok=True)
            uploaders.append(OutboxUploader(session, f"robot_{r}", outbox, BridgeConfig(), lambda *_: None))
            threads.append(threading.Thread(target=uploaders[-1].run, args=(halt,), daemon=True))
            threads[-1].start()
        queues = [sorted((staged_dir / f"robot_{r}").glob("*.mcap")) for r in range(robots)]
        start, produced = time.monotonic(), 0
        while not stop.is_set():
            elapsed = time.monotonic() - start
            for r, queue in enumerate(queues):
                # robot r's k-th episode ends at (k + (r + 1) / robots) * period_s: the fleet's ends are staggered
                finished = int(elapsed / period_s - (r + 1) / robots) + 1
                while queue and len(queues[r]) > per_robot - finished:
                    path = queue.pop(0)
                    path.replace(staged_dir / "outbox" / f"robot_{r}" / path.name)  # a finished recording appears
                    produced += 1
            counts["produced"] = produced
            counts["uploaded"] = sum(u.snapshot().uploaded for u in uploaders)
            stop.wait(0.05)
        halt.set()
        for t in threads:
            t.join(timeout=10)


def stage_episodes(demos: Path, staged: Path, robots: int, per_robot: int) -> int:
    """Copies of the demonstrations under fresh ids, per robot: what the fleet process sends."""
    sources = episode_files(demos)
    if not sources:
        raise ConfigError(f"--demos {demos}: no recorded episodes (record some with `sop collect-demos`)")
    total = 0
    for r in range(robots):
        for i in range(per_robot):
            episode_id = f"robot_{r}-bench{i:05d}"
            copy_episode(sources[(r * per_robot + i) % len(sources)], staged / f"robot_{r}" / f"{episode_id}.mcap",
                         episode_id=episode_id, robot_id=f"robot_{r}")  # fmt: skip
            total += 1
    return total


def bench_config(demos: Path, workdir: Path, name: str, steps: int, batch_size: int, threads: int) -> LearnerConfig:
    from sop_ros.bridge.artifacts import make_signing_keys

    keys = workdir / "keys"
    if not keys.exists():
        make_signing_keys(keys)
    tasks = sorted({index_episode(p, DatasetConfig()).task for p in episode_files(demos)})
    base = LearnerConfig(tasks=tuple(tasks))
    return replace(
        base, base_policy="", demos_dir=str(demos), store_dir=str(workdir / name / "store"),
        checkpoint_dir=str(workdir / name / "learner"), batch_size=batch_size, max_steps=steps,
        publish_every_steps=25, log_every_s=5.0, torch_threads=threads,
        ingest=replace(base.ingest, zenoh=ZenohConfig(listen=(free_endpoint(),))),
        policies=replace(base.policies, registry_dir=str(workdir / name / "policies"),
                         private_key=str(keys / "policy_signing.key")),
    )  # fmt: skip


def run(out: Path, demos: Path, steps: int = 150, batch_size: int = 32, robots: int = 8, threads: int = 0) -> dict:
    from sop_ros.learner.online import run_learner

    sim = SimRobotConfig()
    period_s = sim.max_episode_steps / sim.control_hz  # one episode per robot this often, at full length
    workdir = Path(tempfile.mkdtemp(prefix="sop-bench-learner-"))
    try:
        alone_cfg = bench_config(demos, workdir, "alone", steps, batch_size, threads)
        print(f"bench learner: {steps} steps of batch {batch_size} alone, then while {robots} robots upload an "
              f"episode each every {period_s:g} s", flush=True)  # fmt: skip
        alone = run_learner(alone_cfg, log=lambda _: None)
        print(f"  alone: {alone['samples_per_s']:.1f} samples/s", flush=True)
        with_cfg = bench_config(demos, workdir, "ingest", steps, batch_size, threads)
        per_robot = int(alone["loop_s"] * 1.5 / period_s) + 2  # enough for the second run's whole loop
        staged = workdir / "staged"
        stage_episodes(demos, staged, robots, per_robot)
        ctx = mp.get_context("spawn")
        stop, counts = ctx.Event(), ctx.Manager().dict(produced=0, uploaded=0)
        endpoint = with_cfg.ingest.zenoh.listen[0]
        fleet = ctx.Process(target=_fleet_process, args=(endpoint, str(staged), robots, per_robot, period_s, stop,
                                                                 counts))  # fmt: skip
        fleet.start()
        try:
            ingesting = run_learner(with_cfg, log=lambda _: None)
        finally:
            stop.set()
            fleet.join(timeout=60)
        ratio = ingesting["samples_per_s"] / alone["samples_per_s"]
        print(f"  while ingesting: {ingesting['samples_per_s']:.1f} samples/s ({counts['uploaded']} episodes stored "
              f"during the run); ratio {ratio:.3f} (target >= 0.9)", flush=True)  # fmt: skip
        report = {
            "machine": machine(), "steps": steps, "batch_size": batch_size, "torch_threads": threads,
            "alone": {"samples_per_s": round(alone["samples_per_s"], 2), "loop_s": round(alone["loop_s"], 1)},
            "ingesting": {"samples_per_s": round(ingesting["samples_per_s"], 2),
                          "loop_s": round(ingesting["loop_s"], 1), "robots": robots,
                          "episode_every_s_per_robot": period_s, "episodes_produced": counts["produced"],
                          "episodes_stored": counts["uploaded"],
                          "online_episodes_trained_on": ingesting["online_episodes"]},
            "ratio": round(ratio, 3), "target": 0.9, "met": ratio >= 0.9,
        }  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report
