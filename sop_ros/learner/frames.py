"""Camera frames decoded once: the learner's JPEG frames kept as model-sized bytes, up to a memory budget.

A learner samples every frame many times; decoding its JPEG and resizing it each time is most of what a batch
costs, and on a GPU it is what the GPU waits for. The first time a frame is sampled its (3, S, S) uint8 pixels
are kept (a quarter of float32's size: 24 KB a step for two 64 px cameras), and later samples convert those
to the model's input, which gives byte-identical batches to decoding again.

Frames are kept until the budget is full and not evicted for others: a learner draws steps uniformly, so any
set of frames of the budget's size is hit as often as any other. A frame is dropped only when its episode
leaves the learner's data (`forget`: a capped replay), which frees room for the newer ones. Reads need no
lock beyond what a dict gives (two threads missing the same frame both decode it; one copy is kept).

`fill` decodes many frames at once in worker processes (a GPU learner's demonstrations at start): otherwise the
first pass over the data decodes on the one thread that also assembles batches, and the GPU waits for it.

`JpegSpill` keeps the JPEG bytes themselves on disk: the fleet's episodes are the one part of a learner's data
that grows as long as it runs (about 290 KB of JPEG an episode of two 64 px cameras, 450 MB in a 4-robot
soak's two hours), so their frames live in one file and are read back by offset when a sample needs them.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

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
        self._sizing = threading.Lock()  # `kept_bytes`: kept on the decoding thread, forgotten on another

    def pixels(self, key: Hashable, jpeg: bytes) -> np.ndarray:
        """The frame `key` (whose bytes are `jpeg`) as uint8 (3, S, S); read-only when it is a kept one."""
        kept = self._frames.get(key)
        if kept is not None:
            self.hits += 1
            return kept
        self.misses += 1
        pixels = resize_chw(decode_jpeg_rgb(jpeg), self.size)
        self._keep(key, pixels)
        return pixels

    def _keep(self, key: Hashable, pixels: np.ndarray) -> None:
        with self._sizing:
            if self.kept_bytes + pixels.nbytes <= self.budget_bytes:
                pixels.flags.writeable = False  # shared by every later sample of this frame
                if self._frames.setdefault(key, pixels) is pixels:
                    self.kept_bytes += pixels.nbytes

    def forget(self, keys: Iterable[Hashable]) -> int:
        """Drop the frames `keys` (those not kept are passed over); how many were kept."""
        dropped = 0
        with self._sizing:
            for key in keys:
                if (pixels := self._frames.pop(key, None)) is not None:
                    self.kept_bytes -= pixels.nbytes
                    dropped += 1
        return dropped

    def fill(self, frames: Iterable[tuple[Hashable, bytes]], workers: int, chunk: int = 256) -> int:
        """Decode the `frames` (key, JPEG bytes) not kept yet in `workers` processes and keep them, as many as
        the budget holds; how many were added. The pixels are those `pixels` would give (the same decoder)."""
        if workers < 1:
            raise ValueError(f"workers {workers!r} must be >= 1")
        frame_bytes, room = 3 * self.size * self.size, self.budget_bytes - self.kept_bytes
        todo, seen = [], set()
        for key, jpeg in frames:
            if key in self._frames or key in seen:
                continue
            if (len(todo) + 1) * frame_bytes > room:
                break
            todo.append((key, jpeg))
            seen.add(key)
        parts = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
        if not parts:
            return 0
        before = len(self._frames)
        # spawn: the learner has threads (Zenoh, the decoder) that a forked child would inherit mid-state.
        with ProcessPoolExecutor(min(workers, len(parts)), mp_context=multiprocessing.get_context("spawn")) as pool:
            jpegs = ([jpeg for _, jpeg in part] for part in parts)
            for part, decoded in zip(parts, pool.map(_decode, jpegs, repeat(self.size)), strict=True):
                for (key, _), pixels in zip(part, decoded, strict=True):
                    self._keep(key, pixels)
        return len(self._frames) - before

    def __len__(self) -> int:
        return len(self._frames)


def decode_ahead(frames: DecodedFrames, sources: Iterable[tuple[Hashable, bytes]], requested: int,
                 device_type: str) -> str:  # fmt: skip
    """Fill `frames` from `sources` at a learner's start in `fill_workers(requested, device_type)` processes;
    what to log ("" when none were asked for)."""
    workers = fill_workers(requested, device_type)
    if not workers:
        return ""
    started = time.monotonic()
    added = frames.fill(sources, workers)
    return f"{added} frames decoded by {workers} processes in {time.monotonic() - started:.1f} s"


def fill_workers(requested: int, device_type: str) -> int:
    """Processes that fill a learner's frame cache at start: `requested`, or for -1 one per core but one (at most
    16) on a GPU and none on a CPU, where the training step needs the cores and the first pass decodes anyway."""
    if requested >= 0:
        return requested
    return min(16, max(1, (os.cpu_count() or 2) - 1)) if device_type == "cuda" else 0


def _decode(jpegs: list[bytes], size: int) -> list[np.ndarray]:
    """A worker's share of `DecodedFrames.fill`."""
    return [resize_chw(decode_jpeg_rgb(jpeg), size) for jpeg in jpegs]


class JpegSpill:
    """JPEG frames appended to one file in `directory` and read back by offset: memory keeps 16 bytes a frame.

    The file is unlinked from the start (its space goes back when the process ends, killed or not) and made on
    the first `keep`. Writes are serialised; reads (`os.pread`) need no lock, and a frame is read only after the
    write that placed it has returned. A disk that refuses the write leaves the frames in memory: data already
    accepted is never dropped for want of a place to spill it."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.bytes = 0  # spilled so far
        self._file = None
        self._lock = threading.Lock()

    def keep(self, jpegs: Sequence[bytes]) -> Sequence[bytes]:
        """The frames `jpegs` as a sequence read from the file (the same bytes), or `jpegs` if it cannot be written."""
        blob = b"".join(jpegs)
        lengths = np.fromiter(map(len, jpegs), np.int64, len(jpegs))
        try:
            with self._lock:
                if self._file is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    self._file = tempfile.TemporaryFile(dir=self.directory, prefix="spilled-frames-")
                start, view = self.bytes, memoryview(blob)
                while view:  # a regular file takes it all at once, short of a full disk
                    written = os.pwrite(self._file.fileno(), view, start + len(blob) - len(view))
                    view = view[written:]
                self.bytes += len(blob)
        except OSError:
            return jpegs
        return SpilledJpegs(self, start + np.cumsum(lengths) - lengths, lengths)

    def read(self, offset: int, length: int) -> bytes:
        file = self._file
        if file is None or file.closed:  # its descriptor may be another file's by now
            raise ValueError(f"the frame spill in {self.directory} is closed")
        data = os.pread(file.fileno(), length, offset)
        if len(data) != length:
            raise OSError(f"the frame spill in {self.directory}: read {len(data)} of {length} bytes at {offset}")
        return data

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()


class SpilledJpegs(Sequence[bytes]):
    """One camera's frames of an episode in a `JpegSpill`: frame i is `length[i]` bytes at `offset[i]`."""

    def __init__(self, spill: JpegSpill, offsets: np.ndarray, lengths: np.ndarray) -> None:
        self._spill, self._offsets, self._lengths = spill, offsets, lengths

    @property
    def spill(self) -> JpegSpill:
        return self._spill

    def __len__(self) -> int:
        return len(self._lengths)

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]  # frames are read one at a time
        return self._spill.read(int(self._offsets[i]), int(self._lengths[i]))
