"""Sim-time pacing over real Zenoh sessions on loopback: the learner's budget per simulated minute holds both
ways, a restarted robot goes on from its clock, and a step's data are the episodes that ended by its cutoff."""

import threading

import pytest
from conftest import wait_for

from sop_ros.bench.bridge import zenoh_config
from sop_ros.bridge.pace import POLICIES_ANNOUNCED, Budget, FleetPace, RobotPace, scheduled_policy
from sop_ros.bridge.zenoh_session import open_session
from sop_ros.configs import ConfigError
from sop_ros.configs.learner import LearnerConfig, PaceConfig
from sop_ros.host import free_endpoint

TIER = "unit"  # what the tests need: conftest.TIERS

SECOND = 1_000_000_000


def test_the_budget_rules_on_hand_computed_clocks():
    budget = Budget.of(PaceConfig(steps_per_sim_minute=6, lead_steps=2))  # one learner step per 10 s
    assert budget.interval_ns == 10 * SECOND
    # After 3 learner steps, robots may run to 50 s, not a control period beyond.
    assert budget.robot_may_reach(50 * SECOND, 3) and not budget.robot_may_reach(50 * SECOND + 1, 3)
    # Step 4 (0-based) ends at 50 s: a robot at 49.9 s with 0.1 s periods is not there, one at 49.95 s with
    # 0.1 s periods is (its next period crosses 50 s), and every one of the fleet's robots must be.
    period = SECOND // 10
    assert not budget.learner_may_take(4, [(49_900_000_000, period)], robots=1)
    assert budget.learner_may_take(4, [(49_950_000_000, period)], robots=1)
    assert not budget.learner_may_take(4, [(49_950_000_000, period)], robots=2)
    assert not budget.learner_may_take(4, [(49_950_000_000, period), (10 * SECOND, period)], robots=2)
    # Step 4 trains on what ended by 50 s less the ingest delay.
    assert budget.data_cutoff_ns(4, 5 * SECOND) == 45 * SECOND
    # A robot past 50 s implies at least 4 steps done (it may reach 50 s after 3), one at 50 s only 3.
    assert budget.steps_done_by(50 * SECOND + 1) == 4 and budget.steps_done_by(50 * SECOND) == 3
    assert budget.steps_done_by(SECOND) == 0


def test_an_episode_runs_the_newest_policy_made_by_the_steps_its_start_implies():
    policies = [(0, "base"), (4, "v4"), (8, "v8")]
    assert [scheduled_policy(policies, steps) for steps in (0, 3, 4, 7, 8, 20)] == [
        "base", "base", "v4", "v4", "v8", "v8"]  # fmt: skip
    assert scheduled_policy([], 5) == "" and scheduled_policy([(4, "v4")], 3) == ""


def test_pacing_is_checked_at_start():
    with pytest.raises(ConfigError, match="lead_steps"):
        PaceConfig(steps_per_sim_minute=6, lead_steps=0)
    with pytest.raises(ConfigError, match="pace.steps_per_sim_minute.*serve_robots"):
        LearnerConfig(serve_robots=False, pace=PaceConfig(steps_per_sim_minute=6))


def robot_loop(pace: RobotPace, start_ns: int, period_ns: int, steps: int, stop: threading.Event, seen: list):
    """A robot's clock: each period waits for the budget, then reports; records (its time, learner steps)."""
    time_ns = start_ns
    for _ in range(steps):
        pace.wait_to_reach(time_ns + period_ns, stop)
        if stop.is_set():
            return
        time_ns += period_ns
        with pace._changed:
            seen.append((time_ns, pace._steps))
        pace.report(time_ns)


@pytest.mark.zenoh
def test_learner_and_robots_hold_each_other_to_the_budget_and_a_restarted_robot_goes_on(tmp_path):
    endpoint = free_endpoint()
    config = PaceConfig(steps_per_sim_minute=60, robots=2, lead_steps=2)  # a step per simulated second
    session = open_session(zenoh_config(listen=endpoint))
    learner = FleetPace(session, config, log=lambda _: None)
    stop = threading.Event()
    period = SECOND // 4
    robots = [RobotPace(endpoint, f"robot_{i}", period) for i in range(2)]
    seen: dict[int, list] = {0: [], 1: []}
    try:
        starts = [r.start(stop, timeout_s=30) for r in robots]
        assert starts == [0, 0]
        # robot_1 runs 12 periods (3 s), robot_0 runs 40 (10 s): the slower one holds the learner back.
        threads = [threading.Thread(target=robot_loop, args=(r, 0, period, n, stop, seen[i]))
                   for i, (r, n) in enumerate(zip(robots, (40, 12), strict=True))]  # fmt: skip
        for t in threads:
            t.start()
        steps_taken = 0
        for step in range(3):  # robot_1 stops at 3 s: enough for steps 0, 1, 2
            learner.announce(step, "base" if step < 2 else "v2")
            assert learner.wait_for_step(step, stop)
            steps_taken += 1
        learner.announce(steps_taken, "v2")
        threads[1].join(timeout=30)
        # The learner cannot take step 3 (it ends at 4 s; robot_1 stopped at 3 s).
        waiting = threading.Event()
        blocked = threading.Thread(target=lambda: learner.wait_for_step(3, waiting))
        blocked.start()
        blocked.join(timeout=1.0)
        assert blocked.is_alive()
        waiting.set()
        blocked.join()
        # robot_0 runs at most lead_steps ahead of the learner's steps: to (3 + 2) s, and there it waits.
        wait_for(lambda: seen[0] and seen[0][-1][0] == 5 * SECOND, 30, what="robot_0 at 5 s")
        # The learner's policies travel with its steps: v2 (made at step 2) is an episode's from past 3 s on.
        assert robots[0].scheduled_policy(3 * SECOND) == "base" and robots[0].scheduled_policy(3 * SECOND + 1) == "v2"
        threads[0].join(timeout=1.0)
        assert threads[0].is_alive() and max(t for t, _ in seen[0]) == 5 * SECOND
        assert all(t <= (steps + 2) * SECOND for t, steps in seen[0])
        # robot_1 restarts (a new block of episodes): it goes on from its clock and the learner with it.
        robots[1].close()
        robots[1] = RobotPace(endpoint, "robot_1", period)
        assert robots[1].start(stop, timeout_s=30) == 3 * SECOND
        again = threading.Thread(target=robot_loop, args=(robots[1], 3 * SECOND, period, 8, stop, seen[1]))
        again.start()
        learner.announce(3, "v2")
        assert learner.wait_for_step(3, stop)
        again.join(timeout=30)
        # Both end at (3 + 2) s: robot_1 after its 8 periods, robot_0 held there.
        wait_for(lambda: learner.fleet_time_ns == 5 * SECOND, 30, what="the fleet at 5 s")
    finally:
        stop.set()
        for r in robots:
            r.close()
        learner.close()
        session.close()


@pytest.mark.zenoh
def test_a_step_trains_on_the_episodes_that_ended_by_its_cutoff_once_they_are_stored():
    endpoint = free_endpoint()
    config = PaceConfig(steps_per_sim_minute=60, robots=1, ingest_delay_s=2.0, episode_wait_s=30)
    session = open_session(zenoh_config(listen=endpoint))
    learner = FleetPace(session, config, log=lambda _: None)
    robot = RobotPace(endpoint, "robot_0", SECOND // 10)
    stop = threading.Event()
    stored: dict[str, int] = {}
    try:
        robot.start(stop, timeout_s=30)
        robot.ended("e1", 3 * SECOND)
        robot.ended("e2", 7 * SECOND)
        robot.ended("e3", 9 * SECOND)
        robot.report(9 * SECOND)
        learner.announce(0, "base")
        assert learner.wait_for_step(7, stop)  # step 7 ends at 8 s; its cutoff is 6 s
        # e1 ended by the cutoff but is not stored yet: the step waits for it, and leaves out e2 (7 s).
        # e0 was cut short by its robot's stop (no END, so no end time): no step trains on it.
        threading.Timer(0.5, lambda: stored.update(e0=0, e1=3 * SECOND, e2=7 * SECOND)).start()
        assert learner.training_episodes(7, lambda: dict(stored), stop) == {"e1"}
        assert learner.training_episodes(9, lambda: dict(stored), stop) == {"e1", "e2"}
    finally:
        robot.close()
        learner.close()
        session.close()


def test_the_learner_keeps_its_newest_policies_not_every_one_it_made():
    # A learner publishing every few seconds for days: robots need only the newest few that their steps imply.
    session = open_session(zenoh_config(listen=free_endpoint()))
    learner = FleetPace(session, PaceConfig(steps_per_sim_minute=60, robots=1), log=lambda _: None)
    try:
        for step in range(100):
            learner.announce(step, f"v{step // 2}")  # a new policy every second step
        assert list(learner.policies) == [(2 * i, f"v{i}") for i in range(50 - POLICIES_ANNOUNCED, 50)]
    finally:
        learner.close()
