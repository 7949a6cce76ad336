"""The experiment sweeps: finished runs are not run again, and the report's figures are computed from the runs."""

import dataclasses
import json
import shutil

import pytest
from conftest import REPO

from sop_ros.configs import ConfigError, load_config
from sop_ros.configs.learner import LearnerConfig
from sop_ros.fleet.demo import demo_tasks
from sop_ros.fleet.experiments import (
    ARMS,
    BASE_DEMOS_PER_TASK,
    NEVER,
    PROBE,
    SETUP,
    ExperimentConfig,
    committed_runs,
    probe_dir,
    run_experiment,
    scaled_budget,
    setup_key,
    shared_base,
    shared_demos,
)

TIER = "unit"  # what the tests need: conftest.TIERS


def fleet_run(robots: int, seed: int, success: list[float], episodes: int = 10) -> dict:
    """A finished run's fleet_run.json: the policy's own success per half-minute bin of simulated time."""
    curve = [{"minute": 0.5 * (i + 1), "episodes": episodes, "success_rate": 1.0, "autonomous_success_rate": s,
              "interventions_per_episode": 1.0 - s} for i, s in enumerate(success)]  # fmt: skip
    # A bin past the budget (robots run a little beyond the learner's last step) is left out of every figure.
    curve.append({"minute": 0.5 * (len(success) + 1), "episodes": 1, "success_rate": 0.0,
                  "autonomous_success_rate": 0.0, "interventions_per_episode": 1.0})  # fmt: skip
    return {"robots": robots, "seed": seed, "curve": curve, "learner_steps": 120, "wall_minutes": 5.0,
            "learner": {"batch_size": 32, "publish_every_steps": 100},
            "online_share": {"reach-v3": {"min": 0.3 + 0.1 * seed, "max": 0.6, "last": 0.5}},
            "per_task": {"reach-v3": {"episodes": 10, "autonomous_success_rate": 0.5}}}  # fmt: skip


def scores(success: list[float], run: str = "run") -> list[dict]:
    """A scored run's scores.json: its policy at 0, 0.5, 1, ... simulated minutes, 10 episodes of one task each;
    minute 0 is the base policy every run shares."""
    return [{"minute": 0.5 * i, "version": "base" if i == 0 else f"{run}-{i}", "success": s,
             "successes": round(10 * s), "episodes": 10, "per_task": {"reach-v3": [round(10 * s), 10]}}
            for i, s in enumerate(success)]  # fmt: skip


def made_before(shared) -> None:
    """The arms' demonstrations and base policy, as a sweep before left them in `shared`: not made again."""
    learner = load_config(LearnerConfig, REPO / "config" / "experiment_learner.yaml")
    demos = shared_demos(shared, demo_tasks(learner), BASE_DEMOS_PER_TASK)
    (demos / "robot_0").mkdir(parents=True)
    (demos / "robot_0" / "e.mcap").write_bytes(b"")
    (demos / "summary.json").write_text("{}")  # the recording finished
    shared_base(shared, BASE_DEMOS_PER_TASK).write_bytes(b"")


def finished_sweep(tmp_path) -> ExperimentConfig:
    """A fleet-scaling sweep of two seeds whose runs all finished and were scored, made with the config returned."""
    made_before(tmp_path / "runs" / "shared")
    config = ExperimentConfig("fleet-scaling", seeds=(0, 1), sim_minutes=2.0, final_minutes=1.0, threshold=0.8,
                              learner_yaml=str(REPO / "config" / "experiment_learner.yaml"),
                              out=str(tmp_path / "runs"), results=str(tmp_path / "results"))  # fmt: skip
    arms = {arm.slug: arm for arm in ARMS["fleet-scaling"]}
    curves = {"1-robot": [0.2, 0.5, 0.6, 0.8], "2-robots": [0.3, 0.8, 0.9, 0.9], "4-robots": [0.8, 0.9, 1.0, 1.0]}
    for seed in (0, 1):
        for slug, success in curves.items():
            run = tmp_path / "runs" / "fleet-scaling" / slug / f"seed{seed}"
            run.mkdir(parents=True)
            shifted = [min(1.0, s + 0.2 * seed) for s in success]
            (run / SETUP).write_text(setup_key(config, arms[slug]))
            (run / "fleet_run.json").write_text(json.dumps(fleet_run(int(slug[0]), seed, shifted)))
            (run / "scores.json").write_text(json.dumps(scores([0.1, *shifted], f"{slug}-{seed}")))
    for name, times, success in (("1 robot", 1, 0.3), ("4 robots", 1, 0.9), ("4 robots", 2, 1.0)):  # made before
        where = probe_dir(tmp_path / "runs" / "fleet-scaling", name, times)
        where.mkdir(parents=True)
        key = setup_key(config, next(a for a in ARMS["fleet-scaling"] if a.name == name))
        (where / SETUP).write_text(key)
        online = 0.8 if name == "1 robot" else 1.0
        (where / PROBE).write_text(json.dumps({
            "arm": name, "seed": 0, "times_budget": times, "learner_steps": 600 * times, "episodes": 40,
            "online": {"success": online, "successes": round(10 * online), "episodes": 10},
            "offline": {"success": success, "successes": round(10 * success), "episodes": 10}, "setup": key}))
    return config


def test_prepare_only_names_the_shared_demonstrations_and_bases_and_runs_nothing(tmp_path):
    config = finished_sweep(tmp_path)
    shutil.rmtree(tmp_path / "runs" / "fleet-scaling")  # no run made: preparing must not start one
    prepared = run_experiment(config, prepare_only=True)
    shared = tmp_path / "runs" / "shared"
    tasks = demo_tasks(load_config(LearnerConfig, config.learner_yaml))
    assert prepared == {BASE_DEMOS_PER_TASK: {"demos": str(shared_demos(shared, tasks, BASE_DEMOS_PER_TASK)),
                                              "base": str(shared_base(shared, BASE_DEMOS_PER_TASK))}}
    assert not (tmp_path / "runs" / "fleet-scaling").exists()
    assert shared_demos(shared, tasks, 40) != shared_demos(shared, tasks[:-1], 40)  # other tasks: recorded anew


def test_a_sweep_resumes_past_its_finished_runs_and_reports_them(tmp_path):
    config = finished_sweep(tmp_path)
    report = run_experiment(config)  # every run finished and scored: nothing runs (no ROS, no simulator needed)

    one, four = report["arms"]["1 robot"], report["arms"]["4 robots"]
    # At the budget: the seeds' final policies pooled, 8/10 and 10/10; the base, shared, counts once: 1/10.
    assert (one["at_budget"]["successes"], one["at_budget"]["episodes"], one["at_budget"]["rate"]) == (18, 20, 0.9)
    assert one["at_budget"]["interval95"] == pytest.approx([0.699, 0.972], abs=1e-3)  # Wilson, by hand
    assert (one["base"]["successes"], one["base"]["episodes"], one["base"]["policies"]) == (1, 10, 1)
    assert one["at_budget"]["per_task"]["reach-v3"]["rate"] == 0.9
    minute_1 = one["curve"][2]  # seed 0's policy 5/10, seed 1's 7/10
    assert (minute_1["minute"], minute_1["policies"], minute_1["successes"], minute_1["episodes"]) == (1.0, 2, 12, 20)
    # The fleet's own episodes without intervention, over the last minute's two bins: (0.6 + 0.8) / 2, (0.8 + 1) / 2.
    assert one["fleet_autonomous_at_budget"] == {"mean": 0.8, "std": 0.1, "n": 2}
    # To 80%: 1 robot at 2.0 and 1.5 min; 4 robots at the first scoring after the base (0.5 min): 3.5x faster.
    assert one["minutes_to_threshold"] == {"mean": 1.75, "std": 0.25, "n": 2, "reached": 2}
    assert four["minutes_to_threshold"]["mean"] == 0.5 and four["speedup"] == "3.5"
    assert one["episodes_per_sim_hour"]["mean"] == 40 * 30  # 40 episodes in 2 simulated minutes
    assert one["samples_per_episode"]["mean"] == 120 * 32 / 40  # the learner's draws per episode brought
    assert one["online_share"] == {"reach-v3": [0.3, 0.6]}  # the range over both seeds
    assert one["largest_drop"] is None  # every curve rises
    written = json.loads((tmp_path / "results" / "fleet-scaling.json").read_text())
    assert written["arms"]["2 robots"]["runs"][0]["fleet_curve"][-1][0] == 2.0  # the bin past the budget left out
    assert written["targets"] == report["targets"] == [
        "Target (4 robots reach 80% at least 3x faster than 1 robot): met: 3.5x.",
        "Target (success at the budget ordered 4 >= 2 >= 1 robots): met: 4 robots 100.0%, 2 robots 95.0%, "
        "1 robot 90.0%.",
        "Target (4 robots above 1 robot at the budget, beyond noise): missed: 100% vs 90%: +10.0% [-7.7%, +30.1%], "
        "two-proportion z = 1.45, p = 0.147, within noise (20 and 20 episodes).",
        "Target (the best online arm gains at least 25 points over its base within the budget): met: 4 robots: "
        "10.0% -> 100.0% (+90.0 points).",
        "Target (no task falls more than 30 points between consecutive scorings of any run): met: no task fell "
        "between scorings.",
    ]  # fmt: skip
    markdown = (tmp_path / "results" / "fleet-scaling.md").read_text()
    assert all(line in markdown for line in report["targets"])
    assert "| 4 robots | 2 | 10% [2%, 40%] | 100% [84%, 100%] | 20 | 0.5 ± 0 (2/2) | 3.5x |" in markdown
    assert "| 4 robots | 1 | 10% | 100% | 100% | 100% | 100% | - | 40 | 0.00 | 96 | - | 5.0 |" in markdown  # run by run
    # The probes: each comparison by the two-proportion test on their 10-episode scores.
    assert "| 4 robots | 0 | 40 | 1200 | 100% | 100% |" in markdown
    assert "- 4 robots: its budget spent after all its data had come, against online: 90% vs 100%: -10.0%" in markdown
    assert "store against 1 robot's: 90% vs 30%: +60.0% [" in markdown and "p = 0.00617, beyond noise" in markdown
    assert (tmp_path / "results" / "fleet-scaling.png").stat().st_size > 0


def test_the_committed_reports_runs_count_in_a_sweep_of_the_same_setup_elsewhere(tmp_path, monkeypatch):
    """Another clone, without the runs' directories: the report's runs of the same setup key are done."""
    config = finished_sweep(tmp_path)
    run_experiment(config)
    made = json.loads((tmp_path / "results" / "fleet-scaling.json").read_text())
    shutil.rmtree(tmp_path / "runs" / "fleet-scaling")
    again = run_experiment(config)  # nothing runs: every run is carried from the report
    assert json.loads(json.dumps(again["arms"])) == made["arms"]
    keys = {arm.name: setup_key(config, arm) for arm in ARMS["fleet-scaling"]}
    assert len(committed_runs(config, keys)) == 6
    assert len(committed_runs(dataclasses.replace(config, seeds=(1, 2)), keys)) == 3  # seed 1's only
    assert again["probes"] == made["probes"] and len(made["probes"]) == 3
    # Other settings, another arm or another base policy's recipe: nothing carried (those runs are made again).
    other = dataclasses.replace(config, eval_episodes_per_task=20)
    assert not committed_runs(other, {arm.name: setup_key(other, arm) for arm in ARMS["fleet-scaling"]})
    one = ARMS["fleet-scaling"][0]
    assert setup_key(config, dataclasses.replace(one, demos_per_task=5)) != keys["1 robot"]
    monkeypatch.setattr("sop_ros.fleet.experiments.BASE_PRETRAIN_STEPS", 3000)
    assert setup_key(config, one) != keys["1 robot"]
    assert setup_key(dataclasses.replace(config, only_arms=("4-robots",)), one) == setup_key(config, one)


def test_a_larger_learner_budget_does_in_simulated_time_what_the_yaml_did_and_is_its_own_setup():
    learner = load_config(LearnerConfig, str(REPO / "config" / "experiment_learner.yaml"))
    assert scaled_budget(learner, 1.0) is learner
    four = scaled_budget(learner, 4.0)
    assert four.pace.steps_per_sim_minute == 4 * learner.pace.steps_per_sim_minute
    for name in ("warmup_steps", "decay_steps", "publish_every_steps", "refresh_every_steps"):
        assert getattr(four, name) == 4 * getattr(learner, name), name
    assert four.pace.lead_steps == 4 * learner.pace.lead_steps
    assert four.sampling.loss_window_steps == 4 * learner.sampling.loss_window_steps
    # The EMA: what a step's weights still count for after a simulated minute is the same.
    per_minute = learner.pace.steps_per_sim_minute
    assert four.ema_decay ** (4 * per_minute) == pytest.approx(learner.ema_decay**per_minute)
    assert (four.learning_rate, four.batch_size, four.tasks) == (learner.learning_rate, learner.batch_size,
                                                                 learner.tasks)  # fmt: skip
    never = dataclasses.replace(learner, publish_every_steps=NEVER)  # a fleet that keeps its base policy
    assert scaled_budget(never, 4.0).publish_every_steps == NEVER
    # The YAML's own budget keeps the key its runs were made under; another is another setup.
    config, arm = ExperimentConfig("fleet-scaling"), ARMS["fleet-scaling"][0]
    assert setup_key(dataclasses.replace(config, learner_budget=1.0), arm) == setup_key(config, arm)
    assert setup_key(dataclasses.replace(config, learner_budget=4.0), arm) != setup_key(config, arm)
    with pytest.raises(ConfigError, match="learner_budget=0: must be > 0"):
        ExperimentConfig("fleet-scaling", learner_budget=0)


def test_experiment_settings_are_checked():
    with pytest.raises(ConfigError, match="must be one of"):
        ExperimentConfig("robots")
    with pytest.raises(ConfigError, match="final_minutes"):
        ExperimentConfig("algorithms", sim_minutes=1.0, final_minutes=2.0)
    with pytest.raises(ConfigError, match="eval_every_minutes"):
        ExperimentConfig("algorithms", sim_minutes=1.0, final_minutes=1.0, eval_every_minutes=0.0)
    with pytest.raises(ConfigError, match=r"threshold=80: must be a success rate in \(0, 1\]"):
        ExperimentConfig("fleet-scaling", threshold=80)
    with pytest.raises(ConfigError, match="only_arms\\[1\\]='8-robots': must be one of 1-robot, 2-robots, 4-robots"):
        ExperimentConfig("fleet-scaling", only_arms=("4-robots", "8-robots"))
    assert [a.slug for a in ARMS["algorithms"]] == ["pretrained-only", "offline-hg-dagger", "sop-hg-dagger",
                                                     "sop-recap"]  # fmt: skip


def test_a_run_is_scored_by_the_policy_the_learner_had_made_at_each_time(tmp_path):
    """The policy at simulated minute t is the newest published at a learner step <= t x rate; each is scored
    once (kept by its sha256: the base, shared by every run, is not scored again)."""
    import torch
    from test_model import TINY

    from sop_ros.bridge.artifacts import load_private_key, make_signing_keys
    from sop_ros.checksums import file_sha256
    from sop_ros.cloud.policy_registry import PolicyRegistry
    from sop_ros.configs.learner import LearnerConfig
    from sop_ros.fleet.experiments import score_run
    from sop_ros.model.export import export_onnx
    from sop_ros.model.vla import VLAPolicy, save_checkpoint

    make_signing_keys(tmp_path / "keys")
    key = load_private_key(tmp_path / "keys" / "policy_signing.key")
    registry = PolicyRegistry(tmp_path / "run" / "fleet" / "policies")
    config = ExperimentConfig("fleet-scaling", sim_minutes=2.5, eval_every_minutes=1.0, eval_episodes_per_task=4,
                              learner_yaml=str(REPO / "config" / "experiment_learner.yaml"),
                              out=str(tmp_path / "runs"))  # fmt: skip
    for i, (version, step) in enumerate([("base", None), ("sop-r-0000300", 300), ("sop-r-0000600", 600)]):
        torch.manual_seed(i)
        save_checkpoint(tmp_path / f"{version}.pt", VLAPolicy(TINY), version=version)
        export_onnx(tmp_path / f"{version}.pt", tmp_path / f"{version}.onnx")
        registry.publish(tmp_path / f"{version}.onnx", key, None if step is None else {"step": float(step)})
        tasks = len(load_config(LearnerConfig, config.learner_yaml).tasks)
        cached = tmp_path / "runs" / "scores" / f"{file_sha256(tmp_path / f'{version}.onnx')[:16]}-4x{tasks}-ip"
        cached.mkdir(parents=True)  # scored before: not scored again (no simulator needed here)
        (cached / "eval.json").write_text(json.dumps({"mean_success_rate": 0.25 * i, "missing_tasks": [], "tasks": {
            "reach-v3": {"episodes": 4, "successes": i, "success_rate": 0.25 * i}}}))  # fmt: skip
    fleet_run = tmp_path / "run" / "fleet_run.json"
    fleet_run.write_text(json.dumps({"learner": {"publish_every_steps": 300}}))
    points = score_run(config, tmp_path / "run", steps_per_sim_minute=300)
    assert [(p["minute"], p["version"], p["success"]) for p in points] == [
        (0.0, "base", 0.0), (1.0, "sop-r-0000300", 0.25), (2.0, "sop-r-0000600", 0.5), (2.5, "sop-r-0000600", 0.5)]
    assert json.loads((tmp_path / "run" / "scores.json").read_text()) == points
    assert points[1] == {"minute": 1.0, "version": "sop-r-0000300", "success": 0.25, "successes": 1, "episodes": 4,
                         "per_task": {"reach-v3": [1, 4]}}  # fmt: skip
    # A learner that publishes nothing (pretrained only, offline HG-DAgger's deployment) still checkpoints a final
    # policy when it stops; its robots never ran it, so every point is the policy they started on.
    fleet_run.write_text(json.dumps({"learner": {"publish_every_steps": NEVER}}))
    points = score_run(config, tmp_path / "run", steps_per_sim_minute=300)
    assert {(p["version"], p["success"]) for p in points} == {("base", 0.0)}


def arm_of(base: tuple[int, int], budget: list[tuple[int, int]] | None = None, drop: dict | None = None) -> dict:
    """An arm's summary from its base's and its seeds' final scorings (successes, episodes), as arm_summary makes;
    no `budget`: three seeds that kept the base policy."""
    from sop_ros.fleet.experiments import arm_summary

    runs = []
    for i, (k, n) in enumerate(budget or [base] * 3):
        points = [{"minute": 0.0, "version": "base", "success": base[0] / base[1], "successes": base[0],
                   "episodes": base[1], "per_task": {"reach-v3": list(base)}},
                  {"minute": 6.0, "version": f"v{i}" if budget else "base", "success": k / n, "successes": k,
                   "episodes": n, "per_task": {"reach-v3": [k, n]}}]  # fmt: skip
        runs.append({"seed": i, "scores": points, "minutes_to_threshold": None,
                     "largest_drop": drop if i == 0 else None, "online_share": {}, "fleet_autonomous_at_budget": None,
                     "episodes_per_sim_hour": 0, "interventions_per_episode": 0, "samples_per_episode": None})
    return arm_summary(runs) | {"speedup": None}


def test_the_algorithms_targets_are_two_proportion_tests_of_pooled_scores():
    """Three seeds x 100 episodes an arm at the budget; the base, shared, one score of 100."""
    from sop_ros.fleet.experiments import target_lines

    base = (40, 100)
    arms = {"pretrained only": arm_of(base), "offline HG-DAgger": arm_of(base, [(50, 100)] * 3),
            "SOP + HG-DAgger": arm_of(base, [(60, 100), (62, 100), (58, 100)]),
            "SOP + RECAP": arm_of(base, [(45, 100)] * 3,
                                  drop={"points": 35.0, "task": "reach-v3", "from_minute": 2.0, "to_minute": 3.0})}
    lines = target_lines({"experiment": "algorithms", "config": {}, "arms": arms})
    # 180/300 vs 150/300: pooled 0.55, z = 0.1 / sqrt(0.55 x 0.45 x 2/300) = 2.46, p = 0.014.
    assert lines[0].startswith("Target (SOP + HG-DAgger above offline HG-DAgger at equal budget, beyond noise): "
                               "met: 60% vs 50%: +10.0% [")  # fmt: skip
    assert lines[0].endswith("z = 2.46, p = 0.0138, beyond noise (300 and 300 episodes).")
    # 135/300 vs the base's 40/100 (three seeds of one policy: its score counts once): 45% vs 40%, within noise.
    assert lines[1].startswith("Target (SOP + RECAP above the base policy, beyond noise): missed: 45% vs 40%")
    assert lines[1].endswith("within noise (300 and 100 episodes).")
    assert lines[2].startswith("Target (SOP + RECAP above SOP + HG-DAgger, beyond noise): missed: 45% vs 60%")
    assert lines[3] == ("Target (the best online arm gains at least 25 points over its base within the budget): "
                        "missed: SOP + HG-DAgger: 40.0% -> 60.0% (+20.0 points).")  # fmt: skip
    assert lines[4] == ("Target (no task falls more than 30 points between consecutive scorings of any run): missed: "
                        "largest fall 35 points: reach-v3, SOP + RECAP seed 0, minute 2 -> 3.")  # fmt: skip
    # RECAP's misses say why where its value network was checked: how well it ranked the fleet's steps.
    fits = [(0.25, 0.6), (-0.1, 0.55), (None, None)]
    for run, (correlation, positive) in zip(arms["SOP + RECAP"]["runs"], fits, strict=True):
        run["value_check"] = {"reach-v3": {"correlation": correlation, "positive_share": positive}}
    lines = target_lines({"experiment": "algorithms", "config": {}, "arms": arms})
    assert lines[1].endswith("; why: its value network's predicted and realised returns correlate -0.10 to 0.25 "
                             "over 2 runs x tasks, and its indicator calls 55%-60% of steps positive: the advantage "
                             "it conditions on barely ranks the fleet's steps.")  # fmt: skip
    assert lines[2].endswith("barely ranks the fleet's steps.") and "why" not in lines[0]  # a met target: no why
    arms["SOP + RECAP"]["runs"][2]["value_check"]["reach-v3"] = {"correlation": 0.8, "positive_share": 0.5}
    assert "why" not in target_lines({"experiment": "algorithms", "config": {}, "arms": arms})[1]  # it ranks them


def test_the_pretrain_scale_targets_weigh_online_experience_against_4x_the_demonstrations():
    from sop_ros.fleet.experiments import target_lines

    small, large = (arm.name for arm in ARMS["pretrain-scale"])
    arms = {small: arm_of((30, 100), [(70, 100)] * 3), large: arm_of((50, 100), [(75, 100)] * 3)}
    lines = target_lines({"experiment": "pretrain-scale", "config": {}, "arms": arms})
    assert lines[0].startswith(f"Target (online, {small} at the budget above the base of {large} (4x the "
                               "demonstrations), beyond noise): met: 70% vs 50%")  # fmt: skip
    assert lines[1] == (f"Target (the online gain of {small} at the budget at least the gain from 4x the "
                        "demonstrations): met: online +40.0% against 4x demonstrations +20.0%.")  # fmt: skip
    arms[large]["runs"] = []
    assert [line.split(":")[0] for line in target_lines({"experiment": "pretrain-scale", "config": {}, "arms": arms})
            ] == ["Target (the best online arm gains at least 25 points over its base within the budget)",
                  "Target (no task falls more than 30 points between consecutive scorings of any run)"]  # fmt: skip


def test_the_learner_settings_say_for_each_arm_whether_a_task_fell_more_than_30_points():
    from sop_ros.fleet.experiments import target_lines

    fall = {"points": 68.0, "task": "window-open-v3", "seed": 0, "from_minute": 4.0, "to_minute": 5.0}
    arms = {"raw": arm_of((40, 100), [(46, 100)], fall), "smoothed": arm_of((40, 100), [(50, 100)]),
            "demonstrations only": arm_of((40, 100), [(90, 100)])}
    lines = target_lines({"experiment": "learner-settings", "config": {}, "arms": arms})
    # Training on the demonstrations alone is no online arm, however much it gains.
    assert lines[0] == ("Target (the best online arm gains at least 25 points over its base within the budget): "
                        "missed: smoothed: 40.0% -> 50.0% (+10.0 points).")  # fmt: skip
    assert lines[1:3] == [
        "Target (no task falls more than 30 points between consecutive scorings of the runs of raw): missed: "
        "largest fall 68 points: window-open-v3, raw seed 0, minute 4 -> 5.",
        "Target (no task falls more than 30 points between consecutive scorings of the runs of smoothed): met: "
        "no task fell between scorings.",
    ]  # fmt: skip


def test_fleet_scaling_misses_say_why_where_the_report_measured_it():
    """No run reached the threshold: its best score says why no speed-up was measured. The 4-robot store retrained
    offline scored no better than the 1-robot store: that says why more robots did not score higher."""
    from sop_ros.fleet.experiments import target_lines

    base = (50, 100)
    arms = {"1 robot": arm_of(base, [(62, 100)] * 3), "2 robots": arm_of(base, [(60, 100)] * 3),
            "4 robots": arm_of(base, [(58, 100), (61, 100), (57, 100)])}
    for arm in arms.values():
        arm["minutes_to_threshold"] = {"reached": 0}
    probes = [{"arm": arm, "seed": 0, "times_budget": 1, "episodes": n, "offline": {"successes": k, "episodes": 200}}
              for arm, n, k in (("1 robot", 96, 120), ("4 robots", 389, 126))]  # fmt: skip
    report = {"experiment": "fleet-scaling", "config": {"threshold": 0.8}, "arms": arms, "probes": probes}
    lines = target_lines(report)
    assert lines[0] == ("Target (4 robots reach 80% at least 3x faster than 1 robot): missed: not measured: seeds "
                        "that reached it within the budget: 1 robot 0/3, 4 robots 0/3; why: the best policy of any "
                        "run scored 62.0% (1 robot seed 2, minute 6).")  # fmt: skip
    why = ("; why: retrained offline with the same learner steps, seed 0's 4 robots store (389 episodes) against its "
           "1 robot store (96): 63% vs 60%: +3.0% [")
    assert why in lines[1] and why in lines[2]  # 126/200 vs 120/200: p = 0.54, within noise
    assert lines[2].endswith("more robots' data did not make a better policy beyond noise.")
    # Where the larger store did make a better policy, the probe is no reason for the miss: no why.
    probes[1]["offline"]["successes"] = 160
    assert all("why" not in line for line in target_lines(report)[1:3])


def test_the_largest_fall_of_a_task_between_scorings_is_found():
    from sop_ros.fleet.experiments import largest_drop

    def at(minute: float, reach: int, push: int) -> dict:
        return {"minute": minute, "per_task": {"reach-v3": [reach, 50], "push-v3": [push, 50]}}

    assert largest_drop([at(0, 10, 10), at(1, 20, 30), at(2, 25, 40)]) is None
    assert largest_drop([at(0, 10, 10), at(1, 45, 30), at(2, 25, 35), at(3, 30, 20)]) == {
        "points": 40.0, "task": "reach-v3", "from_minute": 1, "to_minute": 2}  # 90% -> 50%; push fell 30 later


def test_learner_samples_per_episode_count_the_training_that_made_the_deployed_policy():
    from sop_ros.fleet.experiments import samples_per_episode

    online = fleet_run(2, 0, [0.5])  # 120 learner steps of batch 32
    assert samples_per_episode(online, episodes=40) == 96.0
    assert samples_per_episode(online | {"learner": {"batch_size": 32, "publish_every_steps": NEVER}}, 40) is None
    offline = online | {"learner": {"batch_size": 32, "publish_every_steps": NEVER},
                        "offline_training": {"learner_steps": 600, "episodes": 60}}  # fmt: skip
    assert samples_per_episode(offline, episodes=40) == 320.0  # per episode collected, not deployed


def test_draws_per_fleet_step_say_how_often_the_learner_read_each_step_the_fleet_brought():
    from sop_ros.fleet.experiments import fleet_step_draws

    fixed = fleet_run(1, 0, [0.5]) | {"learner": {"batch_size": 32, "publish_every_steps": 100,
                                                  "sampling": {"online_share_min": 0.2, "online_share_max": 0.2}}}
    # 120 steps x 32 rows x a fifth from the fleet = 768 fleet rows over the 96 fleet steps trainable at the end.
    assert fleet_step_draws(fixed, {"online_steps": 96}) == {"fleet_steps": 96, "draws_per_fleet_step": 8.0}
    adaptive = fixed | {"learner": fixed["learner"] | {"sampling": {"online_share_min": 0.2, "online_share_max": 0.8}}}
    assert fleet_step_draws(adaptive, {"online_steps": 96}) == {"fleet_steps": 96, "draws_per_fleet_step": None}
    assert fleet_step_draws(fixed, {}) == {"fleet_steps": None, "draws_per_fleet_step": None}  # no learner status
    offline = fixed | {"offline_training": {"learner_steps": 600, "episodes": 60}}
    assert fleet_step_draws(offline, {"online_steps": 96})["draws_per_fleet_step"] is None  # deployed, not trained


def test_the_probes_retrain_the_first_finished_run_of_their_arm_and_are_not_run_again(tmp_path, monkeypatch):
    """A sweep whose runs finished but not its probes: each probe trains on its arm's first finished seed's
    store for the run's budget (or twice it) and is scored; a second sweep runs none."""
    from sop_ros.cloud.episode_store import EpisodeStore
    from sop_ros.fleet import experiments

    config = finished_sweep(tmp_path)
    out = tmp_path / "runs" / "fleet-scaling"
    shutil.rmtree(out / "probes")
    EpisodeStore(out / "4-robots" / "seed0" / "fleet" / "store").close()  # an empty store: 0 episodes
    trained = []

    def train_offline(learner, fleet_dir, where, steps):
        trained.append((fleet_dir.parent.parent.name, fleet_dir.parent.name, steps))
        where.mkdir(parents=True)
        (where / "policy.pt").write_bytes(b"")
        return where / "policy.pt"

    monkeypatch.setattr(experiments, "train_offline", train_offline)
    monkeypatch.setattr("sop_ros.model.export.export_onnx", lambda checkpoint, onnx: onnx.write_bytes(b""))
    monkeypatch.setattr(experiments, "evaluate_once", lambda config, policy: {
        "mean_success_rate": 0.5, "tasks": {"reach-v3": {"successes": 5, "episodes": 10, "success_rate": 0.5}}})
    report = run_experiment(config)
    budget = 2 * 150  # 2 simulated minutes at config/experiment_learner.yaml's 150 steps per simulated minute
    assert trained == [("1-robot", "seed0", budget), ("4-robots", "seed0", budget), ("4-robots", "seed0", 2 * budget)]
    one = next(p for p in report["probes"] if p["arm"] == "1 robot")
    assert (one["seed"], one["online"]["success"], one["offline"]) == (0, 0.8, {"success": 0.5, "successes": 5,
                                                                              "episodes": 10})  # fmt: skip
    run_experiment(config)
    assert len(trained) == 3


def test_offline_hg_dagger_trains_on_the_base_policys_run_of_the_same_seed_when_there_is_one(tmp_path, monkeypatch):
    """Its collection is the fleet on the base policy for the budget: the pretrained-only run of that seed, when
    this sweep made it with its own setup; otherwise it is collected again."""
    from sop_ros.configs.learner import LearnerConfig
    from sop_ros.fleet import experiments

    config = ExperimentConfig("algorithms", seeds=(0, 1), sim_minutes=2.0, final_minutes=1.0,
                              learner_yaml=str(REPO / "config" / "experiment_learner.yaml"),
                              out=str(tmp_path / "runs"), results=str(tmp_path / "results"))  # fmt: skip
    base_only, offline = ARMS["algorithms"][0], ARMS["algorithms"][1]
    made_before(tmp_path / "runs" / "shared")
    made = tmp_path / "runs" / "algorithms" / base_only.slug / "seed0"
    made.mkdir(parents=True)
    (made / SETUP).write_text(setup_key(config, base_only) + "\n")
    (made / "fleet_run.json").write_text(json.dumps({"episodes": 40}))
    fleets, trained = [], []

    def fleet(config, learner, robots, seed, run_dir, results=False, offline_training=None):
        fleets.append((run_dir.name, learner.publish_every_steps, offline_training))
        return {"episodes": 30}

    def train_offline(learner, fleet_dir, out, steps):
        trained.append(fleet_dir.relative_to(tmp_path / "runs" / "algorithms"))
        return out / "policy.pt"

    monkeypatch.setattr(experiments, "fleet", fleet)
    monkeypatch.setattr(experiments, "train_offline", train_offline)
    learner = load_config(LearnerConfig, config.learner_yaml)
    runs = tmp_path / "runs" / "algorithms" / offline.slug
    for seed in (0, 1):
        experiments.run_arm(config, offline, seed, learner, runs / f"s{seed}")
    budget = {"learner_steps": 2 * 150, "episodes": 40}  # 2 simulated minutes at 150 learner steps a minute
    assert [str(t) for t in trained] == ["pretrained-only/seed0/fleet", "offline-hg-dagger/s1/collection"]
    assert fleets == [("s0", NEVER, budget),  # seed 0: only the deployment runs
                      ("collection", NEVER, None), ("s1", NEVER, {**budget, "episodes": 30})]  # fmt: skip
    (made / SETUP).write_text("another setup\n")  # made by other settings: not this sweep's collection
    assert experiments.base_policy_run(config, offline, 0) is None


@pytest.mark.parametrize("ended", ["wall time", "interrupted"])
def test_a_run_that_did_not_spend_its_learner_budget_is_not_marked_done(tmp_path, monkeypatch, ended):
    """A fleet run cut short (its wall-time bound, or a stop whose report was still written) is refused, and no
    fleet_run.json marks its directory done: the next sweep runs it again."""
    from sop_ros.configs.learner import LearnerConfig
    from sop_ros.fleet import experiments, online_fleet

    short = {"sim_minutes": 6.0, "episodes": 70, "ended": ended, "learner_steps": 369}
    monkeypatch.setattr(online_fleet, "run", lambda *args, **kwargs: dict(short))
    config = ExperimentConfig("learner-settings", out=str(tmp_path / "runs"), results=str(tmp_path / "results"))
    learner = load_config(LearnerConfig, str(REPO / "config" / "experiment_learner.yaml"))
    with pytest.raises(RuntimeError, match=f"ended by {ended} .*369 steps"):
        experiments.fleet(config, learner, 2, 0, tmp_path / "run", results=True)
    assert not (tmp_path / "run" / "fleet_run.json").exists()


def test_a_score_stands_when_every_episode_was_recorded_whatever_a_robots_exit_code(tmp_path, monkeypatch):
    """A robot whose node had to be killed at its stop, after its last episode, still scored its episodes; a
    score short of episodes is refused, and one kept from before is made again."""
    from sop_ros.fleet import experiments

    config = ExperimentConfig("algorithms", eval_episodes_per_task=2, out=str(tmp_path / "runs"), eval_in_process=False,
                              learner_yaml=str(REPO / "config" / "experiment_learner.yaml"))  # fmt: skip
    policy = tmp_path / "p.onnx"
    policy.write_bytes(b"weights")
    made = []

    def evaluate(policy, robot_yaml, tasks, episodes, robots, out, seed, recorded=2):
        made.append((recorded, seed))
        report = {"tasks": {t: {"episodes": recorded, "successes": 1, "success_rate": 0.5} for t in tasks},
                  "missing_tasks": [],
                  "failed": ["robot_0 reach-v3: exit code 1"], "mean_success_rate": 0.5}  # fmt: skip
        out.mkdir(parents=True)
        (out / "eval.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr("sop_ros.fleet.evaluate.evaluate", lambda *a, **k: evaluate(*a, **k, recorded=1))
    with pytest.raises(RuntimeError, match="exit code 1"):
        experiments.evaluate_once(config, policy)  # one episode of two per task
    monkeypatch.setattr("sop_ros.fleet.evaluate.evaluate", evaluate)
    assert experiments.evaluate_once(config, policy)["mean_success_rate"] == 0.5  # the short one made again
    assert experiments.evaluate_once(config, policy)["mean_success_rate"] == 0.5  # kept: not made again
    assert made == [(1, 100_000), (2, 100_000)]  # on the evaluation seeds
    choosing = dataclasses.replace(config, experiment="learner-settings")
    experiments.evaluate_once(choosing, policy)  # a sweep that chooses scores apart, on the selection seeds
    assert made[-1] == (2, 200_000)


def test_demonstrations_are_recorded_again_unless_their_recording_finished(tmp_path, monkeypatch):
    from sop_ros.fleet import demo

    calls = []

    def collect(robot_yaml, tasks, per_task, robots, out, **kwargs):
        calls.append(sorted(p.name for p in out.glob("*/*.mcap")))  # what an interrupted recording left is gone
        (out / "robot_0").mkdir(parents=True)
        (out / "robot_0" / "e.mcap").write_bytes(b"")
        (out / "summary.json").write_text(json.dumps({"failed": [], "total": {"episodes": 1}}))
        return json.loads((out / "summary.json").read_text())

    monkeypatch.setattr("sop_ros.fleet.collect_demos.collect", collect)
    demos = tmp_path / "demos"
    (demos / "robot_1").mkdir(parents=True)
    (demos / "robot_1" / "cut-short.mcap").write_bytes(b"")  # killed before its summary was written
    demo.record_demos(demos, ["reach-v3"], 2)
    demo.record_demos(demos, ["reach-v3"], 2)  # finished: kept
    assert calls == [[]] and not (demos / "robot_1").exists()


def test_recaps_value_check_is_reported_run_by_run_and_task_by_task():
    from sop_ros.fleet.experiments import value_lines

    check = {"episodes": 12, "predicted": -0.41, "realised": -0.283, "mean_abs_error": 0.2, "correlation": None,
             "positive_share": 0.7}  # fmt: skip
    report = {"arms": {"SOP + RECAP": {"runs": [{"seed": 1, "value_check": {"door-open-v3": check}}]},
                       "SOP + HG-DAgger": {"runs": [{"seed": 1}]}}}  # fmt: skip
    assert value_lines(report)[-1] == "| SOP + RECAP | 1 | door-open-v3 | 12 | -0.410 | -0.283 | 0.200 | - | 70% |"
    assert value_lines({"arms": {"SOP + HG-DAgger": {"runs": [{"seed": 1}]}}}) == []


def test_a_base_policys_recipe_names_what_shapes_its_weights_and_not_how_fast_it_was_made():
    """Runs are matched to their base by this recipe: a setting added later that leaves the weights as they were
    (a faster data path, real-time chunking left off) must not orphan every finished run."""
    from sop_ros.fleet.demo import base_recipe

    recipe = base_recipe(40, 40, 24000)
    assert {"demos", "out", "frame_cache_mb", "frame_cache_workers", "resume_every"}.isdisjoint(recipe["pretraining"])
    assert "rtc_no_prefix_share" not in recipe["pretraining"]["model"]  # without real-time chunking: unused
    assert recipe["pretraining"]["steps"] == 24000 and recipe["demos_recorded_per_task"] == 40
