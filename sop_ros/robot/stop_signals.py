"""SIGINT and SIGTERM in a node's process, from its first line to its last.

Two phases. While the process starts (its modules load: seconds on a busy robot computer), there is nothing to
clean up, so a stop signal ends it at once with exit code 0, as a clean stop, instead of Python's defaults (a
KeyboardInterrupt traceback and exit code 1, or death by SIGTERM). From the moment its nodes are being made, a
signal only sets an event: the spin loop ends, nodes are destroyed with the context still valid, then it shuts
down (rclpy's own handler would shut the context down at once, and a recorder could no longer close its files).

Imports nothing heavy, so that `node_process` can install it before any node module loads.
SIGUSR1 prints every thread's stack to stderr (`kill -USR1 <pid>`): what a process that will not stop is doing.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stop = threading.Event()
_exit_at_once = True


def _on_stop_signal(_signum: int, _frame) -> None:
    if _exit_at_once:
        os._exit(0)  # nothing made yet: nothing to flush, close or announce
    # Event.set() takes the event's lock; the main thread, where this runs, never waits on it (it polls is_set),
    # so the handler cannot interrupt a holder of that lock.
    _stop.set()


def exit_on_signal() -> None:
    """Until `stop_event_on_signal`, SIGINT / SIGTERM end this process at once with exit code 0."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop_signal)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def stop_event_on_signal() -> threading.Event:
    """From now on SIGINT / SIGTERM set the returned event (a new one each call)."""
    global _exit_at_once, _stop
    _stop = threading.Event()
    exit_on_signal()  # also when the process did not start through node_process
    _exit_at_once = False
    return _stop
