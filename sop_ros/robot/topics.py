"""Topic names (relative: every robot runs under /<robot_id>) and the QoS each one uses, with the reason."""

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

# What episodes record is named with the episode format; ROBOT_COMMAND: remap it to the controller's topic,
# e.g. /arm_controller/commands.
from sop_ros.episodes.format import (  # noqa: F401 - topic names used through this module
    CAMERA_COMPRESSED,
    CAMERA_IMAGE,
    EXECUTED_COMMAND,
    INTERVENTION_STATE,
    JOINT_STATES,
    POLICY_CHUNK,
    ROBOT_COMMAND,
)

SIM_STATE = "sim/state"  # privileged simulator state and the command applied to reach it: scripted operators
EPISODE_EVENTS = "episode/events"
OBSERVATION = "policy/observation"  # sop_ros/msg/Observation, from the ingest node
POLICY_COMMAND = "policy/command"
POLICY_STATUS = "policy/status"
POLICY_MARKERS = "policy/markers"
LOAD_POLICY = "policy/load"  # service (sop_ros/srv/LoadPolicy)
OPERATOR_COMMAND = "teleop/operator_command"
JOY = "joy"
LEADER_JOINT_STATES = "teleop/leader_joint_states"
LABEL_EPISODE = "teleop/label_episode"  # service (sop_ros/srv/LabelEpisode)
BRIDGE_STATUS = "bridge/status"

# Camera frames: a late frame is worthless and queuing them adds latency, so keep only the newest.
SENSOR = qos_profile_sensor_data
# Publishers of joint states, commands and chunks: reliable with a short history. With a history of one, any
# reader that is not instantly ready (a recorder on a busy robot) loses samples; measured here, half of them.
STREAM = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# Control loops act on the newest joint state or command only: no backlog to work through.
LATEST = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# Recording joint states, commands and chunks: reliable and deep, a recorder must not drop what it is sent.
RECORD = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# Episode events and intervention changes must all arrive (recorder, bridge, operators' UIs), and a node
# that starts late still sees the last few.
EVENTS = QoSProfile(
    depth=20,
    reliability=ReliabilityPolicy.RELIABLE,
    history=HistoryPolicy.KEEP_LAST,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def robot_id(namespace: str) -> str:
    """The robot's id from a node's namespace (/robot_0 -> robot_0): it names the robot's episodes and files."""
    return namespace.strip("/").replace("/", "_") or "robot"
