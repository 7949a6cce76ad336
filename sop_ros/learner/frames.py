"""Camera frames decoded once: the learner's JPEG frames kept as model-sized bytes, up to a memory budget.

A learner samples every frame many times; decoding its JPEG and resizing it each time is most of what a batch
costs, and on a GPU it is what the GPU waits for. The first time a frame is sampled its (3, S, S) uint8 pixels
are kept (a quarter of float32's size: 24 KB a step for two 64 px cameras), and later samples convert those
to the model's input, which gives byte-identical batches to decoding again.

Frames are kept until the budget is full and never evicted: a learner draws steps uniformly, so any set of
frames of the budget's size is hit as often as any other, and a cache that never changes needs no locking
beyond what a dict gives (two threads missing the same frame both decode it; one copy is kept).
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from sop_ros.model.preprocess import decode_jpeg_rgb, resize_chw


class DecodedFrames:
    """Decoded, resized frames by key, up to `budget_mb` of pixels (0: keep none, decode every time)."""

    def __init__(self, size: int, budget_mb: float) -> None:
        if size < 1:
            raise ValueError(f"image size {size!r} must be >= 1 pixel")
        if budget_mb < 0:
            raise ValueError(f"frame cache budget {budget_mb!r} MB must be >= 0 (0: no cache)")
        self.size = size
        self.budget_bytes = int(budget_mb * 2**20)
        self.kept_bytes = 0
        self.hits = 0
        self.misses = 0
        self._frames: dict[Hashable, np.ndarray] = {}

    def pixels(self, key: Hashable, jpeg: bytes) -> np.ndarray:
        """The frame `key` (whose bytes are `jpeg`) as uint8 (3, S, S); read-only when it is a kept one."""
        kept = self._frames.get(key)
        if kept is not None:
            self.hits += 1
            return kept
        self.misses += 1
        pixels = resize_chw(decode_jpeg_rgb(jpeg), self.size)
        if self.kept_bytes + pixels.nbytes <= self.budget_bytes:
            pixels.flags.writeable = False  # shared by every later sample of this frame
            if self._frames.setdefault(key, pixels) is pixels:
                self.kept_bytes += pixels.nbytes
        return pixels

    def __len__(self) -> int:
        return len(self._frames)
