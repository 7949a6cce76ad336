"""The teleop arbiter: the only node that commands the robot.

It forwards the policy's command, or the operator's while they hold control (a takeover, recorded as an
intervention), or holds the robot when both go stale; see arbitration.py for the rules. Commands are
forwarded the moment they arrive (no added latency, no ticks lost to a busy executor); a watchdog timer
notices stale inputs and keeps publishing the hold command.
"""

from __future__ import annotations

from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from sop_ros.configs.robot import TeleopArbiterConfig
from sop_ros.msg import EpisodeEvent, InterventionState
from sop_ros.robot import topics
from sop_ros.robot.arbitration import Arbiter, ArbiterOutput, Controller
from sop_ros.robot.params import declare_config
from sop_ros.robot.spin import run_node


class TeleopArbiterNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("teleop_arbiter", **kwargs)
        self.config = cfg = declare_config(self, TeleopArbiterConfig)
        self.arbiter = Arbiter(cfg)
        self.episode_id = ""
        self.command_pub = self.create_publisher(Float64MultiArray, topics.ROBOT_COMMAND, topics.COMMAND)
        self.state_pub = self.create_publisher(InterventionState, topics.INTERVENTION_STATE, topics.EVENTS)
        self.create_subscription(
            Float64MultiArray, topics.POLICY_COMMAND, lambda m: self.on_input(Controller.POLICY, m), topics.COMMAND
        )
        self.create_subscription(
            Float64MultiArray, topics.OPERATOR_COMMAND, lambda m: self.on_input(Controller.OPERATOR, m), topics.COMMAND
        )
        self.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, self.on_episode_event, topics.EVENTS)
        self.create_timer(1.0 / cfg.watchdog_hz, lambda: self.arbitrate(trigger=Controller.HOLD))
        self.create_timer(1.0 / cfg.state_hz, self.publish_state)
        self._last = self.arbiter.tick(self.now())

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def on_input(self, source: Controller, msg: Float64MultiArray) -> None:
        try:
            self.arbiter.submit(source, msg.data, self.now())
        except ValueError as err:
            self.get_logger().error(f"refused: {err}", throttle_duration_sec=5.0)
            return
        self.arbitrate(trigger=source)

    def on_episode_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_START:
            self.episode_id = msg.episode_id
            self.arbiter.new_episode()
            self.publish_state()

    def arbitrate(self, trigger: Controller) -> None:
        """Publish when the input that triggered this is the one in control (the watchdog's is HOLD)."""
        self._last = self.arbiter.tick(self.now())
        if self._last.controller == trigger:
            self.command_pub.publish(Float64MultiArray(data=self._last.command.tolist()))
        if self._last.changed:
            self.get_logger().info(f"control -> {self._last.controller.name.lower()}")
            self.publish_state()

    def publish_state(self) -> None:
        self.state_pub.publish(
            intervention_state(
                self._last,
                self.config.operator_device,
                self.episode_id,
                self.arbiter.interventions,
                self.get_clock().now().to_msg(),
            )
        )


def intervention_state(
    out: ArbiterOutput, device: str, episode_id: str, interventions: int, stamp
) -> InterventionState:
    msg = InterventionState(
        controller=int(out.controller), episode_id=episode_id, interventions_in_episode=interventions
    )
    msg.header.stamp = stamp
    msg.since.sec, msg.since.nanosec = divmod(round(out.since * 1e9), 1_000_000_000)
    msg.source_device = device if out.controller == Controller.OPERATOR else ""
    return msg


def main(args: list[str] | None = None) -> int:
    return run_node(TeleopArbiterNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
