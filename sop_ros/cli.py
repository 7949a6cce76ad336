"""`sop`: the command line of sop_ros. `sop <command> --help` explains each command."""

from __future__ import annotations

import argparse
import sys

from sop_ros.configs import ConfigError, load_config


def require_ros(command: str) -> None:
    """The robot side needs rclpy and the colcon-built interfaces; say how to get them."""
    try:
        import rclpy  # noqa: F401

        import sop_ros.msg  # noqa: F401
    except ImportError as err:
        raise SystemExit(
            f"sop {command}: needs ROS 2 Jazzy and the built sop_ros interfaces ({err}). On a robot: "
            "`source /opt/ros/jazzy/setup.bash` and your workspace's install/setup.bash; in this repository: "
            "`make build`."
        ) from None


def cmd_robot(args: argparse.Namespace) -> int:
    require_ros("robot")
    from sop_ros.configs.robot import RobotLaunchConfig
    from sop_ros.robot.launch_plan import plan

    specs = plan(load_config(RobotLaunchConfig, args.config))
    if args.single_process:
        from sop_ros.robot.launcher import run_single_process

        return run_single_process(specs, args.duration)
    from sop_ros.robot.launcher import ProcessLauncher

    return ProcessLauncher(specs).run(args.duration)


def cmd_check_config(args: argparse.Namespace) -> int:
    from sop_ros.configs.learner import LearnerConfig
    from sop_ros.configs.robot import RobotLaunchConfig

    cls = {"robot": RobotLaunchConfig, "learner": LearnerConfig}[args.kind]
    load_config(cls, args.file)
    print(f"{args.file}: valid {args.kind} config")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    require_ros("demo")
    from sop_ros.demo import run_demo

    return run_demo(args.config, args.episodes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sop",
        description="Scalable Online Post-training of VLA policies across a robot fleet (ROS 2 Jazzy).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("robot", help="start the on-robot nodes described by a YAML config (no ros2 launch needed)")
    p.add_argument("--config", required=True, help="robot YAML, e.g. config/sim.yaml or config/robot.yaml")
    p.add_argument("--single-process", action="store_true", help="compose all nodes on one executor in this process")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.set_defaults(func=cmd_robot)

    p = sub.add_parser("check-config", help="validate a robot or learner YAML config and report the first error")
    p.add_argument("file")
    p.add_argument("--kind", choices=("robot", "learner"), default="robot")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="the main job: a simulated robot operated over ROS 2, with a summary")
    p.add_argument("--config", default="config/sim.yaml", help="simulated robot YAML (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=None, help="override the number of episodes")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"sop {args.command}: config error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
