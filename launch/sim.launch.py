"""One simulated robot (Meta-World) with its operator: robot.launch.py with config/sim.yaml by default.

ros2 launch sop_ros sim.launch.py [config:=/path/to/sim.yaml]
"""

import importlib.util
import os

SIM_CONFIG = "sim.yaml"

# robot.launch.py's name is not importable as a module name; load it by path.
_spec = importlib.util.spec_from_file_location(
    "sop_ros_robot_launch", os.path.join(os.path.dirname(os.path.abspath(__file__)), "robot.launch.py")
)
robot_launch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(robot_launch)


def generate_launch_description():
    return robot_launch.generate_launch_description(default_config=SIM_CONFIG)
