"""Instructions as model input: UTF-8 bytes, no vocabulary to download. Numpy only (robots need no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD = 0  # byte b is token b + 1, so 0 is free for padding


def instruction_tokens(texts: Sequence[str], length: int) -> np.ndarray:
    """int64 (len(texts), length): lower-cased UTF-8 bytes + 1, cut or padded with PAD."""
    out = np.full((len(texts), length), PAD, dtype=np.int64)
    for i, text in enumerate(texts):
        data = np.frombuffer(text.strip().lower().encode("utf-8")[:length], dtype=np.uint8)
        out[i, : len(data)] = data.astype(np.int64) + 1
    return out
