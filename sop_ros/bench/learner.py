"""`sop bench learner`: the learner's samples/s on synthetic batches, on recorded episodes, and while it ingests the
episodes of a fleet of robots.

Synthetic: the model's training step alone (loss, backward, clipped AdamW step) on one random batch kept on the
device: what the device can take. Alone: the real `sop learner` loop (run_learner, in this process, serving the
robots' side on Zenoh) on the demonstrations, at the same model and batch; `real_over_synthetic` says how much
of the device the data path feeds (target on a GPU: >= 0.8). While ingesting: the same loop again while another
process plays the fleet: one robot uploader per robot (the bridge's own), each sending recorded episodes (copies
of the demonstrations under fresh ids) at the rate a robot records them, one per `max_episode_steps /
control_hz` seconds, so the learner stores, indexes and trains on them while it runs. Target: >= 0.9x alone.
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

import numpy as np

from sop_ros.bench.bridge import zenoh_config
from sop_ros.configs import ConfigError
from sop_ros.configs.bridge import ZenohConfig
from sop_ros.configs.learner import LearnerConfig
from sop_ros.configs.model import ModelConfig
from sop_ros.configs.robot import SimRobotConfig
from sop_ros.episodes.reader import copy_episode, episode_files
from sop_ros.host import free_endpoint, machine
from sop_ros.learner.dataset import DatasetConfig, index_episode
from sop_ros.learner.frames import fill_workers


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


def synthetic_samples_per_s(model: ModelConfig, batch_size: int, steps: int, device: str, precision: str = "fp32",
                            warmup: int = 3) -> tuple[float, int]:
    """Training samples/s of the model's step on one random batch that stays on `device` (no data path), and
    the model's parameter count."""
    import torch

    from sop_ros.learner.online import precision_context
    from sop_ros.model.export import example_inputs
    from sop_ros.model.vla import VLAPolicy, parameter_count

    torch.manual_seed(0)
    on = torch.device(device)
    policy = VLAPolicy(model).to(on).train()
    images, proprio, instruction, indicator, actions = (t.to(on) for t in example_inputs(policy, batch_size))
    batch = {"images": images, "proprio": proprio, "instruction": instruction, "indicator": indicator,
             "actions": actions, "action_mask": torch.ones(actions.shape[:2], dtype=torch.bool, device=on)}
    optimiser = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    forward_precision = precision_context(precision, on)
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if on.type == "cuda":
                torch.cuda.synchronize(on)
            started = time.perf_counter()
        with forward_precision():
            loss = policy.loss(batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimiser.step()
    if on.type == "cuda":
        torch.cuda.synchronize(on)
    return steps * batch_size / (time.perf_counter() - started), parameter_count(policy)


def data_path_samples_per_s(demos: Path, image_size: int, batch_size: int, batches: int = 20,
                            workers: int = 0) -> dict[str, float]:
    """Batches drawn from the demonstrations, decoding every frame each time against the frame cache once it
    holds them (a learner's steady state when its data fit the budget), as float32 images and as uint8 pixels
    (what a GPU learner collates): samples/s of each, timed alternately. `workers` > 0: the cache is filled by
    that many processes first, and the time that took is reported too."""
    from sop_ros.learner.dataset import EpisodeDataset
    from sop_ros.learner.frames import DecodedFrames

    config, indexed = DatasetConfig(image_size=image_size), {}  # the files are read once, for both datasets
    plain = EpisodeDataset(demos, config, log=lambda _: None, cache=indexed)
    frames = DecodedFrames(image_size, FRAME_CACHE_MB)
    cached = EpisodeDataset(demos, config, log=lambda _: None, cache=indexed, frames=frames)
    fill: dict[str, float] = {}
    if workers:
        start = time.perf_counter()
        filled = frames.fill(cached.frame_sources(), workers)
        fill = {"fill_frames": filled, "fill_workers": workers, "fill_s": round(time.perf_counter() - start, 2)}
    for seed in range(batches):  # fills the cache with these batches' frames
        cached.sample(np.random.default_rng(seed), batch_size)
    spent = {"decode_each_time": 0.0, "frame_cache": 0.0, "frame_cache_pixels": 0.0}
    for seed in range(batches):
        for name, dataset, pixels in (("decode_each_time", plain, False), ("frame_cache", cached, False),
                                      ("frame_cache_pixels", cached, True)):  # fmt: skip
            start = time.perf_counter()
            dataset.sample(np.random.default_rng(seed), batch_size, pixels=pixels)
            spent[name] += time.perf_counter() - start
    rates = {name: round(batches * batch_size / s, 1) for name, s in spent.items()}
    return {**rates, "speedup": round(rates["frame_cache"] / rates["decode_each_time"], 2), **fill}


# Every demonstration frame of the bench's episodes decoded, at the largest preset's 224 px too (2 GB for 50
# episodes): the learner's steady state, which the frame cache's default of 1 GB reaches at 64 px.
FRAME_CACHE_MB = 8192.0


def bench_config(demos: Path, workdir: Path, name: str, steps: int, batch_size: int, threads: int, device: str = "auto",
                 model_config: str = "", precision: str = "fp32") -> LearnerConfig:
    from sop_ros.bridge.artifacts import make_signing_keys

    keys = workdir / "keys"
    if not keys.exists():
        make_signing_keys(keys)
    tasks = sorted({index_episode(p, DatasetConfig()).task for p in episode_files(demos)})
    base = LearnerConfig(tasks=tuple(tasks))
    return replace(
        base, base_policy="", demos_dir=str(demos), store_dir=str(workdir / name / "store"),
        checkpoint_dir=str(workdir / name / "learner"), batch_size=batch_size, max_steps=steps,
        # Twice a run: a short run publishing every 25 steps would time the export's thread as much as training.
        publish_every_steps=max(25, steps // 2), log_every_s=5.0, torch_threads=threads, device=device,
        model_config=model_config, precision=precision, frame_cache_mb=FRAME_CACHE_MB,
        ingest=replace(base.ingest, zenoh=ZenohConfig(listen=(free_endpoint(),))),
        policies=replace(base.policies, registry_dir=str(workdir / name / "policies"),
                         private_key=str(keys / "policy_signing.key")),
    )  # fmt: skip


def run(out: Path, demos: Path, steps: int = 150, batch_size: int = 32, robots: int = 8, threads: int = 0,
        device: str = "auto", model_config: str = "", precision: str = "fp32") -> dict:
    """Synthetic, alone and (robots > 0) while ingesting; the JSON report at `out`."""
    import torch

    from sop_ros.learner.online import model_shape, run_learner
    from sop_ros.learner.ranks import device_kind

    if threads:
        torch.set_num_threads(threads)
    device = device_kind(device)
    sim = SimRobotConfig()
    period_s = sim.max_episode_steps / sim.control_hz  # one episode per robot this often, at full length
    workdir = Path(tempfile.mkdtemp(prefix="sop-bench-learner-"))
    try:
        alone_cfg = bench_config(demos, workdir, "alone", steps, batch_size, threads, device, model_config, precision)
        model = model_shape(alone_cfg)
        print(f"bench learner: {model_config or 'the default model'} on {device}, batch {batch_size}: {steps} steps "
              "on synthetic batches, on the demonstrations alone"
              + (f", then while {robots} robots upload an episode each every {period_s:g} s" if robots else ""),
              flush=True)  # fmt: skip
        data_path = data_path_samples_per_s(demos, model.image_size, batch_size,
                                            workers=fill_workers(alone_cfg.frame_cache_workers, device))
        print(f"  data path: {data_path['decode_each_time']:.0f} samples/s decoding every frame, "
              f"{data_path['frame_cache']:.0f} from the frame cache ({data_path['speedup']}x), "
              f"{data_path['frame_cache_pixels']:.0f} as uint8 pixels"
              + (f"; cache filled by {data_path['fill_workers']} processes in {data_path['fill_s']} s"
                 if "fill_s" in data_path else ""), flush=True)  # fmt: skip
        synthetic, parameters = synthetic_samples_per_s(model, batch_size, steps, device, precision)
        print(f"  synthetic batches: {synthetic:.1f} samples/s", flush=True)
        alone = run_learner(alone_cfg, log=lambda _: None)
        ratio_real = alone["training_samples_per_s"] / synthetic
        print(f"  recorded episodes, alone: {alone['training_samples_per_s']:.1f} samples/s while stepping "
              f"({ratio_real:.3f} of synthetic); {alone['samples_per_s']:.1f} with publishing", flush=True)  # fmt: skip
        report = {
            "command": command_line(out, demos, steps, batch_size, robots, threads, device, model_config, precision),
            "machine": machine(), "device": device, "precision": precision,
            "model_config": model_config or "defaults (as config/models/small)",
            "parameters": parameters, "steps": steps, "batch_size": batch_size, "torch_threads": threads,
            "data_path_samples_per_s": data_path,
            "synthetic": {"samples_per_s": round(synthetic, 2)},
            # samples_per_s: over the whole loop, publishing included; while_stepping: the data path and the
            # training steps alone, which real_over_synthetic compares with the model's step on a kept batch.
            "alone": {"samples_per_s": round(alone["samples_per_s"], 2), "loop_s": round(alone["loop_s"], 1),
                      "while_stepping_samples_per_s": round(alone["training_samples_per_s"], 2)},
            "real_over_synthetic": round(ratio_real, 3),
        }  # fmt: skip
        if robots:
            report.update(ingesting_run(demos, workdir, steps, batch_size, robots, threads, device, model_config,
                                        precision, alone, period_s))  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def ingesting_run(demos: Path, workdir: Path, steps: int, batch_size: int, robots: int, threads: int, device: str,
                  model_config: str, precision: str, alone: dict, period_s: float) -> dict:
    """The learner loop again, the same in every setting, while a fleet process uploads episodes: its figures and
    ratio to `alone`."""
    from sop_ros.learner.online import run_learner

    with_cfg = bench_config(demos, workdir, "ingest", steps, batch_size, threads, device, model_config, precision)
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
    return {
        "ingesting": {"samples_per_s": round(ingesting["samples_per_s"], 2),
                      "loop_s": round(ingesting["loop_s"], 1), "robots": robots,
                      "episode_every_s_per_robot": period_s, "episodes_produced": counts["produced"],
                      "episodes_stored": counts["uploaded"],
                      "online_episodes_trained_on": ingesting["online_episodes"]},
        "ratio": round(ratio, 3), "target": 0.9, "met": ratio >= 0.9,
    }  # fmt: skip


def command_line(out: Path, demos: Path, steps: int, batch_size: int, robots: int, threads: int, device: str,
                 model_config: str, precision: str) -> str:
    line = (f"sop bench learner --json {out} --demos {demos} --steps {steps} --batch-size {batch_size} "
            f"--robots {robots} --threads {threads} --device {device} --precision {precision}")  # fmt: skip
    return line + (f" --model-config {model_config}" if model_config else "")
