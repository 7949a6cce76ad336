"""This host, as reports and local runs need it: what machine a figure was measured on, free loopback
endpoints for the processes a run starts, and starting and stopping those processes."""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def machine() -> dict:
    """The machine a report's figures come from."""
    import onnxruntime
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def described(m: dict) -> str:
    """A machine() record as a report's sentence says it."""
    return (f"{m['cores']} CPU cores ({m['cpu']}), {m['system']}, Python {m['python']}, torch {m['torch']}, "
            f"GPU: {m['gpu'] or 'none'}")  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_endpoint() -> str:
    """A Zenoh endpoint on loopback that nothing listens on now."""
    return f"tcp/127.0.0.1:{free_port()}"


def sop_command(*args: str) -> list[str]:
    """The `sop` command line with `args`, run by this Python (its venv, not whatever `sop` is on the PATH)."""
    return [sys.executable, "-m", "sop_ros.cli", *args]


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when the thread that started it ends (as node_process)


def start_logged(cmd: list[str], log: Path, *, env: Mapping[str, str] | None = None, niceness: int = 0,
                 own_session: bool = False, append: bool = False, die_with_parent: bool = False,
                 **popen_kwargs) -> subprocess.Popen:  # fmt: skip
    """`cmd` started with its output and errors in `log`. `own_session`: a terminal's Ctrl-C reaches only this
    process, which then stops its children in order. `die_with_parent`: the kernel sends it SIGKILL when this
    process ends, however it ends (killed on a timeout, say), for helpers with nothing to clean up that must not
    outlive it."""
    if die_with_parent and sys.platform == "linux":
        popen_kwargs["preexec_fn"] = _sigkill_on_parent_death
    with open(log, "a" if append else "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen((["nice", "-n", str(niceness)] if niceness else []) + list(cmd), stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=own_session,
                                **popen_kwargs)  # fmt: skip
    if own_session:
        nice_session(proc.pid, os.getpriority(os.PRIO_PROCESS, 0) + niceness)
    return proc


def nice_session(pid: int, niceness: int) -> None:
    """Give the session that process `pid` started its `niceness` on Linux's scheduler autogroups.

    A process that starts a session of its own gets an autogroup of its own (where kernel.sched_autogroup_enabled
    is 1), and autogroups share the CPU evenly whatever their processes' nice values: a fleet's thirty niced node
    processes, each a session, then take thirty shares to the learner's one. Without autogroups this does
    nothing, as nice already applies."""
    if niceness <= 0:
        return
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(min(niceness, 19)))
    except OSError:
        pass  # no autogroups here (another OS, or a kernel without them): nice applies as it is


def return_free_memory() -> bool:
    """Hand the pages malloc holds free back to the system (glibc's malloc_trim); whether it could here.

    A process that keeps replacing large objects (a policy node loading a version every few seconds, a bridge
    downloading them) on several threads frees their memory into several glibc arenas, which keep it: its
    resident size then creeps up for hours though nothing is leaked. Not for a control thread: trimming walks
    every arena under its lock."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False  # not glibc (macOS, musl): their allocators return memory their own way
    trim(0)
    return True


# mallopt(3) parameters, and the environment variables by which a user sets them instead (then left as set).
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8
_MALLOC_ENV = {_M_ARENA_MAX: "MALLOC_ARENA_MAX", _M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}


def bound_malloc(arenas: int = 2, mmap_threshold: int | None = 128 * 2**10) -> bool:
    """Keep a long-running node's freed memory from staying resident (glibc); whether it could here.

    glibc gives each thread that allocates an arena of its own (up to 8 per core), and after a large block
    mapped on its own is freed it raises the size above which blocks are mapped, so later blocks of that size
    come from the arenas. A node that keeps replacing multi-megabyte objects on several threads (a policy node
    loading a version every few seconds) then leaves them as holes its arenas keep: measured on a fleet's
    policy nodes, 60-96 MB free but kept against 13-35 MB with two arenas and the threshold held at 128 KiB,
    its default start. `mmap_threshold` None leaves glibc's own: the learner's, as mapping its training
    tensors afresh every step halved its samples/s; two arenas held what it kept free to 196 MB against 591
    after 16 minutes of a 2-robot fleet, at 2,032 steps against 2,077. Called before the process's threads
    start; a variable the user set (`_MALLOC_ENV`) wins."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False  # not glibc: its allocator returns memory its own way
    for param, value in ((_M_ARENA_MAX, arenas), (_M_MMAP_THRESHOLD, mmap_threshold)):
        if value is not None and _MALLOC_ENV[param] not in os.environ:
            mallopt(param, value)
    return True


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


# Seconds between a node's log lines on what malloc holds (`sop_ros.robot.spin.report_memory`); unset or 0: none.
# A soak sets it: a node whose resident memory grows while malloc's bytes in use do not keeps freed memory.
MEMORY_REPORT_ENV = "SOP_MEMORY_REPORT_S"


def malloc_usage() -> dict[str, float] | None:
    """What glibc's malloc holds, over every arena (MB): `in_use` by the program (its large blocks, mapped on
    their own, included), `free` but kept in the arenas; None where this is not glibc >= 2.33. A resident size
    that grows with `in_use` is data kept; with `free`, memory the allocator has not handed back."""
    try:
        info = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return None
    info.restype = _MallInfo2
    got = info()
    return {"in_use": round((got.uordblks + got.hblkhd) / 2**20, 1), "free": round(got.fordblks / 2**20, 1)}


def _sigkill_on_parent_death() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> int:
    """Ask `proc` to stop with `sig` (a node's clean shutdown); killed if it has not within `timeout_s`. Its exit
    code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def code_version() -> dict:
    """The commit the code under test is at, and its files changed since (results taken on a working tree)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True,
                                  text=True, timeout=10, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip(), "changed_since": sorted(changed)}
