"""A node's process: `python -m sop_ros.robot.node_process <node module> --ros-args ...`.

What `ros2 run` (the executables CMakeLists.txt generates) and `sop robot` start. Before the node's module loads
it catches stop signals, so that a node stopped while it is still starting exits 0 at once (see stop_signals);
when started by a launcher, asks the kernel to stop it if that launcher dies (even by SIGKILL): no orphans; and
loads the Fast DDS fix that lets a node stop while others leave (see fastdds_fix).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import NoReturn

from sop_ros.robot import fastdds_fix, stop_signals

# Set by a launcher for the nodes it starts, to its own pid: they stop when it dies.
DIE_WITH_PARENT_ENV = "SOP_ROS_DIE_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGTERM when the launcher named by DIE_WITH_PARENT_ENV dies (Linux); exit at once if it already has."""
    launcher = os.environ.get(DIE_WITH_PARENT_ENV, "")
    if not launcher.isdigit() or sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(launcher):  # it died before the request was made: no signal will come
        os._exit(0)


def run(module: str) -> NoReturn:
    """Catch stop signals, then import `module` (a node module with a `main()`), run it and end the process."""
    import importlib

    stop_signals.exit_on_signal()
    die_with_parent()
    fastdds_fix.load()  # before the node's module imports rclpy
    end_process(importlib.import_module(module).main())


def end_process(code: int) -> NoReturn:
    """End this process with `code` now that its nodes are destroyed and rclpy has shut down.

    Nothing of the nodes' is left to clean up, but native threads of libraries may still run: an ONNX Runtime
    session being built for a policy load, a simulator being built (neither can be interrupted). The
    interpreter's own finalization would wait for them (seconds) or free what they use under them (seen: a
    policy node aborting with "terminate called without an active exception"). So the process ends here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: python -m sop_ros.robot.node_process <node module> [--ros-args ...]")
    node_module = sys.argv.pop(1)  # rclpy reads its --ros-args from the rest of sys.argv
    raise SystemExit(run(node_module))
