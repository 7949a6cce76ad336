"""Running nodes: one per process (`ros2 run`) or several in one process (`sop robot --single-process`).

SIGINT and SIGTERM are handled by stop_signals rather than by rclpy: rclpy's handler shuts the context down at
once, so nodes could no longer log or publish while they clean up (a recorder closing its episode files).
Here a signal ends the spin loop; then nodes are destroyed with the context still valid; then it shuts down.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence

import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import Executor, ShutdownException, SingleThreadedExecutor, TimeoutException
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from sop_ros.configs import ConfigError
from sop_ros.host import MEMORY_REPORT_ENV, bound_malloc, malloc_usage
from sop_ros.robot import stop_signals


def init(args: list[str] | None = None) -> threading.Event:
    """rclpy.init without rclpy's signal handlers; returns the event that SIGINT / SIGTERM set from now on."""
    bound_malloc()  # before rclpy's and the node's threads: they run for hours
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return stop_signals.stop_event_on_signal()


# A node that finished ends the others, but first they handle what had already reached them (the recorder, the
# last episode's END): at most this long, so that a node flooded with messages still stops.
DRAIN_S = 1.0


def finished(nodes: Sequence[Node]) -> bool:
    """A node that ends by itself (e.g. after N episodes) sets its `finished` event; then all stop."""
    return any(getattr(node, "finished", None) is not None and node.finished.is_set() for node in nodes)


def spin_until_done(nodes: Sequence[Node], stop: threading.Event, duration_s: float | None = None) -> None:
    """Spin until a node finishes, `duration_s` passes, or `stop` is set.

    Every node gets its own SingleThreadedExecutor: its callbacks never run concurrently, and one node's slow
    callback does not delay another's. Several nodes in one process spin on threads of their own rather than
    sharing one executor: rclpy's executor rebuilds its wait set in Python for every wake-up, at a cost that
    grows with the entities of all the nodes it holds. Measured on 2 cores, a paced simulated robot's seven nodes
    took 15 wall s per 2-s episode on one MultiThreadedExecutor (its main thread at 93% of a core), 2 s on an
    executor each.
    """
    executors = [SingleThreadedExecutor() for _ in nodes]
    for executor, node in zip(executors, nodes, strict=True):
        executor.add_node(node)
    # What start-up made (modules, node objects) lives as long as the process: out of the collector's sight, a
    # full collection takes ~1 ms, not the tens of ms that traversing it costs (a missed control tick).
    gc.freeze()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    done = threading.Event()
    failures: list[BaseException] = []

    def running() -> bool:
        return not (done.is_set() or stop.is_set() or finished(nodes)) and (
            deadline is None or time.monotonic() < deadline
        )

    def spin(executor: SingleThreadedExecutor) -> None:
        try:
            while running():
                executor.spin_once(timeout_sec=0.1)
            if finished(nodes) and not stop.is_set():
                drain(executor, time.monotonic() + DRAIN_S)
        except BaseException as err:  # raised again below, in the caller's thread, as with one executor
            failures.append(err)
        finally:
            done.set()  # a node whose callback failed ends the others too

    threads = [
        threading.Thread(target=spin, args=(executor,), name=f"spin {node.get_name()}", daemon=True)
        for executor, node in zip(executors[1:], nodes[1:], strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        spin(executors[0])  # the first node spins here, so that a lone node needs no extra thread
    finally:
        done.set()
        for thread in threads:
            thread.join()
        for executor in executors:
            executor.shutdown()
    if failures:
        raise failures[0]


def drain(executor: Executor, deadline: float) -> None:
    """Run the callbacks that are ready now (messages already delivered, timers due), until none is or
    `deadline` (time.monotonic()) passes."""
    looked_again = False
    while time.monotonic() < deadline:
        try:
            handler, _, _ = executor.wait_for_ready_callbacks(timeout_sec=0.0)
        except ShutdownException:
            return
        except TimeoutException:
            # With a zero timeout rclpy also raises this at the end of a pass that did yield work: only a
            # second one in a row, from a fresh wait, means that nothing is ready.
            if looked_again:
                return
            looked_again = True
            continue
        looked_again = False
        handler()
        handler.result()  # raises what the callback raised, as spin_once does


def log_at(node: Node, severity: str, message: str, warn_throttle_s: float = 0.0) -> None:
    """Log at a severity named by a string ("error", "warn", else info), for logic that knows no rclpy.

    One call site per severity: rclpy refuses a call site whose severity (or throttle) changes between calls.
    """
    logger = node.get_logger()
    if severity == "error":
        logger.error(message)
    elif severity == "warn" and warn_throttle_s > 0:
        logger.warning(message, throttle_duration_sec=warn_throttle_s)
    elif severity == "warn":
        logger.warning(message)
    else:
        logger.info(message)


def report_memory(node: Node, period_s: float) -> None:
    """Every `period_s` of wall time, `node` logs "memory: malloc in use X MB, free Y MB" (glibc only)."""

    def log() -> None:
        if (usage := malloc_usage()) is not None:
            node.get_logger().info(f"memory: malloc in use {usage['in_use']} MB, free {usage['free']} MB")

    node.create_timer(period_s, log, clock=Clock(clock_type=ClockType.STEADY_TIME))


def memory_report_period() -> float:
    """`MEMORY_REPORT_ENV`'s seconds (0: no report)."""
    text = os.environ.get(MEMORY_REPORT_ENV, "").strip()
    try:
        period = float(text or 0)
    except ValueError:
        raise ConfigError(f"{MEMORY_REPORT_ENV}={text!r}: must be a number of seconds") from None
    if period < 0:
        raise ConfigError(f"{MEMORY_REPORT_ENV}={text!r}: must be >= 0")
    return period


def run_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """`main()` of a node executable: exit 0 on a clean stop, 2 on a bad parameter."""
    stop = init(args)
    node = None
    try:
        period = memory_report_period()
        node = make_node()
        if period:
            report_memory(node, period)
        spin_until_done([node], stop)
        # A node that ended by itself may report failure (e.g. its driver loop died).
        return getattr(node, "exit_code", 0)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
