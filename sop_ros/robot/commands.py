"""Robot command messages for the two ros2_control interfaces sop_ros speaks, in one place.

`float64_multi_array`: a forward_command_controller's std_msgs/Float64MultiArray (values in action order).
`joint_trajectory`: a joint_trajectory_controller's trajectory_msgs/JointTrajectory with one point, reached
one control period from now; its joint_names are the action names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

MESSAGE_TYPES = {"float64_multi_array": Float64MultiArray, "joint_trajectory": JointTrajectory}


def to_message(interface: str, names: Sequence[str], values: np.ndarray, period_s: float):
    if interface == "float64_multi_array":
        return Float64MultiArray(data=[float(v) for v in values])
    sec, nanosec = divmod(round(period_s * 1e9), 1_000_000_000)
    point = JointTrajectoryPoint(
        positions=[float(v) for v in values], time_from_start=Duration(sec=sec, nanosec=nanosec)
    )
    return JointTrajectory(joint_names=list(names), points=[point])


def from_message(msg, names: Sequence[str]) -> np.ndarray:
    """Values in `names` order; a message that does not fit is a ValueError saying why."""
    if isinstance(msg, Float64MultiArray):
        if len(msg.data) != len(names):
            raise ValueError(f"command has {len(msg.data)} values, expected {len(names)} ({', '.join(names)})")
        return np.asarray(msg.data, dtype=np.float64)
    if len(msg.points) != 1:
        raise ValueError(f"JointTrajectory command has {len(msg.points)} points; this robot takes exactly one")
    index = {name: i for i, name in enumerate(msg.joint_names)}
    missing = [n for n in names if n not in index]
    if missing or len(msg.points[0].positions) != len(msg.joint_names):
        raise ValueError(
            f"JointTrajectory joint_names {list(msg.joint_names)} must name {list(names)}, one position each"
        )
    return np.array([msg.points[0].positions[index[n]] for n in names], dtype=np.float64)
