"""Image augmentation for training: each camera frame shifted by a few pixels at random.

With a few dozen demonstrations per task, a policy can fit the exact pixels of its training frames and fail on a
new placement; shifting every frame by up to `pad` pixels (the border repeated, as DrQ and Diffusion Policy do)
keeps what the frame shows but not where, so the policy has to read positions relative to what it sees. Training
only: the robot's policy sees its frames as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def random_shift(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """`images` (B, cameras, 3, H, W), each frame moved by its own whole-pixel offset in [-pad, pad] per axis."""
    if pad <= 0:
        return images
    b, c, ch, h, w = images.shape
    frames = F.pad(images.reshape(b * c, ch, h, w), (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (2, b * c), generator=generator, device="cpu").to(images.device)
    rows = offsets[0][:, None] + torch.arange(h, device=images.device)  # (N, H)
    cols = offsets[1][:, None] + torch.arange(w, device=images.device)  # (N, W)
    n = torch.arange(b * c, device=images.device)[:, None, None]
    shifted = frames.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]]  # (N, H, W, 3)
    return shifted.permute(0, 3, 1, 2).reshape(b, c, ch, h, w)
