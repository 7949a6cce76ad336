"""Approximate-time synchronisation of camera frames with joint states, and the stale-sensor guard.

Plain Python (no ROS), so it is tested on stamps alone. The pairing is the learner's (sop_ros.learner.dataset):
joint state k at time t_k goes with each camera's newest frame stamped at or before t_k. Cameras run slower than
joint states and their frames may arrive after the joint state they belong with, so a joint state waits while a
frame is due by the camera's rate (nominal, or estimated from its stamps) but not here yet, for at most a timeout.

A joint state released with a stale or missing frame is answered again when a frame that makes it fresh comes
before the next joint state: a robot that holds until its sensors are back must not need to move to see them (a
lockstep simulator waits for a command before it steps, and a held policy sends none).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PERIOD_WINDOW = 8  # frame intervals the rate estimate looks at
DUE_TOLERANCE = 0.25  # a frame is due from this fraction of a period before its expected stamp (jitter)


@dataclass(frozen=True)
class Synced:
    stamp_ns: int  # the joint state's
    joint: Any
    frames: dict[str, tuple[int, Any]]  # camera -> (stamp_ns, payload); only cameras that have a frame
    problem: str  # "" when every sensor is fresh; else why the robot must not act on this observation


class ObservationSync:
    def __init__(self, cameras: Sequence[str], max_age_ns: int, history: int = 16, period_ns: int = 0) -> None:
        self.cameras = tuple(cameras)
        self.max_age_ns = max_age_ns
        self.nominal_period_ns = period_ns  # the cameras' known frame interval (0: estimated from their stamps)
        self._frames: dict[str, deque[tuple[int, Any]]] = {cam: deque(maxlen=history) for cam in self.cameras}
        self._pending: deque[tuple[int, Any, float]] = deque()  # (stamp_ns, joint, arrival time s)
        self._stale: tuple[int, Any] | None = None  # the newest joint state, released stale: fresh once its frames come

    def add_frame(self, camera: str, stamp_ns: int, payload: Any) -> None:
        frames = self._frames[camera]
        if frames and stamp_ns < frames[-1][0]:
            frames.clear()  # the sensor's clock went back (a simulator reset, a replayed bag): start over
            self._stale = None
        frames.append((stamp_ns, payload))

    def add_joint_state(self, stamp_ns: int, joint: Any, now_s: float) -> None:
        if self._pending and stamp_ns < self._pending[-1][0]:
            self._pending.clear()  # time went back: the pending ones belong to a past that is gone
        self._pending.append((stamp_ns, joint, now_s))
        self._stale = None  # a newer state is what to answer now

    def period_ns(self, camera: str) -> int | None:
        """The camera's frame interval: the nominal one if known, else the median of its recent intervals (None
        until two frames)."""
        if self.nominal_period_ns:
            return self.nominal_period_ns
        stamps = [s for s, _ in list(self._frames[camera])[-PERIOD_WINDOW - 1 :]]
        intervals = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False) if b > a)
        return intervals[len(intervals) // 2] if intervals else None

    def frame_due(self, camera: str, stamp_ns: int) -> bool:
        """Whether a frame stamped at or before `stamp_ns` is expected from `camera` but has not arrived."""
        frames = self._frames[camera]
        if not frames:
            return True
        newest = frames[-1][0]
        period = self.period_ns(camera)
        if newest >= stamp_ns or period is None:
            return False
        return newest + period <= stamp_ns + DUE_TOLERANCE * period

    def pop_ready(self, now_s: float, timeout_s: float) -> list[Synced]:
        """Observations complete (no frame due) or waited for `timeout_s`, oldest first; or the newest joint
        state again, released stale before, now that its frames are fresh."""
        ready = []
        while self._pending:
            stamp, joint, arrived = self._pending[0]
            waiting = any(self.frame_due(cam, stamp) for cam in self.cameras)
            if waiting and now_s - arrived < timeout_s:
                break
            self._pending.popleft()
            ready.append(self._assemble(stamp, joint))
            self._stale = (stamp, joint) if ready[-1].problem else None
        if not ready and self._stale is not None:
            again = self._assemble(*self._stale)
            if not again.problem:
                ready.append(again)
                self._stale = None
        return ready

    def _assemble(self, stamp_ns: int, joint: Any) -> Synced:
        frames, problems = {}, []
        for cam in self.cameras:
            history = self._frames[cam]
            if not history:
                problems.append(f"camera {cam}: no frame yet")
                continue
            before = [f for f in history if f[0] <= stamp_ns]
            frame = before[-1] if before else history[0]  # before the first frame: the first (as the learner)
            frames[cam] = frame
            age = stamp_ns - frame[0]
            if age > self.max_age_ns:
                problems.append(f"camera {cam}: frame {age / 1e9:.2f} s older than the joint state")
        return Synced(stamp_ns, joint, frames, "; ".join(problems))


def joint_positions(names: Sequence[str], positions: Sequence[float], wanted: Sequence[str] = ()
                    ) -> tuple[list[str], np.ndarray]:  # fmt: skip
    """A joint state's positions of the `wanted` joints (none named: all, in the message's order) as float32;
    ValueError saying what is wrong with the message."""
    if len(positions) != len(names):
        raise ValueError(f"{len(names)} names but {len(positions)} positions")
    if len(set(names)) != len(names):
        raise ValueError(f"joint names repeat: {list(names)}")
    wanted = list(wanted) or list(names)
    if not wanted:
        raise ValueError("no joints: the message names none")
    index = {name: i for i, name in enumerate(names)}
    missing = [n for n in wanted if n not in index]
    if missing:
        raise ValueError(f"joints {missing} missing (the message names {list(names)})")
    with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf, refused below
        values = np.array([positions[index[n]] for n in wanted], dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"joint positions {values.tolist()} are not all finite (float32)")
    return wanted, values
