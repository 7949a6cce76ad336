"""An operator played by Meta-World's scripted expert.

It reads the simulator's privileged state (a human would look at the scene) and drives through the same
teleop path a human operator's device uses. In demo mode it holds control for whole episodes.
"""

from __future__ import annotations

import numpy as np
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from sop_ros.configs.robot import ScriptedOperatorConfig
from sop_ros.robot import topics
from sop_ros.robot.params import declare_config
from sop_ros.robot.spin import run_node
from sop_ros.sim.metaworld_sim import expert_for


class ScriptedOperatorNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("scripted_operator", **kwargs)
        self.config = declare_config(self, ScriptedOperatorConfig)
        self.expert = expert_for(self.config.task)
        self.command_pub = self.create_publisher(Float64MultiArray, topics.OPERATOR_COMMAND, topics.COMMAND)
        self.create_subscription(Float64MultiArray, topics.SIM_STATE, self.on_state, topics.STATE)

    def on_state(self, msg: Float64MultiArray) -> None:
        action = self.expert(np.asarray(msg.data))
        self.command_pub.publish(Float64MultiArray(data=action.tolist()))


def main(args: list[str] | None = None) -> int:
    return run_node(ScriptedOperatorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
