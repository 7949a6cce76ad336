"""File digests: one sha256 for episodes (robot -> cloud) and policies (cloud -> robot).

A file written through `HashingWriter` knows its sha256 when it is finished, so the recorder hashes each
episode while recording it (a few bytes per control tick) and leaves the digest on the file as an extended
attribute; the uploader reads it there instead of reading the whole file once more before sending it.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

SHA256_XATTR = "user.sop_ros.sha256"  # {"sha256": ..., "size": ...}; moves with the file, not with copies of it


def file_sha256(path: str | Path) -> str:
    """The file's sha256 as 64 lowercase hex digits, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class HashingWriter:
    """A binary file that hashes what is written to it, for a writer that only appends (the MCAP writer)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()

    @property
    def closed(self) -> bool:
        return self.file.closed

    def record_sha256(self) -> None:
        """Leave the digest of everything written on the file. Where the file system keeps no user attributes
        nothing is left, and readers hash the file (recorded_sha256 is None)."""
        self.file.flush()
        value = json.dumps({"sha256": self.digest.hexdigest(), "size": self.file.tell()}).encode()
        try:
            os.setxattr(self.file.fileno(), SHA256_XATTR, value)
        except OSError:
            pass


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 left on the file by HashingWriter if it still describes the file (same size), else None."""
    try:
        fields = json.loads(os.getxattr(path, SHA256_XATTR))
        size = os.stat(path).st_size
    except (OSError, ValueError):
        return None
    if not isinstance(fields, dict) or fields.get("size") != size or not isinstance(fields.get("sha256"), str):
        return None
    return fields["sha256"]


class BackgroundSha256:
    """The sha256 of bytes given in order, computed on a thread while the caller writes them to disk: hashing
    and writing both let go of the GIL, so a receiver does both at once. One thread for the whole process, so
    every digest's updates run in the order given."""

    _thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._last: Future[None] | None = None

    def update(self, data: bytes) -> None:
        self._last = self._thread.submit(self._digest.update, data)

    def hexdigest(self) -> str:
        """The digest of every update given so far (waits for them to be hashed)."""
        if self._last is not None:
            self._last.result()
        return self._digest.hexdigest()
