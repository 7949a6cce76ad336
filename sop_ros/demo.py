"""`sop demo`: one simulated robot runs its nodes as separate processes over ROS 2, operated by the scripted
operator through the teleop arbiter; an observer in this process reports what crossed the topics."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter

from sop_ros.configs import ConfigError, load_config
from sop_ros.configs.robot import RobotLaunchConfig
from sop_ros.robot.launch_plan import plan


def with_episodes(config: RobotLaunchConfig, episodes: int | None) -> RobotLaunchConfig:
    sim = config.nodes.sim_robot
    if sim is None:
        raise ConfigError("nodes.sim_robot: the demo needs a simulated robot in its config")
    if episodes is not None:
        sim = dataclasses.replace(sim, episodes=episodes)
    if sim.episodes == 0:
        raise ConfigError("nodes.sim_robot.episodes=0: the demo needs a bounded run (set episodes >= 1)")
    return dataclasses.replace(config, nodes=dataclasses.replace(config.nodes, sim_robot=sim))


class Observer:
    """Counts what one robot publishes; spun on its own thread, without rclpy's signal handlers."""

    def __init__(self, config: RobotLaunchConfig) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import Float64MultiArray

        from sop_ros.msg import EpisodeEvent, InterventionState
        from sop_ros.robot import topics

        self.ends: list[EpisodeEvent] = []
        self.controllers: Counter[int] = Counter()
        self.counts: Counter[str] = Counter()
        self.first_last: dict[str, tuple[float, float]] = {}
        self._rclpy = rclpy
        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("demo_observer", namespace=f"/{config.robot.id}")
        sim = config.nodes.sim_robot
        streams = {
            topics.JOINT_STATES: (JointState, topics.RECORD),
            topics.ROBOT_COMMAND: (Float64MultiArray, topics.RECORD),
        }
        for cam in sim.cameras:
            if sim.image_transport in ("raw", "both"):
                streams[topics.CAMERA_IMAGE.format(camera=cam)] = (Image, topics.SENSOR)
            if sim.image_transport in ("compressed", "both"):
                streams[topics.CAMERA_COMPRESSED.format(camera=cam)] = (CompressedImage, topics.SENSOR)
        for topic, (msg_type, qos) in streams.items():
            self.node.create_subscription(msg_type, topic, lambda _m, t=topic: self.count(t), qos)
        self.node.create_subscription(EpisodeEvent, topics.EPISODE_EVENTS, self.on_event, topics.EVENTS)
        self.node.create_subscription(
            InterventionState,
            topics.INTERVENTION_STATE,
            lambda m: self.controllers.update([m.controller]),
            topics.EVENTS,
        )
        self._end_type = EpisodeEvent.EVENT_END
        self._success = EpisodeEvent.OUTCOME_SUCCESS
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def count(self, topic: str) -> None:
        now = time.monotonic()
        self.counts[topic] += 1
        self.first_last[topic] = (self.first_last.get(topic, (now, now))[0], now)

    def rate(self, topic: str) -> float:
        first, last = self.first_last[topic]
        return (self.counts[topic] - 1) / (last - first) if last > first else 0.0

    def on_event(self, msg) -> None:
        if msg.event == self._end_type:
            self.ends.append(msg)
            verdict = "success" if msg.outcome == self._success else "failure"
            print(f'  episode {msg.episode_id}: {msg.task} "{msg.instruction}" -> {verdict} in {msg.steps} steps')

    def close(self) -> None:
        self._executor.shutdown()
        self._thread.join(timeout=5)
        self.node.destroy_node()
        self._rclpy.try_shutdown()


def run_demo(config_path: str, episodes: int | None = None) -> int:
    from sop_ros.robot.launcher import ProcessLauncher

    config = with_episodes(load_config(RobotLaunchConfig, config_path), episodes)
    sim = config.nodes.sim_robot
    specs = plan(config)
    print(
        f"sop demo: robot /{config.robot.id} from {config_path}: {', '.join(s.name for s in specs)} "
        f"as {len(specs)} processes; {sim.episodes} episodes of {sim.task}"
    )
    observer = Observer(config)
    start = time.monotonic()
    try:
        # Bounded even if the simulator stalls: every episode's step budget at the control rate, with margin.
        code = ProcessLauncher(specs).run(duration_s=30.0 + 3.0 * sim.episodes * sim.max_episode_steps / sim.control_hz)
    finally:
        observer.close()
    elapsed = time.monotonic() - start
    successes = sum(e.outcome == observer._success for e in observer.ends)
    print(
        f"\nsummary after {elapsed:.1f} s: {len(observer.ends)}/{sim.episodes} episodes ended, {successes} successes "
        f"(Meta-World's success signal)"
    )
    for topic, n in sorted(observer.counts.items()):
        print(f"  /{config.robot.id}/{topic}: {n} messages ({observer.rate(topic):.1f}/s while publishing)")
    names = {0: "policy", 1: "operator", 2: "hold"}
    print(
        "  intervention states seen: " + ", ".join(f"{names[c]} x{n}" for c, n in sorted(observer.controllers.items()))
    )
    print(f"  nodes stopped cleanly: {'yes' if code == 0 else 'no'}")
    return code if len(observer.ends) == sim.episodes else 1
