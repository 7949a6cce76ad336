"""The custom interfaces, built by colcon, cross two real processes over Fast DDS intact."""

import signal
import sys

import pytest
from conftest import REPO, start, wait_for
from ros_peer import LATCHED, sample_messages

from sop_ros.msg import ActionChunk, EpisodeEvent, InterventionState, PolicyStatus
from sop_ros.srv import LabelEpisode

TIER = "ros"  # what the tests need: conftest.TIERS


@pytest.mark.unit
def test_generated_interfaces_have_the_designed_fields():
    assert ActionChunk.get_fields_and_field_types()["actions"] == "sequence<float>"
    assert InterventionState.CONTROLLER_HOLD == 2
    assert EpisodeEvent.OUTCOME_ABORT == 3
    assert "latency_p99_ms" in PolicyStatus.get_fields_and_field_types()


def test_messages_round_trip_between_processes(rclpy_context):
    import rclpy

    peer = start([sys.executable, str(REPO / "test" / "ros_peer.py"), "publish"])
    node = rclpy.create_node("receiver")
    expected = sample_messages()
    received = {}
    for topic, msg in expected.items():
        node.create_subscription(type(msg), topic, lambda m, t=topic: received.__setitem__(t, m), LATCHED)
    try:
        wait_for(
            lambda: len(received) == len(expected),
            30,
            lambda: rclpy.spin_once(node, timeout_sec=0.05),
            "all four messages",
        )
    finally:
        peer.send_signal(signal.SIGINT)
        peer.wait(timeout=10)
        node.destroy_node()
    assert received == expected
    chunk = received["chunk"]
    assert len(chunk.actions) == chunk.horizon * chunk.action_dim and chunk.sequence == 2**40 + 7


def test_service_round_trip_between_processes(rclpy_context):
    import rclpy

    peer = start([sys.executable, str(REPO / "test" / "ros_peer.py"), "serve"])
    node = rclpy.create_node("client")
    client = node.create_client(LabelEpisode, "label_episode")
    try:
        assert client.wait_for_service(timeout_sec=30), "service from the other process never appeared"
        future = client.call_async(LabelEpisode.Request(outcome=EpisodeEvent.OUTCOME_FAILURE, episode_id="e7"))
        rclpy.spin_until_future_complete(node, future, timeout_sec=10)
        assert future.result().accepted
        assert future.result().message == "labelled e7 as 2"
    finally:
        peer.send_signal(signal.SIGINT)
        peer.wait(timeout=10)
        node.destroy_node()
