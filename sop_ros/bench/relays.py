"""The node path's floor for `sop bench inference`: the ingest's and the policy's topics, nothing behind them.

`ingest` answers each joint state with a ready-made Observation of the real size (cameras' frames are taken
and dropped); `policy` answers each Observation with a command and a ready-made ActionChunk of the real size,
both stamped as what they answer. The same hops, messages and executors as the robot's nodes, no decoding,
synchronisation or inference: what ROS alone costs on this host.

    python -m sop_ros.bench.relays ingest|policy --cameras 2 --image-size 64 --ros-args -r __ns:=/bench
"""

from __future__ import annotations

import argparse
import array
import sys

from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import Float64MultiArray

from sop_ros.bench.inference import CAMERAS
from sop_ros.msg import ActionChunk, Observation, PolicyStatus
from sop_ros.robot import topics
from sop_ros.robot.spin import run_node

CHUNK, ACTION_DIM = 16, 4


class IngestRelay(Node):
    def __init__(self, cameras: int, image_size: int) -> None:
        super().__init__("ingest")
        self.observation = Observation(valid=True, cameras=list(CAMERAS[:cameras]), image_size=image_size)
        self.observation.images = array.array("B", bytes(cameras * 3 * image_size * image_size))
        self.pub = self.create_publisher(Observation, topics.OBSERVATION, topics.STREAM)
        for camera in CAMERAS[:cameras]:
            topic = topics.CAMERA_COMPRESSED.format(camera=camera)
            self.create_subscription(CompressedImage, topic, lambda _msg: None, topics.SENSOR)
        self.create_subscription(JointState, topics.JOINT_STATES, self.on_joint_state, topics.STREAM)

    def on_joint_state(self, msg: JointState) -> None:
        self.observation.header.stamp = msg.header.stamp
        self.observation.joint_names = list(msg.name)
        self.observation.proprio = array.array("f", msg.position)
        self.pub.publish(self.observation)


class PolicyRelay(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        self.chunk = ActionChunk(names=["x", "y", "z", "gripper"], horizon=CHUNK, action_dim=ACTION_DIM,
                                 actions=[0.0] * (CHUNK * ACTION_DIM), policy_version="floor")  # fmt: skip
        self.command = Float64MultiArray(data=[0.0] * ACTION_DIM)
        self.command_pub = self.create_publisher(Float64MultiArray, topics.POLICY_COMMAND, topics.STREAM)
        self.chunk_pub = self.create_publisher(ActionChunk, topics.POLICY_CHUNK, topics.STREAM)
        self.status_pub = self.create_publisher(PolicyStatus, topics.POLICY_STATUS, topics.STREAM)
        self.create_subscription(Observation, topics.OBSERVATION, self.on_observation, topics.LATEST)
        self.create_timer(0.5, lambda: self.status_pub.publish(PolicyStatus(version="floor", backend="none")))

    def on_observation(self, msg: Observation) -> None:
        self.command_pub.publish(self.command)
        self.chunk.header.stamp = msg.header.stamp
        self.chunk_pub.publish(self.chunk)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ros_args = argv[argv.index("--ros-args") :] if "--ros-args" in argv else []
    parser = argparse.ArgumentParser(prog="python -m sop_ros.bench.relays")
    parser.add_argument("role", choices=("ingest", "policy"))
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv[: len(argv) - len(ros_args)])
    if args.role == "ingest":
        return run_node(lambda: IngestRelay(args.cameras, args.image_size), ["relay", *ros_args])
    return run_node(PolicyRelay, ["relay", *ros_args])


if __name__ == "__main__":
    raise SystemExit(main())
