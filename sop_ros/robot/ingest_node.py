"""Ingest: camera frames and joint states -> one preprocessed, synchronised Observation per joint state.

Each frame is decoded (JPEG or raw rgb8/bgr8) and resized once, on arrival, and kept as bytes (the policy scales
them to [0, 1]); each joint state then takes the newest frame of every camera stamped at or before it
(sop_ros.robot.sync). Stale or missing sensors give an invalid observation that says why, and the policy holds.
"""

from __future__ import annotations

import array
import dataclasses
import re
import time

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, JointState

from sop_ros.configs.robot import IngestConfig
from sop_ros.model.preprocess import camera_frame
from sop_ros.msg import Observation
from sop_ros.robot import topics
from sop_ros.robot.params import declare_config
from sop_ros.robot.recording import stamp_ns
from sop_ros.robot.spin import run_node
from sop_ros.robot.sync import ObservationSync, Synced, joint_positions


def observation_message(synced: Synced, cameras: tuple[str, ...], image_size: int, proprio: np.ndarray,
                        joint_names: list[str]) -> Observation:  # fmt: skip
    msg = Observation(valid=not synced.problem, problem=synced.problem, cameras=list(cameras), image_size=image_size)
    msg.header.stamp = Time(nanoseconds=synced.stamp_ns).to_msg()
    if synced.problem:
        return msg
    msg.camera_stamps = [Time(nanoseconds=synced.frames[cam][0]).to_msg() for cam in cameras]
    images = np.stack([synced.frames[cam][1] for cam in cameras])
    # array.array is what the generated message stores: assigning one copies bytes, not element by element.
    msg.images = array.array("B", images.tobytes())
    msg.joint_names = joint_names
    msg.proprio = array.array("f", proprio.astype(np.float32).tobytes())
    return msg


def problem_kind(problem: str) -> str:
    """A hold's reason without its figures ("camera corner: frame 0.53 s older ..." and "... 0.57 s ..." alike)."""
    return re.sub(r"\d+(\.\d+)?", "#", problem)


class IngestNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("ingest", **kwargs)
        self.config = cfg = declare_config(self, IngestConfig)
        period_ns = round(1e9 / cfg.camera_hz) if cfg.camera_hz else 0
        self.sync = ObservationSync(cfg.cameras, round(cfg.max_sensor_age_s * 1e9), period_ns=period_ns)
        self._stale = False
        self._stale_kind = ""  # what the last hold was for (problem_kind), "" while fresh
        self.observation_pub = self.create_publisher(Observation, topics.OBSERVATION, topics.STREAM)
        for cam in cfg.cameras:
            if cfg.camera_transport == "compressed":
                topic, msg_type = topics.CAMERA_COMPRESSED.format(camera=cam), CompressedImage
            else:
                topic, msg_type = topics.CAMERA_IMAGE.format(camera=cam), Image
            self.create_subscription(msg_type, topic, lambda msg, c=cam: self.on_frame(c, msg), topics.SENSOR)
        self.create_subscription(JointState, topics.JOINT_STATES, self.on_joint_state, topics.STREAM)
        # Waiting for a due frame is bounded in wall time: a steady timer releases joint states that waited enough
        # (checked every 5-50 ms, so a lockstep ingest's 2 s wait is 2 s, not up to one and a half times that).
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(min(max(cfg.sync_timeout_s / 2, 0.005), 0.05), self.publish_ready, clock=steady)

    def on_frame(self, camera: str, msg) -> None:
        try:
            raw = None if isinstance(msg, CompressedImage) else (msg.encoding, msg.width, msg.height, msg.step)
            frame = camera_frame(self.config.image_size, bytes(msg.data), raw)
        except ValueError as err:
            self.get_logger().error(f"camera {camera}: refused a frame: {err}", throttle_duration_sec=5.0)
            return
        self.sync.add_frame(camera, stamp_ns(msg), frame)
        self.publish_ready()

    def on_joint_state(self, msg: JointState) -> None:
        try:
            names, positions = self.proprio(msg)
        except ValueError as err:
            self.get_logger().error(f"refused a joint state: {err}", throttle_duration_sec=5.0)
            return
        self.sync.add_joint_state(stamp_ns(msg), (names, positions), time.monotonic())
        self.publish_ready()

    def proprio(self, msg: JointState) -> tuple[list[str], np.ndarray]:
        return joint_positions(list(msg.name), msg.position, self.config.joint_names)

    def publish_ready(self) -> None:
        cfg = self.config
        now_ns = self.get_clock().now().nanoseconds
        for ready in self.sync.pop_ready(time.monotonic(), cfg.sync_timeout_s):
            names, positions = ready.joint
            lag = now_ns - ready.stamp_ns
            synced = ready
            if not ready.problem and lag > cfg.max_sensor_age_s * 1e9:
                synced = dataclasses.replace(ready, problem=f"joint_states: stamped {lag / 1e9:.2f} s behind the clock")
            if synced.problem:
                # The first hold of each kind is always said (a camera's after a late joint state's, too); repeats
                # of it at most every 2 s.
                kind = problem_kind(synced.problem)
                if kind != self._stale_kind:
                    self.get_logger().warning(f"stale sensors, the policy holds: {synced.problem}")
                else:
                    self.get_logger().warning(f"stale sensors, the policy holds: {synced.problem}",
                                              throttle_duration_sec=2.0)  # fmt: skip
                self._stale, self._stale_kind = True, kind
            elif self._stale:
                self._stale, self._stale_kind = False, ""
                self.get_logger().info("sensors fresh again")
            self.observation_pub.publish(observation_message(synced, cfg.cameras, cfg.image_size, positions, names))


def main(args: list[str] | None = None) -> int:
    return run_node(IngestNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
