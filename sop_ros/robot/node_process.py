"""A node's process: `python -m sop_ros.robot.node_process <node module> --ros-args ...`.

What `ros2 run` (the executables CMakeLists.txt generates) and `sop robot` start. Before the node's module loads
it catches stop signals, so that a node stopped while it is still starting exits 0 at once (see stop_signals),
and, when started by a launcher, asks the kernel to stop it if that launcher dies (even by SIGKILL): no orphans.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from sop_ros.robot import stop_signals

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


def run(module: str) -> int:
    """Import `module` (a node module with a `main()`) and run it."""
    import importlib

    return importlib.import_module(module).main()


stop_signals.exit_on_signal()
die_with_parent()

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: python -m sop_ros.robot.node_process <node module> [--ros-args ...]")
    node_module = sys.argv.pop(1)  # rclpy reads its --ros-args from the rest of sys.argv
    raise SystemExit(run(node_module))
