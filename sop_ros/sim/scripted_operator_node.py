"""An operator played by Meta-World's scripted expert.

It reads the simulator's privileged state (a human would look at the scene) and drives through the same
teleop path a human operator's device uses. In demo mode it holds control for whole episodes; in intervene
mode it watches the policy and takes over when takeover.py says the policy is failing. At each episode's end
it labels the outcome through the arbiter's label service, as a field operator would.
"""

from __future__ import annotations

from rclpy.node import Node
from std_msgs.msg import Float64MultiArray

from sop_ros.configs.robot import ScriptedOperatorConfig
from sop_ros.msg import EpisodeEvent
from sop_ros.robot import topics
from sop_ros.robot.params import declare_config
from sop_ros.robot.spin import run_node
from sop_ros.sim.metaworld_sim import HAND_XYZ, expert_for, split_sim_state
from sop_ros.sim.takeover import Correction, TakeoverMonitor
from sop_ros.srv import LabelEpisode


class ScriptedOperatorNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("scripted_operator", **kwargs)
        self.config = cfg = declare_config(self, ScriptedOperatorConfig)
        self.expert = expert_for(cfg.task)
        self.monitor = TakeoverMonitor(cfg)
        self.correction = Correction(cfg)
        self.in_control = cfg.mode == "demo"
        self.between_episodes = False  # from an END to the next START (a START may be missed at start-up)
        self.takeover_reason = ""  # the policy was judged failing on the last state: take over on the next
        self.command_pub = self.create_publisher(Float64MultiArray, topics.OPERATOR_COMMAND, topics.STREAM)
        self.create_subscription(Float64MultiArray, topics.SIM_STATE, self.on_state, topics.LATEST)
        self.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, self.on_episode_event, topics.EVENTS)
        self.label_client = self.create_client(LabelEpisode, topics.LABEL_EPISODE)
        self.pending_labels: list[LabelEpisode.Request] = []
        self.create_timer(0.5, self.send_pending_labels)

    def on_state(self, msg: Float64MultiArray) -> None:
        state, executed = split_sim_state(msg.data)
        action = self.expert(state)
        if not self.in_control:
            if self.between_episodes or executed is None:
                return  # a robot being reset, or not yet commanded this episode, is not failing: nothing to judge
            if not self.takeover_reason:
                self.takeover_reason = self.monitor.observe(state[HAND_XYZ], executed, action) or ""
                return
            # Judged on the last state and still in its episode: take over. (Acting on the judged state itself
            # could answer an episode's last state after its END, and take over the next episode.)
            self.get_logger().info(f"taking over: {self.takeover_reason}")
            self.in_control = True
            self.correction.start(state[HAND_XYZ])
        action = self.correction.command(state[HAND_XYZ], action)
        self.command_pub.publish(Float64MultiArray(data=action.tolist()))

    def on_episode_event(self, msg: EpisodeEvent) -> None:
        if msg.event in (EpisodeEvent.EVENT_START, EpisodeEvent.EVENT_END):
            self.between_episodes = msg.event == EpisodeEvent.EVENT_END
            self.takeover_reason = ""
        if msg.event == EpisodeEvent.EVENT_START:
            self.monitor.reset()
            self.correction.reset()
            self.in_control = self.config.mode == "demo"
        elif msg.event == EpisodeEvent.EVENT_END:
            # A demonstrator keeps control across the reset: the next episode's first state may arrive before
            # its START event, and an unanswered state makes a lockstep simulator step on a hold of its own.
            # An intervening operator lets the policy answer across it, judging afresh.
            self.in_control = self.config.mode == "demo"
            self.monitor.reset()
            if self.config.label_outcomes and msg.outcome != EpisodeEvent.OUTCOME_ABORT:
                # The simulator's success signal stands in for what a human operator would see.
                request = LabelEpisode.Request(outcome=msg.outcome, episode_id=msg.episode_id, note="scripted")
                self.pending_labels.append(request)
                self.send_pending_labels()

    def send_pending_labels(self) -> None:
        """Labels wait until the arbiter's label service is reachable (it may still be in discovery)."""
        while self.pending_labels and self.label_client.service_is_ready():
            self.label_client.call_async(self.pending_labels.pop(0))


def main(args: list[str] | None = None) -> int:
    return run_node(ScriptedOperatorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
