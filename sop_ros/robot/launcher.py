"""`sop robot`: start a robot's nodes from its YAML config, here, without `ros2 launch`.

By default every node runs in its own process, as `ros2 launch` would start them; `single_process`
composes them on one executor instead. Either way SIGINT/SIGTERM stops every node cleanly, and the
launcher exits 0 when all of them did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sop_ros.robot.launch_plan import NodeSpec
from sop_ros.robot.spin import DIE_WITH_PARENT_ENV

STOP_GRACE_S = 10.0


class _QuotedStrings(yaml.SafeDumper):
    """rcl's YAML parser reads bare y/n/yes/on as booleans (an action axis named "y"!): quote every string."""


_QuotedStrings.add_representer(str, lambda dumper, s: dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"'))


def write_params_file(spec: NodeSpec, directory: Path) -> Path:
    """A ROS 2 parameters file for one node; also used by launch/*.launch.py."""
    path = directory / f"{spec.namespace.strip('/')}_{spec.name}.yaml"
    path.write_text(yaml.dump({"/**": {"ros__parameters": spec.parameters}}, Dumper=_QuotedStrings, sort_keys=False))
    return path


class ProcessLauncher:
    def __init__(self, specs: list[NodeSpec], log=print) -> None:
        self.specs = specs
        self.log = log
        self.procs: dict[str, subprocess.Popen] = {}
        self._stop_requested = False

    def run(self, duration_s: float | None = None) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with tempfile.TemporaryDirectory(prefix="sop_robot_") as tmp:
                self._start(Path(tmp))
                reason = self._wait(duration_s)
                self.log(f"stopping {len(self.procs)} nodes: {reason}")
                codes = self._stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for name, code in codes.items():
            self.log(f"  {name}: exit code {code}")
        return 0 if all(code == 0 for code in codes.values()) else 1

    def _on_signal(self, signum: int, _frame) -> None:
        self._stop_requested = True

    def _start(self, tmp: Path) -> None:
        for spec in self.specs:
            cmd = [sys.executable, "-m", spec.type.module, *spec.ros_args(str(write_params_file(spec, tmp)))]
            # Own process group: a terminal's Ctrl-C reaches only the launcher, which forwards exactly one
            # SIGINT to each node (a second SIGINT would interrupt a node's clean shutdown).
            # The node also asks the kernel for SIGTERM if the launcher dies (even by SIGKILL): no orphans.
            env = {**os.environ, DIE_WITH_PARENT_ENV: "1"}
            proc = subprocess.Popen(cmd, start_new_session=True, env=env)
            self.procs[spec.name] = proc
            self.log(f"started {spec.namespace}/{spec.name} (pid {proc.pid})")

    def _wait(self, duration_s: float | None) -> str:
        deadline = None if duration_s is None else time.monotonic() + duration_s
        ends_run = {s.name for s in self.specs if s.ends_run}
        while True:
            if self._stop_requested:
                return "stop requested"
            if deadline is not None and time.monotonic() >= deadline:
                return f"ran for {duration_s:g} s"
            for name, proc in self.procs.items():
                code = proc.poll()
                if code is not None:
                    return f"{name} finished" if name in ends_run and code == 0 else f"{name} exited with {code}"
            time.sleep(0.05)

    def _stop(self) -> dict[str, int]:
        # SIGTERM, not SIGINT: rclpy stops cleanly on either, and a node still importing (no handler yet)
        # ends quietly instead of printing a KeyboardInterrupt traceback.
        signalled = set()
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                signalled.add(name)
        deadline = time.monotonic() + STOP_GRACE_S
        codes = {}
        for name, proc in self.procs.items():
            try:
                code = proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.log(f"{name} did not stop within {STOP_GRACE_S:g} s of SIGTERM: killing it")
                proc.kill()
                code = proc.wait()
            # Ended by our SIGTERM before rclpy was up: stopped, not failed.
            codes[name] = 0 if code == -signal.SIGTERM and name in signalled else code
        return codes


def run_single_process(specs: list[NodeSpec], duration_s: float | None = None) -> int:
    """Compose every node in this process on one executor."""
    import importlib

    import rclpy

    from sop_ros.configs import ConfigError
    from sop_ros.robot.params import parameter_overrides
    from sop_ros.robot.spin import init, spin_until_done

    # Every module is imported here, in this thread, before any node starts one of its own: a simulator's
    # thread importing while this one still imports the policy's modules met a partially initialised torch.
    classes = {spec.name: getattr(importlib.import_module(spec.type.module), spec.type.node_class) for spec in specs}
    stop = init(["--ros-args", "--log-level", specs[0].log_level])
    nodes = []
    try:
        for spec in specs:
            cls = classes[spec.name]
            overrides = parameter_overrides(spec.type.config, spec.parameters)
            remaps = [a for src, dst in spec.remappings for a in ("-r", f"{src}:={dst}")]
            nodes.append(
                cls(
                    namespace=spec.namespace,
                    parameter_overrides=overrides,
                    cli_args=["--ros-args", *remaps] if remaps else None,
                )
            )
            print(f"started {spec.namespace}/{spec.name} (in process {os.getpid()})")
        spin_until_done(nodes, stop, duration_s)
        # A node that ended by itself may report failure (e.g. a simulator whose driver loop died), as alone.
        return max((getattr(node, "exit_code", 0) for node in nodes), default=0)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
