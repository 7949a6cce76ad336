"""What a robot config starts: one NodeSpec per node, shared by `sop robot` and launch/*.launch.py.

No ROS imports, so launch files and tests can read the plan anywhere.
"""

from __future__ import annotations

import json
import sys
import typing
from dataclasses import dataclass

from sop_ros.configs import to_dict
from sop_ros.configs.bridge import BridgeConfig
from sop_ros.configs.robot import (
    IngestConfig,
    PolicyConfig,
    RecorderConfig,
    RobotLaunchConfig,
    ScriptedOperatorConfig,
    SimRobotConfig,
    TeleopArbiterConfig,
)
from sop_ros.episodes.format import EXECUTED_COMMAND, JOINT_STATES, POLICY_CHUNK, ROBOT_COMMAND


@dataclass(frozen=True)
class NodeType:
    executable: str  # `ros2 run sop_ros <executable>`; must match SOP_ROS_NODES in CMakeLists.txt
    module: str  # Python module whose main() runs the node
    node_class: str  # class in that module, for composing several nodes in one process
    config: type  # its config dataclass: the node's parameters
    clock_source: bool = False  # publishes /clock, so it runs on wall time itself
    # subscribes to episode events: a simulated robot waits for it before its first episode
    hears_episodes: bool = False
    recorded: tuple[str, ...] = ()  # what it publishes that episodes record: a recorder waits to hear each


NODE_PROCESS = "sop_ros.robot.node_process"  # runs a node module's main() in a process of its own
LOCKSTEP_SYNC_S = 2.0  # how long a lockstep ingest waits for a due frame (wall time; a frame may still be lost)

NODE_TYPES = {
    "sim_robot": NodeType("sim_robot", "sop_ros.sim.sim_robot_node", "SimRobotNode", SimRobotConfig, clock_source=True,
                          recorded=(JOINT_STATES, EXECUTED_COMMAND)),
    "scripted_operator": NodeType(
        "scripted_operator", "sop_ros.sim.scripted_operator_node", "ScriptedOperatorNode", ScriptedOperatorConfig,
        hears_episodes=True,
    ),
    "teleop_arbiter": NodeType(
        "teleop_arbiter", "sop_ros.robot.teleop_arbiter_node", "TeleopArbiterNode", TeleopArbiterConfig,
        hears_episodes=True, recorded=(ROBOT_COMMAND,),
    ),
    "ingest": NodeType("ingest", "sop_ros.robot.ingest_node", "IngestNode", IngestConfig),
    "policy": NodeType("policy", "sop_ros.robot.policy_node", "PolicyNode", PolicyConfig, hears_episodes=True,
                       recorded=(POLICY_CHUNK,)),
    "recorder": NodeType("recorder", "sop_ros.robot.recorder_node", "RecorderNode", RecorderConfig,
                         hears_episodes=True),
    "bridge": NodeType("bridge", "sop_ros.bridge.bridge_node", "BridgeNode", BridgeConfig),
}


@dataclass(frozen=True)
class NodeSpec:
    name: str
    type: NodeType
    namespace: str
    parameters: dict
    remappings: tuple[tuple[str, str], ...]
    log_level: str
    # When this node exits by itself (e.g. after its last episode), the whole robot stops,
    # like launch's on_exit=Shutdown().
    ends_run: bool

    def ros_args(self, params_file: str | None = None) -> list[str]:
        """Command-line arguments for this node's process (`--ros-args ...`)."""
        args = ["--ros-args", "-r", f"__node:={self.name}", "-r", f"__ns:={self.namespace}"]
        for src, dst in self.remappings:
            args += ["-r", f"{src}:={dst}"]
        if params_file:
            args += ["--params-file", params_file]
        return args + ["--log-level", self.log_level]

    def command(self, params_file: str | None = None) -> list[str]:
        """This node's process, as `ros2 run` starts it: through node_process, which catches stop signals first."""
        return [sys.executable, "-m", NODE_PROCESS, self.type.module, *self.ros_args(params_file)]


def lockstep_ingest(sim: SimRobotConfig | None, ingest: IngestConfig) -> dict:
    """A simulator in lockstep waits for its commands, so its ingest can wait for every frame: it knows the
    cameras' exact rate and waits for a due frame as long as the simulator waits, so that each state goes with
    the same frames however loaded the host (the same seeds, the same run)."""
    if sim is None or sim.step_mode != "lockstep":
        return {}
    return {"camera_hz": sim.frame_hz, "sync_timeout_s": max(ingest.sync_timeout_s, LOCKSTEP_SYNC_S)}


def ros_values(node_config: object) -> dict:
    """A node config's values as its parameters file holds them: mappings (a plugin's `policy_args`) as JSON text,
    since a parameter cannot hold a mapping (a nested one in a parameters file becomes dotted names)."""
    hints = typing.get_type_hints(type(node_config))
    return {name: json.dumps(value) if typing.get_origin(hints.get(name)) is dict else value
            for name, value in to_dict(node_config).items()}  # fmt: skip


def plan(config: RobotLaunchConfig) -> list[NodeSpec]:
    robot = config.robot
    remappings = tuple(robot.remappings.items())
    if robot.clock_topic != "/clock":
        remappings += (("/clock", robot.clock_topic),)
    specs = []
    for name, node_config in config.nodes.enabled().items():
        node_type = NODE_TYPES[name]
        parameters = ros_values(node_config)
        parameters["use_sim_time"] = robot.use_sim_time and not node_type.clock_source
        if name == "ingest":
            parameters |= lockstep_ingest(config.nodes.sim_robot, node_config)
        if name == "sim_robot" and not parameters["wait_for_nodes"]:
            listeners = [other for other in config.nodes.enabled() if NODE_TYPES[other].hears_episodes]
            parameters["wait_for_nodes"] = listeners
        if name == "recorder" and not parameters["wait_for_publishers"]:
            parameters["wait_for_publishers"] = [topic for other in config.nodes.enabled()
                                                 for topic in NODE_TYPES[other].recorded]  # fmt: skip
        specs.append(
            NodeSpec(
                name=name,
                type=node_type,
                namespace=f"/{robot.id}",
                parameters=parameters,
                remappings=remappings,
                log_level=robot.log_level,
                ends_run=node_type.clock_source and getattr(node_config, "episodes", 0) > 0,
            )
        )
    return specs
