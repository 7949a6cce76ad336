"""Start a robot's sop_ros nodes from its YAML config: what `sop robot --config FILE` starts, as processes.

ros2 launch sop_ros robot.launch.py config:=/path/to/robot.yaml
"""

import os
import tempfile
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from sop_ros.configs import load_config
from sop_ros.configs.robot import RobotLaunchConfig
from sop_ros.launch.launcher import write_params_file
from sop_ros.launch.plan import plan

DEFAULT_CONFIG = "robot.yaml"
URDF = "urdf/sawyer.urdf"


def nodes_from_config(context, *_, **__):
    config_path = LaunchConfiguration("config").perform(context)
    specs = plan(load_config(RobotLaunchConfig, config_path))
    params_dir = Path(tempfile.mkdtemp(prefix="sop_ros_launch_"))
    actions = []
    for spec in specs:
        actions.append(
            Node(
                package="sop_ros",
                executable=spec.type.executable,
                name=spec.name,
                namespace=spec.namespace,
                # Our own params file: it quotes strings that rcl would otherwise read as booleans ("y").
                parameters=[str(write_params_file(spec, params_dir))],
                remappings=list(spec.remappings),
                arguments=["--ros-args", "--log-level", spec.log_level],
                on_exit=Shutdown() if spec.ends_run else None,
                output="screen",
            )
        )
    if LaunchConfiguration("robot_description").perform(context) == "true":
        urdf = Path(get_package_share_directory("sop_ros"), URDF).read_text()
        actions.append(
            Node(
                package="robot_state_publisher",
                executable="robot_state_publisher",
                namespace=specs[0].namespace,
                parameters=[{"robot_description": urdf, "use_sim_time": specs[0].parameters["use_sim_time"]}],
            )
        )
    return actions


def generate_launch_description(default_config: str = DEFAULT_CONFIG) -> LaunchDescription:
    share = get_package_share_directory("sop_ros")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "config", default_value=os.path.join(share, "config", default_config), description="robot YAML"
            ),
            DeclareLaunchArgument(
                "robot_description", default_value="true", description="publish the URDF for rviz (true|false)"
            ),
            OpaqueFunction(function=nodes_from_config),
        ]
    )
