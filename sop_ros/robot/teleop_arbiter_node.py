"""The teleop arbiter: the only node that commands the robot.

It forwards the policy's command, or the operator's while they hold control (a takeover, recorded as an
intervention), or holds the robot when both go stale; see arbitration.py for the rules. Commands are
forwarded the moment they arrive (no added latency, no ticks lost to a busy executor); a watchdog timer
notices stale inputs and keeps publishing the hold command. Operators label episodes with Joy buttons or
the `teleop/label_episode` service.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Float64MultiArray

from sop_ros.configs.robot import TeleopArbiterConfig
from sop_ros.episodes.format import Controller
from sop_ros.msg import EpisodeEvent, InterventionState
from sop_ros.robot import commands, topics
from sop_ros.robot.arbitration import LABELS, Arbiter, ArbiterOutput, label_target
from sop_ros.robot.params import declare_config
from sop_ros.robot.spin import run_node
from sop_ros.robot.teleop_devices import JoyTeleop, leader_arm_command
from sop_ros.srv import LabelEpisode


class TeleopArbiterNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("teleop_arbiter", **kwargs)
        self.config = cfg = declare_config(self, TeleopArbiterConfig, on_change=self.reconfigure)
        self.arbiter = Arbiter(cfg)
        self.joy = JoyTeleop(cfg)
        self.current: EpisodeEvent | None = None  # START of the running episode
        self.last_ended: EpisodeEvent | None = None  # END of the last finished one
        command_type = commands.MESSAGE_TYPES[cfg.command_interface]
        self.command_pub = self.create_publisher(command_type, topics.ROBOT_COMMAND, topics.STREAM)
        self.state_pub = self.create_publisher(InterventionState, topics.INTERVENTION_STATE, topics.EVENTS)
        self.event_pub = self.create_publisher(EpisodeEvent, topics.EPISODE_EVENTS, topics.EVENTS)
        self.create_subscription(Float64MultiArray, topics.POLICY_COMMAND, self.on_policy, topics.LATEST)
        self.create_subscription(Float64MultiArray, topics.OPERATOR_COMMAND, self.on_operator, topics.LATEST)
        self.create_subscription(Joy, topics.JOY, self.on_joy, topics.SENSOR)
        if cfg.leader_joint_names:
            self.create_subscription(JointState, topics.LEADER_JOINT_STATES, self.on_leader, topics.SENSOR)
        self.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, self.on_episode_event, topics.EVENTS)
        self.create_service(LabelEpisode, topics.LABEL_EPISODE, self.on_label_request)
        self.create_timer(1.0 / cfg.control_hz, lambda: self.arbitrate(trigger=Controller.HOLD))
        self.create_timer(1.0 / cfg.state_hz, self.publish_state)
        self._last = self.arbiter.tick(self.now())

    def reconfigure(self, config: TeleopArbiterConfig) -> None:
        """Live parameters set (limits, timeouts): the next command obeys them."""
        self.config = config
        self.arbiter.reconfigure(config)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- inputs ---------------------------------------------------------------------------------------------
    def on_policy(self, msg: Float64MultiArray) -> None:
        self.submit(Controller.POLICY, msg.data, "")

    def on_operator(self, msg: Float64MultiArray) -> None:
        self.submit(Controller.OPERATOR, msg.data, self.config.operator_device)

    def on_joy(self, msg: Joy) -> None:
        try:
            out = self.joy.update(msg.axes, msg.buttons)
        except ValueError as err:
            self.get_logger().error(f"refused Joy input: {err}", throttle_duration_sec=5.0)
            return
        if out.label is not None:
            self.label(out.label, "", "joy")
        if out.command is not None:
            self.submit(Controller.OPERATOR, out.command, "joy")

    def on_leader(self, msg: JointState) -> None:
        try:
            command = leader_arm_command(self.config, msg.name, msg.position)
        except ValueError as err:
            self.get_logger().error(f"refused: {err}", throttle_duration_sec=5.0)
            return
        self.submit(Controller.OPERATOR, command, "leader_arm")

    def submit(self, source: Controller, command, device: str) -> None:
        try:
            self.arbiter.submit(source, command, self.now(), device)
        except ValueError as err:
            self.get_logger().error(f"refused: {err}", throttle_duration_sec=5.0)
            return
        self.arbitrate(trigger=source)

    # -- output ---------------------------------------------------------------------------------------------
    def arbitrate(self, trigger: Controller) -> None:
        """Publish when the input that triggered this is the one in control (the watchdog's is HOLD).

        While holding, the command is published only while it still changes (the rate-limited way down to the
        hold): controllers keep their last command, and a stream of identical holds would drive a lockstep
        simulator through an episode nobody is commanding.
        """
        previous = self._last.command
        self._last = self.arbiter.tick(self.now())
        settled = trigger == Controller.HOLD and not self._last.changed and np.array_equal(previous, self._last.command)
        if self._last.controller == trigger and not settled:
            cfg = self.config
            msg = commands.to_message(cfg.command_interface, cfg.action_names, self._last.command, 1.0 / cfg.control_hz)
            self.command_pub.publish(msg)
        if self._last.changed:
            who = self._last.controller.name.lower() + (f" ({self._last.device})" if self._last.device else "")
            self.get_logger().info(f"control -> {who}")
            self.publish_state()

    def publish_state(self) -> None:
        episode_id = self.current.episode_id if self.current else ""
        state = intervention_state(self._last, episode_id, self.arbiter.interventions)
        state.header.stamp = self.get_clock().now().to_msg()
        self.state_pub.publish(state)

    # -- episodes and labels ----------------------------------------------------------------------------------
    def on_episode_event(self, msg: EpisodeEvent) -> None:
        if msg.event == EpisodeEvent.EVENT_START:
            self.current = msg
            self.arbiter.new_episode()
            self.publish_state()
        elif msg.event == EpisodeEvent.EVENT_END:
            self.last_ended, self.current = msg, None
            if self.config.end_takeover_with_episode:
                self.arbiter.release_operator()

    def on_label_request(self, request: LabelEpisode.Request, response: LabelEpisode.Response):
        response.accepted, response.message = self.label(request.outcome, request.episode_id, "service")
        return response

    def label(self, outcome: int, episode_id: str, via: str) -> tuple[bool, str]:
        target, refusal = label_target(outcome, episode_id, (self.current, self.last_ended))
        if target is None:
            return False, refusal
        event = EpisodeEvent(
            event=EpisodeEvent.EVENT_LABEL, robot_id=target.robot_id, episode_id=target.episode_id,
            task=target.task, instruction=target.instruction, outcome=outcome, outcome_source="operator",
            steps=target.steps, policy_version=target.policy_version,
        )  # fmt: skip
        event.header.stamp = self.get_clock().now().to_msg()
        self.event_pub.publish(event)
        message = f"labelled {target.episode_id} as {LABELS[outcome]} (via {via})"
        self.get_logger().info(message)
        return True, message


def intervention_state(out: ArbiterOutput, episode_id: str, interventions: int) -> InterventionState:
    sec, nanosec = divmod(round(out.since * 1e9), 1_000_000_000)
    return InterventionState(
        controller=int(out.controller),
        since=Time(sec=sec, nanosec=nanosec),
        source_device=out.device,
        episode_id=episode_id,
        interventions_in_episode=interventions,
    )


def main(args: list[str] | None = None) -> int:
    return run_node(TeleopArbiterNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
