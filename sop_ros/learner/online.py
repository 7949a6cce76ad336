"""`sop learner`: SOP's online post-training loop, read top to bottom.

    robots --Zenoh--> episode store (online data)          demonstrations (offline data)
                                  \\                        /
        every batch: 1/M of its rows per task; within a task SOP's online share w_on (sampling.py)
                                              |
        HG-DAgger: the operators' corrections (+ successful autonomous steps)  |  RECAP: every step, with its
        advantage indicator from a distributional value network  |  BC: demonstrations only
                                              |
                flow-matching loss -> AdamW, data-parallel over torch.distributed (torchrun)
                                              |
        every K steps: checkpoint -> ONNX -> signed registry entry -> every robot hot-swaps it

Data-parallel: every rank draws the same global batch (same seed and step) and decodes only its own rows; the
flow's noise is drawn for the global batch too, so N ranks train exactly what one rank with the whole batch
would. DistributedDataParallel averages gradients; the per-task losses behind w_on are all-reduced, so every
rank keeps the same shares. Rank 0 alone serves the robots (ingest, policy announcements), lists the store,
and writes checkpoints, metrics and policies.
"""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sop_ros.bridge.pace import FleetPace
from sop_ros.cloud.canary import Verdict, ended
from sop_ros.cloud.episode_store import EpisodeStore, StoredEpisode
from sop_ros.configs import ConfigError, load_config, to_dict
from sop_ros.configs.learner import LearnerConfig, learner_status_path
from sop_ros.configs.model import ModelConfig
from sop_ros.episodes.durable import atomic_file
from sop_ros.episodes.format import LABELLED, Outcome
from sop_ros.host import bound_malloc, malloc_usage, return_free_memory
from sop_ros.learner.algorithms import make_algorithm
from sop_ros.learner.algorithms.base import Algorithm
from sop_ros.learner.dataset import DatasetConfig, EpisodeDataset, EpisodeIndex, index_episode
from sop_ros.learner.frames import DecodedFrames, JpegSpill, SpilledJpegs, decode_ahead
from sop_ros.learner.pretrain import host_tensors, to_device, warmup_cosine
from sop_ros.learner.ranks import Ranks, all_sum, same_on_all, start_ranks
from sop_ros.learner.sampling import OFFLINE, ONLINE, SOURCES, OnlineShare, Row, split_rows, task_rows
from sop_ros.model.vla import VLAPolicy, load_checkpoint, parameter_count, rtc_prefix_draw, save_checkpoint

if TYPE_CHECKING:
    from sop_ros.bridge.artifacts import PolicyAnnouncement
    from sop_ros.cloud.canary import CanaryGate
    from sop_ros.cloud.policy_server import PolicyServer

STATE = "learner.pt"  # in checkpoint_dir: everything a restart needs
FINAL_POLICY = "policy.pt"  # in checkpoint_dir: the last policy, a checkpoint like `sop pretrain` writes


# ---------------------------------------------------------------------------------------------------------
# Data: demonstrations, and the fleet's episodes as they arrive
# ---------------------------------------------------------------------------------------------------------


class TrainingData:
    """The offline dataset, and the online one rebuilt from the store's files as they arrive.

    A refresh builds the online dataset from the files listed at the previous refresh, which a background
    thread has indexed meanwhile, and hands the new list to that thread: training never waits for MCAP
    parsing, and every rank builds the same dataset at the same step from the list rank 0 sent.
    """

    def __init__(self, config: LearnerConfig, dataset_config: DatasetConfig, algorithm: Algorithm) -> None:
        if not Path(config.demos_dir).is_dir():
            raise ConfigError(f"demos_dir={config.demos_dir!r}: no such directory (record demonstrations with "
                              "`sop collect-demos`)")  # fmt: skip
        # Both sources' frames, decoded once each (the online dataset is rebuilt as the fleet's episodes arrive).
        self.frames = DecodedFrames(dataset_config.image_size, config.frame_cache_mb)
        # The fleet's frames grow as long as the learner runs: their JPEG bytes go to disk, beside the checkpoint.
        # With a capped replay, in one file per `replay_episodes` episodes: a file that no kept episode reads from
        # any more is closed, and its space goes back.
        self.spills = [JpegSpill(config.checkpoint_dir)]
        self._in_newest_spill = 0  # episodes
        # The demonstrations of the learner's tasks: a base pretrained on more tasks leaves the others out.
        self.offline = EpisodeDataset(config.demos_dir, replace(dataset_config, outcomes=algorithm.offline_outcomes,
                                                                episodes_per_task=config.demos_per_task,
                                                                tasks=config.tasks), log=lambda _: None,
                                      frames=self.frames)  # fmt: skip
        outcomes, self.select = algorithm.online_outcomes, algorithm.select()
        self.learns_online = bool(outcomes)
        # The fleet's episodes in the same camera order as the demonstrations (resolved from them if not given).
        self.online_config = replace(dataset_config, cameras=self.offline.config.cameras,
                                     outcomes=outcomes or (Outcome.SUCCESS,), tasks=config.online_tasks)  # fmt: skip
        self._cache: dict[Path, EpisodeIndex] = {}
        self.online = self._build([])
        self.listed: list[Path] = []  # the files the next refresh builds from
        self._built_from: list[Path] = []  # the files the online dataset was built from
        self.replay_episodes = config.replay_episodes
        # Left at the last refresh, released at the next: a batch planned on the dataset before may still read them.
        self._left: list[EpisodeIndex] = []
        self._unread: list[JpegSpill] = []
        self._indexer = ThreadPoolExecutor(1, thread_name_prefix="index")
        self._indexing: Future | None = None

    def _build(self, paths: list[Path]) -> EpisodeDataset:
        return EpisodeDataset(paths, self.online_config, log=lambda _: None, select=self.select,
                              cache=self._cache, frames=self.frames)  # fmt: skip

    def refresh(self, paths: list[Path], at_once: bool = False) -> bool:
        """Take the files indexed since the last refresh; start indexing `paths`. True if the online data changed.

        `at_once`: index and take `paths` now (at start: what is already stored trains from the first step).
        With `replay_episodes` set, only the last that many of `paths` (in the order stored) are kept: the others
        leave the index, and their memory with it."""
        if not self.learns_online:
            return False
        if self.replay_episodes:
            paths = paths[-self.replay_episodes:]
        if at_once:
            self.listed = list(paths)
            self._index([p for p in paths if p not in self._cache])
        if self._indexing is not None:
            self._indexing.result()
        changed = self.listed != self._built_from
        if changed:
            self.online, self._built_from = self._build(self.listed), list(self.listed)
        if self.replay_episodes:  # the indexer is idle
            self._release(set(self.listed) | set(paths))
        self.listed = list(paths)
        new = [p for p in paths if p not in self._cache]
        self._indexing = self._indexer.submit(self._index, new)
        return changed

    def _release(self, kept: set[Path]) -> None:
        """Forget the episodes neither the dataset nor the next build holds; release the decoded frames of those
        left at the last refresh, and close the spill files no episode has read from since then."""
        self.frames.forget((e.path, camera, i) for e in self._left for camera, jpegs in e.frames.items()
                           for i in range(len(jpegs)))  # fmt: skip
        self._left = [self._cache.pop(path) for path in [p for p in self._cache if p not in kept]]
        read = {jpegs.spill for e in self._cache.values() for jpegs in e.frames.values()
                if isinstance(jpegs, SpilledJpegs)}  # fmt: skip
        for spill in self._unread:
            if spill not in read:
                spill.close()
                self.spills.remove(spill)
        self._unread = [spill for spill in self.spills[:-1] if spill not in read]

    def _index(self, paths: list[Path]) -> None:
        for path in paths:
            try:
                episode = index_episode(path, self.online_config)
            except ValueError:
                continue  # the dataset build records why, in its `skipped`
            if self.replay_episodes and self._in_newest_spill == self.replay_episodes:
                self.spills.append(JpegSpill(self.spills[-1].directory))
                self._in_newest_spill = 0
            self._in_newest_spill += 1
            self._cache[path] = replace(episode, frames={camera: self.spills[-1].keep(jpegs)
                                                         for camera, jpegs in episode.frames.items()})  # fmt: skip

    def tasks(self) -> set[str]:
        return set(self.offline.tasks) | set(self.online.tasks)

    def steps(self) -> dict[str, tuple[int, int]]:
        """Per task, the steps a batch may draw: the fleet's and the demonstrations'."""
        return {t: (self.online.selected_steps(t), self.offline.selected_steps(t)) for t in self.tasks()}

    def dataset(self, source: str) -> EpisodeDataset:
        return self.online if source == ONLINE else self.offline

    def by_source(self) -> dict[str, EpisodeDataset]:
        """The datasets as they are now (the online one is rebuilt at each refresh that changes it)."""
        return {source: self.dataset(source) for source in SOURCES}

    def close(self) -> None:
        self._indexer.shutdown(wait=True, cancel_futures=True)
        for spill in self.spills:
            spill.close()


def precision_context(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """What the forward pass runs under: nothing (fp32), bfloat16 autocast (bf16); tf32 is a global switch of
    CUDA's matrix products, set here."""
    if precision == "tf32" and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def model_shape(config: LearnerConfig) -> ModelConfig:
    """A learner from scratch's model: its model YAML's, or the defaults."""
    return load_config(ModelConfig, config.model_config) if config.model_config else ModelConfig()


def learning_rate_at(step: int, config: LearnerConfig) -> float:
    """The learning rate of learner step `step` (0-based): linear warm-up, then cosine decay to the minimum."""
    return warmup_cosine(step, config.learning_rate, config.warmup_steps, config.decay_steps,
                         config.min_learning_rate)  # fmt: skip


def plan_rows(step: int, config: LearnerConfig, data: TrainingData, shares: dict[str, float]) -> list[Row]:
    """The global batch of learner step `step`: the same on every rank (its randomness is (seed, step))."""
    rng = np.random.default_rng([config.seed, step])
    tasks = [t for t in config.tasks if t in data.tasks()]
    rows: list[Row] = []
    for task, n in task_rows(config.batch_size, tasks, rng).items():
        has_online, has_offline = task in data.online.tasks, task in data.offline.tasks
        online = split_rows(n, shares[task], has_online, has_offline, rng)
        for source, count in ((ONLINE, online), (OFFLINE, n - online)):
            if count:
                rows += [Row(task, source, e, k) for e, k in data.dataset(source).draw(rng, task, count)]
    return rows


def flow_draws(step: int, config: LearnerConfig, model: ModelConfig) -> dict[str, Tensor]:
    """The global batch's flow noise (B, H, D) and times (B,), and for a policy trained for real-time chunking
    the length of each row's given prefix (B,): ranks take their rows' share."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    draws = {"noise": torch.randn(config.batch_size, model.chunk, model.action_dim, generator=generator),
             "flow_time": torch.rand(config.batch_size, generator=generator)}  # fmt: skip
    if model.rtc_max_prefix:
        draws["rtc_prefix"] = rtc_prefix_draw(config.batch_size, model, generator)
    return draws


def my_rows(rows: list[Row], ranks: Ranks) -> list[int]:
    """This rank's rows of the global batch (every world-th, so each rank gets every task)."""
    return list(range(ranks.rank, len(rows), ranks.world))


def collate(data: TrainingData, rows: list[Row], mine: list[int], pixels: bool = False) -> dict:
    """This rank's rows decoded into one batch, in `mine`'s order (`pixels`: images as uint8, see
    EpisodeDataset.collate)."""
    sources = [rows[i].source for i in mine]
    parts, positions = [], []  # each source's rows as one batch; where each of their rows goes
    for source in SOURCES:
        at = [j for j, s in enumerate(sources) if s == source]
        if at:
            picks = [(rows[mine[j]].episode, rows[mine[j]].step) for j in at]
            parts.append(data.dataset(source).collate(picks, pixels))
            positions.extend(at)
    order = np.argsort(positions)  # the joined parts' row that is the batch's j-th
    batch = {}
    for key, first in parts[0].items():
        if len(parts) == 1:
            batch[key] = first
        elif isinstance(first, list):
            joined = [value for part in parts for value in part[key]]
            batch[key] = [joined[k] for k in order]
        else:
            batch[key] = np.concatenate([part[key] for part in parts])[order]
    batch["source"] = sources
    return batch


# ---------------------------------------------------------------------------------------------------------
# The model being trained
# ---------------------------------------------------------------------------------------------------------


class Losses(nn.Module):
    """The policy's per-row losses (and the loss of the algorithm's network trained beside it), as one module
    that DistributedDataParallel can wrap."""

    def __init__(self, policy: VLAPolicy, beside: nn.Module | None) -> None:
        super().__init__()
        self.policy, self.beside = policy, beside

    def forward(self, batch: dict[str, Tensor], targets: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        losses, weights = self.policy.sample_losses(batch)
        beside_loss = self.beside.loss(batch, targets) if targets is not None else None
        return losses, weights, beside_loss


def initial_policy(config: LearnerConfig) -> tuple[VLAPolicy | None, tuple[str, ...], dict | None, str]:
    """The base checkpoint (None: train a fresh model); its camera order (empty: the demonstrations'); the
    optimiser state it was saved with (None: none); and its version ("" for none)."""
    if not config.base_policy:
        return None, (), None, ""
    if not Path(config.base_policy).is_file():
        raise ConfigError(f"base_policy={config.base_policy!r}: no such checkpoint (make one with `sop pretrain`)")
    policy, extra = load_checkpoint(config.base_policy)
    return policy, tuple(extra.get("cameras") or ()), extra.get("optimiser"), str(extra.get("version", ""))


def continue_optimiser(optimiser: torch.optim.Optimizer, state: dict | None, config: LearnerConfig) -> None:
    """optimiser_from_base: take over the base checkpoint's AdamW moments; this learner's own hyper-parameters."""
    if state is None:
        raise ConfigError(f"optimiser_from_base: base_policy={config.base_policy!r} holds no optimiser state "
                          "(made before `sop pretrain` saved it: pretrain it again)")  # fmt: skip
    try:
        optimiser.load_state_dict(state)
    except ValueError as err:  # another set of parameters (RECAP's value network trained alongside)
        raise ConfigError(f"optimiser_from_base: the base's optimiser state does not fit this learner's "
                          f"parameters: {err}") from None  # fmt: skip
    for group in optimiser.param_groups:
        group["weight_decay"] = config.weight_decay


def save_state(path: Path, state: dict) -> None:
    """Atomically: a crash leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        torch.save(state, f)


# ---------------------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------------------


class Publisher:
    """Policy weights -> ONNX -> signed registry entry, on a thread so that training goes on while it exports.

    With the robots served from this process, the policy server announces each version at once; otherwise
    `sop cloud` sees it in the registry."""

    def __init__(self, config: LearnerConfig, cameras: tuple[str, ...], indicator: str, published: list[str]) -> None:
        from sop_ros.bridge.artifacts import load_private_key
        from sop_ros.cloud.policy_registry import PolicyRegistry

        try:
            self.key = load_private_key(config.policies.private_key)
        except (OSError, ValueError) as err:
            raise ConfigError(f"policies.private_key={config.policies.private_key!r}: {err} (make the fleet's keys "
                              "with `sop keys --out keys`)") from None  # fmt: skip
        self.registry = PolicyRegistry(config.policies.registry_dir)
        self.server = None  # the policy server of this process, when it serves the robots
        self.config, self.cameras, self.indicator = config, cameras, indicator
        self.thread: threading.Thread | None = None
        self.published = list(published)
        self.latency_s = float("nan")
        self.error = ""
        self.gate: CanaryGate | None = None  # canary.enabled: each version to a few robots first
        self.weights: dict[str, dict[str, Tensor]] = {}  # recent versions' weights: a rollback restarts from one

    def serve_with_canaries(self, server: PolicyServer) -> None:
        """Publish through `server`, each version on canary first (sop_ros.cloud.canary)."""
        from sop_ros.cloud.canary import CanaryGate

        def publish(onnx_path: str, metrics: dict[str, float], canary: list[str] | None) -> PolicyAnnouncement:
            return server.publish(onnx_path, self.key, metrics, canary=canary)

        self.gate = CanaryGate(self.config.canary, self.registry, self.key, publish,
                               lambda: [r["robot"] for r in server.fleet_table()["robots"]])  # fmt: skip

    def keep_weights(self, version: str, state: dict[str, Tensor]) -> None:
        self.weights[version] = {k: v.detach().cpu().clone() for k, v in state.items()}
        for old in list(self.weights)[:-3]:  # the candidate, the incumbent, and one before
            del self.weights[old]

    def publish(self, policy: VLAPolicy, version: str, metrics: dict[str, float]) -> None:
        self.wait()
        snapshot = VLAPolicy(policy.config)
        snapshot.load_state_dict({k: v.detach().cpu().clone() for k, v in policy.state_dict().items()})
        if self.gate is not None:
            self.keep_weights(version, snapshot.state_dict())
        self.thread = threading.Thread(target=self._export, args=(snapshot.eval(), version, metrics, time.monotonic()),
                                       name="publish", daemon=True)  # fmt: skip
        self.thread.start()

    def _export(self, snapshot: VLAPolicy, version: str, metrics: dict[str, float], started: float) -> None:
        from sop_ros.model.export import export_onnx

        try:
            with tempfile.TemporaryDirectory(dir=self.config.checkpoint_dir) as tmp:
                checkpoint, onnx_path = Path(tmp) / "policy.pt", Path(tmp) / "policy.onnx"
                save_checkpoint(checkpoint, snapshot, version=version, tasks=list(self.config.tasks),
                                cameras=list(self.cameras), indicator=self.indicator)  # fmt: skip
                export_onnx(checkpoint, onnx_path, guidance=self.config.recap.guidance_beta)
                if self.gate is not None:
                    if self.gate.publish(str(onnx_path), metrics) is None:
                        raise RuntimeError(f"{self.gate.pending.version} is still on canary")
                else:
                    (self.server or self.registry).publish(onnx_path, self.key, metrics)
            self.registry.prune_artifacts(self.config.policies.keep_artifacts)
            self.published.append(version)
            self.latency_s = time.monotonic() - started
            self.error = ""
        except Exception as err:  # a failed publish must not stop training: the next one tries again
            self.error = f"publishing {version} failed: {type(err).__name__}: {err}"
            print(f"learner: {self.error}", flush=True)

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def newest(self) -> str:
        """The newest policy published: this learner's, or the one the fleet started on."""
        if self.published:
            return self.published[-1]
        latest = self.registry.latest()
        return latest.version if latest else ""


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


def decided(verdict: Verdict, candidate: str, publisher: Publisher, policy: VLAPolicy, average: AveragedModel | None,
            config: LearnerConfig, writer, step: int, say: Callable[[str], None]) -> None:  # fmt: skip
    """A canary's verdict: logged and charted; after a rollback, training starts again from the incumbent's
    weights (canary.after_rollback: incumbent, when this learner holds them) or from its moving average."""
    say(f"learner: canary {candidate}: {verdict.decision} ({verdict.reason})")
    if writer is not None:
        writer.add_scalar("canary/promoted", float(verdict.decision == "promote"), step)
        writer.add_scalar("canary/difference", verdict.difference, step)
        writer.add_scalar("canary/p", verdict.p, step)
    if verdict.decision != "roll back":
        return
    incumbent = publisher.registry.latest()
    weights, source = None, "its own weights"
    if config.canary.after_rollback == "incumbent" and incumbent and incumbent.version in publisher.weights:
        weights, source = publisher.weights[incumbent.version], f"the incumbent {incumbent.version}'s weights"
    elif average is not None:
        weights, source = {k: v.detach().clone() for k, v in average.module.state_dict().items()}, "its moving average"
    if weights is not None:
        policy.load_state_dict(weights)
        if average is not None:
            average.module.load_state_dict(weights)
    say(f"learner: after the rollback, training goes on from {source}")


def canary_status(gate: CanaryGate | None) -> dict | None:
    """The candidate on canary and its robots, the latest verdicts and how many went each way (None: no canary
    rollout). Every verdict is in the registry's rollout history."""
    if gate is None:
        return None
    pending = gate.pending
    return {"candidate": pending.version if pending else "", "robots": pending.robots if pending else [],
            "verdicts": [{"candidate": c, "decision": v.decision, "reason": v.reason, **v.evidence()}
                         for c, v in gate.verdicts], "decided": dict(gate.decided)}  # fmt: skip


def fleet_metrics(stored: list[StoredEpisode], since: float, window: int = 20) -> dict:
    """From the episodes' labels: per task the success rate (and without any intervention) over its last
    `window` episodes, and the fleet's interventions per hour since `since`."""
    per_task: dict[str, list[StoredEpisode]] = {}
    for e in stored:
        if e.outcome in LABELLED:
            per_task.setdefault(e.task, []).append(e)
    success = {t: float(np.mean([e.outcome == Outcome.SUCCESS for e in es[-window:]])) for t, es in per_task.items()}
    autonomous = {t: float(np.mean([e.autonomous_success for e in es[-window:]]))
                  for t, es in per_task.items()}  # fmt: skip
    recent = [e for e in stored if e.stored_at >= since]
    hours = max(time.time() - since, 1.0) / 3600
    per_hour = sum(e.interventions for e in recent) / hours
    return {"success": success, "autonomous_success": autonomous, "interventions_per_hour": per_hour,
            "episodes": len(stored)}  # fmt: skip


def version_lag(fleet_table: dict, published: list[str]) -> dict[str, int]:
    """Per robot reporting: how many published versions it runs behind the latest (its running version unknown
    to this learner: all of them)."""
    lag = {}
    for robot in fleet_table.get("robots", []):
        running = robot.get("running_version", "")
        lag[robot["robot"]] = len(published) - 1 - published.index(running) if running in published else len(published)
    return lag


def memory_status(frames: DecodedFrames) -> dict[str, float]:
    """The learner's memory (MB): the decoded frames kept, and what malloc holds in use and free (glibc)."""
    malloc = malloc_usage() or {}
    return {"frame_cache": round(frames.kept_bytes / 2**20, 1),
            **{f"malloc_{name}": mb for name, mb in malloc.items()}}  # fmt: skip


def write_status(path: Path, status: dict) -> None:
    with atomic_file(path, durable=False) as f:  # read by `sop learner status` at any moment; rewritten often
        f.write((json.dumps(status, indent=2) + "\n").encode())


def format_status(status: dict, now: float) -> str:
    """`sop learner status`: one screen."""
    lines = [
        f"learner {status['algorithm']} step {status['step']} ({status['ranks']} rank(s) on {status['device']}), "
        f"updated {now - status['time']:.0f} s ago",
        f"  samples/s {status['samples_per_s']:.1f}  loss {status['loss']:.4f}  "
        f"latest policy {status['latest_policy'] or 'none'} (publish {status['publish_latency_s']:.1f} s)",
        f"  data: {status['offline_episodes']} demonstrations, {status['online_episodes']} fleet episodes "
        f"({status['online_steps']} steps used) of {status['fleet']['episodes']} stored; "
        f"interventions/h {status['fleet']['interventions_per_hour']:.1f}",
        f"  {'task':24s} {'w_on':>5s} {'loss on':>8s} {'loss off':>8s} {'success':>8s} {'no help':>8s}",
    ]
    for task in status["tasks"]:
        losses = status["task_losses"].get(task, {})
        success = status["fleet"]["success"].get(task)
        alone = status["fleet"]["autonomous_success"].get(task)
        cells = [f"{losses.get(s):.4f}" if losses.get(s) is not None else "-" for s in SOURCES]
        rates = [f"{r:.0%}" if r is not None else "-" for r in (success, alone)]
        lines.append(f"  {task:24s} {status['online_share'][task]:5.2f} {cells[0]:>8s} {cells[1]:>8s} "
                     f"{rates[0]:>8s} {rates[1]:>8s}")  # fmt: skip
    memory = status.get("memory_mb") or {}
    if memory:
        lines.append("  memory (MB): " + ", ".join(f"{name.replace('_', ' ')} {mb:.0f}" for name, mb in memory.items()))
    canary = status.get("canary") or {}
    if canary.get("candidate"):
        lines.append(f"  on canary: {canary['candidate']} with {', '.join(canary['robots'])}")
    if canary.get("decided"):
        lines.append("  canaries decided: " + ", ".join(f"{decision} {n}" for decision, n in canary["decided"].items()))
    for verdict in canary.get("verdicts", [])[-3:]:
        lines.append(f"  canary {verdict['candidate']}: {verdict['decision']} ({verdict['reason']})")
    if status["version_lag"]:
        lines.append("  robots behind the latest policy (versions): " +
                     ", ".join(f"{r} {n}" for r, n in sorted(status["version_lag"].items())))  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


def run_learner(config: LearnerConfig, log: Callable[[str], None] = print) -> dict:
    with contextlib.ExitStack() as cleanup:  # whatever stops the learner, its sessions, threads and files close
        return _run_learner(config, log, cleanup)


def _run_learner(config: LearnerConfig, log: Callable[[str], None], cleanup: contextlib.ExitStack) -> dict:
    bound_malloc(mmap_threshold=None)  # before its threads (Zenoh, decoding, publishing): it runs for days
    ranks = start_ranks(config.device)
    if ranks.world > 1:
        cleanup.callback(dist.destroy_process_group)
    torch.manual_seed(config.seed)  # a fresh model and value network start the same on every rank and every run
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    say = log if ranks.main else (lambda _: None)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    out = Path(config.checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE
    resumed = torch.load(state_path, map_location="cpu", weights_only=False) if state_path.exists() else None

    # ---- model and data -------------------------------------------------------------------------------------
    policy, cameras, base_optimiser, base_version = initial_policy(config)
    model_cfg = policy.config if policy else model_shape(config)
    algorithm = make_algorithm(config)
    data = TrainingData(config, DatasetConfig(cameras=cameras, image_size=model_cfg.image_size, chunk=model_cfg.chunk),
                        algorithm)  # fmt: skip
    cleanup.callback(data.close)
    missing = [t for t in config.tasks if t not in data.offline.tasks]
    if len(missing) == len(config.tasks):
        raise ConfigError(f"demos_dir={config.demos_dir!r}: no demonstrations of {', '.join(config.tasks)}")
    cameras = data.offline.config.cameras  # a checkpoint's own, or the demonstrations' when it names none
    ahead = decode_ahead(data.frames, data.offline.frame_sources(), config.frame_cache_workers, ranks.device.type)
    if ahead:
        say(f"learner: demonstrations: {ahead}")
    if policy is None:  # a fresh model: the demonstrations' cameras, normalised to their states and actions
        policy = VLAPolicy(replace(model_cfg, cameras=len(cameras)))
        model_cfg = policy.config
        policy.set_normalisation(data.offline.proprio_stats(), data.offline.action_stats())
    if resumed:
        policy.load_state_dict(resumed["policy"])
    algorithm.build(policy, resumed, ranks)
    published: list[str] = list(resumed["published"]) if resumed else []
    publisher = Publisher(config, cameras, algorithm.indicator, published) if ranks.main else None
    if publisher:
        cleanup.callback(publisher.wait)

    # ---- the robots' side, on rank 0: ingest into the store, policy announcements ----------------------------
    store, server = None, None
    if ranks.main and config.serve_robots:
        from sop_ros.cloud.services import CloudServices

        cloud = CloudServices(config, serve_policies=True)
        cleanup.callback(cloud.close)
        store = cloud.store
        server = publisher.server = cloud.policy_server
        if config.canary.enabled:
            publisher.serve_with_canaries(server)
            incumbent = publisher.registry.latest()
            if incumbent is not None and incumbent.version == base_version and policy is not None:
                publisher.keep_weights(base_version, policy.state_dict())  # the fleet runs the base: roll back to it
    elif ranks.main:
        store = EpisodeStore(config.store_dir)
        cleanup.callback(store.close)
    pace = None
    if ranks.main and config.serve_robots and config.pace.steps_per_sim_minute:
        pace = FleetPace(cloud.session, config.pace, say)
        cleanup.callback(pace.close)
    policy.to(ranks.device)
    forward_precision = precision_context(config.precision, ranks.device)
    module: nn.Module = Losses(policy, algorithm.beside_policy())
    if ranks.world > 1:
        module = nn.parallel.DistributedDataParallel(module, device_ids=[ranks.device.index] if
                                                     ranks.device.type == "cuda" else None)  # fmt: skip
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    # What the robots get: the weights themselves, or their moving average (from the starting weights on).
    average = (AveragedModel(policy, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
               if config.ema_decay else None)  # fmt: skip
    if average is not None and resumed and resumed.get("average"):
        average.load_state_dict(resumed["average"])
    served = average.module if average is not None else policy
    shares = OnlineShare(config.tasks, config.sampling)
    step = 0
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    if resumed:
        optimiser.load_state_dict(resumed["optimiser"])
        shares.load_state_dict(resumed["online_share"])
        step, run_id = resumed["step"], resumed["run_id"]
        say(f"learner: resumed from {state_path} at step {step}")
    elif config.optimiser_from_base:
        continue_optimiser(optimiser, base_optimiser, config)
    say(f"learner: {config.algorithm} on {', '.join(config.tasks)}; {parameter_count(policy) / 1e6:.2f}M "
        f"parameters on {ranks.device} x {ranks.world}; {len(data.offline.episodes)} demonstrations"
        + (f" (none of {', '.join(missing)})" if missing else ""))  # fmt: skip

    algorithm.start(data.by_source(), resumed, ranks, say)  # e.g. RECAP's value network pre-trained on the demos

    # ---- metrics --------------------------------------------------------------------------------------------
    writer = None
    if ranks.main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=step if resumed else None)
        cleanup.callback(writer.close)

    # ---- the loop -------------------------------------------------------------------------------------------
    decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")
    cleanup.callback(decoder.shutdown, wait=True, cancel_futures=True)
    pending: deque[tuple[int, list[Row], Future]] = deque()
    on_gpu = ranks.device.type == "cuda"  # pixels cross as uint8 from page-locked memory; the GPU scales them

    def assemble(rows: list[Row]) -> tuple[dict, dict[str, Tensor]]:
        batch_np = collate(data, rows, my_rows(rows, ranks), pixels=on_gpu)
        return batch_np, host_tensors(batch_np, model_cfg, pin=on_gpu)

    def prepare(at: int) -> None:
        """Plan step `at`'s global batch now and assemble this rank's rows on the decoder thread."""
        rows = plan_rows(at, config, data, shares.shares(at, data.steps()))
        pending.append((at, rows, decoder.submit(assemble, rows)))

    task_index = {t: i for i, t in enumerate(config.tasks)}
    started, last_log, last_publish = time.time(), time.monotonic(), time.monotonic()
    loop_start, trained_rows = time.monotonic(), 0
    stepping_s = 0.0  # in the loop minus pacing waits, publishing, checkpoints and logs: data path and training
    window_rows, window_loss, task_losses = 0, [], {}
    fleet = fleet_metrics([], started)
    first = step
    policy.train()
    while not stop.is_set() and (not config.max_steps or step < config.max_steps):
        if pace is not None:
            # Robots may now start episodes scheduled for this step's policy: it must be published first.
            publisher.wait()
            pace.announce(step, publisher.newest())
            if not pace.wait_for_step(step, stop):
                break
        step_start = time.monotonic()
        if step % config.refresh_every_steps == 0 or step == first:
            paths = training_paths(store, pace, step, stop) if store else None
            if data.refresh(same_on_all(paths, ranks), at_once=step == first):
                pending.clear()  # planned on the old online data: plan again
                algorithm.data_grew(data.by_source(), ranks)
                policy.train()
        while len(pending) < 2:
            prepare(step + len(pending))
        _, rows, decoded = pending.popleft()
        mine = my_rows(rows, ranks)
        batch_np, host = decoded.result()
        batch = to_device(host, ranks.device)
        batch |= {name: drawn[mine].to(ranks.device) for name, drawn in flow_draws(step, config, model_cfg).items()}
        targets = algorithm.add_inputs(batch, batch_np, rows, mine, data.by_source(), step, ranks.device)
        with forward_precision():
            losses, weights, beside_loss = module(batch, targets)
        losses = losses.float()
        total = all_sum(weights.detach().sum(), ranks).clamp(min=1.0)
        loss = (losses * weights).sum() * ranks.world / total
        if beside_loss is not None:
            loss = loss + beside_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate_at(step, config)
        optimiser.step()
        if average is not None:
            average.update_parameters(policy)
        # Per (task, source) mean losses over the whole global batch: SOP's w_on, the same on every rank.
        keys = torch.tensor([task_index[rows[i].task] * 2 + SOURCES.index(rows[i].source) for i in mine])
        stats = torch.zeros(2, 2 * len(config.tasks), dtype=torch.float64)
        stats[0].index_add_(0, keys, (losses * weights).detach().cpu().double())
        stats[1].index_add_(0, keys, weights.detach().cpu().double())
        all_sum(stats, ranks)
        for key in torch.nonzero(stats[1] > 0).flatten().tolist():
            task, source = config.tasks[key // 2], SOURCES[key % 2]
            shares.record(step, task, source, float(stats[0, key] / stats[1, key]))
            task_losses.setdefault(task, {})[source] = float(stats[0, key] / stats[1, key])
        window_loss.append(float(stats[0].sum() / stats[1].sum()))
        if writer:
            writer.add_scalar("loss/step", window_loss[-1], step)  # every step: runs can be compared exactly
            writer.add_scalar("learner/learning_rate", optimiser.param_groups[0]["lr"], step)
        window_rows += len(rows)
        trained_rows += len(rows)
        step += 1
        stepping_s += time.monotonic() - step_start
        if not ranks.main:
            continue
        # ---- rank 0: publish, checkpoint, metrics ---------------------------------------------------------
        due = step % config.publish_every_steps == 0 or (
            config.publish_every_s > 0 and time.monotonic() - last_publish >= config.publish_every_s)
        final = stop.is_set() or step == config.max_steps
        gate = publisher.gate
        if gate is not None and (due or final):
            verdict = gate.check(ended(store.episodes()))
            if verdict is not None and verdict.decision != "wait":
                decided(verdict, gate.verdicts[-1][0], publisher, policy, average, config, writer, step, say)
        if due or final:
            # A candidate on canary is decided before the next goes out; training and checkpoints go on.
            publishing = gate is None or gate.pending is None
            version = f"sop-{run_id}-{step:07d}"
            if publishing:
                published.append(version)  # in the checkpoint before it exists: a restart never reuses the name
            save_state(state_path, {
                "step": step, "run_id": run_id, "published": published, "policy": policy.state_dict(),
                "value": algorithm.state_dict(), "optimiser": optimiser.state_dict(),
                "online_share": shares.state_dict(), "config": to_dict(config),
                "average": average.state_dict() if average is not None else None,
            })  # fmt: skip
            if publishing:
                publisher.publish(served, version, {"step": float(step), "loss": float(np.mean(window_loss or [0]))})
                last_publish = time.monotonic()
        if final:
            publisher.wait()  # the last status names the last policy
        now = time.monotonic()
        if now - last_log >= config.log_every_s or final:
            fleet = fleet_metrics(store.episodes(), started) if store else fleet
            rate = window_rows / (now - last_log)
            # The online dataset is rebuilt as episodes arrive: its old arrays go free in the arenas of the
            # threads that touched them, which keep the pages unless told; the status then shows what is kept.
            return_free_memory()
            table = server.fleet_table() if server else {}
            status = {
                "time": time.time(), "algorithm": config.algorithm, "step": step, "ranks": ranks.world,
                "device": str(ranks.device), "samples_per_s": rate, "loss": float(np.mean(window_loss)),
                "task_losses": task_losses, "online_share": shares.shares(step, data.steps()),
                "tasks": list(config.tasks),
                "offline_episodes": len(data.offline.episodes), "online_episodes": len(data.online.episodes),
                "online_steps": data.online.num_selected, "fleet": fleet,
                "latest_policy": publisher.published[-1] if publisher.published else "",
                "publish_latency_s": publisher.latency_s, "publish_error": publisher.error,
                "version_lag": version_lag(table, publisher.published),
                "robot_versions": {r["robot"]: r["running_version"] for r in table.get("robots", [])},
                "fleet_sim_s": pace.fleet_time_ns / 1e9 if pace else None,
                "canary": canary_status(publisher.gate),
                "memory_mb": memory_status(data.frames),
                "value_thresholds": {}, "value_estimates": {}, **algorithm.status(),
            }  # fmt: skip
            write_status(learner_status_path(out), status)
            write_scalars(writer, status, step)
            say(f"step {step}  loss {status['loss']:.4f}  {rate:.1f} samples/s  fleet episodes "
                f"{len(data.online.episodes)}  w_on " + " ".join(f"{v:.2f}" for v in status["online_share"].values()))
            last_log, window_rows, window_loss = now, 0, []
    # ---- stop (the exit stack closes the rest) ---------------------------------------------------------------
    if publisher:
        publisher.wait()
        # The last policy as a checkpoint too: a base policy for another run (an offline baseline's deployment).
        save_checkpoint(out / FINAL_POLICY, served.cpu().eval(), version=publisher.newest(), tasks=list(config.tasks),
                        cameras=list(cameras), indicator=publisher.indicator)  # fmt: skip
    loop_s = time.monotonic() - loop_start
    result = {"step": step, "published": list(publisher.published) if publisher else [], "loop_s": loop_s,
              "samples_per_s": trained_rows / loop_s if loop_s > 0 else 0.0,
              "training_samples_per_s": trained_rows / stepping_s if stepping_s > 0 else 0.0,
              "online_episodes": len(data.online.episodes)}  # fmt: skip
    say(f"learner: stopped at step {step}; {len(result['published'])} policies published")
    return result


def training_paths(store: EpisodeStore, pace: FleetPace | None, step: int, stop: threading.Event) -> list[Path]:
    """The stored episodes to train on from step `step`. Paced: those that ended by the step's simulated cutoff,
    in the order they ended, so a run's data do not depend on when uploads happened to land."""
    if pace is None:
        return [store.root / e.path for e in store.episodes()]
    latest: dict[str, StoredEpisode] = {}  # the store as last read while waiting: what `chosen` comes from

    def stored() -> dict[str, int]:
        latest.clear()
        latest.update((e.episode_id, e) for e in store.episodes())
        return {e.episode_id: e.ended_ns for e in latest.values()}

    chosen = pace.training_episodes(step, stored, stop)
    picked = sorted((latest[e] for e in chosen), key=lambda e: (e.ended_ns, e.episode_id))
    return [store.root / e.path for e in picked]


def write_scalars(writer, status: dict, step: int) -> None:
    writer.add_scalar("loss/total", status["loss"], step)
    writer.add_scalar("learner/samples_per_s", status["samples_per_s"], step)
    if status["publish_latency_s"] == status["publish_latency_s"]:  # not NaN: something was published
        writer.add_scalar("learner/publish_latency_s", status["publish_latency_s"], step)
    for task, share in status["online_share"].items():
        writer.add_scalar(f"online_share/{task}", share, step)
    for task, losses in status["task_losses"].items():
        for source, value in losses.items():
            writer.add_scalar(f"loss/{task}/{source}", value, step)
    for task, rate in status["fleet"]["success"].items():
        writer.add_scalar(f"success/{task}", rate, step)
    for task, rate in status["fleet"]["autonomous_success"].items():
        writer.add_scalar(f"success_without_intervention/{task}", rate, step)
    writer.add_scalar("fleet/interventions_per_hour", status["fleet"]["interventions_per_hour"], step)
    for robot, lag in status["version_lag"].items():
        writer.add_scalar(f"fleet/version_lag/{robot}", lag, step)
    for task, threshold in status["value_thresholds"].items():
        writer.add_scalar(f"value/advantage_threshold/{task}", threshold, step)
    for task, value in status["value_estimates"].items():
        writer.add_scalar(f"value/initial_state/{task}", value, step)
    writer.flush()
