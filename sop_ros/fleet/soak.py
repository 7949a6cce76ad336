"""`sop chaos soak`: the whole loop for hours, faults injected at random moments, then every promise checked.

What runs, all on this host (Zenoh on tcp/127.0.0.1, DDS on localhost), in <out>/: `sop fleet run`'s fleet
(online_fleet.run): the learner (with the cloud's ingest and policy server in its process) training and
publishing, and R robots, each node a process of its own (`sop robot`), with scripted operators taking over.
A supervisor's rules hold: a robot whose node dies is started again by the fleet runner, and so is a learner
that stops (it resumes from its checkpoint). The robots' outbox is a small tmpfs of its own (when this host lets
it be mounted), so that it can be filled.

Faults, one every few minutes (a seeded plan cycling through them; the learner's own two in every other cycle):
  robot_node         SIGKILL one node of a random robot (its launcher then stops the robot; the runner starts it)
  bridge             SIGKILL a random robot's bridge node
  learner            SIGKILL the learner (and with it the cloud)
  cloud_away         SIGSTOP the learner for `cloud_away_min`, then SIGCONT: a cloud that stops answering
  outbox_full        fill the outbox's tmpfs for `outbox_full_min`, then free it
  bad_announcements  announce a policy signed by another key and an unsigned one, on the fleet's Zenoh
  sensor_gap         a random robot's cameras stop (its simulator's ~/cameras_on service) until its ingest says the
                     robot holds, and `sensor_gap_after_hold_s` more; at most `sensor_gap_max_s`

Every `sample_s` it samples each process's resident memory, threads and open files, and whether it is stopped
(/proc). At the end:
  episodes  every episode a recorder finished (its log) is in the store exactly once, or left in the outbox
  stuck     every robot stored an episode in every `window_min` window, but those that meet a cloud outage
  learner   it ran again after every kill and published after each
  forged    no episode ran a version that was announced forged, and every robot refused them
  sensors   in each sensor gap, that robot's ingest flagged its sensors stale (the policy holds) at the first
            control tick whose frames were past its max age (the age its log names), and said them fresh again
            after the gap, by itself. Counted on the robot's clock, not the wall's: a lockstep simulator's clock
            runs at whatever pace its robot answers, and stands still while it holds
  growth    per kind of process, on its running clock (a stopped process is not judged), after each process's
            own first `warmup_min` (a restarted one warms up again, into a warm fleet): resident memory growth <=
            `max_growth_per_hour` of its size (the slope of its medians over `growth_window_min` windows within
            each process, pooled over a kind's processes: faults restart them), threads and open files flat
            (their floor within `flat_slack`); beside it, what malloc held in use (the learner's status, each
            robot node's memory lines), judged alike but not checked: it tells data kept from freed memory kept
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from bisect import bisect_right
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import yaml

from sop_ros.configs import require
from sop_ros.host import MEMORY_REPORT_ENV

FAULTS = ("robot_node", "bridge", "learner", "cloud_away", "outbox_full", "bad_announcements", "sensor_gap")
LEARNER_FAULTS = ("learner", "cloud_away")
ROBOT_NODES = ("policy", "recorder", "teleop_arbiter", "ingest", "scripted_operator")  # robot_node's targets
RECORDED = re.compile(r"recorded (\S+)\.mcap: ")
RECOVERED = re.compile(r"partial episode file (\S+?)\.mcap\S*: recovered")
DEMOS_PER_TASK = 2
# A hold for the cameras' sake ("camera corner: frame 0.53 s older ..."); others (a joint state stamped behind the
# clock, an old state released at an episode's end) say nothing about a camera gap.
STALE = re.compile(r"\[(\d+\.\d+)\] \[\S+\.ingest\]: stale sensors, the policy holds: (camera .*)")
FRAME_AGE = re.compile(r"frame (\d+\.\d+) s older than the joint state")
FRESH = re.compile(r"\[(\d+\.\d+)\] \[\S+\.ingest\]: sensors fresh again")
QUARANTINED = re.compile(r"partial episode file (\S+?)\.mcap\S*: quarantined")


@dataclass(frozen=True)
class SoakConfig:
    hours: float
    robots: int = 4
    json: str = "results/chaos/soak.json"
    out: str = "runs/soak"
    # `sop fleet run`'s learner: one torch thread. With torch's default (one per core) among the fleet's ~30
    # processes on a small host, its threads wait on each other at every operation: 2 samples/s, not ~100.
    learner_yaml: str = "config/fleet_learner.yaml"
    robot_yaml: str = "config/fleet_sim.yaml"
    # The learner's decoded frames are a cache that fills as it samples, up to this bound: the default 1 GB
    # takes the fleet's first hour of data to fill, which the growth check would count; this fills in warm-up.
    learner_frame_cache_mb: float = 128.0
    # Likewise the fleet episodes it keeps indexed (`replay_episodes`): 4 robots store 200 in ~16 minutes. Kept
    # all, they would grow its memory by ~17 KB each for the whole run: growth by design, which would hide a leak.
    learner_replay_episodes: int = 200
    tasks: tuple[str, ...] = ("reach-v3", "push-v3")
    faults: tuple[str, ...] = FAULTS  # the kinds injected, in turn
    fault_gap_min: tuple[float, float] = (3.0, 6.0)  # from one fault's start to the next, uniform
    cloud_away_min: float = 10.0
    # The learner's own faults (its kill, the cloud away) come in one cycle of faults in this many (0: the first
    # only): a learner killed every half hour, and stopped for ten minutes of it, never runs long enough for its
    # memory to be judged; after the first cycle it runs on for the rest of the run.
    learner_every: int = 0
    outbox_full_min: float = 2.0
    # Cameras off until the robot holds, then this long (wall time): a held lockstep robot's clock stands still,
    # so a gap of its own time would never end. At most sensor_gap_max_s.
    sensor_gap_after_hold_s: float = 1.0
    sensor_gap_max_s: float = 120.0
    outbox_mb: int = 256
    sample_s: float = 20.0
    # Every robot node logs what malloc holds this often (MEMORY_REPORT_ENV): a resident size that grows
    # with malloc's bytes in use is data kept; with its free bytes, memory the allocator has not handed back.
    memory_report_s: float = 60.0
    warmup_min: float = 20.0  # nothing is judged in the run's first minutes, nor a process in its own first
    growth_window_min: float = 5.0  # memory is judged by its median over windows this long
    window_min: float = 10.0
    max_growth_per_hour: float = 0.05
    flat_slack: int = 2  # threads or open files may end this many above where they were after the warm-up
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.hours > 0, "hours", self.hours, "must be > 0")
        require(self.robots >= 1, "robots", self.robots, "must be >= 1")
        unknown = [f for f in self.faults if f not in FAULTS]
        require(bool(self.faults) and not unknown, "faults", list(self.faults), f"must be some of {', '.join(FAULTS)}")
        low, high = self.fault_gap_min
        require(0 < low <= high, "fault_gap_min", self.fault_gap_min, "must be (low, high) with 0 < low <= high")
        require(self.sample_s > 0, "sample_s", self.sample_s, "must be > 0")
        require(self.learner_every >= 0, "learner_every", self.learner_every, "must be >= 0 (0: the first cycle)")


@dataclass
class Fault:
    at_s: float  # from the start of the run
    kind: str
    target: str = ""
    done: bool = False
    detail: str = ""
    ends_s: float | None = None  # a fault with a duration (cloud_away, outbox_full): when it is undone


def fault_plan(rng: random.Random, hours: float, gap_min: tuple[float, float], kinds=FAULTS,
               learner_every: int = 0) -> list[Fault]:  # fmt: skip
    """Faults at random moments over the run, cycling through `kinds` in a shuffled order, none in the first gap
    (the fleet's start) or the last 10 minutes (a quarter of a shorter run): time to recover. The learner's own
    (its kill, the cloud away) come in one cycle of `learner_every` (0: the first cycle only), the others in
    every cycle."""
    order, plan, at, cycles = list(kinds), [], 0.0, 0
    rng.shuffle(order)
    others = [k for k in order if k not in LEARNER_FAULTS]
    left: list[str] = []  # this cycle's kinds still to come
    while True:
        if not left:
            learners = cycles == 0 if learner_every == 0 else cycles % learner_every == 0
            left = list(order if learners or not others else others)
            cycles += 1
        at += rng.uniform(*gap_min) * 60
        if at > hours * 3600 - min(600.0, hours * 900):
            return plan
        plan.append(Fault(at, left.pop(0)))


# -- processes -----------------------------------------------------------------------------------------------


def descendants(root: int) -> dict[int, list[str]]:
    """pid -> command line of every live process under `root` (read from /proc)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children[ppid].append(int(entry.name))
    out, todo = {}, list(children[root])
    while todo:
        pid = todo.pop()
        try:
            parts = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        out[pid] = [p.decode(errors="replace") for p in parts if p]
        todo += children[pid]
    return out


def role_of(cmdline: list[str]) -> str | None:
    """What a process of the fleet is: "learner", "robot_3" (its launcher), "robot_3/policy" (a node), or None."""
    if "sop_ros.cli" in cmdline:
        sub = cmdline[cmdline.index("sop_ros.cli") + 1 :]
        if sub[:1] == ["learner"]:
            return "learner"
        if sub[:1] == ["robot"] and "--config" in sub:
            return Path(sub[sub.index("--config") + 1]).stem.split("_block")[0]
        return None
    if "sop_ros.robot.node_process" in cmdline:
        names = dict(a.split(":=", 1) for a in cmdline if a.startswith(("__node:=", "__ns:=")))
        return f"{names.get('__ns', '').strip('/')}/{names.get('__node', '?')}"
    return None


def process_sample(pid: int) -> dict | None:
    """Resident memory (MB; of it anonymous: the heap's, not files mapped), threads and open files of a live
    process, and whether it is stopped (by a signal: the cloud away); None once it is gone."""
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
        fds = len(os.listdir(Path("/proc") / str(pid) / "fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "anon_mb": int(fields["RssAnon"].split()[0]) / 1024,
            "threads": int(fields["Threads"]), "fds": fds,
            "stopped": fields["State"].split()[0] in ("T", "t")}


# -- checks on plain data --------------------------------------------------------------------------------------


def growth(processes: list[list[dict]], warmup_s: float, window_s: float, max_per_hour: float,
           slack: int) -> dict | None:  # fmt: skip
    """One kind of process (the learner, a robot's policy node), each of its processes' samples ({t_s, rss_mb,
    threads, fds, stopped}, in time order) on the clock of its running time (`running`), judged after the
    process's own first `warmup_s` of running (one a fault killed starts again, and warms up again): the median of
    its resident memory in each whole window of `window_s` (a median: an export or a policy load in flight is a
    spike, not a level), the least-squares slope of those medians within each process, pooled over the
    processes, as a share of the median per hour, with its 95% interval; and the most threads or open files rose
    in one process (`floor_rise`). None when fewer than 3 windows or 30 minutes of them are left (too short to
    say)."""
    judged, points = [], []  # per process: its judged samples; (window's mean time, its median) of whole windows
    for series in map(running, processes):
        if series:
            late = [s for s in series if s["t_s"] >= series[0]["t_s"] + warmup_s]
            if late:
                judged.append(late)
                points.append(window_medians(late, window_s))
    points = [p for p in points if len(p) >= 2]
    hours = sum(len(p) for p in points) * window_s / 3600
    if sum(map(len, points)) < 3 or hours < 0.5:
        return None
    # Each process about its own means: a restarted process's level says nothing about growth.
    dt = np.concatenate([(t := np.array([x for x, _ in p]) / 3600) - t.mean() for p in points])
    drss = np.concatenate([(r := np.array([y for _, y in p])) - r.mean() for p in points])
    slope = float((dt @ drss) / (dt @ dt))
    residual = drss - slope * dt
    dof = max(1, len(dt) - len(points) - 1)  # a mean per process and the slope
    half_width = 1.96 * float(np.sqrt(residual @ residual / dof / (dt @ dt)))
    median = float(np.median([s["rss_mb"] for x in judged for s in x]))
    rise = {k: max(floor_rise(x, k) for x in judged) for k in ("threads", "fds")}
    ok = slope / median <= max_per_hour and rise["threads"] <= slack and rise["fds"] <= slack
    return {"processes": len(points), "hours": round(hours, 2), "rss_mb_median": round(median, 1),
            "rss_growth_per_hour": round(slope / median, 4), "rss_growth_mb_per_hour": round(slope, 1),
            "rss_growth_mb_per_hour_95": round(half_width, 1), "threads_rise": rise["threads"],
            "fds_rise": rise["fds"], "ok": ok}  # fmt: skip


def judge_growth(samples: dict[str, list[dict]], config: SoakConfig) -> dict[str, dict]:
    """`growth` of each kind of process that ran long enough to judge; where its samples say what malloc held
    (`malloc_in_use_mb`: the learner's status, a robot node's memory lines), the same slope of malloc's bytes in
    use beside it: resident memory that grows while they do not is the allocator keeping freed memory, not data
    kept."""
    judge = partial(growth, warmup_s=config.warmup_min * 60, window_s=config.growth_window_min * 60,
                    max_per_hour=config.max_growth_per_hour, slack=config.flat_slack)  # fmt: skip
    growths = {}
    for role, processes in by_role(samples).items():
        if (g := judge(processes)) is None:
            continue
        in_use = [[dict(s, rss_mb=s["malloc_in_use_mb"]) for s in series if "malloc_in_use_mb" in s]
                  for series in processes]  # fmt: skip
        if m := judge([series for series in in_use if series]):
            g |= {"malloc_in_use_mb_median": m["rss_mb_median"],
                  "malloc_in_use_mb_per_hour": m["rss_growth_mb_per_hour"],
                  "malloc_in_use_mb_per_hour_95": m["rss_growth_mb_per_hour_95"]}
        growths[role] = g
    return growths


# A robot node's line on what malloc holds (sop_ros.robot.spin.report_memory), as its log has it.
MEMORY_LINE = re.compile(r"\[(\d+\.\d+)\] \[(robot_\d+)\.(\w+)\]: "
                         r"memory: malloc in use ([0-9.]+) MB, free ([0-9.]+) MB")


def malloc_reports(logs: str, wall_start: float) -> dict[str, list[tuple[float, float, float]]]:
    """The robot nodes' memory lines in `logs`, by role ("robot_0/policy"): (s since `wall_start`, MB in use,
    MB free), in time order."""
    reports: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for m in MEMORY_LINE.finditer(logs):
        reports[f"{m[2]}/{m[3]}"].append((float(m[1]) - wall_start, float(m[4]), float(m[5])))
    return {role: sorted(lines) for role, lines in reports.items()}


def with_malloc(samples: dict[str, list[dict]], reports: dict[str, list[tuple[float, float, float]]],
                sample_s: float) -> dict[str, list[dict]]:  # fmt: skip
    """The samples ("role pid" -> series), each of a robot node's with its role's latest memory line
    (`malloc_in_use_mb`, `malloc_free_mb`) from the same life: at most a sample period before the process's first
    sample (it started then at the earliest), so an earlier life's line is not taken for this one's."""
    out = {}
    for key, series in samples.items():
        lines = reports.get(key.rsplit(" ", 1)[0], [])
        times = [t for t, _, _ in lines]
        merged = []
        for sample in series:
            i = bisect_right(times, sample["t_s"]) - 1
            same_life = i >= 0 and times[i] >= series[0]["t_s"] - sample_s
            merged.append(dict(sample, malloc_in_use_mb=lines[i][1], malloc_free_mb=lines[i][2]) if same_life
                          else sample)  # fmt: skip
        out[key] = merged
    return out


def window_medians(series: list[dict], window_s: float) -> list[tuple[float, float]]:
    """(mean time, median resident memory) of the samples in each whole `window_s` from the first sample on;
    the last window, cut short by the process's end, is left out (fewer samples, another spread)."""
    first, last = series[0]["t_s"], series[-1]["t_s"]
    windows: dict[int, list[dict]] = defaultdict(list)
    for s in series:
        if (k := int((s["t_s"] - first) // window_s)) < (last - first) // window_s:
            windows[k].append(s)
    return [(float(np.mean([s["t_s"] for s in w])), float(np.median([s["rss_mb"] for s in w])))
            for _, w in sorted(windows.items())]  # fmt: skip


def running(series: list[dict]) -> list[dict]:
    """A process's samples while it ran, their times (`t_s`) on its running clock, the run's in `wall_s`: a
    stopped process (the cloud away) can neither grow nor not, and an hour of it is not an hour of running. The
    time from a stopped sample to the next one counts as stopped."""
    out, paused = [], 0.0
    for before, s in zip([None, *series[:-1]], series, strict=True):
        if before is not None and before.get("stopped"):
            paused += s["t_s"] - before["t_s"]
        if not s.get("stopped"):
            out.append(dict(s, t_s=s["t_s"] - paused, wall_s=s["t_s"]))
    return out


def floor_rise(series: list[dict], key: str) -> int:
    """How far one process's count (threads, open files) rose: its least value in the last third of the samples
    against the first third. A leaked thread or file raises the floor; a worker that comes and goes (a policy
    fetch, a load) is a spike that the last sample may or may not catch."""
    third = max(1, len(series) // 3)
    return min(s[key] for s in series[-third:]) - min(s[key] for s in series[:third])


def by_role(samples: dict[str, list[dict]]) -> dict[str, list[list[dict]]]:
    """The samples ("role pid" -> series) grouped by role: "robot_2/policy" -> each of its processes' series."""
    roles: dict[str, list[list[dict]]] = defaultdict(list)
    for key, series in samples.items():
        roles[key.rsplit(" ", 1)[0]].append(series)
    return dict(roles)


def stuck_windows(stored_at: dict[str, list[float]], start: float, end: float, outages: list[tuple[float, float]],
                  window_s: float) -> dict[str, list[float]]:  # fmt: skip
    """Per robot, the starts (s from `start`) of the `window_s` windows in which it stored no episode. Windows
    that meet an outage (from, to: a cloud away and the time to drain after it) are not judged: nothing can be
    stored then."""
    out = {}
    for robot, times in stored_at.items():
        empty, at = [], start
        while at + window_s <= end:
            judged = all(at + window_s <= a or at >= b for a, b in outages)
            if judged and not any(at <= x < at + window_s for x in times):
                empty.append(round(at - start, 1))
            at += window_s
        out[robot] = empty
    return out


def sensor_gaps_seen(logs_text: dict[str, str], gaps: list[tuple[str, float, float]], hold_ages: dict[str, float],
                     slack_s: float = 2.0) -> list[dict]:  # fmt: skip
    """Per sensor gap (robot, wall time off, on): whether that robot's ingest said its cameras were stale between
    the gap's start and `slack_s` after its end, at the first tick past its max age (the frame ages it names are
    at most `hold_ages[robot]`: `hold_age_limit`), and fresh again after that (its log's wall stamps)."""
    out = []
    for robot, off, on in gaps:
        text = logs_text.get(robot, "")
        stale = [(float(t), problem) for t, problem in STALE.findall(text)]
        fresh = [float(t) for t in FRESH.findall(text)]
        held = [(t, problem) for t, problem in stale if off <= t <= on + slack_s]
        ages = [float(a) for a in FRAME_AGE.findall(held[0][1])] if held else []
        # The log rounds ages to 10 ms: allow that much over the limit.
        in_a_tick = bool(ages) and max(ages) <= hold_ages.get(robot, 0.0) + 0.01
        resumed = [t for t in fresh if held and t >= held[0][0]]
        out.append({"robot": robot, "off": off, "on": on,
                    "held_after_s": round(held[0][0] - off, 3) if held else None,
                    "frame_age_when_held_s": max(ages) if ages else None, "hold_age_limit_s": hold_ages.get(robot),
                    "fresh_after_s": round(resumed[0] - on, 3) if resumed else None,
                    "ok": bool(held and in_a_tick and resumed)})  # fmt: skip
    return out


def hold_age_limit(configs: Path, robot: str) -> float:
    """The oldest frame a robot may hold on, from the newest of the fleet runner's configs of its blocks (0 when
    there is none): its ingest's max age and the longest step between two joint states, a camera period (an
    episode's reset moves the clock on to the cameras' next tick: a gap that begins at an episode's end is first
    seen that much past its last frame)."""
    from sop_ros.configs import load_config
    from sop_ros.configs.robot import RobotLaunchConfig

    blocks = sorted(configs.glob(f"{robot}_block*.yaml"))
    if not blocks:
        return 0.0
    nodes = load_config(RobotLaunchConfig, blocks[-1]).nodes
    if nodes.ingest is None or nodes.sim_robot is None:
        return 0.0
    return nodes.ingest.max_sensor_age_s + 1.0 / nodes.sim_robot.frame_hz


def first_hold(logs: Path, robot: str, since_wall: float) -> float | None:
    """The wall time of the first line of `robot`'s ingest holding for its cameras at or after `since_wall`."""
    for log in sorted(logs.glob(f"{robot}_block*.log")):
        for stamp, _ in STALE.findall(log.read_text(errors="replace")):
            if float(stamp) >= since_wall:
                return float(stamp)
    return None


def produced_episodes(logs: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """From the robots' logs: robot -> the episode ids its recorder finished or recovered (an empty sha256:
    only their presence is checked), and the partial files it quarantined."""
    produced: dict[str, dict[str, str]] = defaultdict(dict)
    quarantined = []
    for log in sorted(logs.glob("robot_*_block*.log")):
        robot = log.stem.split("_block")[0]
        text = log.read_text(errors="replace")
        for pattern in (RECORDED, RECOVERED):
            produced[robot].update({eid: "" for eid in pattern.findall(text)})
        quarantined += QUARANTINED.findall(text)
    return dict(produced), quarantined


# -- the run ---------------------------------------------------------------------------------------------------


@dataclass
class Soak:
    """Called every second by the fleet runner: injects the plan's faults, samples the processes."""

    config: SoakConfig
    outbox: Path
    plan: list[Fault]
    rng: random.Random
    outbox_mounted: bool
    start: float = field(default_factory=time.monotonic)
    wall_start: float = field(default_factory=time.time)
    samples: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))  # "role pid" -> samples
    forged: list[str] = field(default_factory=list)
    learner_kills: list[float] = field(default_factory=list)  # wall times
    outages: list[tuple[float, float]] = field(default_factory=list)  # wall times of cloud away
    sensor_gaps: list[tuple[str, float, float]] = field(default_factory=list)  # robot, wall time off, on
    _held: dict[int, float] = field(default_factory=dict)  # a sensor gap (its index in the plan) -> wall time held
    _next_sample: float = 0.0
    _stopped_learner: int | None = None
    _ros: object = None  # a node of this process, made at the first sensor gap (rclpy)

    def __call__(self) -> bool:
        now = time.monotonic() - self.start
        if now >= self._next_sample:
            self.sample(now)
            self._next_sample = now + self.config.sample_s
        for i, fault in enumerate(self.plan):
            if not fault.done and fault.at_s <= now:
                self.inject(fault)
                fault.done = True
            if fault.kind == "sensor_gap" and fault.done and fault.ends_s is not None and i not in self._held:
                self.watch_gap(i, fault, now)
            if fault.done and fault.ends_s is not None and fault.ends_s <= now and not fault.detail.endswith("undone"):
                self.undo(fault)
        return now >= self.config.hours * 3600

    def processes(self) -> dict[int, str]:
        return {pid: role for pid, cmd in descendants(os.getpid()).items() if (role := role_of(cmd))}

    def sample(self, now: float) -> None:
        for pid, role in self.processes().items():
            if (s := process_sample(pid)) is not None:
                if role == "learner":
                    s |= self.learner_memory()
                self.samples[f"{role} {pid}"].append({"t_s": round(now, 1), **s})

    def learner_memory(self) -> dict[str, float]:
        """What the learner's status says its memory holds (frame cache, malloc in use and free; MB), if known."""
        from sop_ros.fleet.online_fleet import learner_status

        try:  # the fleet runner's out holds the outbox
            status = learner_status(self.outbox.parent)
        except (OSError, ValueError):
            return {}
        return {f"{name}_mb": mb for name, mb in (status.get("memory_mb") or {}).items()}

    def inject(self, fault: Fault) -> None:
        procs = self.processes()
        robots = sorted({r.split("/")[0] for r in procs.values() if r.startswith("robot_")})
        learner = [pid for pid, role in procs.items() if role == "learner"]
        now = time.monotonic() - self.start
        if fault.kind in ("robot_node", "bridge") and robots:
            robot = self.rng.choice(robots)
            node = "bridge" if fault.kind == "bridge" else self.rng.choice(ROBOT_NODES)
            pids = [pid for pid, role in procs.items() if role == f"{robot}/{node}"]
            fault.target = f"{robot}/{node}"
            fault.detail = kill(pids, signal.SIGKILL)
        elif fault.kind == "learner" and learner:
            fault.target, fault.detail = "learner", kill(learner, signal.SIGKILL)
            self.learner_kills.append(time.time())
        elif fault.kind == "cloud_away" and learner and self._stopped_learner is None:
            fault.target, fault.detail = "learner", kill(learner, signal.SIGSTOP)
            self._stopped_learner, fault.ends_s = learner[0], now + self.config.cloud_away_min * 60
            self.outages.append((time.time(), time.time() + self.config.cloud_away_min * 60))
        elif fault.kind == "outbox_full":
            fault.target = "outbox"
            if not self.outbox_mounted:
                fault.detail = "not injected: the outbox is not a tmpfs of its own (mounting one needs root)"
            else:
                fault.detail = f"filled: {fill(self.outbox / 'ballast')} bytes of ballast"
                fault.ends_s = now + self.config.outbox_full_min * 60
        elif fault.kind == "sensor_gap" and robots:
            fault.target = self.rng.choice(robots)
            fault.detail = self.cameras(fault.target, on=False)
            if not fault.detail.startswith("not injected"):
                # Counted from the answer: the first call also discovers the service, which can take seconds.
                # It ends once the robot holds (watch_gap), or at the latest here.
                fault.ends_s = time.monotonic() - self.start + self.config.sensor_gap_max_s
                self.sensor_gaps.append((fault.target, time.time(), time.time() + self.config.sensor_gap_max_s))
        elif fault.kind == "bad_announcements":
            fault.target = "fleet"
            fault.detail = announce_forged(self.outbox.parent, len(self.forged))
            self.forged += [f"soak-forged-{len(self.forged)}", f"soak-unsigned-{len(self.forged)}"]
        else:
            fault.detail = "not injected: no target running"
        print(f"sop chaos soak: {now / 60:6.1f} min: {fault.kind} {fault.target}: {fault.detail}", flush=True)

    def cameras(self, robot: str, on: bool) -> str:
        """Switch a robot's simulated cameras through its simulator's service; what happened, in words."""
        import rclpy
        from std_srvs.srv import SetBool

        if self._ros is None:
            rclpy.init()
            self._ros = rclpy.create_node("soak_faults")
        client = self._ros.create_client(SetBool, f"/{robot}/sim_robot/cameras_on")
        try:
            if not client.wait_for_service(timeout_sec=5.0):
                return "not injected: no cameras_on service"
            future = client.call_async(SetBool.Request(data=on))
            rclpy.spin_until_future_complete(self._ros, future, timeout_sec=5.0)
            return future.result().message if future.done() else "not injected: no answer in 5 s"
        finally:
            self._ros.destroy_client(client)

    def watch_gap(self, index: int, fault: Fault, now: float) -> None:
        """A sensor gap ends `sensor_gap_after_hold_s` after its robot's ingest says it holds."""
        off = next(t for robot, t, _ in reversed(self.sensor_gaps) if robot == fault.target)
        held = first_hold(self.outbox.parent / "logs", fault.target, off)
        if held is not None:
            self._held[index] = held
            fault.ends_s = min(fault.ends_s, now + self.config.sensor_gap_after_hold_s)

    def undo(self, fault: Fault) -> None:
        if fault.kind == "sensor_gap":
            fault.detail += f"; {self.cameras(fault.target, on=True)}"
            i = max(i for i, (robot, _, _) in enumerate(self.sensor_gaps) if robot == fault.target)
            self.sensor_gaps[i] = (fault.target, self.sensor_gaps[i][1], time.time())  # when it really ended
        elif fault.kind == "cloud_away" and self._stopped_learner is not None:
            kill([self._stopped_learner], signal.SIGCONT)
            self._stopped_learner = None
        elif fault.kind == "outbox_full":
            (self.outbox / "ballast").unlink(missing_ok=True)
        fault.detail += "; undone"
        print(f"sop chaos soak: {(time.monotonic() - self.start) / 60:6.1f} min: {fault.kind} undone", flush=True)

    def release(self) -> None:
        """Whatever a fault holds is given back (the run is ending, maybe interrupted)."""
        if self._stopped_learner is not None:
            kill([self._stopped_learner], signal.SIGCONT)
            self._stopped_learner = None
        (self.outbox / "ballast").unlink(missing_ok=True)
        for fault in self.plan:
            if fault.kind == "sensor_gap" and fault.done and not fault.detail.endswith("undone"):
                self.undo(fault)
        if self._ros is not None:
            import rclpy

            self._ros.destroy_node()
            rclpy.try_shutdown()
            self._ros = None


def kill(pids: list[int], sig: int) -> str:
    """Send `sig` to processes this run started; what happened, in words."""
    sent = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent.append(pid)
        except ProcessLookupError:
            pass
    return f"{signal.Signals(sig).name} to pid {', '.join(map(str, sent))}" if sent else "not injected: it had ended"


def fill(path: Path) -> int:
    """Write `path` until its file system is full; the bytes written."""
    written, block = 0, b"\0" * (1 << 20)
    with open(path, "wb") as f:
        while True:
            try:
                f.write(block)
                f.flush()
                written += len(block)
            except OSError:
                return written


def announce_forged(out: Path, n: int) -> str:
    """Announce, on the fleet's Zenoh, a policy signed by a key the fleet does not know and an unsigned one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sop_ros.bridge.artifacts import PolicyAnnouncement, sign
    from sop_ros.bridge.protocol import POLICY_ANNOUNCE
    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.configs.bridge import ZenohConfig

    learner = yaml.safe_load((out / "configs" / "learner.yaml").read_text())
    endpoint = learner["ingest"]["zenoh"]["listen"][0]
    forged = sign(PolicyAnnouncement(f"soak-forged-{n}", "0" * 64, 1024, time.time() + 3600),
                  Ed25519PrivateKey.generate())  # fmt: skip
    unsigned = PolicyAnnouncement(f"soak-unsigned-{n}", "0" * 64, 1024, time.time() + 3600)
    # As a client: the cloud routes a client's puts to the robots connected to it (a peer's it would not).
    session = open_session(ZenohConfig(connect=(endpoint,), mode="client"))
    try:
        for announcement in (forged, unsigned):
            session.put(POLICY_ANNOUNCE, announcement.encode())
        time.sleep(1.0)
    finally:
        session.close()
    return f"announced {forged.version} (another key) and {unsigned.version} (no signature)"


def mount_outbox(path: Path, size_mb: int) -> str:
    """A tmpfs of `size_mb` at `path`; "" when mounted, else why not."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return "" if done.returncode == 0 else (done.stderr.strip() or f"mount exited {done.returncode}")


def run(config: SoakConfig) -> dict:
    from sop_ros.cloud.episode_store import indexed_episodes
    from sop_ros.cloud.store_audit import audit as audit_store
    from sop_ros.fleet.demo import record_demos
    from sop_ros.fleet.online_fleet import run as fleet_run
    from sop_ros.host import code_version, machine

    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base.pt"
    if not base.exists():  # the soak's policy: untrained (what it does does not matter here, that it runs does)
        from sop_ros.configs.model import ModelConfig
        from sop_ros.model.vla import VLAPolicy, save_checkpoint

        save_checkpoint(base, VLAPolicy(ModelConfig()).eval(), version="soak-base", cameras=["corner", "topview"])
    demos = out / "demos"  # the learner mixes demonstrations in: a few, recorded once
    record_demos(demos, list(config.tasks), DEMOS_PER_TASK, say="sop chaos soak: ")
    learner_yaml = out / "soak_learner.yaml"
    learner_yaml.write_text(yaml.safe_dump(yaml.safe_load(Path(config.learner_yaml).read_text())
                                           | {"base_policy": str(base), "demos_dir": str(demos),
                                              "frame_cache_mb": config.learner_frame_cache_mb,
                                              "replay_episodes": config.learner_replay_episodes},
                                           sort_keys=False))  # fmt: skip
    fleet_dir = out / "fleet"
    outbox = fleet_dir / "outbox"  # the fleet runner's robots record into <its out>/outbox
    why_not = mount_outbox(outbox, config.outbox_mb)
    rng = random.Random(config.seed)
    plan = fault_plan(rng, config.hours, config.fault_gap_min, config.faults, config.learner_every)
    soak = Soak(config, outbox, plan, rng, not why_not)
    print(f"sop chaos soak: {config.hours:g} h, {config.robots} robots, {len(soak.plan)} faults planned -> {out}"
          + (f" (outbox on the disk: {why_not})" if why_not else ""), flush=True)  # fmt: skip
    before = os.environ.get(MEMORY_REPORT_ENV)
    os.environ[MEMORY_REPORT_ENV] = f"{config.memory_report_s:g}"  # the robots' nodes inherit it
    try:
        fleet = fleet_run(str(learner_yaml), config.robot_yaml, list(config.tasks), config.robots,
                          config.hours * 60 + 60, 100_000, fleet_dir, None, single_process=False, done=soak,
                          restart_learner=True)  # fmt: skip
    finally:
        soak.release()
        if before is None:
            os.environ.pop(MEMORY_REPORT_ENV, None)
        else:
            os.environ[MEMORY_REPORT_ENV] = before
        left = {str(path): why_left(path)
                for path in sorted(p.relative_to(outbox) for p in outbox.rglob("*.mcap") if p.is_file())}  # fmt: skip
        if not why_not:  # what is left there is kept before the tmpfs goes
            subprocess.run(["cp", "-a", f"{outbox}/.", str(out / "outbox-left")], check=False)
            subprocess.run(["umount", str(outbox)], check=False)
    end = time.time()
    produced, quarantined = produced_episodes(fleet_dir / "logs")
    robots = [f"robot_{i}" for i in range(config.robots)]
    produced = {r: produced.get(r, {}) for r in robots}
    left_root = out / "outbox-left" if not why_not else outbox
    audit = audit_store(produced, fleet_dir / "store", left_root, robots)
    # Not stored but still there, with why: the bridge's queue when the fleet stopped, or refused by the cloud.
    waiting = {eid: where_left(left_root, robot, eid) for robot, ids in produced.items() for eid in ids
               if eid in audit["lost_where"] and audit["lost_where"][eid] != "nowhere"}  # fmt: skip
    lost = sorted(set(audit["lost_ids"]) - set(waiting))
    stored = indexed_episodes(fleet_dir / "store")
    stored_at = {r: [e.stored_at for e in stored if e.robot_id == r] for r in robots}
    outages = [(a, b + config.window_min * 60) for a, b in soak.outages]
    stuck = stuck_windows(stored_at, soak.wall_start + config.warmup_min * 60, end, outages, config.window_min * 60)
    versions = {e.policy_version for e in stored}
    per_robot_logs = {r: "".join(p.read_text(errors="replace") for p in sorted((fleet_dir / "logs").glob(f"{r}_*.log")))
                      for r in robots}  # fmt: skip
    logs = "".join(per_robot_logs.values())
    hold_ages = {r: hold_age_limit(fleet_dir / "configs", r) for r in robots}
    sensors = sensor_gaps_seen(per_robot_logs, soak.sensor_gaps, hold_ages)
    learner_log = (fleet_dir / "logs" / "learner.log").read_text(errors="replace")
    published = [json.loads(p.read_text()).get("created", 0) for p in (fleet_dir / "policies").glob("*.json")]
    samples = with_malloc(soak.samples, malloc_reports(logs, soak.wall_start), config.sample_s)
    growths = judge_growth(samples, config)
    too_short = sorted(set(by_role(samples)) - set(growths))  # no life ran long enough after its warm-up to say
    checks = {
        "episodes": not lost and not audit["duplicated_ids"],
        "none_stuck": not any(stuck.values()),
        "learner_resumed_and_published": all(any(t > k for t in published) for k in soak.learner_kills),
        "no_forged_policy_ran": not versions & set(soak.forged),
        "forged_refused": logs.count("announcement refused") >= len(soak.forged),  # each by a robot at least
        "no_growth": all(g["ok"] for g in growths.values()),
        "stale_sensors_held_and_resumed": all(g["ok"] for g in sensors),
    }
    report = {
        "command": command_line(config), "machine": machine(), "code": code_version(), "config": asdict(config),
        "started_at": round(soak.wall_start, 3),  # Unix time: the samples' t_s are seconds from it
        "hours": round((end - soak.wall_start) / 3600, 3), "robots": config.robots,
        "lost": len(lost), "duplicated": len(audit["duplicated_ids"]), "lost_ids": lost,
        "produced": sum(len(p) for p in produced.values()), "stored": audit["stored"], "not_stored_but_kept": waiting,
        "quarantined_partial_files": quarantined, "files_left_in_outbox": left,
        "faults": [asdict(f) for f in soak.plan if f.done], "faults_by_kind": _count(soak.plan),
        "outbox_tmpfs": not why_not, "learner_restarts": fleet.get("learner_restarts", 0),
        "learner_kills": len(soak.learner_kills), "policies_published": len(published),
        "forged_versions": soak.forged, "sensor_gaps": sensors, "stuck_windows": stuck, "growth": growths,
        "growth_too_short_to_judge": too_short,
        "checks": checks,
        "passed": all(checks.values()), "audit": audit, "fleet_episodes": fleet.get("episodes"),
        "learner_tracebacks": learner_log.count("Traceback"),
    }  # fmt: skip
    path = Path(config.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    (path.parent / "soak_samples.json").write_text(json.dumps(samples) + "\n")
    plot(samples, report["faults"], path.with_suffix(".png"), config.warmup_min)
    return report


def why_left(relative: Path) -> str:
    """Why a file is in a robot's outbox (`relative` to the outbox) when the fleet stopped, by where it lies."""
    from sop_ros.bridge.uploader import REJECTED_DIR
    from sop_ros.episodes.format import PARTIAL_DIR, QUARANTINE_DIR

    where = relative.parts[-2] if len(relative.parts) > 1 else ""
    if where == PARTIAL_DIR:
        return ("a recording not finished when the fleet stopped (its recorder killed, or the disk full, then): "
                "the recorder recovers it at its next start")
    if where == QUARANTINE_DIR:
        return "a partial recording with nothing readable to recover: quarantined, its reason beside it"
    if where == REJECTED_DIR:
        return "refused by the cloud: its reason beside it"
    return "a finished episode queued for upload when the fleet stopped"


def where_left(outbox: Path, robot: str, episode_id: str) -> str:
    """Why an episode the store lacks is still on its robot: refused by the cloud (its reason), or queued."""
    from sop_ros.bridge.uploader import REJECTED_DIR

    reason = outbox / robot / REJECTED_DIR / f"{episode_id}.mcap.reason.txt"
    if reason.exists():
        return f"refused by the cloud: {reason.read_text().strip()}"
    if (outbox / robot / f"{episode_id}.mcap").exists():
        return "in the outbox, queued for upload when the fleet stopped"
    return "a file in the store not indexed, or a partial upload"


def _count(plan: list[Fault]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for f in plan:
        if f.done and not f.detail.startswith("not injected"):
            counts[f.kind] += 1
    return dict(counts)


def command_line(config: SoakConfig) -> str:
    faults = "" if config.faults == FAULTS else f" --faults {','.join(config.faults)}"
    if config.learner_every:
        faults += f" --learner-every {config.learner_every}"
    return (f"sop chaos soak --hours {config.hours:g} --robots {config.robots}{faults} --json {config.json} "
            f"--seed {config.seed}")


def plot(samples: dict[str, list[dict]], faults: list[dict], path: Path, warmup_min: float) -> None:
    """The run at a glance: the faults; the learner's memory, life by life; every robot process's memory and
    threads, coloured by what it is (the same node on every robot alike)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (when, learner, robots, threads) = plt.subplots(
        4, 1, figsize=(11, 10), sharex=True, gridspec_kw={"height_ratios": [1.2, 2, 2.4, 2]})
    kinds = sorted({f["kind"] for f in faults})
    for f in faults:
        y = kinds.index(f["kind"])
        when.plot([f["at_s"] / 60, (f["ends_s"] or f["at_s"]) / 60], [y, y], color="tab:red", linewidth=3,
                  marker="|", markersize=8)  # fmt: skip
    when.set_yticks(range(len(kinds)), kinds, fontsize=7)
    when.set(ylim=(-0.7, len(kinds) - 0.3), title=f"{len(faults)} faults (a bar: one that lasts until undone)")
    node_kinds = sorted({node_kind(key) for key in samples if not key.startswith("learner")})
    colour = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(node_kinds)}
    lives = sorted((s for key, s in samples.items() if key.startswith("learner") and s), key=lambda s: s[0]["t_s"])
    for n, series in enumerate(lives):
        start = series[0]["t_s"] / 60
        learner.axvspan(start, start + warmup_min, color="0.92", linewidth=0)
        label = "resident memory, a line per life" if n == 0 else None
        learner.plot([s["t_s"] / 60 for s in series], [s["rss_mb"] for s in series], color="black", marker=".",
                     linewidth=0.9, label=label)  # fmt: skip
        threads.plot([s["t_s"] / 60 for s in series], [s["threads"] for s in series], color="black",
                     linewidth=0.9, label="learner" if n == 0 else None)  # fmt: skip
    for n, f in enumerate(f for f in faults if f["kind"] == "cloud_away" and f["ends_s"]):
        learner.axvspan(f["at_s"] / 60, f["ends_s"] / 60, color="tab:red", alpha=0.15, linewidth=0,
                        label="stopped: the cloud away" if n == 0 else None)  # fmt: skip
    learner.set(ylabel="MB", title=f"the learner: {len(lives)} lives (a kill starts the next; grey: not judged, each "
                f"life's first {warmup_min:g} min)")  # fmt: skip
    learner.legend(fontsize=7, loc="lower right")
    labelled = set()
    for key, series in sorted(samples.items()):
        if key.startswith("learner"):
            continue
        kind = node_kind(key)
        t = [s["t_s"] / 60 for s in series]
        label = None if kind in labelled else kind
        labelled.add(kind)
        robots.plot(t, [s["rss_mb"] for s in series], color=colour[kind], linewidth=0.7, label=label)
        threads.plot(t, [s["threads"] for s in series], color=colour[kind], linewidth=0.7)
    robots.set(ylabel="MB", title="every robot's processes (a line per process; a restarted one starts a new line)")
    robots.legend(fontsize=7, ncol=4, loc="upper left", bbox_to_anchor=(0, 0.93))
    threads.set(xlabel="minutes into the run", ylabel="threads", title="threads (robots' processes coloured as above)")
    threads.legend(fontsize=7, loc="lower right")
    for ax in (learner, robots, threads):
        ax.axvline(warmup_min, color="grey", linestyle=":")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def node_kind(key: str) -> str:
    """What a robot's process is, whichever robot: "policy" for "robot_3/policy 123", "launcher" for "robot_3 45"."""
    role = key.split()[0]
    return role.split("/", 1)[1] if "/" in role else "launcher"
