"""`sop chaos fuzz`, short: a few hundred generated inputs per boundary are refused or held to the boundary's
promises, none crashes, and legitimate inputs between them are still served; a boundary that breaks is caught."""

import dataclasses
import json

import numpy as np

from sop_ros.bench import fuzz

TIER = "unit"  # what the tests need: conftest.TIERS


def test_every_boundary_refuses_what_it_must_without_a_crash(tmp_path, recorded_demos):
    report = fuzz.run(tmp_path / "fuzz.json", 150, recorded_demos)
    assert set(report["boundaries"]) == set(fuzz.BOUNDARIES)
    for name, tally in report["boundaries"].items():
        assert tally["crashes"] == 0, (name, tally["crash_examples"])
        assert tally["inputs"] >= 100 and tally["refused"] > 0, name
        assert tally["legit_served"] == tally["inputs"] and tally["legit_failed"] == 0, name
    assert json.loads((tmp_path / "fuzz.json").read_text())["crashes"] == 0


def test_a_boundary_that_raises_another_error_or_accepts_a_changed_announcement_is_a_crash(monkeypatch):
    from sop_ros.bridge import artifacts, protocol

    real = protocol.Piece.decode.__func__

    def fragile(cls, data):
        if data and data[:1] == b"{":
            raise KeyError("size")  # not the boundary's own error
        return real(cls, data)

    monkeypatch.setattr(protocol.Piece, "decode", classmethod(fragile))
    tally = fuzz.fuzz_upload_pieces(200)
    assert tally.crashes > 0 and "KeyError" in tally.crash_examples[0]
    monkeypatch.setattr(artifacts, "verify", lambda announcement, key: None)  # accepts anything well formed
    tally = fuzz.fuzz_announcements(200)
    assert tally.crashes > 0 and "a changed announcement verified" in tally.crash_examples[0]


def test_an_arbiter_that_lets_a_command_past_its_limits_is_caught(monkeypatch):
    from sop_ros.robot import arbitration

    real_tick = arbitration.Arbiter.tick
    monkeypatch.setattr(arbitration.Arbiter, "tick", lambda self, now: dataclasses.replace(
        real_tick(self, now), command=real_tick(self, now).command * 3))  # fmt: skip
    tally = fuzz.fuzz_teleop_commands(100)
    assert tally.crashes > 0 and "outside the limits" in tally.crash_examples[0]


def test_a_report_kept_unchecked_a_policy_loaded_past_its_checksum_and_a_nan_joint_are_caught(monkeypatch, tmp_path):
    from sop_ros.bridge import protocol
    from sop_ros.model import policy
    from sop_ros.robot import sync

    monkeypatch.setattr(protocol, "decode_robot_report", lambda data: protocol.json_object(data, "robot report"))
    tally = fuzz.fuzz_robot_reports(100)  # the fleet table then fails on what a report lacks
    assert tally.crashes > 0 and "Error" in tally.crash_examples[0]

    real_load = policy.load_policy
    monkeypatch.setattr(policy, "load_policy", lambda path, **kw: real_load(path, **{**kw, "sha256": ""}))
    tally = fuzz.fuzz_load_requests(60, *fuzz.fuzz_policies(tmp_path))
    assert tally.crashes > 0 and "(sha256 given: True) was loaded" in " ".join(tally.crash_examples)

    def unchecked(names, positions, wanted=()):  # reads whatever the message holds, NaN too
        index, wanted = {n: i for i, n in enumerate(names)}, list(wanted) or list(names)
        return wanted, np.array([positions[index[n]] if index.get(n, len(positions)) < len(positions) else 0.0
                                 for n in wanted], dtype=np.float32)  # fmt: skip

    monkeypatch.setattr(sync, "joint_positions", unchecked)
    tally = fuzz.fuzz_joint_states(200)
    assert tally.crashes > 0 and "accepted as" in tally.crash_examples[0]
