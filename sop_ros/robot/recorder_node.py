"""The episode recorder: one crash-safe MCAP file per episode (recording.py, sop_ros/episodes).

Records camera frames, joint states, the executed command, the policy's chunks, intervention states and
episode events as ROS 2 CDR with full message definitions, so Foxglove, the mcap tools and `ros2 bag`
read the files as they are. Data topics are taken serialized (raw subscriptions): nothing is decoded or
re-encoded on the robot. At start it recovers or quarantines what a crash left behind.
"""

from __future__ import annotations

import time
from pathlib import Path

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.serialization import serialize_message

from sop_ros.configs.robot import RecorderConfig
from sop_ros.episodes.writer import WriterOptions
from sop_ros.msg import ActionChunk, EpisodeEvent, InterventionState
from sop_ros.robot import topics
from sop_ros.robot.params import declare_config
from sop_ros.robot.recording import Episode, EpisodeRecorder, header_stamp_ns, stamp_ns
from sop_ros.robot.spin import log_at, run_node

COMMAND_TYPES = {
    "float64_multi_array": "std_msgs/msg/Float64MultiArray",
    "joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
}
IMAGE_TYPES = {"compressed": "sensor_msgs/msg/CompressedImage", "raw": "sensor_msgs/msg/Image"}
CONNECT_POLL_S = 0.05  # how often a recorder waiting for its publishers looks again


def recorded_streams(cfg: RecorderConfig) -> dict[str, tuple[str, object, bool]]:
    """Relative topic -> (ROS type, QoS, whether the message begins with a std_msgs/Header)."""
    image_topic = topics.CAMERA_COMPRESSED if cfg.camera_transport == "compressed" else topics.CAMERA_IMAGE
    image_type = IMAGE_TYPES[cfg.camera_transport]
    streams = {image_topic.format(camera=c): (image_type, topics.SENSOR, True) for c in cfg.cameras}
    streams[topics.JOINT_STATES] = ("sensor_msgs/msg/JointState", topics.RECORD, True)
    # Float64MultiArray has no header: its time is when it arrives. A JointTrajectory begins with one.
    command_stamped = cfg.command_interface == "joint_trajectory"
    streams[topics.ROBOT_COMMAND] = (COMMAND_TYPES[cfg.command_interface], topics.RECORD, command_stamped)
    streams[topics.EXECUTED_COMMAND] = ("sensor_msgs/msg/JointState", topics.RECORD, True)  # where a robot says
    if cfg.record_policy_chunks:
        streams[topics.POLICY_CHUNK] = ("sop_ros/msg/ActionChunk", topics.RECORD, True)
    return streams


class RecorderNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("recorder", **kwargs)
        self.config = cfg = declare_config(self, RecorderConfig)
        robot_id = topics.robot_id(self.get_namespace())
        streams = recorded_streams(cfg)
        self.events_topic = self.resolve_topic_name(topics.EPISODE_EVENTS)
        self.joint_states_topic = self.resolve_topic_name(topics.JOINT_STATES)
        self._last_state_ns: int | None = None
        self.intervention_topic = self.resolve_topic_name(topics.INTERVENTION_STATE)
        recorded = {self.resolve_topic_name(t): type_name for t, (type_name, _, _) in streams.items()}
        recorded[self.events_topic] = "sop_ros/msg/EpisodeEvent"
        recorded[self.intervention_topic] = "sop_ros/msg/InterventionState"
        options = WriterOptions(cfg.compression, cfg.chunk_size_bytes, cfg.flush_period_s)
        self.root = Path(cfg.output_dir) / robot_id
        self.recorder = EpisodeRecorder(self.root, recorded, options, cfg.label_grace_s, self.log)
        self.recorder.recover()
        for topic, (type_name, qos, stamped) in streams.items():
            msg_type, full = _message_class(type_name), self.resolve_topic_name(topic)
            callback = self.on_stamped if stamped else self.on_data
            self.create_subscription(msg_type, topic, lambda data, t=full, cb=callback: cb(t, data), qos, raw=True)
        self.create_subscription(InterventionState, topics.INTERVENTION_STATE, self.on_intervention, topics.EVENTS)
        # Which weights drove an episode: the version its chunks carry (the learner credits its data by it).
        self.create_subscription(ActionChunk, topics.POLICY_CHUNK, self.on_chunk, topics.STREAM)
        # Steady time, not sim time: ended episodes must be closed even after the simulator stops its clock.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(0.2, self.recorder.tick, clock=steady)
        self.awaited = {self.resolve_topic_name(t) for t in cfg.wait_for_publishers}
        self.connect_deadline = time.monotonic() + cfg.connect_timeout_s
        self.connect_timer = self.create_timer(CONNECT_POLL_S, self.listen_once_connected, clock=steady)
        self.listen_once_connected()
        self.get_logger().info(f"recording {len(recorded)} topics into {self.root}")

    def unconnected(self) -> list[str]:
        """Awaited topics that one of this node's subscriptions still hears from no publisher."""
        return sorted({s.topic_name for s in self.subscriptions if s.topic_name in self.awaited
                       and s.get_publisher_count() == 0})  # fmt: skip

    def listen_once_connected(self) -> None:
        """Subscribe to episode events once every awaited stream is connected (or the wait is over): a simulated
        robot starts its first episode only when this listener is there, so no episode begins unrecorded."""
        missing = self.unconnected()
        if missing and time.monotonic() < self.connect_deadline:
            return
        if missing:
            self.get_logger().warning(f"listening for episodes with no publisher yet on {missing} after "
                                      f"{self.config.connect_timeout_s:g} s: what they send before one connects "
                                      "is not recorded")  # fmt: skip
        self.destroy_timer(self.connect_timer)
        self.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, self.on_episode_event, topics.EVENTS)

    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def log(self, level: str, message: str) -> None:
        log_at(self, level, message)

    def on_data(self, topic: str, data: bytes) -> None:
        # A headerless command answers the latest observed state: it takes that state's stamp. (The recorder's
        # own clock may already show the next step when the command arrives, and then it would be misfiled.)
        self.recorder.write(topic, data, self._last_state_ns if self._last_state_ns is not None else self.now_ns())

    def on_stamped(self, topic: str, data: bytes) -> None:
        stamp = header_stamp_ns(data)
        if topic == self.joint_states_topic:
            self._last_state_ns = stamp
        self.recorder.write(topic, data, stamp)

    def on_episode_event(self, msg: EpisodeEvent) -> None:
        data, now = serialize_message(msg), self.now_ns()
        if msg.event == EpisodeEvent.EVENT_START:
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            self.recorder.start(
                Episode(msg.episode_id, msg.robot_id, msg.task, msg.instruction, msg.policy_version, stamp)
            )
            self.recorder.write(self.events_topic, data, now, msg.episode_id)
        elif msg.event == EpisodeEvent.EVENT_END:
            self.recorder.write(self.events_topic, data, now, msg.episode_id)
            self.recorder.end(msg.episode_id, msg.outcome, msg.outcome_source, msg.steps, stamp_ns(msg))
        elif self.recorder.label(msg.episode_id, msg.outcome, msg.outcome_source):
            self.recorder.write(self.events_topic, data, now, msg.episode_id)

    def on_intervention(self, msg: InterventionState) -> None:
        self.recorder.write(self.intervention_topic, serialize_message(msg), self.now_ns(), msg.episode_id or None)
        self.recorder.interventions(msg.episode_id, msg.interventions_in_episode)

    def on_chunk(self, msg: ActionChunk) -> None:
        self.recorder.policy_version(stamp_ns(msg), msg.policy_version, msg.rollout_stage)

    def destroy_node(self) -> None:
        self.recorder.close()
        super().destroy_node()


def _message_class(type_name: str):
    package, _, name = type_name.split("/")
    module = __import__(f"{package}.msg", fromlist=[name])
    return getattr(module, name)


def main(args: list[str] | None = None) -> int:
    return run_node(RecorderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
