"""The other process in cross-process tests: publishes one of each sop_ros message, or serves a service."""

import sys

import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from sop_ros.msg import ActionChunk, EpisodeEvent, InterventionState, PolicyStatus
from sop_ros.srv import LabelEpisode

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def sample_messages():
    chunk = ActionChunk(names=["x", "y", "z", "gripper"], horizon=2, action_dim=4, step_period=0.25)
    chunk.actions = [0.5, -0.25, 1.0, -1.0, 0.125, 0.0, -0.5, 1.0]
    chunk.policy_version, chunk.sequence = "v42", 2**40 + 7
    chunk.header.stamp.sec, chunk.header.stamp.nanosec, chunk.header.frame_id = 12, 345, "base"
    state = InterventionState(controller=InterventionState.CONTROLLER_OPERATOR, source_device="joy")
    state.since.sec, state.episode_id, state.interventions_in_episode = 7, "robot_0-e1", 3
    event = EpisodeEvent(event=EpisodeEvent.EVENT_END, robot_id="robot_0", episode_id="robot_0-e1")
    event.task, event.instruction = "pick-place-v3", "pick up the puck and place it at the goal"
    event.outcome, event.outcome_source, event.steps, event.policy_version = 1, "sim_success", 48, "v42"
    status = PolicyStatus(state=PolicyStatus.STATE_READY, version="v42", backend="onnxruntime/CPUExecutionProvider")
    status.pending_version, status.latency_last_ms, status.latency_p50_ms = "v43", 3.5, 3.25
    status.latency_p99_ms, status.inferences, status.message = 9.75, 1000, "ok"
    return {"chunk": chunk, "state": state, "event": event, "status": status}


def main() -> None:
    rclpy.init()
    node = rclpy.create_node("peer")
    if sys.argv[1] == "publish":
        pubs = []
        for topic, msg in sample_messages().items():
            pub = node.create_publisher(type(msg), topic, LATCHED)
            pub.publish(msg)
            pubs.append(pub)
    else:

        def label(request, response):
            response.accepted = request.outcome in (1, 2, 3)
            response.message = f"labelled {request.episode_id or 'current'} as {request.outcome}"
            return response

        node.create_service(LabelEpisode, "label_episode", label)
    print("ready", flush=True)
    try:
        rclpy.spin(node)
    except Exception:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
