"""Episodes stepped in this process, written as a robot's recorder writes them (one MCAP file per episode).

The same topics, message types, stamps and metadata as a lockstep simulated robot's recorder produces: joint
states at every state, each camera's JPEG on the cameras' tick, the command the simulator ran stamped with the
state it ran from, who was in control (the arbiter's intervention state, its `since` the first state the
operator answered) and the outcome. The learner reads them through the same dataset code as a fleet's uploads
(test_in_process_record checks the two agree on every step).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sop_ros.episodes.format import Controller, Outcome
from sop_ros.episodes.writer import EpisodeWriter, WriterOptions


class EpisodeFiles:
    """One robot's episodes in `root` (a store's episodes/<robot_id>/ folder, or a recorder's output)."""

    def __init__(self, root: Path, robot_id: str, cameras: tuple[str, ...], jpeg_quality: int,
                 device: str = "scripted_expert") -> None:  # fmt: skip
        from sop_ros.robot import topics

        self.root, self.robot_id, self.cameras = Path(root), robot_id, cameras
        self.jpeg_quality, self.device = jpeg_quality, device
        ns = f"/{robot_id}/"
        self.topic = {
            "joints": ns + topics.JOINT_STATES,
            "command": ns + topics.ROBOT_COMMAND,
            "executed": ns + topics.EXECUTED_COMMAND,
            "intervention": ns + topics.INTERVENTION_STATE,
            **{camera: ns + topics.CAMERA_COMPRESSED.format(camera=camera) for camera in cameras},
        }
        self.types = {
            "joints": "sensor_msgs/msg/JointState",
            "command": "std_msgs/msg/Float64MultiArray",
            "executed": "sensor_msgs/msg/JointState",
            "intervention": "sop_ros/msg/InterventionState",
            **{camera: "sensor_msgs/msg/CompressedImage" for camera in cameras},
        }
        self.counter = 0
        self.writer: EpisodeWriter | None = None

    def start(self, t_ns: int, task: str, instruction: str, policy_version: str, episode_id: str = "") -> None:
        """A new episode, named `episode_id` (an imported one keeps its own) or <robot>-inprocess-<counter>."""
        self.episode_id = episode_id or f"{self.robot_id}-inprocess-{self.counter:05d}"
        self.counter += 1
        self.start_ns, self.interventions = t_ns, 0
        self.metadata = {"episode_id": self.episode_id, "robot_id": self.robot_id, "task": task,
                         "instruction": instruction, "policy_version": policy_version,
                         "start_ns": str(t_ns)}  # fmt: skip
        self.writer = EpisodeWriter(self.root, self.episode_id, WriterOptions(flush_period_s=3600.0), self.metadata)
        for key, topic in self.topic.items():
            self.writer.add_topic(topic, self.types[key])
        self.control(t_ns, Controller.POLICY)

    def state(self, t_ns: int, names: tuple[str, ...], positions: np.ndarray, velocities: np.ndarray) -> None:
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Header

        from sop_ros.sim.sim_robot_node import sim_stamp

        msg = JointState(header=Header(stamp=sim_stamp(t_ns)), name=list(names), position=positions.tolist(),
                         velocity=velocities.tolist())  # fmt: skip
        self._write("joints", msg, t_ns)

    def frames(self, t_ns: int, images: dict[str, np.ndarray]) -> None:
        """Each recorded camera's RGB frame, as the simulated robot publishes it (JPEG at its quality)."""
        from std_msgs.msg import Header

        from sop_ros.sim.sim_robot_node import image_messages, sim_stamp

        for camera in self.cameras:
            header = Header(stamp=sim_stamp(t_ns), frame_id=camera)
            [msg] = image_messages(images[camera], header, "compressed", self.jpeg_quality)
            self._write(camera, msg, t_ns)

    def executed(self, acted_ns: int, names: tuple[str, ...], command: np.ndarray) -> None:
        """The command run from the state at `acted_ns`, as the simulator reports it, and as it was commanded."""
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray, Header

        from sop_ros.sim.sim_robot_node import sim_stamp

        self._write("executed", JointState(header=Header(stamp=sim_stamp(acted_ns)), name=list(names),
                                           position=np.asarray(command, dtype=float).tolist()), acted_ns)  # fmt: skip
        self._write("command", Float64MultiArray(data=np.asarray(command, dtype=float).tolist()), acted_ns)

    def control(self, since_ns: int, controller: Controller) -> None:
        """Who answers from the state at `since_ns` on."""
        from std_msgs.msg import Header

        from sop_ros.msg import InterventionState
        from sop_ros.sim.sim_robot_node import sim_stamp

        self.interventions += controller == Controller.OPERATOR
        msg = InterventionState(header=Header(stamp=sim_stamp(since_ns)), controller=int(controller),
                                since=sim_stamp(since_ns),
                                source_device=self.device if controller == Controller.OPERATOR else "",
                                episode_id=self.episode_id, interventions_in_episode=self.interventions)  # fmt: skip
        self._write("intervention", msg, since_ns)

    def end(self, t_ns: int, success: bool, steps: int, metadata: Mapping[str, str] | None = None) -> Path:
        """Finish the episode; `metadata` (an imported episode's, as it was recorded) overrides what is said here."""
        outcome = Outcome.SUCCESS if success else Outcome.FAILURE
        path = self.writer.finish({**self.metadata, "outcome": outcome.value,
                                   "outcome_source": "sim_success" if success else "timeout", "steps": str(steps),
                                   "interventions": str(self.interventions), "end_ns": str(t_ns),
                                   "labels": "", **(metadata or {})})  # fmt: skip
        self.writer = None
        return path

    def _write(self, key: str, msg, t_ns: int) -> None:
        from rclpy.serialization import serialize_message

        self.writer.write(self.topic[key], serialize_message(msg), t_ns)
