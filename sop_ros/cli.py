"""`sop`: the command line of sop_ros. `sop <command> --help` explains each command."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from sop_ros.configs import ConfigError, load_config
from sop_ros.fleet.evaluate import EVAL_SEED
from sop_ros.fleet.headroom import SELECTION_SEED


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
    from sop_ros.robot import stop_signals

    stop_signals.exit_on_signal()  # Ctrl-C while the nodes' modules load: nothing started yet, exit 0
    require_ros("robot")
    from sop_ros.configs.robot import RobotLaunchConfig
    from sop_ros.launch.plan import plan

    specs = plan(load_config(RobotLaunchConfig, args.config))
    if args.single_process:
        from sop_ros.launch.launcher import run_single_process
        from sop_ros.robot.node_process import end_process

        end_process(run_single_process(specs, args.duration))
    from sop_ros.launch.launcher import ProcessLauncher

    return ProcessLauncher(specs).run(args.duration)


def cmd_check_config(args: argparse.Namespace) -> int:
    from sop_ros.configs.learner import LearnerConfig
    from sop_ros.configs.robot import RobotLaunchConfig

    kind = args.kind if args.kind != "auto" else config_kind(Path(args.file))
    load_config({"robot": RobotLaunchConfig, "learner": LearnerConfig}[kind], args.file)
    print(f"{args.file}: valid {kind} config")
    return 0


def config_kind(path: Path) -> str:
    """A robot YAML has `robot:` and `nodes:` at its top; anything else is read as a learner's (its errors name the
    keys a learner config allows)."""
    import yaml

    try:
        top = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return "robot"  # load_config reports what is wrong with the file itself
    return "robot" if not isinstance(top, dict) or {"robot", "nodes"} & set(top) else "learner"


def cmd_collect_demos(args: argparse.Namespace) -> int:
    require_ros("collect-demos")
    from sop_ros.fleet.collect_demos import collect

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    summary = collect(args.config, tasks, args.episodes_per_task, args.robots, Path(args.out), args.seed)
    return collection_exit_code(summary)


def cmd_eval(args: argparse.Namespace) -> int:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.in_process:
        from sop_ros.fleet.in_process_eval import evaluate_in_process

        evaluate_in_process(args.policy, args.config, tasks, args.episodes_per_task, args.robots, Path(args.out),
                            args.seed)  # fmt: skip
        return 0
    require_ros("eval")
    from sop_ros.fleet.evaluate import evaluate

    report = evaluate(args.policy, args.config, tasks, args.episodes_per_task, args.robots, Path(args.out), args.seed)
    return 0 if not report["failed"] and not report["missing_tasks"] else 1


def cmd_eval_check(args: argparse.Namespace) -> int:
    require_ros("eval-check")
    from sop_ros.fleet.in_process_eval import check_agreement

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    check_agreement(args.policy, args.config, tasks, args.episodes_per_task, Path(args.out), args.seed,
                    Path(args.results) if args.results else None)  # fmt: skip
    return 0  # measured: whether the agreement target is met is in the JSON and the last line printed


def cmd_operator_check(args: argparse.Namespace) -> int:
    from sop_ros.fleet.operator_check import check_operator

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    report = check_operator(args.policy, args.config, tasks, args.episodes_per_task, args.workers,
                            Path(args.results), args.seed, args.lift_cap)  # fmt: skip
    for task, comparison in report["comparison"].items():
        print(f"{task}: takeover success {comparison['text'] if comparison else 'not compared (no takeovers)'}")
    for task, comparison in (report["cap_comparison"] or {}).items():
        print(f"{task}: with the lift cap {comparison['text'] if comparison else 'not compared (no takeovers)'}")
    print(f"report: {Path(args.results).with_suffix('.md')}")
    return 0


def cmd_canary_check(args: argparse.Namespace) -> int:
    require_ros("canary-check")
    from sop_ros.configs.learner import CanaryConfig
    from sop_ros.fleet.canary_check import CanaryCheckConfig, canary_check

    canary = CanaryConfig(enabled=True, share=args.share, min_episodes=args.min_episodes, alpha=args.alpha)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    report = canary_check(CanaryCheckConfig(args.base, args.better, args.robots, tasks, args.warmup_episodes, canary,
                                            args.minutes, learner_yaml=args.config, robot_yaml=args.robot_config,
                                            out=args.out, results=args.results))  # fmt: skip
    for r in report["rollouts"]:
        print(f"{r['name']} ({r['version']}): {r.get('verdict', 'no verdict')} after {r['canary_episodes']} canary "
              f"episodes; robots outside the canary ran it {r['outside_the_canary_ran_it_before_the_verdict']} "
              "times before the verdict")  # fmt: skip
    print(f"report: {Path(args.results) / 'canary.md'}")
    return 0 if [r.get("verdict") for r in report["rollouts"]] == ["roll back", "promote"] else 1


def cmd_rtc_check(args: argparse.Namespace) -> int:
    from sop_ros.fleet.rtc_check import RtcCheckConfig, rtc_check

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    delays = tuple(float(d) for d in args.delays_ms.split(",") if d.strip())
    report = rtc_check(RtcCheckConfig(args.policy, tasks, args.episodes_per_task, delays, args.replan_steps,
                                      args.config, args.workers, args.seed, args.out, args.results))  # fmt: skip
    for c in report["comparisons"]:
        print(f"rtc against {c['against']} at {c['delay_ms']:g} ms: success {c['text']}; seam change median "
              f"{c['seam_median_ratio']:.2f}x (Mann-Whitney p = {c['seam_p']:.2g})")  # fmt: skip
    print(f"report: {Path(args.results) / 'rtc.md'}")
    return 0


def cmd_chaos_fuzz(args: argparse.Namespace) -> int:
    from sop_ros.bench.fuzz import BOUNDARIES, run

    boundaries = BOUNDARIES if args.episodes else tuple(b for b in BOUNDARIES if b != "episode_files")
    print(f"sop chaos fuzz: {args.inputs} generated inputs at each of {', '.join(boundaries)}", flush=True)
    report = run(Path(args.json), args.inputs, Path(args.episodes) if args.episodes else None, boundaries)
    print(f"wrote {args.json}: {report['crashes']} crashes, {report['legit_failed']} legitimate inputs not served")
    return 1 if report["crashes"] or report["legit_failed"] else 0


def cmd_what_if(args: argparse.Namespace) -> int:
    from sop_ros.fleet.what_if import AS_RUN, WhatIfConfig, parse_override, what_if

    try:
        seeds = tuple(int(s) for s in args.learner_seeds.split(",") if s)
    except ValueError:
        what = f"--learner-seeds {args.learner_seeds!r}"
        raise ConfigError(f"{what}: must be comma-separated integers, e.g. 0,1") from None
    config = WhatIfConfig(args.run, tuple(parse_override(o) for o in args.overrides), args.name, args.steps,
                          args.episodes_per_task, args.seed, args.workers, args.eval_config, seeds)  # fmt: skip
    result = what_if(config)
    print(f"sop what-if: {', '.join(f'{k}={v}' for k, v in config.overrides) or AS_RUN} against as run: "
          f"{result['against_as_run']['text']}")
    return 0


def cmd_dagger_round(args: argparse.Namespace) -> int:
    from sop_ros.fleet.dagger_round import DaggerRoundConfig, dagger_round
    from sop_ros.fleet.what_if import parse_override

    config = DaggerRoundConfig(args.out, args.config, args.robot_config,
                               tuple(parse_override(o) for o in args.operator), args.episodes_per_task, args.steps,
                               args.seed, args.workers)  # fmt: skip
    summary = dagger_round(config)
    for task, c in summary["tasks"].items():
        print(f"{task}: {c['autonomous_successes']} of {c['episodes']} finished by the policy alone; "
              f"{c['takeover_successes']} of {c['takeovers']} takeovers succeeded ({c['successful_operator_steps']} "
              f"operator steps in them)")
    print(f"a finished run for `sop what-if {args.out} --set algorithm=bc` (the demonstrations alone) and others")
    return 0


def cmd_bench_inference(args: argparse.Namespace) -> int:
    from sop_ros.configs.model import ModelConfig

    model = load_config(ModelConfig, args.model_config) if args.model_config else None
    if args.runtimes_only:
        from sop_ros.bench.inference import run_runtimes_only

        run_runtimes_only(Path(args.json), args.policy, args.iterations, args.threads, args.device, model)
        return 0
    require_ros("bench inference")
    from sop_ros.bench.inference import run

    run(Path(args.json), args.policy, args.iterations, args.swaps, args.threads, args.control_hz, model, args.device)
    return 0  # measured: whether the targets are met is in the JSON and the last line printed


def cmd_bench_bridge(args: argparse.Namespace) -> int:
    require_ros("bench bridge")
    from sop_ros.bench.bridge import run

    run(Path(args.json), args.episodes, args.episode_mb, args.robots, Path(args.workdir))
    return 0  # measured: whether the targets are met is in the JSON and the last line printed


def cmd_bench_learner(args: argparse.Namespace) -> int:
    from sop_ros.bench.learner import run
    from sop_ros.episodes.reader import episode_files

    if not episode_files(args.demos):
        print(f"sop bench learner: no recorded episodes in {args.demos}: record them first, e.g. `sop collect-demos "
              f"--tasks reach-v3,drawer-open-v3,window-open-v3 --episodes-per-task 10 --robots 2 --out {args.demos}` "
              "(results/README.md, fleet/)", file=sys.stderr)  # fmt: skip
        return 2
    report = run(Path(args.json), Path(args.demos), args.steps, args.batch_size, args.robots, args.threads,
                 args.device, args.model_config or "", args.precision)  # fmt: skip
    fed = f"recorded episodes at {report['real_over_synthetic']} of synthetic batches' samples/s"
    ingest = f"; while ingesting {report['ratio']} of alone (target >= {report['target']})" if args.robots else ""
    print(f"wrote {args.json}: {fed}{ingest}")
    return 0


def collection_exit_code(summary: dict) -> int:
    """0 when every robot run ended cleanly and episodes were recorded."""
    return 0 if not summary["failed"] and summary["total"]["episodes"] > 0 else 1


def cmd_pretrain(args: argparse.Namespace) -> int:
    from sop_ros.configs import from_dict
    from sop_ros.configs.model import ModelConfig
    from sop_ros.episodes.reader import episode_files
    from sop_ros.learner.pretrain import PretrainConfig, pretrain

    if not Path(args.demos).exists() or not episode_files(args.demos):
        print(f"sop pretrain: --demos {args.demos}: no recorded episodes; record them first, e.g. `sop collect-demos "
              f"--tasks reach-v3,push-v3 --episodes-per-task 10 --robots 2 --out {args.demos}`", file=sys.stderr)
        return 2

    model = load_config(ModelConfig, args.model_config) if args.model_config else from_dict(ModelConfig, {})
    config = PretrainConfig(
        demos=args.demos, out=args.out, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.lr, seed=args.seed, device=args.device, model=model, demos_per_task=args.demos_per_task,
        cameras=tuple(c.strip() for c in args.cameras.split(",") if c.strip()),
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
    )  # fmt: skip
    pretrain(config)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sop_ros.model.export import example_inputs, export_onnx, parity
    from sop_ros.model.vla import load_checkpoint

    if not Path(args.policy).is_file():
        print(f"sop export: --policy {args.policy}: no such checkpoint; train one first: `sop pretrain --demos DIR "
              f"--out {args.policy}`", file=sys.stderr)  # fmt: skip
        return 2

    metadata = export_onnx(args.policy, args.out, guidance=args.guidance)
    model, _ = load_checkpoint(args.policy)
    worst = max(parity(args.policy, args.out, example_inputs(model, b, seed=b), args.guidance) for b in (1, 4))
    print(f"exported {metadata['sop_ros.version']} to {args.out}; torch vs ONNX Runtime max abs diff {worst:.2e}")
    return 0 if worst <= 1e-4 else 1


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from sop_ros.learner.lerobot import ExportConfig, export_lerobot

    config = ExportConfig(out=Path(args.out), store=args.store and Path(args.store),
                          demos=args.demos and Path(args.demos), fps=args.fps, repo_id=args.repo_id,
                          tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()))  # fmt: skip
    try:
        export_lerobot(config)
    except ConfigError:
        raise
    except ValueError as err:
        print(f"sop dataset export: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_dataset_import(args: argparse.Namespace) -> int:
    require_ros("dataset import")  # episode files hold ROS 2 messages
    from sop_ros.fleet.lerobot_import import import_lerobot

    try:
        import_lerobot(Path(args.dataset), Path(args.out))
    except (ValueError, FileExistsError) as err:
        print(f"sop dataset import: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_cloud(args: argparse.Namespace) -> int:
    from sop_ros.cloud.services import run_cloud
    from sop_ros.configs.learner import LearnerConfig

    config = load_config(LearnerConfig, args.config)
    return run_cloud(config, args.duration, serve_policies=args.command == "cloud", name=args.command)


def cmd_learner(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import time

    from sop_ros.configs.learner import LearnerConfig, learner_status_path
    from sop_ros.learner.online import format_status, run_learner

    config = load_config(LearnerConfig, args.config)
    if args.action == "status":
        path = learner_status_path(config.checkpoint_dir)
        if not path.is_file():
            print(f"sop learner status: no {path} yet (is `sop learner --config {args.config}` running?)",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(format_status(json.loads(path.read_text()), time.time()))
        return 0
    if args.max_steps is not None:
        config = dataclasses.replace(config, max_steps=args.max_steps)
    run_learner(config)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from sop_ros.bridge.artifacts import make_signing_keys

    out = Path(args.out)
    robots = [r.strip() for r in args.robots.split(",") if r.strip()]
    try:
        private, public = make_signing_keys(out, args.force)
        print(f"policy signing key (keep on the learner, mode 0600): {private}\n"
              f"public key (copy to every robot: nodes.bridge.policies.public_key): {public}")  # fmt: skip
        if robots:
            from sop_ros.bridge.certificates import make_fleet_certificates
            from sop_ros.bridge.security import write_access_control

            files = make_fleet_certificates(out / "tls", robots, hosts=args.cloud_host, force=args.force)
            acl = write_access_control(out / "tls" / "access_control.json", robots)
            print(f"mutual TLS: CA {files['ca']} (keep ca.key offline), certificates and keys for cloud and "
                  f"{', '.join(robots)} in {out / 'tls'}; the cloud's access control: {acl}")  # fmt: skip
    except (FileExistsError, ValueError) as err:
        print(f"sop keys: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    import json

    from sop_ros.bridge.artifacts import load_private_key
    from sop_ros.cloud.policy_registry import PolicyRegistry
    from sop_ros.configs.learner import LearnerConfig

    config = load_config(LearnerConfig, args.config).policies
    if not Path(args.policy).is_file():
        print(f"sop publish: --policy {args.policy}: no such file; export a checkpoint first: `sop export --policy "
              f"CKPT --out {args.policy}`", file=sys.stderr)  # fmt: skip
        return 2
    if not config.private_key:
        raise ConfigError(f"{args.config}: policies.private_key is empty: name the fleet's signing key (`sop keys`)")
    try:
        metrics = json.loads(args.metrics)
        announcement = PolicyRegistry(config.registry_dir).publish(
            args.policy, load_private_key(config.private_key), metrics, args.parent
        )
    except (ValueError, OSError) as err:  # JSON, key, ONNX file, version already published
        print(f"sop publish: {err}", file=sys.stderr)
        return 1
    print(f"published {announcement.version} (parent {announcement.parent or 'none'}, {announcement.size} bytes, "
          f"sha256 {announcement.sha256[:16]}...) in {config.registry_dir}; `sop cloud` announces it")  # fmt: skip
    return 0


def cmd_fleet_run(args: argparse.Namespace) -> int:
    require_ros("fleet run")
    from sop_ros.fleet.online_fleet import run

    out = Path(args.out or f"runs/fleet-run/{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
    tasks = [t for t in args.tasks.split(",") if t]
    run(args.config, args.robot_config, tasks, args.robots, args.minutes, args.block, out,
        Path(args.results) if args.results else None, args.bin_minutes, args.frozen, args.sim_minutes,
        single_process=not args.process_per_node)  # fmt: skip
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from sop_ros.fleet.experiments import THRESHOLD, ExperimentConfig, run_experiment

    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s)
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: must be comma-separated integers, e.g. 0,1,2") from None
    config = ExperimentConfig(args.experiment, seeds, args.sim_minutes, args.bin_minutes, args.final_minutes,
                              threshold=args.threshold or THRESHOLD, block=args.block,
                              eval_every_minutes=args.eval_every,
                              eval_episodes_per_task=args.eval_episodes, eval_in_process=not args.eval_nodes,
                              learner_yaml=args.config, learner_budget=args.learner_budget,
                              robot_yaml=args.robot_config, out=args.out,
                              results=args.results, only_arms=tuple(a for a in args.arms.split(",") if a))  # fmt: skip
    if not args.report_only:
        require_ros("experiment")
    run_experiment(config, report_only=args.report_only, prepare_only=args.prepare)
    if not args.prepare:
        print(f"sop experiment {args.experiment}: {Path(args.results) / args.experiment}.md, .json, .png")
    return 0


def cmd_headroom(args: argparse.Namespace) -> int:
    require_ros("headroom")
    from sop_ros.fleet.headroom import HeadroomConfig, measure

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    config = HeadroomConfig(tasks, args.demos_per_task, args.pretrain_steps, episodes_per_task=args.episodes_per_task,
                            workers=args.workers, demo_robot_yaml=args.demo_config, eval_robot_yaml=args.eval_config,
                            out=args.out, results=args.results, seed=args.seed, base=args.base)  # fmt: skip
    report = measure(config)
    print(f"sop headroom: {report['verdict']}; {Path(args.results) / 'headroom'}.md, .json, .png")
    return 0


def cmd_observability(args: argparse.Namespace) -> int:
    from sop_ros.fleet.observability import measure

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    measure(args.config, tasks, args.train, args.test, Path(args.json), args.epochs)
    print(f"sop observability: {args.json} and {Path(args.json).with_suffix('.png')}")
    return 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    import json

    from sop_ros.cloud.services import fetch_fleet_table, format_fleet_table
    from sop_ros.configs.learner import LearnerConfig

    try:
        table = fetch_fleet_table(load_config(LearnerConfig, args.config), args.timeout)
    except RuntimeError as err:
        print(f"sop fleet status: {err}", file=sys.stderr)
        return 1
    print(json.dumps(table, indent=2) if args.json else format_fleet_table(table))
    return 0


def cmd_chaos_bridge(args: argparse.Namespace) -> int:
    require_ros("chaos bridge")
    from sop_ros.bench.chaos_bridge import run

    if args.robots < 1 or args.episodes < 1 or args.kills < 0:
        print("sop chaos bridge: --robots and --episodes must be >= 1, --kills >= 0", file=sys.stderr)
        return 2
    return chaos_exit("bridge", lambda: run(Path(args.json), args.robots, args.episodes, args.kills, args.seed,
                                             Path(args.out)))  # fmt: skip


def chaos_exit(name: str, run) -> int:
    """`sop chaos <name>`'s exit code: 0 when `run()`'s checks passed, 1 when not, 130 when interrupted."""
    try:
        result = run()
    except KeyboardInterrupt:
        print(f"sop chaos {name}: interrupted; the processes it started are stopped", file=sys.stderr)
        return 130
    return 0 if result["passed"] else 1


def cmd_chaos_soak(args: argparse.Namespace) -> int:
    require_ros("chaos soak")
    from sop_ros.fleet.soak import FAULTS, SoakConfig, run

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    faults = FAULTS if args.faults == "all" else tuple(f.strip() for f in args.faults.split(",") if f.strip())
    config = SoakConfig(args.hours, args.robots, args.json, args.out, learner_yaml=args.learner_config,
                        robot_yaml=args.robot_config, tasks=tasks, faults=faults,
                        fault_gap_min=(args.fault_gap_min, args.fault_gap_max), cloud_away_min=args.cloud_away_min,
                        learner_every=args.learner_every, seed=args.seed)  # fmt: skip

    def soak() -> dict:
        report = run(config)
        failed = [name for name, ok in report["checks"].items() if not ok]
        print(f"sop chaos soak: {report['hours']:.2f} h, {sum(report['faults_by_kind'].values())} faults "
              f"({', '.join(f'{k} {n}' for k, n in report['faults_by_kind'].items())}); lost {report['lost']}, "
              f"duplicated {report['duplicated']} of {report['produced']} episodes; "
              + (f"failed: {', '.join(failed)}" if failed else "every check passed") + f"; {args.json}")  # fmt: skip
        return report

    return chaos_exit("soak", soak)


def cmd_chaos_stops(args: argparse.Namespace) -> int:
    require_ros("chaos stops")
    from sop_ros.bench.chaos_stops import run

    if args.cycles < 1 or args.burners < 0:
        print("sop chaos stops: --cycles must be >= 1 and --burners >= 0", file=sys.stderr)
        return 2
    if not Path(args.robot_config).is_file():
        print(f"sop chaos stops: --robot-config {args.robot_config}: no such file (run it from the repository "
              "root, or name a robot YAML)", file=sys.stderr)  # fmt: skip
        return 2
    return chaos_exit("stops", lambda: run(Path(args.json), args.cycles, args.seed, Path(args.out), args.burners,
                                            Path(args.robot_config)))  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> int:
    require_ros("demo")
    from sop_ros.fleet.demo import run_demo

    if args.minutes <= 0 or args.robots < 1:
        print("sop demo: --minutes must be > 0 and --robots >= 1", file=sys.stderr)
        return 2
    try:
        return run_demo(Path(args.out), args.minutes, args.robots)
    except KeyboardInterrupt:
        print("sop demo: interrupted; the processes it started are stopped", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sop",
        description="Scalable Online Post-training of VLA policies across a robot fleet (ROS 2 Jazzy).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("robot", help="start the on-robot nodes described by a YAML config (no ros2 launch needed)")
    p.add_argument("--config", required=True, help="robot YAML, e.g. config/sim.yaml or config/robot.yaml")
    p.add_argument("--single-process", action="store_true", help="all nodes in this process, each on its own executor")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.set_defaults(func=cmd_robot)

    p = sub.add_parser("check-config", help="validate a robot or learner YAML config and report the first error")
    p.add_argument("file")
    p.add_argument("--kind", choices=("auto", "robot", "learner"), default="auto",
                   help="auto (default): a robot config if the file has robot: or nodes: at its top, else a learner's")
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
    p.add_argument("--cameras", default="", help="the policy's camera order, comma-separated, as the robots' ingest "
                   "lists them (default: as the demonstrations were recorded)")
    p.add_argument("--tasks", default="", help="comma-separated tasks to train on (default: every task in --demos)")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="run a policy on simulated robots through the real nodes; success per task")
    p.add_argument("--policy", required=True, metavar="CKPT_OR_ONNX", help="a checkpoint (.pt) or an exported .onnx")
    p.add_argument("--tasks", required=True, help="comma-separated Meta-World tasks")
    p.add_argument("--episodes-per-task", type=int, required=True, metavar="N")
    p.add_argument("--robots", type=int, default=2, metavar="R", help="simulated robots in parallel (default 2)")
    p.add_argument("--out", default="runs/eval", metavar="DIR", help="episodes and eval.json (default: %(default)s)")
    p.add_argument("--config", default="config/sim_policy.yaml", help="base robot YAML (default: %(default)s)")
    p.add_argument("--seed", type=int, default=100_000, help="first seed; demos use 0.. (default: %(default)s)")
    p.add_argument("--in-process", action="store_true",
                   help="step the same policy, preprocessing, simulator and seeds in this process, without ROS "
                        "(R worker processes); how often it agrees with the nodes: sop eval-check")  # fmt: skip
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("eval-check", help="the same episodes through the nodes and in process: how many agree")
    p.add_argument("--policy", required=True, metavar="CKPT_OR_ONNX", help="a checkpoint (.pt) or an exported .onnx")
    p.add_argument("--tasks", required=True, help="comma-separated Meta-World tasks")
    p.add_argument("--episodes-per-task", type=int, required=True, metavar="N")
    p.add_argument("--out", default="runs/eval-check", metavar="DIR", help="both runs and eval_check.json")
    p.add_argument("--config", default="config/sim_policy.yaml", help="base robot YAML (default: %(default)s)")
    p.add_argument("--seed", type=int, default=100_000, help="first seed; demos use 0.. (default: %(default)s)")
    p.add_argument("--results", metavar="DIR", help="where eval_check.json and .md go (default: --out)")
    p.set_defaults(func=cmd_eval_check)

    p = sub.add_parser("what-if", help="a finished fleet run's store retrained offline with other learner settings, "
                       "scored against the same retraining as run")  # fmt: skip
    p.add_argument("run", metavar="RUN", help="a finished `sop experiment` run (<out>/<experiment>/<arm>/seed<k>), "
                   "from the folder the experiment ran in (its config's paths are relative to it)")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a learner setting, dotted for sections (e.g. sampling.online_share_max=0.2); repeatable")
    p.add_argument("--name", default="", help="the variant's folder under RUN/what-if (default: from its settings)")
    p.add_argument("--steps", type=int, default=0, help="learner steps (default: the run's own)")
    p.add_argument("--learner-seeds", default="", metavar="S,S,...", help="retrain every setting once per learner "
                   "seed and pool the scores (default: the run's own seed only)")  # fmt: skip
    p.add_argument("--episodes-per-task", type=int, default=50, metavar="N", help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=SELECTION_SEED, help="first scoring seed (default: the selection "
                   "seeds, %(default)s: choices are never made on the evaluation seeds)")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, metavar="W", help="scoring processes (default: %(default)s)")
    p.add_argument("--eval-config", default="config/sim_policy.yaml", help="robot YAML the policies are scored "
                   "with (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_what_if)

    p = sub.add_parser("dagger-round", help="one round of HG-DAgger in process (the base drives, the scripted "
                       "operator takes over, every episode recorded), as a finished run for `sop what-if`")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="the round's folder (a run for `sop what-if DIR`)")
    p.add_argument("--config", default="config/experiment_learner.yaml", help="learner YAML: tasks, base policy, "
                   "demonstrations (default: %(default)s)")  # fmt: skip
    p.add_argument("--robot-config", default="config/fleet_sim.yaml", help="robot YAML with an intervening operator "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--operator", action="append", default=[], metavar="KEY=VALUE",
                   help="an operator setting for this round (e.g. drift_window=10); repeatable")
    p.add_argument("--episodes-per-task", type=int, default=40, metavar="N", help="(default: %(default)s)")
    p.add_argument("--steps", type=int, default=900, help="learner steps `sop what-if` retrains for (default: "
                   "%(default)s, a 6-minute fleet run's)")  # fmt: skip
    p.add_argument("--seed", type=int, default=300_000, help="first seed, apart from the demonstrations', the "
                   "selection's and the evaluation's (default: %(default)s)")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, metavar="W", help="processes (default: %(default)s)")
    p.set_defaults(func=cmd_dagger_round)

    p = sub.add_parser("rtc-check", help="joining action chunks under inference delay: switch, blend, ensemble and "
                       "real-time chunking, scored in process")  # fmt: skip
    p.add_argument("--policy", required=True, metavar="CKPT|ONNX", help="trained with rtc_max_prefix > 0")
    p.add_argument("--tasks", default="push-wall-v3,coffee-push-v3,dial-turn-v3,reach-v3",
                   help="(default: %(default)s)")
    p.add_argument("--episodes-per-task", type=int, default=50, metavar="N", help="per arm (default: %(default)s)")
    p.add_argument("--delays-ms", default="0,100,300", help="simulated inference delays (default: %(default)s)")
    p.add_argument("--replan-steps", type=int, default=4, help="every arm's (default: %(default)s)")
    p.add_argument("--config", default="config/sim_policy.yaml", help="robot YAML (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="first seed (default: %(default)s, the evaluation's)")
    p.add_argument("--out", default="runs/rtc-check",
                   help="the exported policy and each arm as it ends: run again to go on (default: %(default)s)")
    p.add_argument("--results", default="docs/results/rtc", help="rtc.json, .md, .png (default: %(default)s)")
    p.set_defaults(func=cmd_rtc_check)

    p = sub.add_parser("canary-check", help="canary rollout on a simulated fleet: a broken candidate must be rolled "
                       "back, a better one promoted")  # fmt: skip
    p.add_argument("--base", required=True, metavar="CKPT", help="the incumbent (a `sop pretrain` checkpoint)")
    p.add_argument("--better", required=True, metavar="CKPT", help="a candidate that should be promoted")
    p.add_argument("--robots", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--tasks", default="", help="comma-separated tasks (default: the learner YAML's)")
    p.add_argument("--share", type=float, default=0.25, help="of the robots on canary (default: %(default)s)")
    p.add_argument("--min-episodes", type=int, default=20, help="canary episodes before the verdict "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--alpha", type=float, default=0.05, help="the one-sided test's level (default: %(default)s)")
    p.add_argument("--warmup-episodes", type=int, default=12, help="ended on the incumbent before the first "
                   "candidate (default: %(default)s)")  # fmt: skip
    p.add_argument("--minutes", type=float, default=60.0, help="wall-time bound (default: %(default)s)")
    p.add_argument("--config", default="config/experiment_learner.yaml", help="learner YAML: tasks, ingest "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--robot-config", default="config/fleet_sim.yaml", help="base robot YAML (default: %(default)s)")
    p.add_argument("--out", default="runs/canary-check", help="(default: %(default)s)")
    p.add_argument("--results", default="docs/results/canary", help="canary.json and .md (default: %(default)s)")
    p.set_defaults(func=cmd_canary_check)

    p = sub.add_parser("operator-check", help="how often the scripted operator's takeovers succeed, with its "
                       "back-off and without")  # fmt: skip
    p.add_argument("--policy", required=True, metavar="ONNX", help="the policy that drives until a takeover")
    p.add_argument("--tasks", required=True, help="comma-separated Meta-World tasks")
    p.add_argument("--episodes-per-task", type=int, default=40, metavar="N", help="(default: %(default)s)")
    p.add_argument("--config", default="config/fleet_sim.yaml", help="robot YAML with an intervening operator "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--workers", type=int, default=2, metavar="W", help="processes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SELECTION_SEED, help="first seed (default: %(default)s)")
    p.add_argument("--lift-cap", type=float, default=0.0, metavar="M", help="also an arm whose operator lifts the hand "
                   "at most M metres above the takeover point (lift_cap_m)")  # fmt: skip
    p.add_argument("--results", default="docs/results/operator_back_off", metavar="PATH",
                   help="the report, PATH.json and PATH.md (default: %(default)s)")
    p.set_defaults(func=cmd_operator_check)

    p = sub.add_parser("bench", help="benchmarks that write JSON")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bench.add_parser("inference", help="runtimes side by side, node overhead, hot-swaps under load")
    p.add_argument("--json", required=True, metavar="FILE", help="where the results go")
    p.add_argument("--policy", metavar="CKPT", help="a checkpoint (default: an untrained default-size model)")
    p.add_argument("--iterations", type=int, default=300, help="inferences per measurement (default %(default)s)")
    p.add_argument("--swaps", type=int, default=100, help="hot-swaps (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default %(default)s)")
    p.add_argument("--control-hz", type=float, default=30.0)
    p.add_argument("--model-config", metavar="YAML", help="size of the untrained model timed (config/models/*.yaml)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="the runtimes timed: all this host has, the CPU's, or the GPU's")  # fmt: skip
    p.add_argument("--runtimes-only", action="store_true", help="time the runtimes alone (no ROS needed)")
    p.set_defaults(func=cmd_bench_inference)

    p = bench.add_parser("bridge", help="episode upload and weight distribution against raw Zenoh (TCP loopback)")
    p.add_argument("--json", required=True, metavar="FILE", help="where the results go")
    p.add_argument("--episodes", type=int, default=4, help="episodes uploaded (default %(default)s)")
    p.add_argument("--episode-mb", type=float, default=64.0, help="size of each (default %(default)s MB)")
    p.add_argument("--robots", type=int, default=8, help="robots receiving the weights (default %(default)s)")
    p.add_argument("--workdir", default="runs/bench-bridge",
                   help="scratch space, emptied before and after (default %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_bench_bridge)

    p = bench.add_parser("learner", help="learner samples/s on synthetic batches, on recorded episodes, and while "
                         "ingesting robots' episodes (--robots 0: not)")  # fmt: skip
    p.add_argument("--json", default="results/bench/learner.json", help="report path (default: %(default)s)")
    p.add_argument("--demos", default="runs/fleet/demos", help="recorded episodes to train on and to upload")
    p.add_argument("--steps", type=int, default=150, help="learner steps per run (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--robots", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--model-config", metavar="YAML", help="the model trained from scratch (config/models/*.yaml; "
                   "default: ModelConfig's defaults)")  # fmt: skip
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32", help="the learner's precision "
                   "setting (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_bench_learner)

    p = sub.add_parser("dataset", help="episodes as datasets of other tools: LeRobot (format v3.0) out and in")
    dataset = p.add_subparsers(dest="dataset", required=True, metavar="ACTION")
    p = dataset.add_parser("export", help="write a store's or a demonstrations folder's episodes as a dataset")
    p.add_argument("--format", required=True, choices=("lerobot",), help="lerobot: a LeRobotDataset v3.0")
    p.add_argument("--out", required=True, metavar="DIR", help="the dataset's folder (new or empty)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", metavar="STORE_DIR", help="an episode store (the learner's or cloud's)")
    source.add_argument("--demos", metavar="DEMOS_DIR", help="a folder of episode files, e.g. sop collect-demos' --out")
    p.add_argument("--fps", type=int, default=0, metavar="N",
                   help="frames per second; episodes at another step rate are left out (default: their own rate)")
    p.add_argument("--repo-id", default="", metavar="NAME",
                   help="its name on the Hugging Face Hub, <owner>/<name> (default: sop_ros/<DIR's name>)")
    p.add_argument("--tasks", default="", help="comma-separated tasks to export (default: all)")
    p.set_defaults(func=cmd_dataset_export)
    p = dataset.add_parser("import", help="write a dataset's episodes as episode files the learner reads")
    p.add_argument("--format", required=True, choices=("lerobot",), help="lerobot: a LeRobotDataset v3.0")
    p.add_argument("dataset", metavar="DIR", help="the dataset's folder")
    p.add_argument("--out", required=True, metavar="DEMOS_OR_STORE_DIR",
                   help="a folder of episodes (<DIR>/<robot>/<episode>.mcap, for sop pretrain --demos) or an "
                   "episode store, which indexes them")  # fmt: skip
    p.set_defaults(func=cmd_dataset_import)

    p = sub.add_parser("export", help="export a checkpoint to one ONNX graph per inference step")
    p.add_argument("--policy", required=True, metavar="CKPT")
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    p.add_argument("--guidance", type=float, default=1.0, help="RECAP guidance weight beta (default 1)")
    p.set_defaults(func=cmd_export)

    for name, what, reads in (
        ("ingest", "the cloud's episode ingest alone: robots' uploads into the episode store", "store_dir, ingest"),
        ("cloud", "the cloud's end of the bridge: episode ingest, signed policies, fleet table",
         "store_dir, ingest, policies"),
    ):  # fmt: skip
        p = sub.add_parser(name, help=what)
        p.add_argument("--config", default="config/learner.yaml", help=f"learner YAML ({reads})")
        p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
        p.set_defaults(func=cmd_cloud)

    p = sub.add_parser("learner", help="online post-training: ingest, train, publish (torchrun for data-parallel)")
    p.add_argument("action", nargs="?", choices=("run", "status"), default="run",
                   help="run (default) the learner, or show the running learner's status")  # fmt: skip
    p.add_argument("--config", default="config/learner.yaml", help="learner YAML (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="stop after N learner steps")
    p.set_defaults(func=cmd_learner)

    p = sub.add_parser("chaos", help="fault tests that write JSON")
    chaos = p.add_subparsers(dest="chaos", required=True, metavar="TEST")
    p = chaos.add_parser("fuzz", help="generated bad inputs at every in-process boundary: refused, no crash, "
                         "legitimate inputs still served")  # fmt: skip
    p.add_argument("--json", default="results/chaos/fuzz.json", metavar="FILE", help="(default: %(default)s)")
    p.add_argument("--inputs", type=int, default=10_000, metavar="N", help="per boundary (default: %(default)s)")
    p.add_argument("--episodes", metavar="DIR", help="recorded episodes; the first is damaged in every way "
                   "(without: that boundary is skipped)")  # fmt: skip
    p.set_defaults(func=cmd_chaos_fuzz)

    p = chaos.add_parser("bridge", help="SIGKILL bridges and the ingest while episodes go up: none lost or doubled")
    p.add_argument("--json", required=True, metavar="FILE", help="where the results go")
    p.add_argument("--robots", type=int, default=4, help="bridge processes, robot_0.. (default %(default)s)")
    p.add_argument("--episodes", type=int, default=200, help="episodes produced in all (default %(default)s)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs, bridges and ingest (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="of the kill plan and the episodes (default %(default)s)")
    p.add_argument("--out", default="runs/chaos", metavar="DIR", help="the run (store, outboxes, logs) goes to "
                   "DIR/bridge-<time> (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_chaos_bridge)
    p = chaos.add_parser("soak", help="the whole loop for hours with faults every few minutes: nothing lost, none "
                         "stuck, no growth")  # fmt: skip
    p.add_argument("--hours", type=float, required=True, help="wall hours")
    p.add_argument("--robots", type=int, default=4, help="(default %(default)s)")
    p.add_argument("--json", default="results/chaos/soak.json", metavar="FILE",
                   help="the results; a PNG of every process's memory and threads beside it (default %(default)s)")
    p.add_argument("--out", default="runs/soak", metavar="DIR", help="the fleet's files (default %(default)s)")
    p.add_argument("--tasks", default="reach-v3,push-v3", help="(default %(default)s)")
    p.add_argument("--learner-config", default="config/fleet_learner.yaml", help="(default %(default)s)")
    p.add_argument("--robot-config", default="config/fleet_sim.yaml", help="(default %(default)s)")
    p.add_argument("--faults", default="all", help="the kinds injected in turn, comma-separated (robot_node, "
                   "sensor_gap, ...: sop_ros/fleet/soak.py); default all")  # fmt: skip
    p.add_argument("--fault-gap-min", type=float, default=3.0, help="minutes between faults, at least (default "
                   "%(default)s)")  # fmt: skip
    p.add_argument("--fault-gap-max", type=float, default=6.0, help="and at most (default %(default)s)")
    p.add_argument("--cloud-away-min", type=float, default=10.0, help="how long the cloud stops answering "
                   "(default %(default)s)")  # fmt: skip
    p.add_argument("--learner-every", type=int, default=0, metavar="N", help="the learner's kill and the cloud "
                   "away come in one cycle of faults in N (default 0: the first cycle only)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="of the fault plan (default %(default)s)")
    p.set_defaults(func=cmd_chaos_soak)
    p = chaos.add_parser("stops", help="stop a robot's whole node set at random moments under CPU load: every "
                         "node must exit 0 within 2 s")  # fmt: skip
    p.add_argument("--json", required=True, metavar="FILE", help="where the results go (a PNG goes beside it)")
    p.add_argument("--cycles", type=int, default=200, help="start-run-stop cycles (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="of the run times, signals and cloud (default %(default)s)")
    p.add_argument("--burners", type=int, default=2, help="CPU burners running alongside (default %(default)s)")
    p.add_argument("--robot-config", default="config/sim_policy.yaml",
                   help="the simulated robot, driven by a policy (default: %(default)s)")  # fmt: skip
    p.add_argument("--out", default="runs/chaos", metavar="DIR", help="logs of failed cycles go to "
                   "DIR/stops-<time>/ (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_chaos_stops)

    p = sub.add_parser("keys", help="make the fleet's policy signing key pair (Ed25519)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes policy_signing.key and policy_signing.pub")
    p.add_argument(
        "--robots",
        default="",
        metavar="IDS",
        help="comma-separated robot ids: also make the fleet's "
        "TLS CA, a certificate per robot and for the cloud, and the cloud's access control (in DIR/tls)",
    )
    p.add_argument(
        "--cloud-host",
        action="append",
        default=[],
        metavar="NAME_OR_IP",
        help="a name or address robots reach the cloud at (repeatable; 127.0.0.1 and localhost always)",
    )
    p.add_argument("--force", action="store_true", help="replace existing keys (robots must get the new ones)")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("publish", help="sign an exported policy and make it the fleet's latest version")
    p.add_argument("--config", default="config/learner.yaml", help="learner YAML (policies section)")
    p.add_argument("--policy", required=True, metavar="FILE.onnx", help="from `sop export` (its version is inside)")
    p.add_argument("--metrics", default="{}", metavar="JSON", help="what justifies it, e.g. '{\"success\": 0.82}'")
    p.add_argument("--parent", default=None, help="the version it was trained from (default: the current latest)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("fleet", help="the fleet as the cloud sees it")
    fleet = p.add_subparsers(dest="fleet", required=True, metavar="VIEW")
    p = fleet.add_parser("status", help="robots, the versions they run and hold, outboxes, how fresh their reports")
    p.add_argument("--config", default="config/learner.yaml", help="learner YAML: where the cloud listens")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=cmd_fleet_status)
    p = fleet.add_parser("run", help="simulated robots, scripted operators, bridge and learner: success over time")
    p.add_argument("--config", default="config/fleet_learner.yaml",
                   help="learner YAML: algorithm, base policy, demos (default: %(default)s)")  # fmt: skip
    p.add_argument("--robot-config", default="config/fleet_sim.yaml", help="base robot YAML (default: %(default)s)")
    p.add_argument("--tasks", default="", help="comma-separated tasks (default: the learner's)")
    p.add_argument("--robots", type=int, default=2)
    p.add_argument("--minutes", type=float, default=30.0, help="wall-time bound (default: %(default)s)")
    p.add_argument("--sim-minutes", type=float, default=0.0, metavar="M", help="paced (the learner config's "
                   "pace.steps_per_sim_minute > 0): stop when the fleet's simulated clock reaches M")  # fmt: skip
    p.add_argument("--block", type=int, default=5, help="episodes a robot runs of one task before the next")
    p.add_argument("--bin-minutes", type=float, default=5.0, help="success rate per bin of this many minutes")
    p.add_argument("--out", default=None, help="run directory (default: runs/fleet-run/<time>)")
    p.add_argument("--results", default=None, help="also write fleet_run.json and .png here")
    p.add_argument("--frozen", action="store_true", help="no learner: the base policy throughout (baseline, and "
                   "offline HG-DAgger's collection)")  # fmt: skip
    p.add_argument("--process-per-node", action="store_true", help="each node of a robot in its own process, as "
                   "`ros2 launch` starts them (default: a robot's nodes share one process and executor: less CPU)")
    p.set_defaults(func=cmd_fleet_run)

    p = sub.add_parser("observability", help="can a probe find each task's goal in the policy's input? + frames")
    p.add_argument("--config", default="config/sim_policy.yaml", help="robot YAML: cameras, resolution, marker")
    p.add_argument("--tasks", required=True, help="comma-separated Meta-World tasks")
    p.add_argument("--train", type=int, default=200, metavar="N", help="placements the probe learns from")
    p.add_argument("--test", type=int, default=100, metavar="N", help="held-out placements it is scored on")
    p.add_argument("--epochs", type=int, default=60, help="the probe's training epochs (default: %(default)s)")
    p.add_argument("--json", required=True, metavar="FILE", help="the figures; the frames' panel goes beside it (.png)")
    p.set_defaults(func=cmd_observability)

    p = sub.add_parser("headroom", help="which tasks leave a base policy room to improve: its success per task")
    p.add_argument("--tasks", required=True, help="comma-separated candidate Meta-World tasks")
    p.add_argument("--demos-per-task", type=int, default=10, metavar="N", help="(default: %(default)s)")
    p.add_argument("--pretrain-steps", type=int, default=1500, metavar="S", help="(default: %(default)s)")
    p.add_argument("--episodes-per-task", type=int, default=100, metavar="N", help="scored (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, metavar="W", help="robots / processes (default: %(default)s)")
    p.add_argument("--demo-config", default="config/sim.yaml", help="robot YAML of the demonstrations")
    p.add_argument("--eval-config", default="config/sim_policy.yaml", help="robot YAML of the scoring")
    p.add_argument("--out", default="runs/headroom", help="demonstrations, base policy, scores (default: %(default)s)")
    p.add_argument("--seed", type=int, default=SELECTION_SEED, help="the first scoring seed: apart from the "
                   "experiments' evaluation seeds, which choosing their tasks must not tune on (default: %(default)s)")
    p.add_argument("--base", default="", metavar="CKPT", help="score this base checkpoint (e.g. an experiment's "
                   "shared base) instead of recording demonstrations and pretraining one")  # fmt: skip
    p.add_argument("--results", default="docs/results", help="headroom.json, .md, .png go here")
    p.set_defaults(func=cmd_headroom)

    p = sub.add_parser("experiment", help="the SOP experiments on a simulated fleet: JSON, PNG and markdown reports")
    from sop_ros.fleet.experiments import ARMS

    p.add_argument("experiment", choices=list(ARMS))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--sim-minutes", type=float, default=6.0, help="simulated minutes per run (default: %(default)s)")
    p.add_argument("--bin-minutes", type=float, default=0.5, help="the fleet's success per bin of simulated time")
    p.add_argument("--final-minutes", type=float, default=1.0,
                   help="the fleet's success at the budget: over the last M minutes")
    p.add_argument("--block", type=int, default=3, help="episodes a robot runs of one task before the next")
    p.add_argument("--threshold", type=float, help="success whose time to reach is compared (default: the one fixed "
                   "before the committed runs, sop_ros/fleet/experiments.py)")
    p.add_argument("--eval-every", type=float, default=1.0, metavar="MIN",
                   help="score the learner's policy every MIN simulated minutes (default: %(default)s)")
    p.add_argument("--eval-episodes", type=int, default=50, metavar="N",
                   help="episodes per task of each scoring, on the same seeds (default: %(default)s)")
    p.add_argument("--eval-nodes", action="store_true",
                   help="score through the robot nodes (`sop eval`) rather than in process (as checked equal)")
    p.add_argument("--config", default="config/experiment_learner.yaml", help="paced learner YAML")
    p.add_argument("--learner-budget", type=float, default=1.0, metavar="X",
                   help="X times the YAML's learner steps per simulated minute for every arm, its schedule scaled "
                        "alike (default: 1)")
    p.add_argument("--robot-config", default="config/fleet_sim.yaml", help="base robot YAML")
    p.add_argument("--out", default="runs/experiments", help="runs (resumed from here) (default: %(default)s)")
    p.add_argument("--results", default="docs/results", help="reports (default: %(default)s)")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs, run none")
    p.add_argument("--prepare", action="store_true", help="record the shared demonstrations and pretrain every "
                   "arm's base policy (if missing), run nothing: check a suite on its base (`sop headroom --base`)")
    p.add_argument("--arms", default="", metavar="SLUG,...",
                   help="run only these arms, in this order, named as their run folders (e.g. ema-0.98); "
                   "the report has every arm's finished runs")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("demo", help="the main job: a simulated fleet learning online (demos, base policy, SOP loop)")
    p.add_argument("--minutes", type=float, default=12.0, help="the loop's wall-time bound (default: %(default)s)")
    p.add_argument("--robots", type=int, default=2, help="simulated robots (default: %(default)s)")
    p.add_argument("--out", default="runs/demo", help="demos, base policy and runs go here (default: %(default)s)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sop_ros.robot import fastdds_fix

    fastdds_fix.load()  # before any command imports rclpy (nodes it composes, ROS clients of benches)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"sop {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sop {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
