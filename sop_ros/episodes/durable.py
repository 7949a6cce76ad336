"""Writing files that survive a crash: what is renamed into place is complete, and what was acknowledged as
written is on disk. Used by the recorder, the cloud's episode store and policy registry, and checkpoints."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(directory: Path) -> None:
    """Make a new, renamed or removed directory entry durable (fsync of the file alone does not)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(file: IO[Any]) -> None:
    """Python's buffer to the kernel, the kernel's pages to the disk."""
    file.flush()
    os.fsync(file.fileno())


@contextmanager
def atomic_file(path: Path, durable: bool = True) -> Iterator[IO[bytes]]:
    """A file to write whose bytes appear at `path` only when the block ends without an error: readers, and
    a crash, see the previous file or the new one, never a part. `durable`: on disk when the block ends."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp")  # hidden, and never taken for the file itself
    try:
        with open(temp, "wb") as file:
            yield file
            if durable:
                sync_file(file)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


class BackgroundSync:
    """A file being written in pieces has its dirty pages flushed to disk on a thread every `every` bytes, so the
    fsync that makes it durable at the end has little left: writing and flushing overlap instead of taking turns
    (an upload acknowledged only once durable waited for its whole file's flush). One thread for the process."""

    _thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fdatasync")

    def __init__(self, file: IO[bytes], every: int = 8 << 20) -> None:
        self.file, self.every = file, every
        self._flushed_to = file.tell()
        self._last: Future[None] | None = None

    def wrote(self) -> None:
        """After each write: start a flush when `every` more bytes are written and none is running."""
        if self.file.tell() - self._flushed_to < self.every or (self._last is not None and not self._last.done()):
            return
        self.file.flush()  # Python's buffer, on this thread; the kernel's pages then on the other
        self._flushed_to = self.file.tell()
        self._last = self._thread.submit(os.fdatasync, self.file.fileno())

    def wait(self) -> None:
        """Wait for the flush in progress (before the final fsync, or before the file is closed)."""
        if self._last is not None:
            self._last.result()


class RecordingError(OSError):
    """A disk problem stopped a recording: no space, read-only, no permission, no such directory, ...

    A subclass of OSError, so `except OSError` catches it too; `errno` is the cause's errno and `path` the
    file or directory concerned. The message names the path, the cause and what to do. Finished episode files
    are never touched by the failed operation; what had reached the partial file stays there for
    `recover_partials`.
    """

    def __init__(self, message: str, path: Path, cause_errno: int | None) -> None:
        super().__init__(message)
        self.errno = cause_errno
        self.path = path


def _advice(code: int | None, directory: Path) -> str:
    if code == errno.ENOSPC:
        return f"free space on the disk holding {directory}, or record to another disk"
    if code == errno.EDQUOT:
        return f"free space in, or raise, the disk quota for {directory}"
    if code == errno.EROFS:
        return f"{directory} is on a read-only file system: remount it read-write or record to another directory"
    if code in (errno.EACCES, errno.EPERM):
        return f"make {directory} writable for this user (uid {os.getuid()}) or record to another directory"
    if code in (errno.ENOTDIR, errno.ENOENT, errno.EEXIST):
        blocker = _first_non_directory(directory)
        if blocker is not None:
            return f"{blocker} is a file, not a directory: choose a recording directory that can be created"
        return f"create {directory} or choose a recording directory that can be created"
    return f"check the disk holding {directory}"


def _first_non_directory(path: Path) -> Path | None:
    for candidate in reversed([path, *path.parents]):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def recording_error(action: str, path: Path, directory: Path, exc: OSError) -> RecordingError:
    cause = exc.strerror or str(exc)
    return RecordingError(f"cannot {action} {path}: {cause}; {_advice(exc.errno, directory)}", path, exc.errno)


@contextmanager
def disk_errors(action: str, path: Path, directory: Path) -> Iterator[None]:
    """Turn an OSError from the file system into a RecordingError that says what to do about it."""
    try:
        yield
    except RecordingError:
        raise
    except OSError as exc:
        raise recording_error(action, path, directory, exc) from exc
