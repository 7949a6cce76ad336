"""The VLA policy model: cameras + instruction + proprioception (+ advantage indicator) -> an action chunk.

Action head: flow matching, as in pi0. A chunk is drawn by integrating a learned velocity field from Gaussian
noise to actions in `flow_steps` Euler steps. Chosen over chunked regression (ACT) because RECAP's
classifier-free guidance is defined on exactly this field (v = v_none + beta * (v_positive - v_none)), and
because operator corrections are multimodal in a way a regression head averages away. The image encoder
and context run once per inference (the head's keys and values of the context too); only the small action
head iterates.

Inputs (what the ONNX graph takes, too):
    images       float32 (B, cameras, 3, S, S), values in [0, 1] (sop_ros.model.preprocess.image_to_input)
    proprio      float32 (B, proprio_dim), joint positions, raw units (normalised inside)
    instruction  int64 (B, instruction_bytes) (sop_ros.model.tokens.instruction_tokens)
    indicator    int64 (B,): 0 none, 1 negative, 2 positive advantage (RECAP); 0 for plain behaviour cloning
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from sop_ros.configs import from_dict
from sop_ros.configs.model import ModelConfig
from sop_ros.model.tokens import PAD
from sop_ros.model.transformer import Decoder, Encoder, KeysValues


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class ImageEncoder(nn.Module):
    """A small CNN shared by all cameras; each cell of its final feature map becomes one token."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        layers, previous = [], 3
        for channels in config.cnn_channels:
            layers += [
                nn.Conv2d(previous, channels, 3, stride=2, padding=1),
                nn.GroupNorm(_groups(channels), channels),
                nn.SiLU(),
            ]
            previous = channels
        self.cnn = nn.Sequential(*layers)
        self.project = nn.Conv2d(previous, config.width, 1)
        cells = config.feature_size**2
        self.position = nn.Parameter(torch.randn(1, 1, cells, config.width) * 0.02)
        self.camera = nn.Parameter(torch.randn(1, config.cameras, 1, config.width) * 0.02)

    def forward(self, images: Tensor) -> Tensor:
        # Reshapes by the config's constants, the batch as -1: the exported graph computes no shapes.
        c = self.config
        flat = images.reshape(-1, 3, c.image_size, c.image_size)
        features = self.project(self.cnn((flat - 0.5) / 0.25))  # (B * cameras, width, f, f)
        tokens = features.reshape(-1, c.cameras, c.width, c.feature_size**2).transpose(2, 3)
        return (tokens + self.position + self.camera).reshape(-1, c.cameras * c.feature_size**2, c.width)


class InstructionEncoder(nn.Module):
    """Byte embeddings, a convolution over neighbouring bytes, and a masked mean: one instruction token."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(257, config.width, padding_idx=PAD)
        self.conv = nn.Conv1d(config.width, config.width, 5, padding=2)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(config.width, config.width))

    def forward(self, tokens: Tensor) -> Tensor:
        mask = (tokens != PAD).unsqueeze(-1).float()
        x = self.conv(self.embed(tokens).transpose(1, 2)).transpose(1, 2)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.out(pooled).unsqueeze(1)


def time_embedding(t: Tensor, width: int) -> Tensor:
    """Sinusoidal features of the flow time t in [0, 1], (...) -> (..., width)."""
    half = width // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = t.unsqueeze(-1) * freqs * 1000.0
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def rtc_prefix_draw(rows: int, config: ModelConfig, generator: torch.Generator | None = None) -> Tensor:
    """Each training row's given prefix length (rows,): none for rtc_no_prefix_share of them, else 1..rtc_max_prefix
    uniformly."""
    given = torch.randint(1, config.rtc_max_prefix + 1, (rows,), generator=generator)
    return given * (torch.rand(rows, generator=generator) >= config.rtc_no_prefix_share)


def prefix_mask(lengths: Tensor, horizon: int) -> Tensor:
    """(B, horizon) True where a chunk's action is within its given prefix of `lengths` (B,) actions."""
    return torch.arange(horizon, device=lengths.device)[None, :] < lengths[:, None]


class VLAPolicy(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        self.images = ImageEncoder(c)
        self.instruction = InstructionEncoder(c)
        self.proprio = nn.Linear(c.proprio_dim, c.width)
        self.indicator = nn.Embedding(3, c.width)
        self.context = Encoder(c.width, c.heads, c.depth, c.dropout)
        self.action_in = nn.Linear(c.action_dim, c.width)
        self.action_position = nn.Parameter(torch.randn(1, c.chunk, c.width) * 0.02)
        self.time = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.head = Decoder(c.width, c.heads, c.head_depth, c.dropout)
        self.action_out = nn.Sequential(nn.LayerNorm(c.width), nn.Linear(c.width, c.action_dim))
        # Normalisation of proprioception and actions, set from the training data (set_normalisation).
        self.register_buffer("proprio_mean", torch.zeros(c.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(c.proprio_dim))
        self.register_buffer("action_mean", torch.zeros(c.action_dim))
        self.register_buffer("action_std", torch.ones(c.action_dim))

    def set_normalisation(self, proprio: tuple, actions: tuple) -> None:
        for name, values in (("proprio_mean", proprio[0]), ("proprio_std", proprio[1]),
                             ("action_mean", actions[0]), ("action_std", actions[1])):  # fmt: skip
            getattr(self, name).copy_(torch.as_tensor(values, dtype=torch.float32))

    def encode(self, images: Tensor, proprio: Tensor, instruction: Tensor, indicator: Tensor) -> Tensor:
        """The context tokens the action head attends to."""
        proprio = (proprio - self.proprio_mean) / self.proprio_std
        tokens = torch.cat(
            [
                self.images(images),
                self.instruction(instruction),
                self.proprio(proprio).unsqueeze(1),
                self.indicator(indicator).unsqueeze(1),
            ],
            dim=1,
        )
        return self.context(tokens)

    def velocity(self, noisy_actions: Tensor, t: Tensor, context: KeysValues) -> Tensor:
        """The flow's velocity at normalised actions `noisy_actions` (B, H, D) and time t: (B,) or (1,), one per
        chunk, or (B, H), one per action (a given prefix is at time 1), attending to `self.head.keys_values`."""
        x = self.action_in(noisy_actions) + self.action_position
        time = self.time(time_embedding(t, self.config.width))
        x = x + (time if t.dim() == 2 else time.unsqueeze(1))
        return self.action_out(self.head(x, context))

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Flow matching: regress the straight-line velocity from noise to the (normalised) demonstrated chunk;
        the squared error averaged over every action of the batch inside its episode."""
        losses, actions = self.sample_losses(batch)
        return (losses * actions).sum() / actions.sum().clamp(min=1.0)

    def sample_losses(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Each row's loss (B,), averaged over its actions inside the episode, and how many those are (B,): the
        learner weighs tasks and sources by them. The flow's noise (B, H, D) and time (B,) are drawn here unless
        the batch brings them ("noise", "flow_time"): data-parallel ranks draw the global batch's and take theirs."""
        target = (batch["actions"] - self.action_mean) / self.action_std
        context = self.encode(batch["images"], batch["proprio"], batch["instruction"], batch["indicator"])
        noise = batch["noise"] if "noise" in batch else torch.randn_like(target)
        t = batch["flow_time"] if "flow_time" in batch else torch.rand(target.shape[0], device=target.device)
        mask = batch["action_mask"].float()
        if self.config.rtc_max_prefix:  # each row's first `prefix` actions given: clean, at time 1, not scored
            prefix = batch["rtc_prefix"] if "rtc_prefix" in batch else rtc_prefix_draw(
                target.shape[0], self.config).to(target.device)  # fmt: skip
            given = prefix_mask(prefix, target.shape[1])  # (B, H)
            t = torch.where(given, torch.ones_like(given, dtype=t.dtype), t[:, None].expand_as(given))
            mask = mask * ~given
            noisy = t[..., None] * target + (1 - t[..., None]) * noise
        else:
            noisy = t[:, None, None] * target + (1 - t[:, None, None]) * noise
        velocity = self.velocity(noisy, t, self.head.keys_values(context))
        error = ((velocity - (target - noise)) ** 2).mean(dim=-1)  # (B, H)
        actions = mask.sum(dim=1)
        return (error * mask).sum(dim=1) / actions.clamp(min=1.0), actions

    def sample_actions(
        self,
        images: Tensor,
        proprio: Tensor,
        instruction: Tensor,
        indicator: Tensor,
        noise: Tensor,
        guidance: float = 1.0,
        prefix: Tensor | None = None,
        prefix_len: Tensor | None = None,
    ) -> Tensor:
        """An action chunk (B, H, D) in robot units, integrated from `noise` (B, H, D).

        With guidance != 1 (RECAP), the velocity is v_none + guidance * (v_indicator - v_none). With a `prefix`
        (B, H, D, robot units) and its length `prefix_len` (B,) (a policy trained with rtc_max_prefix), the
        chunk's first prefix_len actions are those given, unchanged, and the rest are integrated to follow them.
        """
        # The context's keys and values, once: every flow step attends to the same context.
        context = self.head.keys_values(self.encode(images, proprio, instruction, indicator))
        if guidance != 1.0:
            none = torch.zeros_like(indicator)
            unconditioned = self.head.keys_values(self.encode(images, proprio, instruction, none))
        x, dt = noise, 1.0 / self.config.flow_steps
        given = None
        if prefix is not None and prefix_len is not None:
            given = prefix_mask(prefix_len, x.shape[1])[..., None]  # (B, H, 1)
            x = torch.where(given, (prefix - self.action_mean) / self.action_std, x)
        for i in range(self.config.flow_steps):
            t = torch.full((1,), i * dt, dtype=x.dtype, device=x.device)  # one time for the batch: a constant
            if given is not None:
                t = torch.where(given[..., 0], torch.ones((), dtype=x.dtype, device=x.device), t)  # (B, H)
            v = self.velocity(x, t, context)
            if guidance != 1.0:
                v_none = self.velocity(x, t, unconditioned)
                v = v_none + guidance * (v - v_none)
            x = x + dt * (v if given is None else v.masked_fill(given, 0.0))  # the given prefix stays as given
        out = x * self.action_std + self.action_mean
        return out if given is None else torch.where(given, prefix, out)  # exactly, not through the round trip


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_checkpoint(path: str | Path, model: VLAPolicy, **extra) -> None:
    """Weights, normalisation and config in one file; `extra` (version, task list, step, ...) rides along."""
    payload = {"config": dataclasses.asdict(model.config), "state_dict": model.state_dict(), **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temp)
    temp.replace(path)  # a checkpoint is never seen half-written


def load_checkpoint(path: str | Path) -> tuple[VLAPolicy, dict]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = VLAPolicy(from_dict(ModelConfig, payload.pop("config")))
    model.load_state_dict(payload.pop("state_dict"))
    return model.eval(), payload
