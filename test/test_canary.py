"""Canary rollout's gate on hand-computed counts, and the registry's signed canary, promotion and rollback."""

import dataclasses
import json
import random

import pytest
from test_bridge_policies import exported, keys  # noqa: F401  (fixtures)

from sop_ros.bridge.artifacts import PolicyAnnouncement, sign, verify
from sop_ros.bridge.protocol import ProtocolError
from sop_ros.cloud.canary import Ended, Tally, choose_canaries, judge, tally
from sop_ros.cloud.policy_registry import PolicyRegistry
from sop_ros.configs import ConfigError
from sop_ros.configs.learner import CanaryConfig, LearnerConfig

TIER = "unit"  # what the tests need: conftest.TIERS
LEARNER = LearnerConfig(tasks=["reach-v3"])


def test_a_candidate_clearly_below_the_incumbent_is_rolled_back():
    # push-wall: 2/10 vs 30/50, pooled 32/60; reach: 3/10 vs 40/50, pooled 43/60; weights 10/20 each.
    # difference = 0.5 * (0.2 - 0.6) + 0.5 * (0.3 - 0.8) = -0.45
    # variance = 0.25 * (32/60 * 28/60 + 43/60 * 17/60) * (1/10 + 1/50) = 0.0135583; z = -0.45 / 0.116440 = -3.8646
    candidate = Tally({"push-wall-v3": [2, 10], "reach-v3": [3, 10]})
    incumbent = Tally({"push-wall-v3": [30, 50], "reach-v3": [40, 50], "dial-turn-v3": [5, 50]})
    verdict = judge(candidate, incumbent, CanaryConfig(min_episodes=20))
    assert verdict.decision == "roll back" and verdict.tasks == ("push-wall-v3", "reach-v3")
    assert verdict.difference == pytest.approx(-0.45) and verdict.z == pytest.approx(-3.8646, abs=1e-4)
    assert verdict.p == pytest.approx(5.563e-5, rel=1e-3)
    assert (verdict.candidate, verdict.incumbent) == ((5, 20), (70, 100))  # dial-turn: the canary never ran it
    assert verdict.evidence()["canary_episodes"] == 20 and "below the incumbent beyond noise" in verdict.reason


def test_a_candidate_within_noise_of_the_incumbent_or_above_it_is_promoted():
    # 5/10 vs 30/50: difference -0.1, pooled 35/60, variance 35/60 * 25/60 * 0.12 = 0.0291667, z = -0.5855,
    # one-sided p = 0.279 >= 0.05: not below beyond noise.
    verdict = judge(Tally({"push-wall-v3": [5, 10]}), Tally({"push-wall-v3": [30, 50]}), CanaryConfig(min_episodes=10))
    assert verdict.decision == "promote" and verdict.z == pytest.approx(-0.5855, abs=1e-4)
    assert verdict.p == pytest.approx(0.2791, abs=1e-4)
    assert judge(Tally({"reach-v3": [9, 10]}), Tally({"reach-v3": [30, 50]}), CanaryConfig(min_episodes=10)).z > 0
    # The same counts at a looser level: rolled back.
    assert judge(Tally({"push-wall-v3": [5, 10]}), Tally({"push-wall-v3": [30, 50]}),
                 CanaryConfig(min_episodes=10, alpha=0.3)).decision == "roll back"  # fmt: skip
    # Every episode alike: no variance, no evidence against the candidate.
    assert judge(Tally({"reach-v3": [10, 10]}), Tally({"reach-v3": [5, 5]}), CanaryConfig(min_episodes=10)).decision \
        == "promote"


def test_the_gate_waits_for_enough_canary_episodes_and_for_the_incumbent_on_their_tasks():
    config = CanaryConfig(min_episodes=20)
    assert judge(Tally({"reach-v3": [0, 19]}), Tally({"reach-v3": [50, 50]}), config).decision == "wait"
    verdict = judge(Tally({"reach-v3": [0, 20]}), Tally({"dial-turn-v3": [50, 50]}), config)
    assert verdict.decision == "wait" and "no episodes of the canary's tasks" in verdict.reason


def test_tally_counts_a_version_on_its_robots_and_the_latest_window_per_task():
    outcomes = [Ended("reach-v3", "v1", s, "robot_1") for s in (True, True, False, False, False)]
    outcomes += [Ended("reach-v3", "v2", True, "robot_0"), Ended("reach-v3", "v2", False, "robot_1"),
                 Ended("push-v3", "v1", True, "robot_0")]  # fmt: skip
    assert tally(outcomes, "v1").counts == {"reach-v3": [2, 5], "push-v3": [1, 1]}
    assert tally(outcomes, "v1", window=3).counts == {"reach-v3": [0, 3], "push-v3": [1, 1]}  # the latest three
    assert tally(outcomes, "v2", robots=["robot_0"]).counts == {"reach-v3": [1, 1]}


def test_canaries_are_the_configured_robots_or_a_share_never_the_whole_fleet():
    robots = ["robot_0", "robot_1", "robot_2", "robot_3"]
    rng = random.Random(0)
    assert len(choose_canaries(robots, CanaryConfig(share=0.25), rng)) == 1
    assert len(choose_canaries(robots, CanaryConfig(share=0.3), rng)) == 2  # rounded up
    assert len(choose_canaries(robots[:2], CanaryConfig(share=0.9), rng)) == 1  # one keeps the incumbent
    assert choose_canaries(robots[:1], CanaryConfig(), rng) == []
    assert choose_canaries(robots, CanaryConfig(robots=("robot_3", "robot_9")), rng) == ["robot_3"]
    with pytest.raises(ConfigError, match="share=1.0: must be in"):
        CanaryConfig(share=1.0)
    with pytest.raises(ConfigError, match="after_rollback='base': must be incumbent or ema"):
        CanaryConfig(after_rollback="base")


def test_a_canary_announcement_names_its_robots_and_old_announcements_still_verify(keys):  # noqa: F811
    private, public = keys
    plain = sign(PolicyAnnouncement("v1", "ab" * 32, 1000, 1.7e9), private)
    # Signed as before rollouts had stages: the new fields, when empty, are not in the signed bytes.
    assert b"robots" not in plain.signed_bytes() and b"stage" not in plain.signed_bytes()
    canary = sign(PolicyAnnouncement("v2", "ab" * 32, 1000, 1.8e9, robots=["robot_0"], stage="canary"), private)
    verify(canary, public)
    assert PolicyAnnouncement.decode(canary.encode()) == canary
    with pytest.raises(ProtocolError, match="a canary names its robots, and only a canary does"):
        PolicyAnnouncement("v2", "ab" * 32, 1000, 1.8e9, stage="canary").check()
    with pytest.raises(ProtocolError, match="robots must be a list of robot ids"):
        PolicyAnnouncement("v2", "ab" * 32, 1000, 1.8e9, robots=["../x"], stage="canary").check()
    with pytest.raises(ProtocolError, match="stage 'beta' must be one of"):
        PolicyAnnouncement("v2", "ab" * 32, 1000, 1.8e9, stage="beta").check()


def test_the_registry_puts_a_candidate_on_canary_then_promotes_or_rolls_it_back(tmp_path, keys, exported):  # noqa: F811
    private, public = keys
    registry = PolicyRegistry(tmp_path / "registry")
    v1 = registry.publish(exported["v1"], private)
    v2 = registry.publish(exported["v2"], private, canary=["robot_0"])
    assert registry.latest() == v1 and registry.canary() == v2 and v2.parent == "v1" and v2.stage == "canary"
    back = registry.roll_back(private, {"p": 0.001}, "below the incumbent beyond noise")
    verify(back, public)
    assert (back.version, back.stage, back.robots, back.metrics["p"]) == ("v1", "rolled back", [], 0.001)
    assert back.created > v2.created and registry.latest() == back and registry.canary() is None
    v3 = registry.publish(exported["v3"], private, canary=["robot_1"])
    assert v3.created > back.created and v3.parent == "v1"
    promoted = registry.promote(private, {"p": 0.4}, "not below")
    verify(promoted, public)
    assert (promoted.version, promoted.stage, promoted.sha256) == ("v3", "promoted", v3.sha256)
    assert registry.latest() == promoted and registry.announcement("v3") == promoted
    assert [(r["candidate"], r["incumbent"], r["decision"], r["canaries"]) for r in registry.rollouts()] == [
        ("v2", "v1", "rolled back", ["robot_0"]), ("v3", "v1", "promoted", ["robot_1"])]  # fmt: skip
    first = (tmp_path / "registry" / "rollouts.jsonl").read_text().splitlines()[0]
    assert json.loads(first)["evidence"] == {"p": 0.001}
    with pytest.raises(ValueError, match="no candidate on canary"):
        registry.promote(private, {}, "")


def test_a_version_for_every_robot_supersedes_a_candidate_on_canary(tmp_path, keys, exported):  # noqa: F811
    private, _ = keys
    registry = PolicyRegistry(tmp_path / "registry")
    registry.publish(exported["v1"], private)
    registry.publish(exported["v2"], private, canary=["robot_0"])
    v3 = registry.publish(exported["v3"], private)
    assert registry.canary() is None and registry.latest() == v3 and v3.parent == "v1"


def test_fleet_status_says_which_version_each_robot_should_run_and_the_last_verdicts():
    from sop_ros.cloud.services import format_fleet_table

    def robot(name: str, running: str) -> dict:
        return {"robot": name, "running_version": running, "pending_version": "", "held_version": running,
                "policy_state": "running", "outbox_episodes": 0, "outbox_bytes": 0, "uploaded": 3,
                "seconds_since_upload": 1.0, "report_age_s": 0.5, "last_error": ""}  # fmt: skip

    table = {"latest_version": "v1", "canary": {"version": "v2", "robots": ["robot_0"]},
             "rollouts": [{"candidate": "v0b", "decision": "rolled back", "reason": "below the incumbent"}],
             "robots": [robot("robot_0", "v2"), robot("robot_1", "v1"), robot("robot_2", "v0")]}  # fmt: skip
    text = format_fleet_table(table)
    assert text.splitlines()[:2] == ["latest policy: v1; 3 robots reporting; v2 on canary with robot_0",
                                     "  v0b: rolled back (below the incumbent)"]  # fmt: skip
    rows = {line.split()[0]: line for line in text.splitlines()[3:]}
    assert "(behind)" not in rows["robot_0"] and "(behind)" not in rows["robot_1"] and "v0 (behind)" in rows["robot_2"]


def test_the_gate_puts_each_version_on_canary_holds_the_next_and_decides_on_the_episodes(tmp_path, keys, exported):  # noqa: F811
    from sop_ros.cloud.canary import CanaryGate

    private, _ = keys
    registry = PolicyRegistry(tmp_path / "registry")
    made = []

    def publish(path, metrics, canary):
        made.append((path, canary))
        return registry.publish(path, private, metrics, canary=canary)

    robots = ["robot_0", "robot_1", "robot_2", "robot_3"]
    gate = CanaryGate(CanaryConfig(min_episodes=4, share=0.25, seed=1), registry, private, publish, lambda: robots)
    first = gate.publish(str(exported["v1"]), {})
    assert first.stage == "" and made[-1][1] is None  # no incumbent yet: the fleet's first policy goes to all
    second = gate.publish(str(exported["v2"]), {})
    assert second.stage == "canary" and len(second.robots) == 1 and gate.pending == second
    assert gate.publish(str(exported["v3"]), {}) is None and len(made) == 2  # held while v2 is on canary
    canary, others = second.robots[0], [r for r in robots if r != second.robots[0]]
    incumbent_runs = [Ended("reach-v3", "v1", True, r) for r in others for _ in range(10)]
    assert gate.check(incumbent_runs + [Ended("reach-v3", "v2", False, canary)] * 3).decision == "wait"
    # v2's episodes on another robot (one that ran it before the canary began, say) are not the canary's
    assert gate.check(incumbent_runs + [Ended("reach-v3", "v2", False, others[0])] * 9).decision == "wait"
    verdict = gate.check(incumbent_runs + [Ended("reach-v3", "v2", False, canary)] * 4)
    assert verdict.decision == "roll back" and (verdict.candidate, verdict.incumbent) == ((0, 4), (30, 30))
    assert gate.pending is None and registry.latest().version == "v1" and registry.latest().stage == "rolled back"
    third = gate.publish(str(exported["v3"]), {})
    assert third.stage == "canary"
    verdict = gate.check(incumbent_runs + [Ended("reach-v3", "v3", True, third.robots[0])] * 4)
    assert verdict.decision == "promote" and registry.latest().version == "v3" and gate.pending is None
    assert [(c, v.decision) for c, v in gate.verdicts] == [("v2", "roll back"), ("v3", "promote")]
    assert gate.decided == {"roll back": 1, "promote": 1}
    assert [r["decision"] for r in registry.rollouts()] == ["rolled back", "promoted"]


def test_a_gate_keeps_its_latest_verdicts_and_counts_them_all(monkeypatch):
    """A fleet left for days decides thousands of canaries: the gate keeps the latest for the status and counts
    the rest; every one is in the registry's rollout history."""
    import sop_ros.cloud.canary as canary
    from sop_ros.cloud.canary import CanaryGate, Verdict

    class Registry:  # a candidate always on canary, an incumbent always there; promotions and rollbacks noted
        def canary(self):
            return type("Candidate", (), {"version": f"v{len(made)}", "robots": ["robot_0"]})()

        def latest(self):
            return self

        version = "v0"

        def promote(self, *_):
            made.append("promote")

        def roll_back(self, *_):
            made.append("roll back")

    made: list[str] = []
    monkeypatch.setattr(canary, "RECENT_VERDICTS", 3)
    decisions = iter(["promote", "roll back"] * 4)
    monkeypatch.setattr(canary, "judge", lambda *_: Verdict(next(decisions), "by the test"))
    gate = CanaryGate(CanaryConfig(), Registry(), None, None, lambda: [])
    for _ in range(8):
        gate.check([])
    assert [c for c, _ in gate.verdicts] == ["v5", "v6", "v7"] and gate.decided == {"promote": 4, "roll back": 4}


def test_after_a_rollback_the_learner_restarts_from_the_incumbent_or_its_average(tmp_path, keys, exported):  # noqa: F811
    import torch
    from test_bridge_policies import TINY
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from sop_ros.cloud.canary import Verdict
    from sop_ros.learner.online import decided
    from sop_ros.model.vla import VLAPolicy

    private, _ = keys
    torch.manual_seed(0)
    policy = VLAPolicy(TINY)
    incumbent = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v.clone()
                 for k, v in policy.state_dict().items()}  # fmt: skip

    class Publisher:
        registry = PolicyRegistry(tmp_path / "registry")
        weights = {"v1": incumbent}

    Publisher.registry.publish(exported["v1"], private)
    said = []
    rollback = Verdict("roll back", "below the incumbent beyond noise")
    for after, expected in (("incumbent", 0.5), ("ema", None)):
        average = AveragedModel(policy, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
        with torch.no_grad():
            for p in average.module.parameters():
                p.fill_(0.25)  # the moving average, apart from both the policy and the incumbent
        moving = next(average.module.parameters()).detach().clone()
        config = dataclasses.replace(LEARNER, canary=CanaryConfig(after_rollback=after))
        decided(rollback, "v2", Publisher, policy, average, config, None, 10, said.append)
        first = next(policy.parameters()).detach()
        assert torch.equal(first, torch.full_like(first, expected) if expected is not None else moving)
        assert torch.equal(next(average.module.parameters()).detach(), first)
    assert said[1] == "learner: after the rollback, training goes on from the incumbent v1's weights"
    assert said[3] == "learner: after the rollback, training goes on from its moving average"


def test_the_canary_report_counts_who_ran_what_and_what_the_gate_saved_and_cost():
    from sop_ros.cloud.episode_store import StoredEpisode
    from sop_ros.fleet.canary_check import CanaryCheckConfig, markdown, summarise

    def episode(i, robot, version, success, at, stage=""):
        return StoredEpisode(f"e{i}", robot, "reach-v3", "success" if success else "failure", version, 100,
                             0 if success else 1, 1, "0" * 64, "p", at, rollout_stage=stage)  # fmt: skip

    # The incumbent v1: 6 of 10 on its own; the broken v2 on robot_0's canary from t=100 to t=200: 0 of 5, while
    # robot_1..3 ran 9 episodes of v1; the better v3 on robot_1 from t=300 to t=400: 4 of 4, 6 of v1 meanwhile.
    episodes = [episode(i, f"robot_{i % 4}", "v1", i < 6, 50 + i) for i in range(10)]
    episodes += [episode(10 + i, "robot_0", "v2", False, 110 + i, "canary") for i in range(5)]
    episodes += [episode(20 + i, f"robot_{1 + i % 3}", "v1", i < 5, 120 + i) for i in range(9)]
    episodes += [episode(30 + i, "robot_1", "v3", True, 310 + i, "canary" if i < 3 else "promoted") for i in range(4)]
    episodes += [episode(40 + i, f"robot_{2 + i % 2}", "v1", True, 320 + i) for i in range(6)]
    rollouts = [{"name": "broken", "version": "v2", "incumbent": "v1", "canaries": ["robot_0"], "published_at": 100,
                 "decided_at": 200, "verdict": "roll back", "reason": "below", "evidence": {}},
                {"name": "better", "version": "v3", "incumbent": "v1", "canaries": ["robot_1"], "published_at": 300,
                 "decided_at": 400, "verdict": "promote", "reason": "not below", "evidence": {}}]  # fmt: skip
    config = CanaryCheckConfig(base="base.pt", better="better.pt")
    report = summarise(config, rollouts, episodes, {"tasks": ["reach-v3"]})
    # v1: 6 + 5 + 6 = 17 of 25; v2: 0 of 5; v3: 4 of 4
    incumbent = report["success_without_help"]["v1"]
    assert (incumbent["successes"], incumbent["episodes"]) == (17, 25)
    broken, better = report["rollouts"]
    assert (broken["canary_episodes"], broken["fleet_episodes_outside_the_canary"]) == (5, 9)
    assert broken["outside_the_canary_ran_it_before_the_verdict"] == 0
    assert (broken["episodes_spared_it"], broken["canary_episodes_on_it"]) == (9, 5)
    assert better["episodes_that_waited_for_it"] == 6 and "episodes_spared_it" not in better
    assert report["incumbent"] == "v1" and "| broken (v2) | robot_0 | roll back: below | 5 | 9, 0 |" in markdown(report)
    assert report["episodes_by_recorded_stage"] == {"v1": {"none": 25}, "v2": {"canary": 5},
                                                     "v3": {"canary": 3, "promoted": 1}}  # fmt: skip
    assert "v3: 3 canary, 1 promoted." in markdown(report)


def test_the_newest_rollouts_are_read_from_the_end_of_a_long_history(tmp_path):
    from sop_ros.cloud.policy_registry import ROLLOUTS, tail_lines

    registry = PolicyRegistry(tmp_path / "registry")
    assert registry.rollouts(last=5) == []
    records = [{"candidate": f"v{i}", "decision": "promoted", "reason": "x" * (i % 37)} for i in range(500)]
    (tmp_path / "registry" / ROLLOUTS).write_text("".join(json.dumps(r) + "\n" for r in records))
    assert registry.rollouts(last=5) == registry.rollouts()[-5:] == records[-5:]
    assert registry.rollouts(last=1000) == records and registry.rollouts(last=0) == []
    with open(tmp_path / "registry" / ROLLOUTS, "rb") as f:  # blocks smaller than a line, lines cut anywhere
        for block in (7, 64, 100, 4096):
            assert [json.loads(line) for line in tail_lines(f, 3, block)] == records[-3:]


def test_the_learner_status_counts_every_verdict_and_shows_the_latest():
    from sop_ros.learner.online import format_status

    fleet = {"episodes": 900, "interventions_per_hour": 30.0, "success": {}, "autonomous_success": {}}
    canary = {"candidate": "v9", "robots": ["robot_1"], "decided": {"promote": 700, "roll back": 41},
              "verdicts": [{"candidate": f"v{i}", "decision": "promote", "reason": "as good"} for i in range(5, 9)]}
    status = {"algorithm": "hg_dagger", "step": 9000, "ranks": 1, "device": "cpu", "time": 100.0,
              "samples_per_s": 300.0, "loss": 0.1, "latest_policy": "v9", "publish_latency_s": 1.0,
              "offline_episodes": 40, "online_episodes": 900, "online_steps": 50000, "tasks": [], "task_losses": {},
              "online_share": {}, "fleet": fleet, "version_lag": {}, "canary": canary}  # fmt: skip
    lines = format_status(status, now=110.0).splitlines()
    assert "  on canary: v9 with robot_1" in lines and "  canaries decided: promote 700, roll back 41" in lines
    assert [line for line in lines if line.startswith("  canary v")] == [
        f"  canary v{i}: promote (as good)" for i in (6, 7, 8)]
