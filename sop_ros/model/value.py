"""RECAP's distributional value network: V(s) as a distribution over `bins` values evenly spaced on [-1, 0].

It reads what the policy reads (cameras, instruction, joint positions) through encoders of the same kind, and
is trained with cross-entropy against the atom nearest to each step's normalised Monte-Carlo return
(sop_ros.learner.algorithms.recap). The learner pre-trains it on the demonstrations, then freezes it or keeps
training it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from sop_ros.configs.model import ModelConfig
from sop_ros.model.transformer import Encoder
from sop_ros.model.vla import ImageEncoder, InstructionEncoder


class ValueNetwork(nn.Module):
    def __init__(self, config: ModelConfig, bins: int = 201) -> None:
        super().__init__()
        self.config, self.bins = config, bins
        self.images = ImageEncoder(config)
        self.instruction = InstructionEncoder(config)
        self.proprio = nn.Linear(config.proprio_dim, config.width)
        self.summary = nn.Parameter(torch.randn(1, 1, config.width) * 0.02)  # the token the value is read from
        self.trunk = Encoder(config.width, config.heads, config.depth, config.dropout)
        self.readout = nn.Sequential(nn.LayerNorm(config.width), nn.Linear(config.width, bins))
        self.register_buffer("support", torch.linspace(-1.0, 0.0, bins))
        self.register_buffer("proprio_mean", torch.zeros(config.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(config.proprio_dim))

    def set_normalisation(self, proprio: tuple) -> None:
        self.proprio_mean.copy_(torch.as_tensor(proprio[0], dtype=torch.float32))
        self.proprio_std.copy_(torch.as_tensor(proprio[1], dtype=torch.float32))

    def forward(self, images: Tensor, proprio: Tensor, instruction: Tensor) -> Tensor:
        return self.logits(images, proprio, instruction)

    def logits(self, images: Tensor, proprio: Tensor, instruction: Tensor) -> Tensor:
        """(B, bins) unnormalised log-probabilities of the atoms."""
        proprio = (proprio - self.proprio_mean) / self.proprio_std
        summary = self.summary.expand(images.shape[0], -1, -1)
        tokens = torch.cat(
            [summary, self.images(images), self.instruction(instruction), self.proprio(proprio).unsqueeze(1)], dim=1
        )
        return self.readout(self.trunk(tokens)[:, 0])

    def loss(self, batch: dict[str, Tensor], target_bins: Tensor) -> Tensor:
        """Cross-entropy against each row's return atom (B,) int64."""
        return functional.cross_entropy(self.logits(batch["images"], batch["proprio"], batch["instruction"]),
                                        target_bins)  # fmt: skip

    def value(self, images: Tensor, proprio: Tensor, instruction: Tensor) -> Tensor:
        """The expected value (B,): sum over atoms of p(atom) * value(atom)."""
        return functional.softmax(self.logits(images, proprio, instruction), dim=-1) @ self.support
