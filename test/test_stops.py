"""Stopping: a node signalled at any moment of its life exits 0 without a traceback; a bridge does not wait for a
cloud that will not answer; `sop chaos stops` on a few cycles."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, alive, sop, start, wait_for
from test_bridge_upload import ROBOT, make_episode

from sop_ros.bridge.protocol import EPISODES
from sop_ros.launch.plan import NODE_PROCESS
from sop_ros.robot import fastdds_fix
from sop_ros.robot.node_process import DIE_WITH_PARENT_ENV
from sop_ros.robot.stop_signals import STOP_SIGNALS

TIER = "ros"  # what the tests need: conftest.TIERS


def catches(pid: int, sig: int) -> bool:
    """The process has a handler of its own for `sig` (the kernel's SigCgt mask)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return False
    mask = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(mask, 16) & (1 << (sig - 1)))


def arbiter(namespace: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", NODE_PROCESS, "sop_ros.robot.teleop_arbiter_node", "--ros-args", "-r",
           f"__ns:=/{namespace}"]  # fmt: skip
    return start(cmd)


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("after_s", [0.0, 0.2, 1.0, 3.0])
def test_a_node_stopped_at_any_moment_of_its_start_exits_0_without_a_traceback(sig, after_s):
    """From the moment its process catches signals (first line, before any node module loads): whether the signal
    meets it importing, making its node or spinning, the stop is clean."""
    proc = arbiter("stops")
    try:
        # SIGTERM: Python itself catches SIGINT from its first instant (KeyboardInterrupt); only node_process
        # catches SIGTERM, and both at once.
        wait_for(lambda: catches(proc.pid, signal.SIGTERM), 30, what="the node process to catch stop signals")
        time.sleep(after_s)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output


def test_a_node_whose_launcher_died_before_it_started_does_not_stay(tmp_path):
    """The parent-death request comes after the launcher may already be gone: then the node ends at once."""
    env = {**os.environ, DIE_WITH_PARENT_ENV: "1"}  # pid 1 is never our parent: as if the launcher were gone
    cmd = [sys.executable, "-m", NODE_PROCESS, "sop_ros.robot.teleop_arbiter_node"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=60, check=False)
    assert result.returncode == 0 and "teleop_arbiter" not in result.stdout + result.stderr


def test_a_helper_started_to_die_with_its_parent_goes_when_the_parent_is_killed(tmp_path):
    """A chaos run's CPU burners and cloud: killed on a timeout, the run must not leave them loading the host."""
    script = ("import sys, time; from pathlib import Path; from sop_ros.host import start_logged; "
              "helpers = [start_logged(['sleep', '300'], Path(sys.argv[1]), die_with_parent=flag) "
              "for flag in (True, False)]; print(*(h.pid for h in helpers), flush=True); time.sleep(300)")  # fmt: skip
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "helper.log")], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    dying, staying = map(int, parent.stdout.readline().split())
    try:
        parent.kill()
        parent.wait(timeout=30)
        wait_for(lambda: not alive(dying), 30, what="the helper to die with its parent")
        assert alive(staying)  # without the request, a helper outlives a killed parent: the case it is there for
    finally:
        for pid in (dying, staying):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


SET_LISTENER = "_ZN8eprosima7fastdds3dds17DomainParticipant12set_listenerEPNS1_25DomainParticipantListenerENSt6chrono8"


@pytest.mark.skipif(fastdds_fix.library_path() is None, reason="the Fast DDS fix is not built (Fast DDS 2.x only)")
def test_the_fastdds_fix_is_what_a_participant_deletion_calls(tmp_path):
    """The dynamic linker binds Fast DDS's set_listener(listener, timeout), which rmw calls when a node's
    participant goes, to the fix's definition (its own would spin)."""
    script = ("from sop_ros.robot import fastdds_fix; fastdds_fix.load(); import rclpy; rclpy.init(); "
              "rclpy.create_node('bound').destroy_node(); rclpy.shutdown()")  # fmt: skip
    env = {**os.environ, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(tmp_path / "ld")}
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, timeout=60, check=True)
    bindings = [line for log in tmp_path.glob("ld.*") for line in log.read_text().splitlines() if SET_LISTENER in line]
    assert bindings and all(line.split(" to ")[1].split()[0].endswith(fastdds_fix.LIBRARY) for line in bindings), (
        bindings
    )


@pytest.mark.zenoh
def test_a_bridge_stops_without_waiting_for_a_cloud_that_does_not_answer(tmp_path):
    """The cloud takes the upload's first piece and never replies; the bridge's reply timeout is a minute, yet a
    SIGTERM ends it at once: closing its Zenoh session ends the pending query."""
    from test_bridge_upload import free_port

    from sop_ros.bridge.zenoh_session import open_session
    from sop_ros.configs.bridge import ZenohConfig

    endpoint = f"tcp/127.0.0.1:{free_port()}"
    cloud = open_session(ZenohConfig(listen=(endpoint,)))
    held = []  # queries kept unanswered (a dropped query would end the robot's wait)
    queryable = cloud.declare_queryable(f"{EPISODES}/**", held.append)
    make_episode(tmp_path / "episodes" / ROBOT, f"{ROBOT}-silent")
    config = tmp_path / "robot.yaml"
    config.write_text(yaml.safe_dump({"robot": {"id": ROBOT}, "nodes": {"bridge": {
        "outbox_dir": str(tmp_path / "episodes"), "reply_timeout_s": 60.0, "zenoh": {"connect": [endpoint]}}}}))
    robot = start(sop("robot", "--config", str(config)))
    try:
        wait_for(lambda: held, 60, what="the bridge's first upload piece")
        robot.send_signal(signal.SIGINT)
        output, _ = robot.communicate(timeout=30)  # waiting for the reply would take 60 s
    finally:
        if robot.poll() is None:
            robot.kill()
        held.clear()
        queryable.undeclare()
        cloud.close()
    assert robot.returncode == 0, output
    assert "cloud unavailable" not in output, output  # a stop is not the cloud's fault


def test_chaos_stops_on_a_few_cycles_every_process_exits_0(tmp_path):
    out = tmp_path / "stops.json"
    cmd = sop("chaos", "stops", "--cycles", "2", "--json", str(out), "--burners", "1", "--out", str(tmp_path / "runs"))
    # Bounded below pytest's own timeout, so that a stuck run fails here with its output, not silently.
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=240, check=False)
    report = json.loads(out.read_text())
    # processes: 7 robot nodes and keyboard_teleop; single-process: the composed robot and keyboard_teleop
    assert report["cycles"] == 2 and report["stops_measured"] == 8 + 2, result.stdout
    assert report["hangs"] == 0 and report["nonzero_exits"] == 0 and report["exited_before_signal"] == 0, (
        json.dumps(report["failures"], indent=1) + result.stdout[-3000:]
    )
    assert {r["mode"] for r in report["stops"]} == {"processes", "single-process"}
    assert out.with_suffix(".png").stat().st_size > 0


IN_PROCESS_SCORING = """
import os, sys, time
from sop_ros.fleet import in_process_eval
from sop_ros.fleet.collect_demos import WorkUnit, interrupt_on_signals

def endless_unit(policy_path, base, unit, watch_only=False, record=None, delay_steps=0):
    os.write(1, f"worker {os.getpid()}\\n".encode())  # one write: two workers' lines never interleave
    time.sleep(600)

in_process_eval.run_unit = endless_unit  # the forked workers inherit it
interrupt_on_signals()  # as the experiments have it: SIGTERM raises KeyboardInterrupt
units = [WorkUnit("reach-v3", seed, 1) for seed in range(8)]
try:
    for _ in in_process_eval.run_units("policy.onnx", None, units, workers=2):
        pass
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def runs_endless_units(pid: int) -> bool:
    try:
        return "endless_unit" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:  # it has ended
        return False


@pytest.mark.unit
def test_in_process_scoring_stopped_by_sigterm_ends_its_workers_with_it():
    """Eight units that never finish on two workers: a SIGTERM ends the scoring and both workers, rather than the
    pool draining its queue (what an experiment stopped while scoring used to do)."""
    proc = start([sys.executable, "-c", IN_PROCESS_SCORING])
    workers = []
    try:
        while len(workers) < 2:
            line = proc.stdout.readline()
            assert line, "the scoring ended before both workers started"
            if line.startswith("worker"):
                workers.append(int(line.split()[1]))
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)  # a drained queue: 4 rounds of 600 s
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in filter(runs_endless_units, workers):  # what a failed stop leaves behind
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0 and "interrupted" in output, output
    assert "Traceback" not in output, output
    wait_for(lambda: not any(map(runs_endless_units, workers)), 30, what="the workers to end")
