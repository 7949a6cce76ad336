"""`sop pretrain`: the base policy, by behaviour cloning on demonstrations (flow matching), read top to bottom.

Successful demonstration episodes -> task-balanced batches -> VLAPolicy.loss -> AdamW with warm-up and cosine
decay -> a checkpoint, with a loss curve (JSON and PNG) beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from sop_ros.configs import require
from sop_ros.configs.model import ModelConfig
from sop_ros.episodes.format import Outcome
from sop_ros.learner.dataset import DatasetConfig, EpisodeDataset
from sop_ros.learner.frames import DecodedFrames, decode_ahead
from sop_ros.learner.ranks import device_kind
from sop_ros.model.inputs import INDICATOR_NONE
from sop_ros.model.preprocess import to_unit_range
from sop_ros.model.tokens import instruction_tokens
from sop_ros.model.vla import VLAPolicy, parameter_count, save_checkpoint

# PretrainConfig's settings that say where a run writes and how fast it goes, not what weights it makes: a base's
# recipe and a partial run's key leave them out.
WHERE_AND_HOW_FAST = ("out", "frame_cache_mb", "frame_cache_workers", "resume_every")


@dataclass(frozen=True)
class PretrainConfig:
    demos: str
    out: str
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    seed: int = 0
    demos_per_task: int = 0  # use only the first N successful demonstrations of each task (0: all)
    # The policy's camera order, which the robots' ingest must list alike (empty: as the demonstrations were
    # recorded, in their recorder's order).
    cameras: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()  # train on these tasks' demonstrations only (empty: every task in `demos`)
    log_every: int = 50
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    frame_cache_mb: float = 1024.0  # camera frames kept decoded (MB, 0: decode every sample); not in a recipe
    frame_cache_workers: int = -1  # processes decoding them at start (-1: frames.fill_workers); not in a recipe
    # Steps between saves of the run so far beside `out` (<out>.partial.pt), which the same pretraining run again
    # continues: an interrupted hour of pretraining is not lost (0: never saved); not in a recipe.
    resume_every: int = 1000

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", self.steps, "must be >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        require(self.demos_per_task >= 0, "demos_per_task", self.demos_per_task, "must be >= 0 (0: all)")
        require(self.device in ("auto", "cpu", "cuda"), "device", self.device, "must be auto, cpu or cuda")
        require(self.frame_cache_mb >= 0, "frame_cache_mb", self.frame_cache_mb, "must be >= 0 (0: no cache)")
        require(self.resume_every >= 0, "resume_every", self.resume_every, "must be >= 0 (0: never saved)")
        require(self.frame_cache_workers >= -1, "frame_cache_workers", self.frame_cache_workers,
                "must be >= 0, or -1 (one per core on a GPU, none on a CPU)")


def to_torch(batch: dict, config: ModelConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """A dataset batch (numpy) as model inputs; the indicator is 'none' in plain behaviour cloning."""
    return to_device(host_tensors(batch, config, pin=False), device)


def host_tensors(batch: dict, config: ModelConfig, pin: bool) -> dict[str, torch.Tensor]:
    """A dataset batch as CPU tensors, in page-locked memory if `pin` (their copies to a GPU then overlap its
    work): the part of `to_torch` a batch-assembling thread can do."""
    n = len(batch["instruction"])
    tensors = {
        "images": torch.from_numpy(batch["images"]),
        "proprio": torch.from_numpy(batch["proprio"]),
        "instruction": torch.from_numpy(instruction_tokens(batch["instruction"], config.instruction_bytes)),
        "indicator": torch.full((n,), INDICATOR_NONE, dtype=torch.long),
        "actions": torch.from_numpy(batch["actions"]),
        "action_mask": torch.from_numpy(batch["action_mask"]),
    }
    return {k: v.pin_memory() for k, v in tensors.items()} if pin else tensors


def to_device(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """`host_tensors` on `device`; uint8 images (`collate(pixels=True)`) scaled to the model's input there."""
    moved = {k: v.to(device, non_blocking=True) for k, v in tensors.items()}
    if moved["images"].dtype == torch.uint8:
        moved["images"] = unit_range(moved["images"])
    return moved


_UNIT_RANGE: dict[torch.device, torch.Tensor] = {}


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as the model's float32 input on their own device, bit for bit what `to_unit_range` gives:
    looked up in its own table of the 256 values (a division on the GPU may round differently)."""
    table = _UNIT_RANGE.get(pixels.device)
    if table is None:
        table = torch.from_numpy(to_unit_range(np.arange(256, dtype=np.uint8))).to(pixels.device)
        _UNIT_RANGE[pixels.device] = table
    return table[pixels.int()]


@contextmanager
def prefetch(make: Callable[[np.random.Generator], dict], seed: int, start: int = 0,
             depth: int = 4) -> Iterator[Callable[[], dict]]:  # fmt: skip
    """The batches of steps `start`, `start` + 1, ... made by `make` on a background thread: JPEG decoding
    overlaps the training step, which frees the GIL. Each step's batch comes from a generator of its own, seeded
    (`seed`, step), so a run resumed at any step draws what the uninterrupted run drew. Yields the function that
    takes the next one. The thread ends with the block, so a process that trains many times (the experiments)
    keeps no producer and no dataset behind; a failed batch is raised by the taker."""
    batches: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        step = start
        while not stop.is_set():
            try:
                item = make(np.random.default_rng([seed, step]))
                step += 1
            except Exception as error:  # noqa: BLE001 - handed to the training loop, which raises it
                item = error
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def take() -> dict:
        item = batches.get()
        if isinstance(item, Exception):
            raise item
        return item

    producer = threading.Thread(target=produce, name="batches", daemon=True)
    producer.start()
    try:
        yield take
    finally:
        stop.set()
        producer.join()


def warmup_cosine(step: int, peak: float, warmup_steps: int, decay_steps: int, floor: float = 0.0) -> float:
    """The learning rate of step `step` (0-based): linear from 0 to `peak` over warmup_steps, then along a cosine
    down to `floor` over decay_steps and there after (decay_steps 0: `peak` after the warm-up)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if not decay_steps:
        return peak
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return float(floor + (peak - floor) * 0.5 * (1.0 + np.cos(np.pi * progress)))


def learning_rate(step: int, config: PretrainConfig) -> float:
    """Pretraining's: warm-up, then a cosine to zero at its last step."""
    return warmup_cosine(step, config.learning_rate, config.warmup_steps, max(1, config.steps - config.warmup_steps))


def pretrain(config: PretrainConfig) -> dict:
    torch.manual_seed(config.seed)
    device = torch.device(device_kind(config.device))
    model_cfg = config.model
    # ---- data: successful demonstrations only ----------------------------------------------------------------
    dataset = EpisodeDataset(
        config.demos,
        DatasetConfig(
            cameras=config.cameras,
            image_size=model_cfg.image_size,
            chunk=model_cfg.chunk,
            outcomes=(Outcome.SUCCESS,),
            episodes_per_task=config.demos_per_task,
            tasks=config.tasks,
        ),
        frames=DecodedFrames(model_cfg.image_size, config.frame_cache_mb),
    )
    if not dataset.episodes:
        raise ValueError(f"{config.demos}: no successful demonstration episodes to train on")
    cameras = len(dataset.config.cameras)
    if cameras != model_cfg.cameras:
        model_cfg = dataclasses.replace(model_cfg, cameras=cameras)
    # ---- model ------------------------------------------------------------------------------------------------
    model = VLAPolicy(model_cfg).to(device)
    model.set_normalisation(dataset.proprio_stats(), dataset.action_stats())
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    print(
        f"pretrain: {len(dataset.episodes)} episodes, {dataset.num_steps} steps of {', '.join(dataset.tasks)}; "
        f"{parameter_count(model) / 1e6:.2f}M parameters on {device}; {config.steps} steps of batch {config.batch_size}"
    )
    # ---- training loop ----------------------------------------------------------------------------------------
    partial = Path(config.out).with_suffix(".partial.pt")
    run_key = resume_key(config, dataset.episodes)
    done, curve, earlier_s = resume(partial, run_key, model, optimiser)
    window, start = [], time.monotonic() - earlier_s
    model.train()
    on_gpu = device.type == "cuda"  # pixels cross as uint8 from page-locked memory; the GPU scales them
    decoded = decode_ahead(dataset.frames, dataset.frame_sources(), config.frame_cache_workers, device.type)
    if decoded:
        print(f"pretrain: {decoded}")

    def batch(rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return host_tensors(dataset.sample(rng, config.batch_size, pixels=on_gpu), model_cfg, pin=on_gpu)

    with prefetch(batch, config.seed, start=done) as next_batch:
        for step in range(done, config.steps):
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(step, config)
            loss = model.loss(to_device(next_batch(), device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            window.append(loss.item())
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                elapsed = time.monotonic() - start
                rate = (step + 1) / elapsed
                curve.append({"step": step + 1, "loss": float(np.mean(window)), "elapsed_s": round(elapsed, 1)})
                print(
                    f"step {step + 1:6d}/{config.steps}  loss {curve[-1]['loss']:.4f}  {rate:.1f} steps/s  "
                    f"ETA {(config.steps - step - 1) / rate:5.0f} s",
                    flush=True,
                )
                window = []
            if config.resume_every and (step + 1) % config.resume_every == 0 and step + 1 < config.steps:
                save_partial(partial, run_key, step + 1, model, optimiser, curve, time.monotonic() - start)
    # ---- outputs ------------------------------------------------------------------------------------------------
    version = "base-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    save_checkpoint(
        config.out,
        model.cpu().eval(),
        version=version,
        tasks=dataset.tasks,
        cameras=list(dataset.config.cameras),
        episodes=len(dataset.episodes),
        steps=config.steps,
        optimiser=optimiser.state_dict(),  # the online learner may continue its moments (optimiser_from_base)
    )
    report = {
        "version": version,
        "checkpoint": str(config.out),
        "episodes": len(dataset.episodes),
        "demos_per_task": config.demos_per_task,
        "dataset_steps": dataset.num_steps,
        "tasks": dataset.tasks,
        "parameters": parameter_count(model),
        "train_steps": config.steps,
        "batch_size": config.batch_size,
        "elapsed_s": round(time.monotonic() - start, 1),
        "curve": curve,
    }
    partial.unlink(missing_ok=True)
    out = Path(config.out)
    out.with_suffix(".loss.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_curve(curve, out.with_suffix(".loss.png"), f"pretraining {version}")
    print(f"saved {out} ({version}), loss curve {out.with_suffix('.loss.png')}")
    return report


def resume_key(config: PretrainConfig, episodes: list) -> str:
    """What a saved partial run must have been made with to be continued: the settings that shape the weights
    and the episodes trained on."""
    settings = dataclasses.asdict(config)
    for unrelated in (*WHERE_AND_HOW_FAST, "log_every", "device"):
        del settings[unrelated]
    settings["episodes"] = sorted(str(e.path) for e in episodes)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_partial(path: Path, key: str, step: int, model: VLAPolicy, optimiser: torch.optim.Optimizer,
                 curve: list[dict], elapsed_s: float) -> None:  # fmt: skip
    """The run so far, replaced whole (a kill while writing leaves the last one)."""
    staged = path.with_suffix(".tmp")
    torch.save({"key": key, "step": step, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "torch_rng": torch.get_rng_state(), "curve": curve, "elapsed_s": elapsed_s}, staged)  # fmt: skip
    os.replace(staged, path)


def resume(path: Path, key: str, model: VLAPolicy, optimiser: torch.optim.Optimizer) -> tuple[int, list[dict], float]:
    """The steps done, loss curve and seconds of a partial run at `path` made with `key`, loaded into `model`
    and `optimiser`; (0, [], 0.0) when there is none, or it was made otherwise (then it is left to be replaced)."""
    if not path.exists():
        return 0, [], 0.0
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged partial run is started over, not fatal
        print(f"pretrain: {path} unreadable ({error}); starting over")
        return 0, [], 0.0
    if saved.get("key") != key:
        print(f"pretrain: {path} was made with other settings or demonstrations; starting over")
        return 0, [], 0.0
    model.load_state_dict(saved["model"])
    optimiser.load_state_dict(saved["optimiser"])
    torch.set_rng_state(saved["torch_rng"])
    print(f"pretrain: resuming at step {saved['step']} from {path}")
    return int(saved["step"]), list(saved["curve"]), float(saved["elapsed_s"])


def plot_curve(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p["step"] for p in curve], [p["loss"] for p in curve])
    ax.set(xlabel="learner step", ylabel="flow-matching loss", title=title, yscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
