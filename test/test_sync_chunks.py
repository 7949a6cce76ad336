"""Stamp pairing and the stale-sensor guard (ObservationSync), and executing action chunks (ChunkExecutor).

Plain Python on hand-picked stamps; every expected value below is worked out by hand in the comments.
"""

import math

import numpy as np
import pytest

from sop_ros.robot.chunks import ChunkExecutor, seam_changes
from sop_ros.robot.sync import ObservationSync, joint_positions

TIER = "unit"  # what the tests need: conftest.TIERS

MS = 1_000_000  # ns
TIMEOUT_S = 0.05


def test_a_joint_state_gets_the_newest_frame_at_or_before_it_not_a_later_one():
    sync = ObservationSync(["a", "b"], max_age_ns=500 * MS)
    for stamp in (100, 200, 300):
        sync.add_frame("a", stamp * MS, f"a{stamp}")
    for stamp in (180, 260):
        sync.add_frame("b", stamp * MS, f"b{stamp}")
    sync.add_joint_state(250 * MS, "js250", now_s=0.0)
    sync.add_joint_state(200 * MS, "js200", now_s=0.0)  # earlier than the last one: time went back, 250 dropped
    (ready,) = sync.pop_ready(now_s=0.0, timeout_s=TIMEOUT_S)
    # a: frames 100, 200, 300 -> 200 (at the stamp, not 300 after it); b: 180 (260 is later).
    assert ready.stamp_ns == 200 * MS and ready.joint == "js200" and ready.problem == ""
    assert ready.frames == {"a": (200 * MS, "a200"), "b": (180 * MS, "b180")}
    sync.add_joint_state(299 * MS, "js299", now_s=0.0)
    (ready,) = sync.pop_ready(now_s=0.0, timeout_s=TIMEOUT_S)
    # a: 200 (300 is 1 ms too late); b: 260; neither is due (a's 300 is already here, b's next is at 340).
    assert ready.frames == {"a": (200 * MS, "a200"), "b": (260 * MS, "b260")}


def test_a_joint_state_waits_only_for_a_frame_that_is_due():
    """Camera at 10 Hz, joint states at 30 Hz: only the joint state at the next frame's stamp waits for it."""
    sync = ObservationSync(["cam"], max_age_ns=500 * MS)
    sync.add_frame("cam", 0, "f0")
    sync.add_frame("cam", 100 * MS, "f100")
    assert sync.period_ns("cam") == 100 * MS
    joint_stamps = [100_000_000, 133_333_333, 166_666_667, 200_000_000, 233_333_333]
    for stamp in joint_stamps:
        sync.add_joint_state(stamp, stamp, now_s=10.0)
    # Due when newest + period <= stamp + period / 4: 200 ms <= stamp + 25 ms, i.e. from 175 ms on.
    assert [sync.frame_due("cam", s) for s in joint_stamps] == [False, False, False, True, True]
    ready = sync.pop_ready(now_s=10.0, timeout_s=TIMEOUT_S)
    assert [r.stamp_ns for r in ready] == joint_stamps[:3]
    assert all(r.frames["cam"] == (100 * MS, "f100") and not r.problem for r in ready)
    # The 200 ms joint state (and the one queued behind it) wait for the 200 ms frame ...
    assert sync.pop_ready(now_s=10.0 + TIMEOUT_S / 2, timeout_s=TIMEOUT_S) == []
    # ... which arrives after the joint state it belongs with: both are now complete.
    sync.add_frame("cam", 200 * MS, "f200")
    ready = sync.pop_ready(now_s=10.0 + TIMEOUT_S / 2, timeout_s=TIMEOUT_S)
    assert [(r.stamp_ns, r.frames["cam"][1]) for r in ready] == [(200_000_000, "f200"), (233_333_333, "f200")]


def test_a_known_camera_rate_makes_a_state_wait_for_its_frame_from_the_start():
    """A simulator's cameras tick every 100 ms on one grid. Right after a start only one frame has come, so no
    rate can be estimated and nothing looks due: the 100 ms state would take whichever frame is there. Told
    the rate, it waits for its own frame; between ticks nothing is due."""
    estimated = ObservationSync(["cam"], max_age_ns=500 * MS)
    known = ObservationSync(["cam"], max_age_ns=500 * MS, period_ns=100 * MS)
    for sync in (estimated, known):
        sync.add_frame("cam", 0, "f0")
        sync.add_joint_state(100 * MS, "js100", now_s=0.0)
    assert estimated.period_ns("cam") is None and not estimated.frame_due("cam", 100 * MS)
    assert known.period_ns("cam") == 100 * MS and known.frame_due("cam", 100 * MS)
    assert known.pop_ready(now_s=0.0, timeout_s=TIMEOUT_S) == []  # waits for the 100 ms frame ...
    known.add_frame("cam", 100 * MS, "f100")
    (ready,) = known.pop_ready(now_s=0.0, timeout_s=TIMEOUT_S)
    assert ready.frames == {"cam": (100 * MS, "f100")}  # ... and gets it
    known.add_joint_state(133 * MS, "js133", now_s=0.0)
    (ready,) = known.pop_ready(now_s=0.0, timeout_s=TIMEOUT_S)
    assert ready.frames == {"cam": (100 * MS, "f100")}


def test_a_waiting_joint_state_is_released_after_the_timeout_with_the_older_frame():
    sync = ObservationSync(["cam"], max_age_ns=500 * MS)
    sync.add_frame("cam", 0, "f0")
    sync.add_frame("cam", 100 * MS, "f100")
    sync.add_joint_state(200 * MS, "js", now_s=0.0)  # the 200 ms frame is due
    assert sync.pop_ready(now_s=0.049, timeout_s=TIMEOUT_S) == []
    (ready,) = sync.pop_ready(now_s=TIMEOUT_S, timeout_s=TIMEOUT_S)
    assert ready.frames == {"cam": (100 * MS, "f100")} and ready.problem == ""  # 100 ms old: within max age


def test_a_frame_older_than_max_age_or_a_camera_without_frames_is_a_problem_that_names_the_camera():
    sync = ObservationSync(["wrist", "top"], max_age_ns=500 * MS)
    sync.add_frame("wrist", 0, "w0")
    sync.add_frame("wrist", 100 * MS, "w100")
    sync.add_joint_state(700 * MS, "js", now_s=0.0)
    assert sync.pop_ready(now_s=0.0, timeout_s=TIMEOUT_S) == []  # both cameras owe a frame: it waits
    (ready,) = sync.pop_ready(now_s=TIMEOUT_S, timeout_s=TIMEOUT_S)
    # wrist: the 100 ms frame is 600 ms older than the joint state (> 500 ms); top: never sent one.
    assert ready.problem == "camera wrist: frame 0.60 s older than the joint state; camera top: no frame yet"
    assert ready.frames == {"wrist": (100 * MS, "w100")}
    # Once top has a frame, a wrist frame exactly max age old is still fresh.
    sync.add_frame("top", 600 * MS, "t600")
    sync.add_joint_state(600 * MS, "js2", now_s=1.0)
    (ready,) = sync.pop_ready(now_s=2.0, timeout_s=TIMEOUT_S)  # wrist's 200 ms frame is due: released at timeout
    assert ready.problem == "" and ready.frames == {"wrist": (100 * MS, "w100"), "top": (600 * MS, "t600")}


def test_a_state_released_stale_is_answered_again_when_its_frame_comes_before_the_next_state():
    sync = ObservationSync(["cam"], max_age_ns=500 * MS, period_ns=100 * MS)
    sync.add_frame("cam", 0, "f0")
    sync.add_joint_state(600 * MS, "held", now_s=0.0)
    (stale,) = sync.pop_ready(now_s=TIMEOUT_S, timeout_s=TIMEOUT_S)
    assert stale.problem == "camera cam: frame 0.60 s older than the joint state"
    assert sync.pop_ready(now_s=1.0, timeout_s=TIMEOUT_S) == []  # nothing new: nothing to say again
    sync.add_frame("cam", 600 * MS, "f600")  # the camera is back, showing the state's own instant
    (fresh,) = sync.pop_ready(now_s=1.0, timeout_s=TIMEOUT_S)
    assert (fresh.stamp_ns, fresh.joint, fresh.frames, fresh.problem) == (600 * MS, "held", {"cam": (600 * MS, "f600")},
                                                                          "")  # fmt: skip
    assert sync.pop_ready(now_s=2.0, timeout_s=TIMEOUT_S) == []  # answered once
    # A newer state supersedes a stale one: only the newer is answered when frames come.
    sync.add_joint_state(1300 * MS, "late", now_s=3.0)
    (stale,) = sync.pop_ready(now_s=3.5, timeout_s=TIMEOUT_S)
    assert stale.problem and stale.joint == "late"
    sync.add_joint_state(1333 * MS, "newer", now_s=4.0)
    sync.add_frame("cam", 1300 * MS, "f1300")
    (ready,) = sync.pop_ready(now_s=4.0, timeout_s=TIMEOUT_S)
    assert (ready.joint, ready.problem) == ("newer", "")
    assert sync.pop_ready(now_s=5.0, timeout_s=TIMEOUT_S) == []


def test_a_clock_going_back_starts_over():
    sync = ObservationSync(["cam"], max_age_ns=500 * MS)
    sync.add_frame("cam", 1000 * MS, "f1000")
    sync.add_frame("cam", 1100 * MS, "f1100")
    sync.add_joint_state(1200 * MS, "old", now_s=0.0)  # the 1200 ms frame is due: it waits
    assert sync.pop_ready(now_s=0.0, timeout_s=TIMEOUT_S) == []
    # A simulator reset: stamps start again near zero.
    sync.add_frame("cam", 50 * MS, "f50")
    assert sync.period_ns("cam") is None  # the old frames are gone, so is the rate estimated from them
    sync.add_joint_state(60 * MS, "new", now_s=0.0)
    (ready,) = sync.pop_ready(now_s=0.0, timeout_s=TIMEOUT_S)  # "old" is gone; "new" does not wait
    assert (ready.joint, ready.frames, ready.problem) == ("new", {"cam": (50 * MS, "f50")}, "")


# -- ChunkExecutor ---------------------------------------------------------------------------------------------

PERIOD = 100  # ns: the executor only divides by it


def ramp(first: float, horizon: int = 6) -> np.ndarray:
    """actions[k] = [first + k, -(first + k)]."""
    values = first + np.arange(horizon, dtype=np.float64)
    return np.stack([values, -values], axis=1)


def test_a_chunk_is_indexed_by_time():
    ex = ChunkExecutor(PERIOD)
    assert ex.action(1000) is None and ex.steps_into_newest(1000) is None  # no chunk yet
    ex.add(ramp(0.0, horizon=3), t0_ns=1000)
    assert ex.action(1000 - PERIOD) is None  # before t0
    for k in range(3):
        np.testing.assert_array_equal(ex.action(1000 + k * PERIOD), [k, -k])
        np.testing.assert_array_equal(ex.action(1000 + k * PERIOD + 40), [k, -k])  # jitter under half a period
    assert ex.action(1000 + 3 * PERIOD) is None  # after its last action
    assert ex.chunks == []  # ... and a chunk past its end is dropped


def test_blend_takes_over_linearly_from_the_first_use_of_the_new_chunk():
    ex = ChunkExecutor(PERIOD, "blend", blend_steps=3)
    ex.add(ramp(0.0, horizon=10)[:, :1], t0_ns=0)  # old[k] = k
    assert ex.action(0)[0] == 0.0 and ex.action(100)[0] == 1.0
    ex.add(ramp(10.0, horizon=10)[:, :1], t0_ns=200)  # new[k] = 10 + k
    # First used at t=200: alpha = (steps since first use + 1) / (blend_steps + 1) = 1/4, 2/4, 3/4, then the new.
    # t=200: 1/4 * new[0]=10 + 3/4 * old[2]=2 = 4;  t=300: 1/2 * 11 + 1/2 * 3 = 7;  t=400: 3/4 * 12 + 1/4 * 4 = 10
    # t=500: three steps after first use -> new[3] = 13;  t=600: new[4] = 14.
    assert [ex.action(t)[0] for t in (200, 300, 400, 500, 600)] == [4.0, 7.0, 10.0, 13.0, 14.0]


def test_blend_counts_from_first_use_not_from_t0_for_a_late_chunk():
    ex = ChunkExecutor(PERIOD, "blend", blend_steps=3)
    ex.add(ramp(0.0, horizon=10)[:, :1], t0_ns=0)
    assert ex.action(200)[0] == 2.0
    ex.add(ramp(10.0, horizon=10)[:, :1], t0_ns=200)  # computed for t=200, first used at t=300 (it came late)
    # t=300: alpha 1/4: 1/4 * new[1]=11 + 3/4 * old[3]=3 = 5;  t=600: 3 steps after first use: new[4] = 14.
    # t=400: 1/2 * 12 + 1/2 * 4 = 8;  t=500: 3/4 * 13 + 1/4 * 5 = 11.
    assert [ex.action(t)[0] for t in (300, 400, 500, 600)] == [5.0, 8.0, 11.0, 14.0]


def test_blend_with_zero_steps_switches_at_once():
    ex = ChunkExecutor(PERIOD, "blend", blend_steps=0)
    ex.add(ramp(0.0), t0_ns=0)
    ex.add(ramp(10.0), t0_ns=100)
    np.testing.assert_array_equal(ex.action(100), [10.0, -10.0])


def test_ensemble_weights_the_oldest_chunk_most():
    decay = 0.5
    ex = ChunkExecutor(PERIOD, "ensemble", ensemble_decay=decay)
    ex.add(ramp(0.0), t0_ns=0)  # at t=200: step 2 -> 2
    ex.add(ramp(10.0), t0_ns=100)  # step 1 -> 11
    ex.add(ramp(20.0), t0_ns=200)  # step 0 -> 20
    w = [1.0, math.exp(-0.5), math.exp(-1.0)]  # exp(-decay * i), i = 0 the oldest
    expected = (w[0] * 2 + w[1] * 11 + w[2] * 20) / sum(w)  # = 16.02943 / 1.97441 = 8.11859
    assert expected == pytest.approx(8.118590, abs=1e-6)
    np.testing.assert_allclose(ex.action(200), [expected, -expected], rtol=1e-12)
    # Decay 0: a plain mean, (2 + 11 + 20) / 3 = 11.
    flat = ChunkExecutor(PERIOD, "ensemble", ensemble_decay=0.0)
    for first, t0 in ((0.0, 0), (10.0, 100), (20.0, 200)):
        flat.add(ramp(first), t0_ns=t0)
    np.testing.assert_allclose(flat.action(200), [11.0, -11.0])
    # At t=600 the oldest chunk (steps 0..5 from t=0) is over: (w0 * 15 + w1 * 24) / (w0 + w1) over the other two.
    later = (1.0 * 15 + math.exp(-0.5) * 24) / (1.0 + math.exp(-0.5))
    np.testing.assert_allclose(ex.action(600), [later, -later], rtol=1e-12)


def test_steps_into_newest():
    ex = ChunkExecutor(PERIOD)
    assert ex.steps_into_newest(0) is None
    ex.add(ramp(0.0, horizon=4), t0_ns=1000)
    assert [ex.steps_into_newest(t) for t in (900, 1000, 1140, 1260, 1300, 1400)] == [None, 0, 1, 3, 3, None]
    ex.add(ramp(0.0, horizon=4), t0_ns=1200)  # the newest counts, not the oldest
    assert ex.steps_into_newest(1300) == 1 and ex.steps_into_newest(1100) is None
    ex.clear()
    assert ex.steps_into_newest(1300) is None and ex.action(1300) is None


def test_a_delayed_chunk_waits_and_rtc_takes_over_from_the_prefix_it_was_given():
    ex = ChunkExecutor(PERIOD, "rtc")
    ex.add(ramp(0.0, horizon=10)[:, :1], t0_ns=0)  # old[k] = k
    assert ex.action(0)[0] == 0.0 and ex.action(100)[0] == 1.0
    # Asked at t=200 with an inference delay of 3 periods: the actions that run meanwhile are old[2..4].
    np.testing.assert_array_equal(ex.upcoming(200, 3)[:, 0], [2.0, 3.0, 4.0])
    new = ramp(2.0, horizon=10)[:, :1]  # a chunk from t=200 that begins with that prefix: new[k] = 2 + k
    ex.add(new, t0_ns=200, ready_ns=500)
    assert [ex.action(t)[0] for t in (200, 300, 400)] == [2.0, 3.0, 4.0]  # not ready: the old one runs on
    assert [ex.action(t)[0] for t in (500, 600)] == [5.0, 6.0]  # ready: new[3], new[4], at once
    assert ex.changes == [1.0] * 6 and ex.takeovers == [4]  # a step of the ramp: no jump at the seam (t=500)
    # Without the prefix, a chunk that disagrees jumps at the seam: the change is measured.
    ex.add(ramp(20.0, horizon=10)[:, :1], t0_ns=700, ready_ns=700)
    assert ex.action(700)[0] == 20.0 and ex.changes[-1] == 14.0 and ex.takeovers == [4, 6]  # from 6 at t=600
    ex.clear()
    assert ex.changes == ex.takeovers == [] and ex.upcoming(800, 3).shape == (0, 0)


def test_a_seam_costs_the_largest_change_in_its_window_whether_at_once_or_blended():
    # switch: old 0,1,2,3 then a chunk that disagrees by 10 takes over at t=400: one step of 11, then steps of 1.
    switch = ChunkExecutor(PERIOD, "blend", blend_steps=0)
    blend = ChunkExecutor(PERIOD, "blend", blend_steps=3)
    for ex in (switch, blend):
        ex.add(ramp(0.0, horizon=10)[:, :1], t0_ns=0)
        [ex.action(t) for t in (0, 100, 200, 300)]
        ex.add(ramp(14.0, horizon=10)[:, :1], t0_ns=400)  # new[k] = 14 + k, old[k] = k: 10 apart at t=400
        [ex.action(t) for t in (400, 500, 600, 700, 800)]
    assert switch.changes == [1.0, 1.0, 1.0, 11.0, 1.0, 1.0, 1.0, 1.0] and switch.takeovers == [3]
    # blend over 3 steps: t=400 1/4 * 14 + 3/4 * 4 = 6.5; t=500 1/2 * 15 + 1/2 * 5 = 10; t=600 3/4 * 16 + 1/4 * 6
    # = 13.5; t=700 new[3] = 17: the same 10 of disagreement, spread as steps of 3.5.
    assert blend.changes == [1.0, 1.0, 1.0, 3.5, 3.5, 3.5, 3.5, 1.0]
    assert seam_changes(switch.changes, switch.takeovers, 4) == [11.0]
    assert seam_changes(blend.changes, blend.takeovers, 4) == [3.5]
    # The window ends at the next takeover; an episode without one has no seam.
    assert seam_changes([1.0, 5.0, 2.0, 9.0, 0.5], [0, 2], 4) == [5.0, 9.0]
    assert seam_changes([1.0, 2.0], [], 4) == []


def test_a_joint_state_gives_the_wanted_joints_in_order_or_is_refused_saying_why():
    names, wanted = ["b", "a", "c"], ("a", "b")
    got_names, got = joint_positions(names, [2.0, 1.0, 3.0], wanted)
    assert got_names == ["a", "b"] and got.dtype == np.float32 and got.tolist() == [1.0, 2.0]
    assert joint_positions(names, [2.0, 1.0, 3.0])[1].tolist() == [2.0, 1.0, 3.0]  # none named: all, as sent
    for names, positions, why in ((["a", "b"], [1.0], "2 names but 1 positions"),
                                  (["a", "a"], [1.0, 2.0], "joint names repeat"),
                                  (["a", "c"], [1.0, 2.0], r"joints \['b'\] missing"),
                                  (["a", "b"], [math.nan, 2.0], "not all finite"),
                                  (["a", "b"], [1e39, 2.0], "not all finite"),  # beyond float32
                                  ([], [], "no joints")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            joint_positions(names, positions, wanted if names else ())
