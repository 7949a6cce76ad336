"""`sop`: the command line of sop_ros. `sop <command> --help` explains each command."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from sop_ros.configs import ConfigError, load_config

DEMO_TASKS = ["reach-v3", "pick-place-v3"]


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


def cmd_collect_demos(args: argparse.Namespace) -> int:
    require_ros("collect-demos")
    from sop_ros.sim.collect_demos import collect

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    summary = collect(args.config, tasks, args.episodes_per_task, args.robots, Path(args.out), args.seed)
    return collection_exit_code(summary)


def cmd_eval(args: argparse.Namespace) -> int:
    require_ros("eval")
    from sop_ros.sim.evaluate import evaluate

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    report = evaluate(args.policy, args.config, tasks, args.episodes_per_task, args.robots, Path(args.out), args.seed)
    return 0 if not report["failed"] and not report["missing_tasks"] else 1


def cmd_bench_inference(args: argparse.Namespace) -> int:
    require_ros("bench inference")
    from sop_ros.bench.inference import run
    from sop_ros.configs.model import ModelConfig

    model = load_config(ModelConfig, args.model_config) if args.model_config else None
    result = run(Path(args.json), args.policy, args.iterations, args.swaps, args.threads, args.control_hz, model)
    return 0 if result["met"] else 1


def collection_exit_code(summary: dict) -> int:
    """0 when every robot run ended cleanly and episodes were recorded."""
    return 0 if not summary["failed"] and summary["total"]["episodes"] > 0 else 1


def cmd_pretrain(args: argparse.Namespace) -> int:
    from sop_ros.configs import from_dict
    from sop_ros.configs.model import ModelConfig
    from sop_ros.learner.pretrain import PretrainConfig, pretrain

    model = load_config(ModelConfig, args.model_config) if args.model_config else from_dict(ModelConfig, {})
    config = PretrainConfig(
        demos=args.demos, out=args.out, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.lr, seed=args.seed, device=args.device, model=model, demos_per_task=args.demos_per_task,
    )  # fmt: skip
    pretrain(config)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sop_ros.model.export import example_inputs, export_onnx, parity
    from sop_ros.model.vla import load_checkpoint

    metadata = export_onnx(args.policy, args.out, guidance=args.guidance)
    model, _ = load_checkpoint(args.policy)
    worst = max(parity(args.policy, args.out, example_inputs(model, b, seed=b), args.guidance) for b in (1, 4))
    print(f"exported {metadata['sop_ros.version']} to {args.out}; torch vs ONNX Runtime max abs diff {worst:.2e}")
    return 0 if worst <= 1e-4 else 1


def cmd_ingest(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from sop_ros.configs.learner import LearnerConfig
    from sop_ros.learner.episode_ingest import EpisodeIngestService
    from sop_ros.learner.episode_store import EpisodeStore

    config = load_config(LearnerConfig, args.config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    store = EpisodeStore(config.store_dir)
    try:
        service = EpisodeIngestService(store, config.ingest)
    except RuntimeError as err:
        print(f"sop ingest: {err}", file=sys.stderr)
        return 1
    print(f"sop ingest: {store.count()} episodes in {config.store_dir}; listening on "
          f"{list(config.ingest.zenoh.listen) or list(config.ingest.zenoh.connect)}", flush=True)  # fmt: skip
    stop.wait(args.duration)
    service.close()
    print(f"sop ingest: stopped; {store.count()} episodes in {config.store_dir}")
    store.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    require_ros("demo")
    from sop_ros.sim.collect_demos import collect

    out = Path(args.out) / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    print("sop demo: two simulated robots record scripted demonstrations of two tasks over ROS 2")
    summary = collect(args.config, DEMO_TASKS, args.episodes, 2, out)
    print(f"\nEach episode is one MCAP file (open one in Foxglove, or read it with mcap-ros2-support): {out}/robot_*/")
    return collection_exit_code(summary)


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

    p = sub.add_parser("collect-demos", help="record scripted demonstrations with a fleet of simulated robots")
    p.add_argument("--tasks", required=True, help="comma-separated Meta-World tasks, e.g. reach-v3,push-v3")
    p.add_argument("--episodes-per-task", type=int, required=True, metavar="N")
    p.add_argument("--robots", type=int, default=1, metavar="R", help="simulated robots in parallel (default 1)")
    p.add_argument("--out", required=True, metavar="DIR", help="episodes go to DIR/<robot>/<episode>.mcap")
    p.add_argument("--config", default="config/sim.yaml", help="base simulated robot YAML (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_collect_demos)

    p = sub.add_parser("pretrain", help="train the base policy on recorded demonstrations (behaviour cloning)")
    p.add_argument("--demos", required=True, metavar="DIR", help="recorded episodes (only successes are used)")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint to write; loss curve goes beside it")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument(
        "--demos-per-task",
        type=int,
        default=0,
        metavar="N",
        help="train on the first N successful demonstrations of each task (default: all)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--model-config", metavar="YAML", help="model size and shape (ModelConfig fields)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="run a policy on simulated robots through the real nodes; success per task")
    p.add_argument("--policy", required=True, metavar="CKPT_OR_ONNX", help="a checkpoint (.pt) or an exported .onnx")
    p.add_argument("--tasks", required=True, help="comma-separated Meta-World tasks")
    p.add_argument("--episodes-per-task", type=int, required=True, metavar="N")
    p.add_argument("--robots", type=int, default=2, metavar="R", help="simulated robots in parallel (default 2)")
    p.add_argument("--out", default="runs/eval", metavar="DIR", help="episodes and eval.json (default: %(default)s)")
    p.add_argument("--config", default="config/sim_policy.yaml", help="base robot YAML (default: %(default)s)")
    p.add_argument("--seed", type=int, default=100_000, help="first seed; demos use 0.. (default: %(default)s)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmarks that write JSON")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bench.add_parser("inference", help="runtimes side by side, node overhead, hot-swaps under load")
    p.add_argument("--json", required=True, metavar="FILE", help="where the results go")
    p.add_argument("--policy", metavar="CKPT", help="a checkpoint (default: an untrained default-size model)")
    p.add_argument("--iterations", type=int, default=300, help="inferences per measurement (default %(default)s)")
    p.add_argument("--swaps", type=int, default=100, help="hot-swaps (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default %(default)s)")
    p.add_argument("--control-hz", type=float, default=30.0)
    p.add_argument("--model-config", metavar="YAML", help="size of the untrained model timed (ModelConfig fields)")
    p.set_defaults(func=cmd_bench_inference)

    p = sub.add_parser("export", help="export a checkpoint to one ONNX graph per inference step")
    p.add_argument("--policy", required=True, metavar="CKPT")
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    p.add_argument("--guidance", type=float, default=1.0, help="RECAP guidance weight beta (default 1)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ingest", help="the cloud's episode ingest alone: robots' uploads into the episode store")
    p.add_argument("--config", default="config/learner.yaml", help="learner YAML: store_dir and its ingest section")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("demo", help="the main job: two simulated robots recording demonstrations, with a summary")
    p.add_argument("--config", default="config/sim.yaml", help="base simulated robot YAML (default: %(default)s)")
    p.add_argument("--episodes", type=int, default=3, help="episodes per task (default: %(default)s)")
    p.add_argument("--out", default="runs/demo", help="parent directory of the run (default: %(default)s)")
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
