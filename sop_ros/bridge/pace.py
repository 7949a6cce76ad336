"""Sim-time pacing of a simulated fleet and its learner, so that experiments do not depend on the host.

The learner gets a fixed budget of steps per simulated minute. With interval = 60 s / steps_per_sim_minute:

- the learner's step s (0-based) waits until every robot's simulated clock has reached (s + 1) intervals;
- a robot's clock may not run past (learner steps done + lead_steps) intervals.

So a fleet of 1, 2 or 4 robots gets the same learner steps per simulated minute and differs only in the
experience it collects (the published system's "same total training time"). A slow host makes a run slower,
not different. The data a learner step sees is cut off by simulated time too: episodes that ended at least
`ingest_delay_s` of simulated time before the step, each waited for until it is stored.

Robots' clocks are fleet time: a robot's next process (its next block of episodes) asks the learner where
its last one stopped and goes on from there. Everything travels on the robots' Zenoh session with the
learner, on these keys:

    sop/pace/learner          the learner's state, {"steps", "interval_ns", "lead_steps", "policies"}: put on
                              each step, and answered to a query (a robot starting while the learner waits for it)
    sop/pace/robots/<id>      a robot's clock, {"time_ns", "period_ns", "ended": {episode id: end ns}}: put on
                              each step; a query answers the last clock the learner heard from that robot
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import zenoh

from sop_ros.bridge.zenoh_session import open_session
from sop_ros.configs.bridge import ZenohConfig
from sop_ros.configs.learner import PaceConfig

LEARNER_KEY = "sop/pace/learner"
ROBOT_CLOCKS = "sop/pace/robots"
ENDED_REPORTED = 50  # a robot's report names its last this many ended episodes: enough to survive lost puts
POLICIES_ANNOUNCED = 8  # the learner's state names its last this many policies (a robot needs the newest due)


@dataclass(frozen=True)
class Budget:
    """The pacing rules, in whole nanoseconds of simulated time."""

    interval_ns: int  # simulated time per learner step
    lead_steps: int  # how many intervals robots may run ahead of the learner's last step

    @classmethod
    def of(cls, config: PaceConfig) -> Budget:
        return cls(round(60e9 / config.steps_per_sim_minute), config.lead_steps)

    def robot_may_reach(self, time_ns: int, learner_steps: int) -> bool:
        return time_ns <= (learner_steps + self.lead_steps) * self.interval_ns

    def learner_may_take(self, step: int, clocks: Iterable[tuple[int, int]], robots: int) -> bool:
        """Step `step` once `robots` robots have each reached its end: their next control period crosses it
        (a robot stepping in periods that do not divide the interval stops short of it)."""
        clocks = list(clocks)
        boundary = (step + 1) * self.interval_ns
        return len(clocks) >= robots and all(t + period > boundary for t, period in clocks)

    def data_cutoff_ns(self, step: int, delay_ns: int) -> int:
        """Step `step` trains on the episodes that ended by this simulated time."""
        return (step + 1) * self.interval_ns - delay_ns

    def steps_done_by(self, time_ns: int) -> int:
        """Learner steps certainly done when a robot's clock is at `time_ns` (it could not be there otherwise)."""
        return max(0, math.ceil(time_ns / self.interval_ns) - self.lead_steps)


def scheduled_policy(policies: Iterable[tuple[int, str]], steps_done: int) -> str:
    """The policy an episode runs: the newest made at a learner step <= `steps_done` ("" if none is known).

    Which policy a robot has fetched by then depends on the host; which one was made by then does not. So an
    episode starting at simulated time t runs the one scheduled for t, the same in every run with the same seeds.
    """
    made = [(step, version) for step, version in policies if step <= steps_done]
    return max(made)[1] if made else ""


class FleetPace:
    """The learner's side: hears the robots' clocks, announces its steps, waits for the fleet."""

    def __init__(self, session: zenoh.Session, config: PaceConfig, log: Callable[[str], None] = print) -> None:
        self.config = config
        self.budget = Budget.of(config)
        self.log = log
        self.steps = 0
        self.policies: deque[tuple[int, str]] = deque(maxlen=POLICIES_ANNOUNCED)  # (learner step, version), newest
        self._clocks: dict[str, tuple[int, int]] = {}
        self._ended: dict[str, int] = {}  # episode id -> end of episode, simulated ns
        self._changed = threading.Condition()
        self._session = session
        self._declared = [
            session.declare_subscriber(f"{ROBOT_CLOCKS}/*", self._on_clock),
            session.declare_queryable(f"{ROBOT_CLOCKS}/*", self._answer_clock),
            session.declare_queryable(LEARNER_KEY, lambda q: q.reply(LEARNER_KEY, self._state())),
        ]

    def _state(self) -> bytes:
        b = self.budget
        return json.dumps({"steps": self.steps, "interval_ns": b.interval_ns, "lead_steps": b.lead_steps,
                           "policies": list(self.policies)}).encode()  # fmt: skip

    def _on_clock(self, sample: zenoh.Sample) -> None:
        robot = str(sample.key_expr).rsplit("/", 1)[-1]
        try:
            report = json.loads(sample.payload.to_bytes())
            clock = (int(report["time_ns"]), int(report["period_ns"]))
            ended = {str(k): int(v) for k, v in report.get("ended", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            self.log(f"pace: ignored a malformed clock report from {robot}: {err}")
            return
        with self._changed:
            # A robot's clock only moves forward: a late put from its previous process must not rewind it.
            if clock[0] >= self._clocks.get(robot, (-1, 0))[0]:
                self._clocks[robot] = clock
            self._ended.update(ended)
            self._changed.notify_all()

    def _answer_clock(self, query: zenoh.Query) -> None:
        robot = str(query.key_expr).rsplit("/", 1)[-1]
        with self._changed:
            time_ns = self._clocks.get(robot, (0, 0))[0]
        query.reply(query.key_expr, json.dumps({"time_ns": time_ns}).encode())

    def announce(self, steps: int, policy: str) -> None:
        """The learner has done `steps` steps and `policy` is its newest policy, published (robots can fetch it):
        robots may run on to (steps + lead_steps) intervals."""
        self.steps = steps
        if policy and (not self.policies or self.policies[-1][1] != policy):
            self.policies.append((steps, policy))
        self._session.put(LEARNER_KEY, self._state())

    @property
    def fleet_time_ns(self) -> int:
        """The slowest robot's simulated clock (0 before any robot reports)."""
        with self._changed:
            return min((t for t, _ in self._clocks.values()), default=0)

    def wait_for_step(self, step: int, stop: threading.Event) -> bool:
        """Block until every robot reached step `step`'s end of simulated time; False when `stop` is set."""
        started, said = time.monotonic(), 0.0
        with self._changed:
            while not self.budget.learner_may_take(step, self._clocks.values(), self.config.robots):
                if stop.is_set():
                    return False
                self._changed.wait(0.2)
                waited = time.monotonic() - started
                if waited - said >= 60.0:
                    said = waited
                    clocks = ", ".join(f"{r} {t / 1e9:.1f} s" for r, (t, _) in sorted(self._clocks.items()))
                    self.log(f"pace: step {step} waits {waited:.0f} s for {self.config.robots} robots to reach "
                             f"{(step + 1) * self.budget.interval_ns / 1e9:.1f} s of simulated time "
                             f"(heard: {clocks or 'none'})")  # fmt: skip
        return not stop.is_set()

    def training_episodes(self, step: int, stored: Callable[[], dict[str, int]], stop: threading.Event) -> set[str]:
        """The episodes step `step` trains on: those that ended by its data cutoff, each waited for until it is
        in the store (`stored`: episode id -> end ns of what is stored); one that never comes within
        episode_wait_s is left out, and said so. A stored episode with no END (end 0: its robot stopped or
        crashed mid-episode, the recorder kept what it had) has no place on the simulated clock: left out too,
        or when it happened to be stored would decide which step first trains on it."""
        cutoff = self.budget.data_cutoff_ns(step, round(self.config.ingest_delay_s * 1e9))
        deadline = time.monotonic() + self.config.episode_wait_s
        while True:
            with self._changed:
                due = {e for e, end in self._ended.items() if end <= cutoff}
            have = stored()
            missing = due - have.keys()
            if not missing or stop.is_set():
                break
            if time.monotonic() > deadline:
                self.log(f"pace: step {step} goes on without {len(missing)} episodes not stored within "
                         f"{self.config.episode_wait_s:g} s: {sorted(missing)[:3]}")  # fmt: skip
                with self._changed:
                    for e in missing:
                        self._ended.pop(e, None)  # not waited for again
                break
            time.sleep(0.2)
        return {e for e, end in have.items() if 0 < end <= cutoff}

    def close(self) -> None:
        for entity in self._declared:
            entity.undeclare()


class RobotPace:
    """A simulated robot's side: its clock reported, each step held until the learner's budget allows it."""

    def __init__(self, endpoint: str, robot_id: str, period_ns: int) -> None:
        self.robot_id = robot_id
        self.period_ns = period_ns
        self._session = open_session(ZenohConfig(connect=(endpoint,)))
        self._key = f"{ROBOT_CLOCKS}/{robot_id}"
        self._budget: Budget | None = None
        self._steps = 0
        self._policies: list[tuple[int, str]] = []
        self._ended: dict[str, int] = {}
        self._changed = threading.Condition()
        self._subscriber = self._session.declare_subscriber(LEARNER_KEY, self._on_learner)

    def _on_learner(self, sample: zenoh.Sample) -> None:
        self._take(json.loads(sample.payload.to_bytes()))

    def _take(self, state: dict) -> None:
        with self._changed:
            self._budget = Budget(int(state["interval_ns"]), int(state["lead_steps"]))
            if int(state["steps"]) >= self._steps:  # not a late put of an older state
                self._steps = int(state["steps"])
                self._policies = [(int(step), str(version)) for step, version in state.get("policies", [])]
            self._changed.notify_all()

    def start(self, stop: threading.Event, timeout_s: float) -> int:
        """Where this robot's clock stands in the fleet (ns), once the learner answers; RuntimeError after
        `timeout_s` without an answer."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            state = self._ask(LEARNER_KEY)
            clock = self._ask(self._key) if state else None
            if state and clock:
                self._take(state)
                return int(clock["time_ns"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no learner answered on {LEARNER_KEY} within {timeout_s:g} s: a paced robot "
                                   "needs a learner with pace.steps_per_sim_minute > 0")  # fmt: skip
            stop.wait(0.5)
        return 0

    def _ask(self, key: str) -> dict | None:
        for answer in self._session.get(key, timeout=1.0):
            if answer.ok is not None:
                return json.loads(answer.ok.payload.to_bytes())
        return None

    def wait_to_reach(self, time_ns: int, stop: threading.Event) -> None:
        """Block until the learner's budget lets this robot's clock reach `time_ns` (or `stop` is set)."""
        with self._changed:
            while not stop.is_set() and not (self._budget and self._budget.robot_may_reach(time_ns, self._steps)):
                self._changed.wait(0.2)

    def scheduled_policy(self, time_ns: int) -> str:
        """The policy an episode starting at `time_ns` runs (see `scheduled_policy`)."""
        with self._changed:
            if self._budget is None:
                return ""
            return scheduled_policy(self._policies, self._budget.steps_done_by(time_ns))

    def ended(self, episode_id: str, end_ns: int) -> None:
        """An episode ended at `end_ns` (this robot's clock now): reported at once, for the learner to wait for."""
        self._ended[episode_id] = end_ns
        if len(self._ended) > ENDED_REPORTED:
            self._ended.pop(next(iter(self._ended)))
        self.report(end_ns)

    def report(self, time_ns: int) -> None:
        report = {"time_ns": time_ns, "period_ns": self.period_ns, "ended": self._ended}
        self._session.put(self._key, json.dumps(report).encode())

    def close(self) -> None:
        self._subscriber.undeclare()
        self._session.close()
