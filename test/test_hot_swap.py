"""The policy node's hot-swap decisions, on plain data: when loaded weights take over, which stay warm, which go."""

from dataclasses import dataclass

import pytest

from sop_ros.robot.hot_swap import KEEP_LOADED, HotSwap, PolicyState, Takeover, policy_state_name

TIER = "unit"  # what the tests need: conftest.TIERS


@dataclass(eq=False)  # a loaded policy as the node holds it: equal only to itself, as ChunkPolicy
class Loaded:
    version: str


def running(version: str) -> HotSwap[Loaded]:
    swaps: HotSwap[Loaded] = HotSwap()
    swaps.loaded(Loaded(version), immediate=False, episode_active=False)
    return swaps


def test_the_first_policy_runs_at_once_even_mid_episode():
    swaps: HotSwap[Loaded] = HotSwap()
    first = Loaded("a")
    takeover, change = swaps.loaded(first, immediate=False, episode_active=True)
    assert takeover == Takeover.NOW and change == (None, first)
    assert swaps.running is first and swaps.pending is None


def test_new_weights_wait_for_the_episode_boundary():
    swaps = running("a")
    b = Loaded("b")
    takeover, change = swaps.loaded(b, immediate=False, episode_active=True)
    assert takeover == Takeover.AT_BOUNDARY and change is None
    assert takeover.describe("b") == "b verified, swaps in at the next episode boundary"
    assert swaps.running.version == "a" and swaps.pending is b
    change = swaps.episode_event(start=False, scheduled_version="", now=0.0)
    assert change.new is b and change.old.version == "a" and swaps.pending is None


@pytest.mark.parametrize("immediate, swap_at, episode_active", [
    (True, "episode_boundary", True),  # the load asks
    (False, "immediate", True),  # the robot is configured so
    (False, "episode_boundary", False),  # no episode runs: nothing to interrupt
])  # fmt: skip
def test_new_weights_run_at_once_when_asked_configured_or_between_episodes(immediate, swap_at, episode_active):
    swaps = running("a")
    swaps.swap_at = swap_at
    takeover, change = swaps.loaded(Loaded("b"), immediate, episode_active)
    assert takeover == Takeover.NOW and change.new.version == "b" and swaps.running.version == "b"


def test_an_episode_that_names_a_loaded_version_runs_it_and_loads_no_longer_swap():
    swaps = running("a")
    b = Loaded("b")
    swaps.loaded(b, immediate=False, episode_active=True)
    assert swaps.episode_event(start=True, scheduled_version="a", now=0.0) is None  # "a" runs already
    assert swaps.scheduled and swaps.running.version == "a" and swaps.pending is b
    assert swaps.episode_event(start=False, scheduled_version="", now=1.0) is None  # names rule: no swap at END
    c = Loaded("c")
    takeover, change = swaps.loaded(c, immediate=False, episode_active=False)
    assert takeover == Takeover.SCHEDULED_LATER and change is None
    change = swaps.episode_event(start=True, scheduled_version="b", now=2.0)  # kept warm: swapped back in
    assert change.new is b and swaps.running is b


def test_a_scheduled_version_not_loaded_is_awaited_then_given_up():
    swaps = running("a")
    assert swaps.episode_event(start=True, scheduled_version="b", now=10.0) is None
    assert swaps.awaited == "b"
    assert swaps.still_awaiting(now=15.0, wait_s=20.0)
    b = Loaded("b")
    takeover, change = swaps.loaded(b, immediate=False, episode_active=True)
    assert takeover == Takeover.SCHEDULED_NOW and change.new is b and swaps.awaited == ""
    assert takeover.describe("b") == "running b (the episode's scheduled policy)"

    swaps.episode_event(start=True, scheduled_version="c", now=100.0)
    assert swaps.still_awaiting(now=119.9, wait_s=20.0)
    assert not swaps.still_awaiting(now=120.0, wait_s=20.0)  # the running one answers from now on
    assert swaps.awaited == "" and swaps.running is b


def test_replaced_policies_wait_in_retired_for_the_control_path():
    """Freeing an ONNX Runtime session holds the GIL for 10-30 ms: every policy let go (the oldest of the warm
    ones, a reload of a version already held, the one swapped out) waits in `retired` for the moment after a
    command, never freed where it is let go (a load's reply, in the executor: measured, missed control ticks)."""
    swaps: HotSwap[Loaded] = HotSwap()
    loaded = [Loaded(v) for v in ("a", "b", "a", "c", "d")]
    swaps.pending = loaded[0]
    swaps.remember(loaded[0])
    swaps.swap()  # "a" runs
    for policy in loaded[1:3]:
        swaps.remember(policy)  # "b", then a reload of "a"
    assert swaps.retired == [] and list(swaps.recent) == ["b", "a"]  # the running "a" is kept
    swaps.pending = loaded[2]
    swaps.swap()  # the reloaded "a" runs: the first "a" is held by nobody now
    assert swaps.retired == [loaded[0]]
    for policy in loaded[3:]:
        swaps.remember(policy)
    assert list(swaps.recent) == ["a", "c", "d"][-KEEP_LOADED:] and loaded[1] in swaps.retired
    assert swaps.take_retired() == [loaded[0], loaded[1]] and swaps.retired == []


def test_policy_states_match_the_status_message_and_name_themselves():
    from sop_ros.msg import PolicyStatus

    assert {s.name: s.value for s in PolicyState} == {
        name.removeprefix("STATE_"): getattr(PolicyStatus, name) for name in dir(PolicyStatus)
        if name.startswith("STATE_")
    }  # fmt: skip
    assert policy_state_name(PolicyStatus.STATE_HOLDING) == "holding" and policy_state_name(99) == "?"
