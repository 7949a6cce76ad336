"""`sop chaos bridge`: SIGKILL the robots' bridges and the cloud's ingest while episodes go up; afterwards no
episode may be missing from the store, none may be stored twice, and every stored file must be the one produced.

What runs, all on this host (Zenoh on tcp/127.0.0.1 only, DDS on localhost only), in <out>/bridge-<time>/:

  ingest    `sop ingest`, a process, its store in store/
  bridges   one bridge node per robot (robot_0, robot_1, ...), each a process started the way `sop robot` starts
            a node (the same module, parameters file and ROS arguments, from sop_ros.launch.plan), but
            without the launcher in between: SIGKILL then hits the uploader itself. (Under `sop robot` a node
            killed makes the launcher stop the robot, and a launcher killed makes its node stop cleanly.)
  producer  a thread here: finished episode files into the robots' outboxes (outbox/<robot>/), written as the
            recorder writes them (EpisodeWriter), ~50-200 kB each, each renamed in when complete; it remembers
            each episode's sha256
  killer    this process's main thread: SIGKILL at random moments (a seeded plan) to a bridge or the ingest,
            half of them aimed: held until an upload is in flight (a .part in the store's incoming/ growing);
            each killed process is started again after a short random delay. A process that exits by itself
            is started again too, and reported.

Then, everything running again, it waits (bounded) until every outbox is empty, stops every process with SIGTERM
and compares what was produced with what the store holds. The store's index is read as the ingest left it
(opening an EpisodeStore would first index files that a crash left unindexed, and so hide them):

  lost        produced episodes without a row in the index; where each one is: still in an outbox, set aside in
              rejected/, a file in episodes/ that the index lacks
  duplicated  episodes stored more than once: several index rows, several files under episodes/, or a leftover
              incoming/*.part beside a stored episode
  sha256      every indexed episode's recorded and on-disk sha256 against the produced file's

It passes (exit 0) when lost == 0, duplicated == 0, no sha256 differs, and every requested kill was made.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from sop_ros.checksums import file_sha256
from sop_ros.cloud.store_audit import audit, index_rows, unindexed
from sop_ros.host import code_version, free_endpoint, machine, sop_command, start_logged

INGEST = "ingest"
INGEST_SHARE = 0.3  # of the kills, this share hits the ingest, the rest a bridge (at least one of each kind)
AIM_SHARE = 0.5  # of the kills, this share first waits for an upload in flight to the target
KILL_GAP_S = (0.5, 2.5)  # from one kill to the next at least
MIN_UP_S = 1.0  # a process is killed only once it is up (see Proc.ready_line) and has run this long
RESTART_DELAY_S = (0.2, 1.5)  # a killed process is started again after this
AIM_WAIT_S = 4.0  # an aimed kill waits this long at most for an upload in flight
AIM_POLL_S = 0.001  # meanwhile it looks this often (an episode's upload can take ~10 ms on loopback)
FRESH_PART_S = 0.1  # a .part written within this is an upload in flight
UP_TIMEOUT_S = 60.0  # for a target to run again
DRAIN_TIMEOUT_S = 120.0  # for the outboxes to empty once the kills are over
STOP_GRACE_S = 20.0  # SIGTERM to exit (a bridge waits up to reply_timeout_s + 5 s for its upload thread)
POLL_S = 0.01
SECONDS_PER_KILL = 2.5  # the producer spreads its episodes over about kills x this: kills meet uploads

STEPS = (20, 80)  # steps per episode; each step a joint state and a 2.4 kB camera frame: ~50-200 kB per episode
IMAGE_BYTES = 2400
TASKS = ("reach-v3", "push-v3", "pick-place-v3")

# The bridges: small pieces (an episode goes up in 3-13 of them, so kills land mid-episode), quick retries, and
# `when_full: keep` so that no episode is deleted on purpose (the quota is far anyway).
BRIDGE = {
    "chunk_kb": 16,
    "reply_timeout_s": 3.0,
    "retry_initial_s": 0.2,
    "retry_max_s": 2.0,
    "scan_period_s": 0.2,
    "after_upload": "delete",
    "when_full": "keep",
}


def run(json_path: Path, robots: int = 4, episodes: int = 200, kills: int = 20, seed: int = 0,
        out_dir: Path = Path("runs/chaos")) -> dict:  # fmt: skip
    """The whole fault test; writes the results to `json_path` and returns them."""
    robot_ids = [f"robot_{i}" for i in range(robots)]
    run_dir = Path(out_dir) / f"bridge-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    store, outbox_root, logs = run_dir / "store", run_dir / "outbox", run_dir / "logs"
    for d in (store, logs, *(outbox_root / r for r in robot_ids)):
        d.mkdir(parents=True)
    rng = random.Random(seed)
    plan = kill_plan(rng, robot_ids, kills)
    limit_s = 300.0 + 15.0 * kills + 0.5 * episodes  # the whole run, every wait included
    t0 = time.monotonic()
    fleet = Fleet(processes(run_dir, robot_ids, limit_s + 60.0), random.Random(rng.getrandbits(64)), t0 + limit_s)
    producer = Producer(outbox_root, robot_ids, episodes, max(SECONDS_PER_KILL * kills / episodes, 0.02),
                        random.Random(rng.getrandbits(64)))  # fmt: skip
    print(f"chaos bridge: {robots} robots, {episodes} episodes, {kills} kills (seed {seed}) in {run_dir}", flush=True)
    timing, errors, kill_log, stop_codes = {}, [], [], {}
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM here still stops every process started
    try:
        fleet.start(fleet.procs[INGEST])
        if not fleet.wait_until(lambda: fleet.ready(INGEST), UP_TIMEOUT_S):
            raise ChaosError(f"sop ingest did not listen within {UP_TIMEOUT_S:g} s: see {logs / 'ingest.log'}")
        for robot in robot_ids:
            fleet.start(fleet.procs[robot])
        producer.start()
        timing["startup"] = time.monotonic() - t0

        t = time.monotonic()
        for n, (target, aimed) in enumerate(plan, 1):
            record = kill_one(fleet, rng, target, aimed, store, outbox_root)
            if record is None:
                errors.append(f"kill {n}: {target} was not up again in time (see its log in {logs})")
                break
            kill_log.append({"n": n, **record})
            print(f"  kill {n:2d}/{kills}: {target:8s} at {record['t_s']:6.1f} s"
                  f"{'  (upload in flight)' if record['in_flight'] else ''}", flush=True)  # fmt: skip
        if not fleet.wait_until(lambda: not producer.is_alive(), limit_s):
            errors.append("the producer did not finish in time")
        timing["chaos"] = time.monotonic() - t

        t = time.monotonic()
        if not fleet.wait_until(lambda: all(fleet.ready(name) for name in fleet.procs), UP_TIMEOUT_S):
            errors.append(f"not every process was up again within {UP_TIMEOUT_S:g} s")
        if not fleet.wait_until(lambda: not any(outbox_root.glob("*/*.mcap")), DRAIN_TIMEOUT_S):
            errors.append(f"the outboxes did not empty within {DRAIN_TIMEOUT_S:g} s")
        timing["drain"] = time.monotonic() - t
    except ChaosError as err:
        errors.append(str(err))
    finally:
        producer.stop.set()
        producer.join(timeout=30.0)
        t = time.monotonic()
        stop_codes = fleet.stop()
        timing["stop"] = time.monotonic() - t
        signal.signal(signal.SIGTERM, previous)
    timing["total"] = time.monotonic() - t0
    if producer.error:
        errors.append(f"producer: {producer.error}")

    found = audit(producer.produced, store, outbox_root, robot_ids)
    result = {
        "command": f"sop chaos bridge --json {json_path} --robots {robots} --episodes {episodes} "
        f"--kills {kills} --seed {seed} --out {out_dir}",
        "machine": {**machine(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "code": code_version(),
        "run_dir": str(run_dir),
        "settings": {
            "robots": robots,
            "episodes": episodes,
            "kills": kills,
            "seed": seed,
            "bridge": BRIDGE,
            "ingest_share": INGEST_SHARE,
            "aim_share": AIM_SHARE,
            "kill_gap_s": KILL_GAP_S,
            "restart_delay_s": RESTART_DELAY_S,
            "episode_steps": STEPS,
        },
        "episodes": {
            "produced": sum(len(e) for e in producer.produced.values()),
            "stored": found["stored"],
            "bytes_produced": sum(producer.sizes),
            "size_kb_min": round(min(producer.sizes, default=0) / 1024, 1),
            "size_kb_max": round(max(producer.sizes, default=0) / 1024, 1),
        },
        "kills": kill_summary(kill_log),
        "lost": len(found["lost_ids"]),
        "duplicated": len(found["duplicated_ids"]),
        "sha256_mismatches": len(found["mismatched"]),
        **found,
        "processes": {
            "starts": {p.name: p.starts for p in fleet.procs.values()},
            "unexpected_exits": fleet.unexpected_exits,
            "stop_exit_codes": stop_codes,
        },
        "logs": log_counts(logs),
        "timing_s": {k: round(v, 2) for k, v in timing.items()},
        "duration_s": round(timing["total"], 2),
        "errors": errors,
    }
    result["passed"] = (
        not errors
        and result["lost"] == 0
        and result["duplicated"] == 0
        and result["sha256_mismatches"] == 0
        and result["kills"]["total"] >= kills
    )
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    k = result["kills"]
    print(f"chaos bridge: {result['episodes']['produced']} episodes produced, {found['stored']} stored; "
          f"{k['total']} kills ({k['bridge']} bridge, {k['ingest']} ingest; {k['in_flight']} with an upload in "
          f"flight); lost {result['lost']}, duplicated {result['duplicated']}, sha256 mismatches "
          f"{result['sha256_mismatches']}; {result['duration_s']:.1f} s", flush=True)  # fmt: skip
    for error in errors:
        print(f"  error: {error}", flush=True)
    print(f"wrote {json_path}; passed: {result['passed']}", flush=True)
    return result


class ChaosError(RuntimeError):
    """The run cannot go on (a process that does not come up): reported in the results' errors."""


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- the plan and the kills ---------------------------------------------------------------------------------


def kill_plan(rng: random.Random, robot_ids: list[str], kills: int) -> list[tuple[str, bool]]:
    """(the process it hits, whether it is aimed) of each kill, in order: INGEST_SHARE of them the ingest, the
    others a random bridge; AIM_SHARE of them aimed at an upload in flight."""
    n_ingest = min(max(round(kills * INGEST_SHARE), 1), kills - 1) if kills >= 2 else 0
    targets = [INGEST] * n_ingest + [rng.choice(robot_ids) for _ in range(kills - n_ingest)]
    rng.shuffle(targets)
    aimed = set(rng.sample(range(kills), round(kills * AIM_SHARE)))
    return [(target, n in aimed) for n, target in enumerate(targets)]


def kill_one(fleet: Fleet, rng: random.Random, target: str, aimed: bool, store: Path,
             outbox_root: Path) -> dict | None:  # fmt: skip
    """Wait a random gap and for the target to run (and, for an aimed kill, for an upload in flight), SIGKILL it
    and schedule its restart; None if it did not run again in time."""
    proc = fleet.procs[target]
    robot = None if target == INGEST else target  # the ingest: anyone's upload counts
    not_before = time.monotonic() + rng.uniform(*KILL_GAP_S)
    for _ in range(3):  # the target may exit by itself meanwhile (then it is restarted): wait for it again
        ready = fleet.wait_until(lambda: time.monotonic() >= not_before and fleet.ready(target)
                                 and time.monotonic() - proc.started_at >= MIN_UP_S, UP_TIMEOUT_S)  # fmt: skip
        if not ready:
            return None
        if aimed:
            fleet.wait_until(lambda: upload_in_flight(store, robot), AIM_WAIT_S, AIM_POLL_S)
        if proc.alive():
            break
    else:
        return None
    in_flight = upload_in_flight(store, robot)
    waiting = sum(1 for _ in outbox_root.glob(f"{robot or '*'}/*.mcap"))
    uptime = time.monotonic() - proc.started_at
    delay = fleet.kill(proc)
    record = {"t_s": round(fleet.clock(), 2), "target": target, "kind": proc.kind, "aimed": aimed,
              "in_flight": in_flight, "outbox_waiting": waiting, "uptime_s": round(uptime, 2),
              "restart_delay_s": round(delay, 2)}  # fmt: skip
    if proc.kind == INGEST:  # killed between renaming an episode in and indexing it: its restart must index it
        record["unindexed_after_kill"] = len(unindexed(store, index_rows(store / "index.sqlite")))
    return record


def upload_in_flight(store: Path, robot: str | None) -> bool:
    """A .part in the store's incoming/ (of `robot`, or of anyone) written within FRESH_PART_S."""
    now = time.time()
    for part in (store / "incoming").glob(f"{robot or '*'}/*.part"):
        try:
            if now - part.stat().st_mtime < FRESH_PART_S:
                return True
        except FileNotFoundError:  # stored meanwhile
            continue
    return False


def kill_summary(kill_log: list[dict]) -> dict:
    kinds = Counter(k["kind"] for k in kill_log)
    in_flight = Counter(k["kind"] for k in kill_log if k["in_flight"])
    return {
        "total": len(kill_log),
        "bridge": kinds["bridge"],
        "ingest": kinds[INGEST],
        "in_flight": sum(in_flight.values()),
        "in_flight_by_kind": {"bridge": in_flight["bridge"], "ingest": in_flight[INGEST]},
        "ingest_left_unindexed_files": sum(1 for k in kill_log if k.get("unindexed_after_kill")),
        "per_robot": dict(sorted(Counter(k["target"] for k in kill_log if k["kind"] == "bridge").items())),
        "list": kill_log,
    }


# -- the processes ------------------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str  # INGEST or a robot id
    cmd: list[str]
    log: Path
    popen: subprocess.Popen | None = None
    started_at: float = 0.0  # monotonic
    starts: int = 0
    restart_at: float | None = None  # monotonic: killed (or exited), to be started again then

    @property
    def kind(self) -> str:
        return INGEST if self.name == INGEST else "bridge"

    @property
    def ready_line(self) -> str:
        """What the process logs, once per start, when it serves (ingest) or uploads (bridge)."""
        return "listening on" if self.name == INGEST else "]: uploading "

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


def processes(run_dir: Path, robot_ids: list[str], ingest_limit_s: float) -> list[Proc]:
    """The ingest and one bridge per robot, their configs written to <run>/config/. `sop ingest` ends by itself
    after `ingest_limit_s` (it is no node: it would not stop with this process otherwise)."""
    from sop_ros.configs import from_dict
    from sop_ros.configs.robot import RobotLaunchConfig
    from sop_ros.launch.launcher import write_params_file
    from sop_ros.launch.plan import plan

    config_dir, logs = run_dir / "config", run_dir / "logs"
    config_dir.mkdir()
    endpoint = free_endpoint()
    learner = config_dir / "learner.yaml"
    ingest = {"store_dir": str(run_dir / "store"), "ingest": {"zenoh": {"listen": [endpoint]}}}
    learner.write_text(yaml.safe_dump(ingest))
    procs = [Proc(INGEST, sop_command("ingest", "--config", str(learner), "--duration", f"{ingest_limit_s:.0f}"),
                  logs / "ingest.log")]  # fmt: skip
    for robot in robot_ids:
        bridge = {**BRIDGE, "outbox_dir": str(run_dir / "outbox"), "zenoh": {"connect": [endpoint]}}
        robot_config = {"robot": {"id": robot}, "nodes": {"bridge": bridge}}
        # The same robot, as `sop robot --config <this>` would run it (with its launcher in between).
        (config_dir / f"{robot}.yaml").write_text(yaml.safe_dump(robot_config))
        (spec,) = plan(from_dict(RobotLaunchConfig, robot_config))
        params = write_params_file(spec, config_dir)
        procs.append(Proc(robot, spec.command(str(params)), logs / f"{robot}.log"))
    return procs


class Fleet:
    """The processes: started, killed, restarted when due, stopped. Only the main thread calls it: a node's
    parent-death signal (DIE_WITH_PARENT_ENV) follows the thread that started it."""

    def __init__(self, procs: list[Proc], rng: random.Random, deadline: float) -> None:
        from sop_ros.robot.node_process import DIE_WITH_PARENT_ENV

        self.procs = {p.name: p for p in procs}
        self.rng = rng  # restart delays
        self.deadline = deadline  # monotonic: no wait goes past it
        self.t0 = time.monotonic()
        self.unexpected_exits: list[dict] = []
        log_dir = procs[0].log.parent
        self.env = {
            **os.environ,
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",  # the bridges' bridge/status stays on this host
            "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID") or str(120 + os.getpid() % 90),
            "ROS_LOG_DIR": str(log_dir / "ros"),
            "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
            "PYTHONUNBUFFERED": "1",
            DIE_WITH_PARENT_ENV: str(os.getpid()),  # the bridges stop if this process dies
        }

    def clock(self) -> float:
        return time.monotonic() - self.t0

    def start(self, proc: Proc) -> None:
        with open(proc.log, "a") as log:
            log.write(f"--- chaos: start {proc.starts + 1} at {self.clock():.2f} s ---\n")
        proc.popen = start_logged(proc.cmd, proc.log, env=self.env, own_session=True, append=True)
        proc.starts += 1
        proc.started_at = time.monotonic()
        proc.restart_at = None

    def ready(self, name: str) -> bool:
        """Running, and said so since its last start."""
        proc = self.procs[name]
        return proc.alive() and proc.log.read_text(errors="replace").count(proc.ready_line) >= proc.starts

    def kill(self, proc: Proc) -> float:
        """SIGKILL, and a restart after a random delay, which is returned."""
        proc.popen.kill()
        proc.popen.wait(timeout=10.0)
        delay = self.rng.uniform(*RESTART_DELAY_S)
        proc.restart_at = time.monotonic() + delay
        return delay

    def tend(self) -> None:
        """Start what is due; a process that exited by itself is reported and restarted too."""
        now = time.monotonic()
        for proc in self.procs.values():
            if proc.restart_at is None and proc.popen is not None and proc.popen.poll() is not None:
                self.unexpected_exits.append({"process": proc.name, "code": proc.popen.returncode,
                                              "t_s": round(self.clock(), 2)})  # fmt: skip
                print(f"  {proc.name} exited by itself with {proc.popen.returncode}: starting it again", flush=True)
                proc.restart_at = now + self.rng.uniform(*RESTART_DELAY_S)
            if proc.restart_at is not None and now >= proc.restart_at:
                self.start(proc)

    def wait_until(self, condition, timeout_s: float, poll_s: float = POLL_S) -> bool:
        """Tend the processes until `condition()` holds (True) or `timeout_s` or the run's deadline passes."""
        deadline = min(time.monotonic() + timeout_s, self.deadline)
        while True:
            self.tend()
            if condition():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM to every process still running; exit codes (None: was not running; SIGKILLed after
        STOP_GRACE_S: -9)."""
        running = [p for p in self.procs.values() if p.alive()]
        for proc in running:
            proc.popen.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        codes: dict[str, int | None] = {p.name: None for p in self.procs.values()}
        for proc in running:
            try:
                codes[proc.name] = proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                print(f"  {proc.name} did not stop within {STOP_GRACE_S:g} s of SIGTERM: killing it", flush=True)
                proc.popen.kill()
                codes[proc.name] = proc.popen.wait()
        return codes


# -- the producer -------------------------------------------------------------------------------------------


class Producer(threading.Thread):
    """`episodes` finished episode files, round-robin into the robots' outboxes, about `interval_s` apart.

    Each is written by EpisodeWriter in staging/<robot>/ beside the outbox (so that its sha256 is taken before a
    bridge can upload and delete it), then renamed into the outbox in one step, as the recorder's finish does."""

    def __init__(self, outbox_root: Path, robot_ids: list[str], episodes: int, interval_s: float,
                 rng: random.Random) -> None:  # fmt: skip
        super().__init__(name="producer", daemon=True)
        self.outbox_root, self.robot_ids, self.episodes = outbox_root, robot_ids, episodes
        self.interval_s, self.rng = interval_s, rng
        self.stop = threading.Event()
        self.produced: dict[str, dict[str, str]] = {r: {} for r in robot_ids}  # robot -> episode id -> sha256
        self.sizes: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        from sop_ros.episodes.durable import fsync_dir

        staging = self.outbox_root.parent / "staging"
        try:
            for n in range(self.episodes):
                if self.stop.is_set():
                    return
                robot = self.robot_ids[n % len(self.robot_ids)]
                path = write_episode(staging / robot, robot, f"{robot}-{n:04d}", self.rng)
                self.produced[robot][path.stem] = file_sha256(path)
                self.sizes.append(path.stat().st_size)
                os.replace(path, self.outbox_root / robot / path.name)
                fsync_dir(self.outbox_root / robot)
                self.stop.wait(self.rng.uniform(0.5, 1.5) * self.interval_s)
        except BaseException as err:  # reported in the results
            self.error = err


def write_episode(outbox: Path, robot: str, episode_id: str, rng: random.Random) -> Path:
    """A finished episode file as the recorder writes it: joint states and camera frames, then its metadata."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CompressedImage, JointState

    from sop_ros.episodes.writer import EpisodeWriter
    from sop_ros.robot import topics

    steps = rng.randint(*STEPS)
    camera = topics.CAMERA_COMPRESSED.format(camera="corner")
    writer = EpisodeWriter(outbox, episode_id, metadata={"episode_id": episode_id, "robot_id": robot,
                                                         "task": rng.choice(TASKS)})  # fmt: skip
    writer.add_topic(topics.JOINT_STATES, "sensor_msgs/JointState")
    writer.add_topic(camera, "sensor_msgs/CompressedImage")
    start = time.time_ns()
    for i in range(steps):
        t = start + i * 33_333_333
        joints = JointState(name=["j0", "j1", "j2", "gripper"], position=[rng.uniform(-1, 1) for _ in range(4)])
        writer.write(topics.JOINT_STATES, serialize_message(joints), t)
        image = CompressedImage(format="jpeg", data=rng.randbytes(IMAGE_BYTES))  # incompressible, like a JPEG
        writer.write(camera, serialize_message(image), t)
    return writer.finish({"outcome": rng.choice(("success", "failure")), "steps": str(steps)})


# -- the comparison -----------------------------------------------------------------------------------------


def log_counts(logs: Path) -> dict[str, int]:
    """What the processes said, counted: re-sends the ingest acknowledged as stored already, uploads it asked for
    again (damaged bytes), refusals."""
    bridges = "".join(p.read_text(errors="replace") for p in sorted(logs.glob("robot_*.log")))
    ingest = (logs / "ingest.log").read_text(errors="replace") if (logs / "ingest.log").exists() else ""
    return {
        "uploads_acknowledged": bridges.count(": uploaded "),
        "resent_and_acknowledged_as_duplicate": bridges.count("(the cloud had it already)"),
        "bridge_errors": bridges.count("[ERROR]"),
        "ingest_stored": ingest.count(" stored "),
        "ingest_asked_again": ingest.count("asking for it again"),
        "ingest_refused": ingest.count("refused"),
        "ingest_tracebacks": ingest.count("Traceback"),
    }
