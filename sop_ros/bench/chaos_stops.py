"""`sop chaos stops`: start a robot's whole node set, stop it at a random moment, and time every node's stop.

Each cycle starts the full set of on-robot nodes for one simulated robot (sim_robot, ingest, policy,
teleop_arbiter, scripted_operator, recorder, bridge, from config/sim_policy.yaml plus an intervening operator and
a bridge) and a keyboard_teleop reading a terminal that never types, either

  processes       every node in a process of its own, started as `sop robot` (and `ros2 launch`) starts them, or
  single-process  every robot node composed in one `sop robot --single-process` (keyboard_teleop beside it),

lets it run a random 0.5-8 s (so the signal meets nodes still loading their modules, before discovery, during
the policy's load, and mid-episode), then sends SIGINT or SIGTERM to every process at once, as `ros2 launch` does
on Ctrl-C, and records each process's stop time and exit code. In half the cycles the bridge reaches a cloud
(`sop cloud`) that takes its episodes and announces a signed policy, which the bridge downloads and the policy node
loads while it runs (the node also loads one at start); in the others the bridge's Zenoh peer is away. Two CPU
burners (`yes`) run throughout: stops must hold on a busy robot computer.

A process that has not exited 10 s after the signal is a hang: its threads' Python stacks are printed into its
log (SIGUSR1), their native stacks into <node>.gdb.txt (where gdb is installed), and it is killed. The logs of a
cycle with a hang, a slow stop (> 2 s) or a non-zero exit code are kept in <out>/cycle_NNN/; the others are
deleted.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from sop_ros.host import sop_command, start_logged

STOP_LIMIT_S = 2.0  # every node returns within this of the signal
HANG_S = 10.0  # not exited by then: a hang (killed)
RUN_S = (0.5, 8.0)  # from the start of the processes to the signal
SIGNALS = (signal.SIGINT, signal.SIGTERM)
MODES = ("processes", "single-process")
ROBOT = "chaos"
KEYBOARD = "keyboard_teleop"
COMPOSED = "robot (single process)"
# What a node logs when it reaches a state; the state a node was in at the signal is the last one logged before it.
MILESTONES = {
    "sim_stepping": re.compile(r"\[chaos\.sim_robot\]: Meta-World "),
    "policy_loaded": re.compile(r"\[chaos\.policy\]: policy \S+ \(.*\) replaces none"),
    "commanding": re.compile(r"\[chaos\.teleop_arbiter\]: control -> "),
    "episode_done": re.compile(r"\[chaos\.sim_robot\]: episode \S+ .*: \w+ after \d+ steps"),
    "announced": re.compile(r"\[chaos\.bridge\]: policy \S+ announced"),
    "hot_loaded": re.compile(r"\[chaos\.policy\]: load \S+: "),
}
_STAMP = re.compile(r"^\[\w+\] \[(\d+\.\d+)\] ")


@dataclass(frozen=True)
class StopRecord:
    cycle: int
    mode: str
    signal: str
    run_s: float  # from start to signal
    cloud: bool  # the bridge's Zenoh peer was there
    process: str  # a node, or the composed robot
    code: int
    stop_s: float
    signalled: bool  # running at the signal (a node that had already exited is a failure of its own)


def run(json_path: Path, cycles: int = 200, seed: int = 0, out_dir: Path = Path("runs/chaos"), burners: int = 2,
        robot_config: Path = Path("config/sim_policy.yaml"), run_s: tuple[float, float] = RUN_S) -> dict:  # fmt: skip
    """The whole stress run; writes the results (JSON, and a PNG beside it) and returns them."""
    from sop_ros.bench.chaos_bridge import code_version
    from sop_ros.host import free_endpoint, machine
    from sop_ros.launch.launcher import stop_processes
    from sop_ros.robot.node_process import DIE_WITH_PARENT_ENV

    run_dir = Path(out_dir) / f"stops-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    run_dir.mkdir(parents=True)
    rng = random.Random(seed)
    at_start, announced = export_policies(run_dir)
    cloud_endpoint, away_endpoint = free_endpoint(), free_endpoint()
    public_key = publish(announced, run_dir)
    config = robot_yaml(robot_config, run_dir, at_start, public_key)
    env = {
        **os.environ,
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID") or str(120 + os.getpid() % 90),
        "ROS_LOG_DIR": str(run_dir / "ros_log"),
        "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
        "PYTHONUNBUFFERED": "1",
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        DIE_WITH_PARENT_ENV: str(os.getpid()),  # nodes stop if this process dies
    }
    print(f"chaos stops: {cycles} cycles, {burners} CPU burners, seed {seed}, in {run_dir}", flush=True)
    records: list[StopRecord] = []
    states: list[dict] = []
    t0 = time.monotonic()
    # Burners and the cloud go when this process goes, even killed: they must not load the host after it.
    busy = [start_logged(["yes"], Path(os.devnull), die_with_parent=True) for _ in range(burners)]
    cloud = start_cloud(run_dir, cloud_endpoint, env)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM here still stops every process started
    try:
        for cycle in range(cycles):
            mode, sig = MODES[cycle % len(MODES)], rng.choice(SIGNALS)
            wait_s, with_cloud = rng.uniform(*run_s), rng.random() < 0.5
            endpoint = cloud_endpoint if with_cloud else away_endpoint
            cycle_dir = run_dir / f"cycle_{cycle:03d}"
            cycle_dir.mkdir()
            exits, signalled_at = run_cycle(config, endpoint, mode, sig, wait_s, cycle_dir, env)
            cycle_records = [StopRecord(cycle, mode, sig.name, round(wait_s, 2), with_cloud, name, e.code,
                                        round(e.stop_s, 3), e.signalled) for name, e in exits.items()]  # fmt: skip
            records.extend(cycle_records)
            states.append({**reached(cycle_dir, signalled_at), "cloud": with_cloud})
            failed = [r for r in cycle_records if not stopped_cleanly(r)]
            if failed:
                print(f"  cycle {cycle}: " + ", ".join(f"{r.process} exit {r.code} in {r.stop_s:.2f} s" for r in failed)
                      + f": logs kept in {cycle_dir}", flush=True)  # fmt: skip
            else:
                shutil.rmtree(cycle_dir)
            if (cycle + 1) % 10 == 0 or cycle + 1 == cycles:
                elapsed = time.monotonic() - t0
                worst = max(r.stop_s for r in records)
                print(f"  {cycle + 1}/{cycles} cycles, {sum(not stopped_cleanly(r) for r in records)} failed stops, "
                      f"slowest {worst:.2f} s; {elapsed / 60:.1f} min, ETA "
                      f"{elapsed / (cycle + 1) * (cycles - cycle - 1) / 60:.1f} min", flush=True)  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in busy:
            proc.kill()
            proc.wait()
        stop_processes({"sop cloud": cloud}, signal.SIGTERM, grace_s=30.0)

    command = (f"sop chaos stops --cycles {cycles} --json {json_path} --seed {seed} --burners {burners} "
               f"--robot-config {robot_config} --out {out_dir}")  # fmt: skip
    result = summarize(records, states, cycles)
    result = {
        "command": command,
        "machine": {**machine(), "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "code": code_version(),
        "run_dir": str(run_dir),
        "settings": {"burners": burners, "run_s": list(run_s), "stop_limit_s": STOP_LIMIT_S, "hang_s": HANG_S,
                     "seed": seed, "modes": list(MODES), "signals": [s.name for s in SIGNALS]},  # fmt: skip
        **result,
        "duration_s": round(time.monotonic() - t0, 1),
        "stops": [asdict(r) for r in records],
    }
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(records, json_path.with_suffix(".png"))
    print(f"chaos stops: {cycles} cycles, {result['stops_measured']} stops: {result['hangs']} hangs, "
          f"{result['nonzero_exits']} non-zero exits, {result['slow_stops']} over {STOP_LIMIT_S:g} s; stop p50 "
          f"{result['stop_p50_s']:.2f} s, p99 {result['stop_p99_s']:.2f} s, max {result['stop_max_s']:.2f} s",
          flush=True)  # fmt: skip
    print(f"wrote {json_path} and {json_path.with_suffix('.png')}; passed: {result['passed']}", flush=True)
    return result


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stopped_cleanly(record: StopRecord) -> bool:
    return record.signalled and record.code == 0 and record.stop_s <= STOP_LIMIT_S


# -- one cycle ----------------------------------------------------------------------------------------------
def run_cycle(config: dict, endpoint: str, mode: str, sig: signal.Signals, wait_s: float, cycle_dir: Path,
              env: dict) -> tuple[dict, float]:  # fmt: skip
    """Start, wait `wait_s`, signal every process; each process's NodeExit, and the wall time of the signal."""
    from sop_ros.configs import from_dict
    from sop_ros.configs.robot import RobotLaunchConfig
    from sop_ros.launch.launcher import ProcessLauncher, stop_processes
    from sop_ros.launch.plan import plan

    config = {**config, "nodes": {**config["nodes"], "bridge": {**config["nodes"]["bridge"],
                                                                "zenoh": {"connect": [endpoint]}}}}  # fmt: skip
    config_path = cycle_dir / "robot.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    procs: dict[str, subprocess.Popen] = {}
    keyboard_input = None
    try:
        with tempfile.TemporaryDirectory(prefix="sop_chaos_") as params_dir:
            if mode == "processes":
                launcher = ProcessLauncher(plan(from_dict(RobotLaunchConfig, config)), log=lambda _: None,
                                           log_dir=cycle_dir, env=env)  # fmt: skip
                launcher.start(Path(params_dir))
                procs.update(launcher.procs)
            else:
                cmd = sop_command("robot", "--config", str(config_path), "--single-process")
                procs[COMPOSED] = start_logged(cmd, cycle_dir / "robot.log", env=env, own_session=True)
            keyboard_input, procs[KEYBOARD] = start_keyboard(cycle_dir, env)
            time.sleep(wait_s)
            signalled_at = time.time()
            exits = stop_processes(procs, sig, HANG_S, log=lambda message: print(f"  {message}", flush=True),
                                   on_hang=lambda name, proc: native_stacks(proc.pid, cycle_dir / f"{name}.gdb.txt"))
    finally:
        for proc in procs.values():  # an exception above: nothing left running
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if keyboard_input is not None:
            os.close(keyboard_input)
    return exits, signalled_at


def native_stacks(pid: int, out: Path) -> None:
    """Every thread's native stack (gdb, where installed) of a process that does not stop: what holds what."""
    if shutil.which("gdb") is None:
        return
    with open(out, "w") as f:
        subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 40"], stdout=f,
                       stderr=subprocess.STDOUT, timeout=120, check=False)  # fmt: skip


def start_keyboard(cycle_dir: Path, env: dict) -> tuple[int, subprocess.Popen]:
    """keyboard_teleop reading a pipe that stays open and silent (an operator's terminal nobody types in)."""
    from sop_ros.launch.plan import NODE_PROCESS

    read_end, write_end = os.pipe()
    cmd = [sys.executable, "-m", NODE_PROCESS, "sop_ros.robot.keyboard_teleop_node", "--ros-args", "-r",
           f"__ns:=/{ROBOT}"]  # fmt: skip
    try:
        proc = start_logged(cmd, cycle_dir / f"{KEYBOARD}.log", env=env, own_session=True, stdin=read_end)
    finally:
        os.close(read_end)
    return write_end, proc


def reached(cycle_dir: Path, signalled_at: float) -> dict:
    """Which milestones the robot had logged before the signal (the state the signal met)."""
    found = dict.fromkeys(MILESTONES, False)
    for log in cycle_dir.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            stamp = _STAMP.match(line)
            if stamp is None or float(stamp.group(1)) > signalled_at:
                continue
            for name, pattern in MILESTONES.items():
                found[name] = found[name] or bool(pattern.search(line))
    return found


# -- set-up -------------------------------------------------------------------------------------------------
def export_policies(run_dir: Path) -> tuple[Path, Path]:
    """Two versions of an untrained default-size policy: the one the policy node loads at every start, and the
    one the cloud announces."""
    from sop_ros.bench.inference import make_policies

    _, at_start, announced = make_policies(run_dir, None)
    return at_start, announced


def publish(policy: Path, run_dir: Path) -> Path:
    """Sign `policy` into the cloud's registry (<run>/registry) with a fresh key pair; the public key's path."""
    from sop_ros.bridge.artifacts import load_private_key, make_signing_keys
    from sop_ros.cloud.policy_registry import PolicyRegistry

    private, public = make_signing_keys(run_dir / "keys")
    PolicyRegistry(run_dir / "registry").publish(policy, load_private_key(private))
    return public


def robot_yaml(base: Path, run_dir: Path, policy: Path, public_key: Path) -> dict:
    """The robot every cycle starts: `base` (a simulated robot driven by a policy) with every on-robot node."""
    config = yaml.safe_load(Path(base).read_text())
    nodes = config["nodes"]
    task = nodes["sim_robot"].get("task", "reach-v3")
    config["robot"] = {**config.get("robot", {}), "id": ROBOT}
    nodes["sim_robot"] = {**nodes["sim_robot"], "episodes": 0, "step_mode": "lockstep"}
    nodes["policy"] = {**nodes.get("policy", {}), "policy_path": str(policy.resolve())}
    nodes["scripted_operator"] = {"mode": "intervene", "task": task, "time_budget_steps": 60}
    nodes["recorder"] = {**nodes.get("recorder", {}), "output_dir": str(run_dir / "episodes")}
    # Downloads are kept across cycles: a later cycle finds the announced policy cached and loads it sooner.
    nodes["bridge"] = {"outbox_dir": str(run_dir / "episodes"), "reply_timeout_s": 3.0, "retry_max_s": 2.0,
                       "policies": {"public_key": str(public_key), "cache_dir": str(run_dir / "policies"),
                                    "check_period_s": 1.0}}  # fmt: skip
    return config


def start_cloud(run_dir: Path, endpoint: str, env: dict) -> subprocess.Popen:
    """`sop cloud` listening at `endpoint`, serving <run>/registry: the cloud of the cycles that have one."""
    learner = run_dir / "learner.yaml"
    cloud = {"store_dir": str(run_dir / "store"), "ingest": {"zenoh": {"listen": [endpoint]}},
             "policies": {"registry_dir": str(run_dir / "registry")}}  # fmt: skip
    learner.write_text(yaml.safe_dump(cloud))
    return start_logged(sop_command("cloud", "--config", str(learner)), run_dir / "cloud.log", env=env,
                        own_session=True, die_with_parent=True)  # fmt: skip


# -- results ------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else 0.0


def summarize(records: list[StopRecord], states: list[dict], cycles: int) -> dict:
    signalled = [r for r in records if r.signalled]
    times = [r.stop_s for r in signalled]
    hangs = [r for r in signalled if r.stop_s >= HANG_S]
    nonzero = [r for r in records if r.code != 0]
    slow = [r for r in signalled if r.stop_s > STOP_LIMIT_S]
    early_exits = [r for r in records if not r.signalled]  # ended by itself before the signal: a crash

    def group(key) -> dict:
        out = {}
        for value in sorted({key(r) for r in records}):
            rows = [r for r in records if key(r) == value]
            out[value] = {"stops": len(rows), "failed": sum(not stopped_cleanly(r) for r in rows),
                          "p50_s": percentile([r.stop_s for r in rows], 50),
                          "p99_s": percentile([r.stop_s for r in rows], 99),
                          "max_s": round(max(r.stop_s for r in rows), 3)}  # fmt: skip
        return out

    return {
        "cycles": cycles,
        "stops_measured": len(records),
        "hangs": len(hangs),
        "nonzero_exits": len(nonzero),
        "slow_stops": len(slow),
        "exited_before_signal": len(early_exits),
        "stop_p50_s": percentile(times, 50),
        "stop_p99_s": percentile(times, 99),
        "stop_max_s": round(max(times, default=0.0), 3),
        "by_process": group(lambda r: r.process),
        "by_mode": group(lambda r: r.mode),
        "by_signal": group(lambda r: r.signal),
        "by_cloud": group(lambda r: "cloud present" if r.cloud else "cloud away"),
        # How many cycles the signal met in each state (from what the robot's logs show before it; a cycle may be
        # in several).
        "signal_met": {
            "simulator_not_yet_stepping": sum(not s["sim_stepping"] for s in states),
            "start_policy_not_yet_loaded": sum(not s["policy_loaded"] for s in states),
            "cloud_policy_announced_not_yet_loaded": sum(s["announced"] and not s["hot_loaded"] for s in states),
            "cloud_policy_loaded": sum(s["hot_loaded"] for s in states),
            "commands_flowing": sum(s["commanding"] for s in states),
            "an_episode_ended": sum(s["episode_done"] for s in states),
            "cloud_away": sum(not s["cloud"] for s in states),
        },
        "failures": [asdict(r) for r in records if not stopped_cleanly(r)],
        "passed": not hangs and not nonzero and not slow and not early_exits,
    }


def plot(records: list[StopRecord], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r.process for r in records})
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.6))
    for i, name in enumerate(names):
        times = [r.stop_s for r in records if r.process == name and r.signalled]
        jitter = np.random.default_rng(i).uniform(-0.25, 0.25, len(times))
        ax.scatter(times, np.full(len(times), i) + jitter, s=6, alpha=0.5)
    ax.axvline(STOP_LIMIT_S, color="red", linestyle="--", linewidth=1, label=f"limit {STOP_LIMIT_S:g} s")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("seconds from SIGINT / SIGTERM to exit")
    ax.set_title(f"sop chaos stops: {len({r.cycle for r in records})} cycles, two CPU burners")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
