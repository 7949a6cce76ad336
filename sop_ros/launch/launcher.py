"""`sop robot`: start a robot's nodes from its YAML config, here, without `ros2 launch`.

By default every node runs in its own process, as `ros2 launch` would start them; `single_process`
composes them in one process instead. Either way SIGINT/SIGTERM stops every node cleanly, and the
launcher exits 0 when all of them did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from sop_ros.host import nice_session
from sop_ros.launch.plan import NodeSpec
from sop_ros.robot.node_process import DIE_WITH_PARENT_ENV

STOP_GRACE_S = 10.0


class _QuotedStrings(yaml.SafeDumper):
    """rcl's YAML parser reads bare y/n/yes/on as booleans (an action axis named "y"!): quote every string."""


_QuotedStrings.add_representer(str, lambda dumper, s: dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"'))


def write_params_file(spec: NodeSpec, directory: Path) -> Path:
    """A ROS 2 parameters file for one node; also used by launch/*.launch.py."""
    path = directory / f"{spec.namespace.strip('/')}_{spec.name}.yaml"
    path.write_text(yaml.dump({"/**": {"ros__parameters": spec.parameters}}, Dumper=_QuotedStrings, sort_keys=False))
    return path


@dataclass(frozen=True)
class NodeExit:
    code: int  # the process's exit code; negative: ended by that signal (-9: killed after the grace period)
    stop_s: float  # from the stop signal to the exit; 0 for a process that had ended before it
    signalled: bool  # it was running when the stop signal was sent


class ProcessLauncher:
    """Every node in a process of its own, as `ros2 launch` starts them; `log_dir`: each one's output in
    <log_dir>/<node>.log (default: this process's stdout and stderr); `env`: theirs (default: this process's)."""

    def __init__(self, specs: list[NodeSpec], log=print, log_dir: Path | None = None, env: dict | None = None) -> None:
        self.specs = specs
        self.log = log
        self.log_dir = log_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self._stop_requested = False

    def run(self, duration_s: float | None = None) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with tempfile.TemporaryDirectory(prefix="sop_robot_") as tmp:
                self.start(Path(tmp))
                reason = self._wait(duration_s)
                self.log(f"stopping {len(self.procs)} nodes: {reason}")
                exits = self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        for name, end in exits.items():
            self.log(f"  {name}: exit code {end.code}" + (f" (stopped in {end.stop_s:.2f} s)" if end.signalled else ""))
        # Ended by our SIGTERM before its Python caught signals (its first ~0.1 s): stopped, not failed.
        return 0 if all(end.code in (0, -signal.SIGTERM if end.signalled else 0) for end in exits.values()) else 1

    def _on_signal(self, signum: int, _frame) -> None:
        self._stop_requested = True

    def start(self, params_dir: Path) -> None:
        """Start every node, its parameters file written into `params_dir` (which must outlive the nodes' start)."""
        for spec in self.specs:
            cmd = spec.command(str(write_params_file(spec, params_dir)))
            # Own process group: a terminal's Ctrl-C reaches only the launcher, which forwards exactly one
            # signal to each node (a second SIGINT would interrupt a node's clean shutdown).
            # The node also asks the kernel for SIGTERM if the launcher dies (even by SIGKILL): no orphans.
            env = {**(self.env or os.environ), DIE_WITH_PARENT_ENV: str(os.getpid())}
            output = open(self.log_dir / f"{spec.name}.log", "wb") if self.log_dir else None  # noqa: SIM115
            try:
                proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=output, stderr=output)
            finally:
                if output is not None:
                    output.close()  # the child holds its own copy
            nice_session(proc.pid, os.getpriority(os.PRIO_PROCESS, 0))  # a niced robot's nodes stay niced
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

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S) -> dict[str, NodeExit]:
        return stop_processes(self.procs, sig, grace_s, self.log)


def stop_processes(procs: dict[str, subprocess.Popen], sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S,
                   log=print, on_hang=None) -> dict[str, NodeExit]:  # fmt: skip
    """Send `sig` to every running process at once and wait for each; one still running after `grace_s` prints
    its threads' stacks (SIGUSR1: see stop_signals), is handed to `on_hang(name, proc)` if given, and is killed."""
    sent = time.monotonic()
    running = {name for name, proc in procs.items() if proc.poll() is None}
    for name in running:
        procs[name].send_signal(sig)
    ended: dict[str, float] = {}
    while len(ended) < len(running) and time.monotonic() - sent < grace_s:
        for name in running - ended.keys():
            if procs[name].poll() is not None:
                ended[name] = time.monotonic() - sent
        time.sleep(0.005)
    for name in sorted(running - ended.keys()):
        log(f"{name} did not stop within {grace_s:g} s of {signal.Signals(sig).name}: its threads' stacks go to its "
            "output; killing it")  # fmt: skip
        procs[name].send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        if on_hang is not None:
            on_hang(name, procs[name])
        procs[name].kill()
        ended[name] = time.monotonic() - sent
    return {name: NodeExit(proc.wait(), ended.get(name, 0.0), name in running) for name, proc in procs.items()}


def run_single_process(specs: list[NodeSpec], duration_s: float | None = None) -> int:
    """Compose every node in this process, each on an executor of its own."""
    import importlib

    import rclpy

    from sop_ros.configs import ConfigError
    from sop_ros.robot.params import parameter_overrides
    from sop_ros.robot.spin import init, memory_report_period, report_memory, spin_until_done

    # Every module is imported here, in this thread, before any node starts one of its own: a simulator's
    # thread importing while this one still imports the policy's modules met a partially initialised torch.
    classes = {spec.name: getattr(importlib.import_module(spec.type.module), spec.type.node_class) for spec in specs}
    stop = init(["--ros-args", "--log-level", specs[0].log_level])
    nodes = []
    try:
        period = memory_report_period()
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
        if period and nodes:  # malloc is the process's: one node says it for all
            report_memory(nodes[0], period)
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
