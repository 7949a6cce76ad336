"""`sop what-if`: a finished run's store retrained with other learner settings, against the same retraining as run
(training and scoring faked: what is checked is which settings train, what is compared, and what is kept)."""

import dataclasses
import json

import pytest
import yaml
from conftest import REPO

from sop_ros.configs import ConfigError, load_config, to_dict
from sop_ros.configs.learner import LearnerConfig
from sop_ros.fleet import what_if as module
from sop_ros.fleet.what_if import WhatIfConfig, parse_override, what_if, with_overrides

TIER = "unit"  # what the tests need: conftest.TIERS
RUN_TASKS = ["push-wall-v3", "coffee-push-v3", "dial-turn-v3", "door-open-v3"]


def finished_run(tmp_path):
    run = tmp_path / "seed0"
    (run / "fleet" / "store").mkdir(parents=True)
    learner = load_config(LearnerConfig, REPO / "config" / "experiment_learner.yaml")
    learner = dataclasses.replace(learner, tasks=RUN_TASKS, sampling=dataclasses.replace(
        learner.sampling, online_share_min=0.2, online_share_max=0.8))  # the run's own, whatever the YAML's now
    (run / "experiment_learner.yaml").write_text(yaml.safe_dump(to_dict(learner)))
    (run / "fleet_run.json").write_text(json.dumps({"learner_steps": 900}))
    return run


def test_settings_are_dotted_yaml_values_checked_by_the_learner_configs_rules():
    learner = load_config(LearnerConfig, REPO / "config" / "experiment_learner.yaml")
    changed = with_overrides(learner, (parse_override("sampling.online_share_max=0.2"),
                                       parse_override("use_autonomous_segments=true")))  # fmt: skip
    assert changed.sampling.online_share_max == 0.2 and changed.use_autonomous_segments is True
    assert changed.sampling.online_share_min == learner.sampling.online_share_min and changed.tasks == learner.tasks
    with pytest.raises(ConfigError, match="ema_decya: unknown key"):
        with_overrides(learner, (parse_override("ema_decya=0.9"),))
    with pytest.raises(ConfigError, match="batch_size=2: must be >= the number of tasks"):
        with_overrides(learner, (parse_override("batch_size=2"),))
    with pytest.raises(ConfigError, match="ema_decay is not a section"):
        with_overrides(learner, (parse_override("ema_decay.value=1"),))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("ema_decay")


def test_the_variant_and_the_as_run_retraining_are_made_once_each_and_compared(tmp_path, monkeypatch):
    run = finished_run(tmp_path)
    trained, scored = [], {"as-run": (80, 200), "share-0.2": (110, 200), "ema": (85, 200)}

    def train_offline(learner, fleet_dir, where, steps):
        trained.append((where.parent.name, learner.sampling.online_share_max, learner.ema_decay, steps))
        where.mkdir(parents=True)
        (where / "policy.pt").write_bytes(b"")
        return where / "policy.pt"

    def evaluate(policy, eval_config, tasks, episodes_per_task, workers, out, seed):
        successes, episodes = scored[out.parent.name]
        assert seed == module.SELECTION_SEED and tasks == RUN_TASKS
        return {"tasks": {"push-wall-v3": {"successes": successes, "episodes": episodes}}}

    monkeypatch.setattr("sop_ros.fleet.experiments.train_offline", train_offline)
    monkeypatch.setattr("sop_ros.model.export.export_onnx", lambda checkpoint, onnx: onnx.write_bytes(b""))
    monkeypatch.setattr("sop_ros.fleet.in_process_eval.evaluate_in_process", evaluate)
    result = what_if(WhatIfConfig(str(run), (("sampling.online_share_max", 0.2),), name="share-0.2"))
    assert trained == [("as-run", 0.8, 0.98, 900), ("share-0.2", 0.2, 0.98, 900)]
    # 110/200 against 80/200: pooled p = 0.475, se = sqrt(0.475 * 0.525 * 2 / 200) = 0.04994, z = 0.15 / se = 3.004
    against = result["against_as_run"]
    assert (result["successes"], result["episodes"], against["difference"]) == (110, 200, 0.15)
    assert against["z"] == pytest.approx(3.004, abs=1e-3) and against["beyond_noise"]
    assert result["overrides"] == {"sampling.online_share_max": 0.2} and result["baseline"] == "as-run"
    assert result["per_task_against_as_run"] == {"push-wall-v3": against}  # one task: the same comparison
    assert result["command"].startswith(f"sop what-if {run} --set 'sampling.online_share_max=0.2' --name share-0.2")
    # Another variant on the same run: the as-run retraining is not made again; the report keeps all three.
    result = what_if(WhatIfConfig(str(run), (("ema_decay", 0.995),), name="ema", steps=0))
    assert [t[0] for t in trained] == ["as-run", "share-0.2", "ema"] and not result["against_as_run"]["beyond_noise"]
    report = json.loads((run / "what-if" / "what_if.json").read_text())
    assert set(report["variants"]) == {"as-run", "share-0.2", "ema"} and report["machine"]["cores"] >= 1
    markdown = (run / "what-if" / "what_if.md").read_text()  # beside it, a table a person reads
    row = "| share-0.2 | 900 | 55.0% | 110/200 (+15, p = 0.0027) | +15.0 points, p = 0.0027, beyond noise |"
    assert row in markdown
    assert "| as-run | 900 | 40.0% | 80/200 | - |" in markdown and "sop what-if" in markdown
    # Another budget: its own as-run baseline, the run's budget's kept.
    scored["as-run-1800-steps"], scored["long"] = (90, 200), (100, 200)
    what_if(WhatIfConfig(str(run), (("ema_decay", 0.99),), name="long", steps=1800))
    assert trained[-2:] == [("as-run-1800-steps", 0.8, 0.98, 1800), ("long", 0.8, 0.99, 1800)]
    assert (run / "what-if" / "as-run" / "result.json").exists()
    with pytest.raises(ConfigError, match="not a finished run"):
        what_if(WhatIfConfig(str(tmp_path / "nowhere"), ()))


def test_learner_seeds_retrain_each_setting_once_per_seed_and_pool_the_scores(tmp_path, monkeypatch):
    run = finished_run(tmp_path)
    trained = []
    scored = {"as-run": (40, 100), "as-run-learner-seed-1": (50, 100), "bc": (60, 100), "bc-learner-seed-1": (70, 100)}

    def train_offline(learner, fleet_dir, where, steps):
        trained.append((where.parent.name, learner.seed, learner.algorithm))
        where.mkdir(parents=True)
        return where / "policy.pt"

    def evaluate(policy, eval_config, tasks, episodes_per_task, workers, out, seed):
        successes, episodes = scored[out.parent.name]
        return {"tasks": {"push-wall-v3": {"successes": successes, "episodes": episodes}}}

    monkeypatch.setattr("sop_ros.fleet.experiments.train_offline", train_offline)
    monkeypatch.setattr("sop_ros.model.export.export_onnx", lambda checkpoint, onnx: None)
    monkeypatch.setattr("sop_ros.fleet.in_process_eval.evaluate_in_process", evaluate)
    result = what_if(WhatIfConfig(str(run), (("algorithm", "bc"),), name="bc", learner_seeds=(0, 1)))
    assert trained == [("as-run", 0, "hg_dagger"), ("as-run-learner-seed-1", 1, "hg_dagger"), ("bc", 0, "bc"),
                       ("bc-learner-seed-1", 1, "bc")]  # fmt: skip
    # Pooled: 130/200 against 90/200, each retraining's score kept beside it.
    assert (result["successes"], result["episodes"], result["per_task"]) == (130, 200, {"push-wall-v3": [130, 200]})
    assert result["per_seed_success"] == {"0": 0.6, "1": 0.7} and result["baseline"] == "as-run-learner-seeds-0-1"
    assert result["against_as_run"]["difference"] == 0.2 and "--learner-seeds 0,1" in result["command"]
    report = json.loads((run / "what-if" / "what_if.json").read_text())
    assert set(report["variants"]) == {"as-run-learner-seeds-0-1", "bc-learner-seeds-0-1"}
    assert "| bc-learner-seeds-0-1 | 900 | 65.0% (learner seeds 0: 60.0%, 1: 70.0%) |" in (
        run / "what-if" / "what_if.md").read_text()
    # One seed, the run's own: the plain result, already made.
    single = what_if(WhatIfConfig(str(run), (("algorithm", "bc"),), name="bc"))
    assert len(trained) == 4 and single["successes"] == 60 and "per_seed_success" not in single
    # Pooled over a seed's retraining made before by a one-seed command: the pooled command is named.
    earlier = finished_run(tmp_path / "earlier")
    what_if(WhatIfConfig(str(earlier), (("algorithm", "bc"),), name="bc"))
    pooled = what_if(WhatIfConfig(str(earlier), (("algorithm", "bc"),), name="bc", learner_seeds=(0, 1)))
    assert "--learner-seeds 0,1" in pooled["command"] and pooled["successes"] == 130
