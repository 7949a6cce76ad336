"""`sop chaos soak`'s decisions on plain data: the fault plan, whose process is whose, and the end checks."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from sop_ros.fleet.soak import (
    FAULTS,
    LEARNER_FAULTS,
    Soak,
    SoakConfig,
    by_role,
    descendants,
    fault_plan,
    first_hold,
    floor_rise,
    growth,
    hold_age_limit,
    judge_growth,
    malloc_reports,
    plot,
    process_sample,
    produced_episodes,
    role_of,
    running,
    sensor_gaps_seen,
    stuck_windows,
    why_left,
    with_malloc,
)

TIER = "unit"  # what the tests need: conftest.TIERS


def test_the_plan_cycles_through_every_fault_and_leaves_time_to_recover():
    plan = fault_plan(random.Random(3), hours=2.0, gap_min=(3.0, 6.0), learner_every=2)
    gaps = [b.at_s - a.at_s for a, b in zip(plan, plan[1:], strict=False)]
    assert all(180 <= g <= 360 for g in gaps) and 180 <= plan[0].at_s <= 360
    assert plan[-1].at_s <= 2 * 3600 - 600  # the last 10 minutes: recovery only
    assert len(plan) >= 2 * 3600 // 360 - 2  # 7200 s - 600 s at gaps of 180-360 s: 18-36 faults
    kinds = [f.kind for f in plan]
    assert set(kinds[: len(FAULTS)]) == set(FAULTS)  # each kind once before any twice
    # Then a cycle of the others: the learner's own faults come half as often, so that it runs long lives.
    second = kinds[len(FAULTS) : 2 * len(FAULTS) - len(LEARNER_FAULTS)]
    assert sorted(second) == sorted(set(FAULTS) - set(LEARNER_FAULTS))
    others = [kinds.count(k) for k in FAULTS if k not in LEARNER_FAULTS]
    assert max(others) - min(others) <= 1
    assert all(kinds.count(k) in (round(min(others) / 2), round(min(others) / 2) + 1) for k in LEARNER_FAULTS)
    assert [f.at_s for f in fault_plan(random.Random(3), 2.0, (3.0, 6.0), learner_every=2)] == [
        f.at_s for f in plan]  # seeded
    # By default the learner's faults come in the first cycle only: one long life after them.
    first = [f.kind for f in fault_plan(random.Random(3), 2.0, (3.0, 6.0))]
    assert sorted(first[: len(FAULTS)]) == sorted(FAULTS)
    assert not set(first[len(FAULTS) :]) & set(LEARNER_FAULTS) and len(first) > len(FAULTS)
    short = fault_plan(random.Random(0), hours=0.2, gap_min=(1.0, 1.5))  # 12 min: the last quarter is left
    assert short and short[-1].at_s <= 0.2 * 3600 * 0.75
    only_the_learner = fault_plan(random.Random(0), 1.0, (3.0, 6.0), kinds=("learner",))
    assert only_the_learner and {f.kind for f in only_the_learner} == {"learner"}  # asked for: every cycle


def test_each_process_of_the_fleet_is_known_by_its_command_line():
    python = "/venv/bin/python"
    assert role_of([python, "-m", "sop_ros.cli", "learner", "--config", "/r/configs/learner.yaml"]) == "learner"
    assert role_of([python, "-m", "sop_ros.cli", "robot", "--config", "/r/configs/robot_3_block007.yaml"]) == "robot_3"
    node = [python, "-m", "sop_ros.robot.node_process", "sop_ros.robot.policy_node", "--ros-args", "-r",
            "__node:=policy", "-r", "__ns:=/robot_3", "--params-file", "/tmp/x/robot_3_policy.yaml"]  # fmt: skip
    assert role_of(node) == "robot_3/policy"
    assert role_of([python, "-m", "sop_ros.cli", "ingest"]) is None and role_of(["bash", "-c", "true"]) is None


def test_a_child_is_found_under_this_process_and_sampled():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while child.pid not in descendants(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert descendants(os.getpid())[child.pid][1:] == ["-c", "import time; time.sleep(30)"]
        sample = process_sample(child.pid)
        assert sample["rss_mb"] > 1 and 0 < sample["anon_mb"] < sample["rss_mb"] and not sample["stopped"]
        assert sample["threads"] >= 1 and sample["fds"] >= 3
        child.send_signal(signal.SIGSTOP)  # what the cloud away does to the learner
        deadline = time.monotonic() + 10
        while not process_sample(child.pid)["stopped"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_sample(child.pid)["stopped"]
    finally:
        child.kill()
        child.wait()
    assert process_sample(child.pid) is None


def test_growth_is_the_slope_of_window_medians_after_the_warm_up_and_threads_or_files_that_rose():
    # 100 MB growing 2 MB an hour (2% of its median an hour), sampled every 10 min for 2 h after a 20-min warm-up
    # in which it grew fast; threads flat; open files up by 3. Windows of 10 min: a sample each.
    series = [{"t_s": 600 * k, "rss_mb": 50 + 25 * k if k < 2 else 100 + 2 * (600 * k - 1200) / 3600,
               "threads": 12, "fds": 30 + (3 if k > 10 else 0)} for k in range(15)]  # fmt: skip
    g = growth([series], warmup_s=1200, window_s=600, max_per_hour=0.05, slack=2)
    assert abs(g["rss_growth_per_hour"] - 2 / 102) < 1e-4 and g["rss_growth_mb_per_hour"] == 2.0
    assert g["rss_growth_mb_per_hour_95"] == 0.0 and g["threads_rise"] == 0 and g["fds_rise"] == 3
    assert g["hours"] == 2.0  # the 12 whole windows from minute 20 to 140 (the last sample starts a 13th)
    assert not g["ok"]  # the open files rose past the slack
    assert growth([series], 1200, 600, max_per_hour=0.05, slack=3)["ok"]
    assert not growth([series], 1200, 600, max_per_hour=0.01, slack=3)["ok"]  # 2% an hour is over 1%
    assert growth([series[:5]], 1200, 600, max_per_hour=0.05, slack=3) is None  # 20 min after it: too short


def test_a_spike_in_flight_at_a_sample_does_not_move_a_window_median():
    # A flat 800 MB process sampled every 20 s; an export in flight adds 150 MB to a quarter of the samples
    # early and two fifths late. The window medians stay at 800: no growth. A real rise of 60 MB/h is seen.
    flat = [{"t_s": 20 * k, "rss_mb": 800 + (150 if (k % 4 == 0 if k < 200 else k % 5 < 2) else 0),
             "threads": 23, "fds": 30} for k in range(400)]  # fmt: skip
    g = growth([flat], warmup_s=0, window_s=300, max_per_hour=0.05, slack=2)
    assert g["rss_growth_mb_per_hour"] <= 0.0 and g["ok"]
    rising = [dict(s, rss_mb=800 + 60 * s["t_s"] / 3600) for s in flat]
    g = growth([rising], warmup_s=0, window_s=300, max_per_hour=0.05, slack=2)
    assert abs(g["rss_growth_mb_per_hour"] - 60) < 1 and g["rss_growth_per_hour"] > 0.05 and not g["ok"]


def test_threads_that_come_and_go_are_not_a_rise_but_a_raised_floor_is():
    # A policy node's threads move between 21 and 25 (a fetch or a load comes and goes), the last sample high.
    counts = [23, 21, 24, 22, 21, 25, 21, 23, 24, 21, 22, 25]
    series = [{"t_s": 300 * k, "rss_mb": 200.0, "threads": n, "fds": 20} for k, n in enumerate(counts)]
    assert floor_rise(series, "threads") == 0 and series[-1]["threads"] - series[0]["threads"] == 2
    # One thread leaked each quarter of the run: the floor rises by 3.
    leaking = [dict(s, threads=s["threads"] + k // 3) for k, s in enumerate(series)]
    assert floor_rise(leaking, "threads") == 3
    g = growth([leaking], warmup_s=0, window_s=300, max_per_hour=0.05, slack=2)
    assert g["threads_rise"] == 3 and not g["ok"]
    assert growth([series], warmup_s=0, window_s=300, max_per_hour=0.05, slack=2)["ok"]


def test_growth_judges_each_process_after_its_own_warm_up_and_pools_a_kinds_processes():
    # A learner killed twice: each life warms up within its own first 20 min (the later ones, into a warm fleet,
    # in 15), then holds its level (the third a higher one, with more data); 40 min of whole windows after the
    # warm-up each. Within each life nothing grows.
    def life(start: float, warm: int, level: float) -> list[dict]:
        return [{"t_s": start + 300 * k, "rss_mb": 300 if k < warm else level, "threads": 20, "fds": 30}
                for k in range(13)]  # fmt: skip

    lives = [life(0, 4, 780), life(3600, 3, 790), life(7200, 3, 900)]
    g = growth(lives, warmup_s=1200, window_s=300, max_per_hour=0.05, slack=2)
    assert g["processes"] == 3 and g["hours"] == 2.0 and g["rss_growth_per_hour"] == 0.0 and g["ok"]
    # Allowed 5 minutes of their own, the lives' warm-ups would read as growth.
    assert not growth(lives, 300, 300, max_per_hour=0.05, slack=2)["ok"]
    # One life that grows 80 MB an hour fails, whatever the others do.
    lives[1] = [dict(s, rss_mb=s["rss_mb"] + 80 * s["t_s"] / 3600) for s in lives[1]]
    assert not growth(lives, 1200, 300, max_per_hour=0.02, slack=2)["ok"]
    samples = {"learner 10": lives[0], "learner 11": lives[1], "robot_0/policy 12": lives[2]}
    assert {role: len(p) for role, p in by_role(samples).items()} == {"learner": 2, "robot_0/policy": 1}



def test_a_nodes_memory_lines_join_its_own_lifes_samples_and_are_judged_beside_its_resident_memory():
    # robot_0's policy node, sampled every 20 s: a first life of an hour whose resident memory grows 40 MB an hour
    # while malloc's bytes in use stay at 80 MB (the allocator keeps what was freed), killed; a second from
    # minute 61:40, alike. Each logs a memory line a minute, the second life's first 30 s in.
    wall_start = 1_796_000_000.0
    config = SoakConfig(hours=2, sample_s=20)

    def line(t: float, node: str, in_use: float) -> str:
        return f"[INFO] [{wall_start + t:.6f}] [robot_0.{node}]: memory: malloc in use {in_use} MB, free 100.0 MB\n"

    logs = "".join([*(line(10 + 60 * k, "policy", 80.0) for k in range(60)), line(30, "recorder", 20.0),
                    "[INFO] [1796000100.0] [robot_0.policy]: loaded a policy\n",
                    *(line(3730 + 60 * k, "policy", 80.0) for k in range(60))])  # fmt: skip
    reports = malloc_reports(logs, wall_start)
    assert sorted(reports) == ["robot_0/policy", "robot_0/recorder"] and len(reports["robot_0/policy"]) == 120
    assert reports["robot_0/recorder"] == [(30.0, 20.0, 100.0)]

    def life(start: float, rss) -> list[dict]:
        return [{"t_s": start + 20 * k, "rss_mb": rss(20 * k), "threads": 20, "fds": 30} for k in range(181)]

    samples = {"robot_0/policy 11": life(0, lambda t: 200 + 40 * t / 3600),
               "robot_0/policy 12": life(3700, lambda t: 200 + 40 * t / 3600)}
    joined = with_malloc(samples, reports, config.sample_s)
    first, second = joined["robot_0/policy 11"], joined["robot_0/policy 12"]
    assert "malloc_in_use_mb" not in first[0] and {s["malloc_in_use_mb"] for s in first[1:]} == {80.0}
    # The second life's first samples come before its first line: the first life's last one is not theirs.
    assert [s.get("malloc_in_use_mb") for s in second[:3]] == [None, None, 80.0]
    g = judge_growth(joined, config)["robot_0/policy"]
    assert g["processes"] == 2 and g["rss_growth_mb_per_hour"] > 15 and not g["ok"]  # 40 MB/h, over 5% of ~210
    assert g["malloc_in_use_mb_median"] == 80.0 and g["malloc_in_use_mb_per_hour"] == 0.0
    assert "malloc_in_use_mb_median" not in judge_growth(samples, config)["robot_0/policy"]  # no lines, no figure


def test_a_robot_is_stuck_in_a_window_with_no_episode_unless_the_cloud_was_away():
    start, end = 1000.0, 1000.0 + 3600  # six 10-minute windows
    stored = {"robot_0": [1000 + 60 * m for m in range(0, 60, 3)],  # an episode every 3 minutes
              "robot_1": [1100.0, 1700.0, 4000.0]}  # none from minute 20 to 50  # fmt: skip
    assert stuck_windows(stored, start, end, [], 600) == {"robot_0": [], "robot_1": [1200.0, 1800.0, 2400.0]}
    # The cloud away from minute 41 to 45, and a window to drain: the windows at 40 and 50 are not judged.
    away = [(start + 41 * 60, start + 45 * 60 + 600)]
    assert stuck_windows(stored, start, end, away, 600) == {"robot_0": [], "robot_1": [1200.0, 1800.0]}


def test_what_the_recorders_finished_is_read_from_the_robots_logs(tmp_path):
    (tmp_path / "robot_0_block000.log").write_text(
        "[recorder]: recorded robot_0-20261206-0001.mcap: 900 messages, 1 bytes, success\n"
        "[recorder]: partial episode file robot_0-20261206-0002.mcap.part: recovered (40 messages)\n"
        "[recorder]: partial episode file robot_0-20261206-0003.mcap.part: quarantined (0 messages) unreadable\n"
    )  # fmt: skip
    (tmp_path / "robot_0_block001.log").write_text("[recorder]: recorded robot_0-20261206-0004.mcap: 2 messages\n")
    (tmp_path / "learner.log").write_text("recorded nothing.mcap: \n")
    produced, quarantined = produced_episodes(tmp_path)
    assert produced == {"robot_0": {f"robot_0-20261206-000{i}": "" for i in (1, 2, 4)}}
    assert quarantined == ["robot_0-20261206-0003"]


def test_a_sensor_gap_is_seen_when_the_robot_held_within_it_at_the_first_stale_tick_and_resumed_after_it():
    stale = "stale sensors, the policy holds: camera corner: frame {} s older than the joint state"
    logs = {"robot_0": f"[WARN] [1000.200000000] [robot_0.ingest]: {stale.format('0.53')}\n"
                       "[INFO] [1003.500000000] [robot_0.ingest]: sensors fresh again\n",
            "robot_1": f"[WARN] [990.000000000] [robot_1.ingest]: {stale.format('0.53')}\n"
                       "[INFO] [991.000000000] [robot_1.ingest]: sensors fresh again\n",
            "robot_2": f"[WARN] [1001.000000000] [robot_2.ingest]: {stale.format('0.90')}\n"
                       "[INFO] [1004.000000000] [robot_2.ingest]: sensors fresh again\n"}  # fmt: skip
    limit = 0.5 + 1 / 30
    gaps = [(robot, 1000.0, 1003.0) for robot in ("robot_0", "robot_1", "robot_2")]
    seen = sensor_gaps_seen(logs, gaps, dict.fromkeys(logs, limit))
    assert seen[0] == {"robot": "robot_0", "off": 1000.0, "on": 1003.0, "held_after_s": 0.2,
                       "frame_age_when_held_s": 0.53, "hold_age_limit_s": limit, "fresh_after_s": 0.5,
                       "ok": True}  # fmt: skip
    assert not seen[1]["ok"] and seen[1]["held_after_s"] is None  # robot_1's hold came before its gap
    # robot_2 held, but only when its frames were 0.9 s old: ticks past its max age went by without a hold.
    assert not seen[2]["ok"] and seen[2]["frame_age_when_held_s"] == 0.9 and seen[2]["fresh_after_s"] == 1.0


def test_a_robots_hold_age_limit_comes_from_its_block_config_and_its_first_hold_from_its_logs(tmp_path):
    configs, logs = tmp_path / "configs", tmp_path / "logs"
    configs.mkdir()
    logs.mkdir()
    robot = yaml.safe_load((REPO / "config" / "fleet_sim.yaml").read_text())
    robot["nodes"]["ingest"] = {"cameras": ["corner", "topview"], "max_sensor_age_s": 0.4}
    (configs / "robot_0_block003.yaml").write_text(yaml.safe_dump(robot))
    # Its max age and a camera period (10 Hz cameras on a 30 Hz control loop): the most the clock moves between
    # two joint states, at an episode's reset.
    assert hold_age_limit(configs, "robot_0") == pytest.approx(0.4 + 3 / 30)
    assert hold_age_limit(configs, "robot_1") == 0.0  # no block of it ran
    (logs / "robot_0_block003.log").write_text(
        "[WARN] [990.000000000] [robot_0.ingest]: stale sensors, the policy holds: camera corner: no frame yet\n"
        "[WARN] [999.000000000] [robot_0.ingest]: stale sensors, the policy holds: joint_states: stamped 0.73 s "
        "behind the clock\n"  # a hold, but not for the cameras
        "[WARN] [1000.500000000] [robot_0.ingest]: stale sensors, the policy holds: camera corner: frame 0.43 s\n")
    assert first_hold(logs, "robot_0", 995.0) == 1000.5 and first_hold(logs, "robot_0", 1001.0) is None


def test_growth_is_counted_on_the_time_a_process_ran_not_while_it_was_stopped():
    # 800 MB growing 60 MB an hour while it runs, sampled every 5 min; stopped (the cloud away) from minute 60 to
    # 90, when it cannot grow. On the wall clock the stop flattens the slope; on the running clock it is 60 MB/h.
    def rss(run_s: float) -> float:
        return 800 + 60 * run_s / 3600

    series = []
    for k in range(25):
        t = 300 * k
        stopped = 3600 <= t < 5400
        ran = min(t, 3600) + max(0, t - 5400)
        series.append({"t_s": t, "rss_mb": rss(ran), "threads": 20, "fds": 30, "stopped": stopped})
    ran = running(series)
    assert len(ran) == 25 - 6 and [s["t_s"] for s in ran][-1] == 7200 - 1800  # 6 stopped samples, 30 min off
    assert all(s["rss_mb"] == rss(s["t_s"]) for s in ran)
    g = growth([series], warmup_s=0, window_s=300, max_per_hour=0.05, slack=2)
    assert g["hours"] == 1.5 and abs(g["rss_growth_per_hour"] - 60 / g["rss_mb_median"]) < 1e-4
    on_the_wall = growth([[dict(s, stopped=False) for s in series]], 0, 300, max_per_hour=0.05, slack=2)
    assert on_the_wall["rss_growth_per_hour"] < 0.8 * g["rss_growth_per_hour"]


def test_the_picture_draws_the_faults_each_life_of_the_learner_and_every_robot_process(tmp_path):
    samples = {"learner 10": [{"t_s": 60 * k, "rss_mb": 700 + k, "threads": 23, "fds": 30} for k in range(30)],
               "learner 11": [{"t_s": 1900 + 60 * k, "rss_mb": 690 + k, "threads": 23, "fds": 30} for k in range(30)],
               "robot_0/policy 12": [{"t_s": 60 * k, "rss_mb": 200, "threads": 22, "fds": 20} for k in range(60)],
               "robot_0 13": [{"t_s": 60 * k, "rss_mb": 58, "threads": 4, "fds": 10} for k in range(60)]}  # fmt: skip
    faults = [{"at_s": 1850, "kind": "learner", "ends_s": None}, {"at_s": 2500, "kind": "cloud_away", "ends_s": 3100}]
    plot(samples, faults, tmp_path / "soak.png", 20)
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_learners_memory_is_read_from_its_status_and_nothing_is_made_up_before_it(tmp_path):
    soak = Soak(SoakConfig(hours=1.0), tmp_path / "outbox", [], random.Random(0), outbox_mounted=False)
    assert soak.learner_memory() == {}  # the learner has not written a status yet
    (tmp_path / "learner").mkdir()
    status = {"step": 7, "memory_mb": {"frame_cache": 128.0, "malloc_in_use": 310.5, "malloc_free": 40.0}}
    (tmp_path / "learner" / "status.json").write_text(json.dumps(status))
    assert soak.learner_memory() == {"frame_cache_mb": 128.0, "malloc_in_use_mb": 310.5, "malloc_free_mb": 40.0}
    (tmp_path / "learner" / "status.json").write_text('{"step": 7')  # cut short: no figures, no failure
    assert soak.learner_memory() == {}


@pytest.mark.unit
def test_each_file_left_in_an_outbox_says_why_by_where_it_lies():
    assert why_left(Path("robot_0/robot_0-x-00067.mcap")).startswith("a finished episode queued for upload")
    assert why_left(Path("robot_1/.partial/robot_1-x-00119.mcap")).startswith("a recording not finished")
    assert why_left(Path("robot_3/quarantine/robot_3-x-00104.mcap")).startswith("a partial recording with nothing")
    assert why_left(Path("robot_2/rejected/robot_2-x-00005.mcap")) == "refused by the cloud: its reason beside it"
