"""The experiment sweeps: finished runs are not run again, and the report's figures are computed from the runs."""

import json

import pytest
from conftest import REPO

from sop_ros.configs import ConfigError
from sop_ros.sim.experiments import ARMS, ExperimentConfig, run_experiment


def fleet_run(robots: int, seed: int, success: list[float], episodes: int = 10) -> dict:
    """A finished run's fleet_run.json: the policy's own success per half-minute bin of simulated time."""
    curve = [{"minute": 0.5 * (i + 1), "episodes": episodes, "success_rate": 1.0, "autonomous_success_rate": s,
              "interventions_per_episode": 1.0 - s} for i, s in enumerate(success)]  # fmt: skip
    # A bin past the budget (robots run a little beyond the learner's last step) is left out of every figure.
    curve.append({"minute": 0.5 * (len(success) + 1), "episodes": 1, "success_rate": 0.0,
                  "autonomous_success_rate": 0.0, "interventions_per_episode": 1.0})  # fmt: skip
    return {"robots": robots, "seed": seed, "curve": curve, "learner_steps": 120, "wall_minutes": 5.0,
            "learner": {"batch_size": 32},
            "per_task": {"reach-v3": {"episodes": 10, "autonomous_success_rate": 0.5}}}  # fmt: skip


def test_a_sweep_resumes_past_its_finished_runs_and_reports_them(tmp_path):
    shared = tmp_path / "runs" / "shared"  # demonstrations and base policy made before: not made again
    (shared / "demos" / "robot_0").mkdir(parents=True)
    (shared / "demos" / "robot_0" / "e.mcap").write_bytes(b"")
    (shared / "base.pt").write_bytes(b"")
    curves = {"1-robot": [0.2, 0.5, 0.6, 0.8], "2-robots": [0.3, 0.8, 0.9, 0.9], "4-robots": [0.8, 0.9, 1.0, 1.0]}
    for seed in (0, 1):
        for slug, success in curves.items():
            run = tmp_path / "runs" / "fleet-scaling" / slug / f"seed{seed}"
            run.mkdir(parents=True)
            shifted = [min(1.0, s + 0.2 * seed) for s in success]
            (run / "fleet_run.json").write_text(json.dumps(fleet_run(int(slug[0]), seed, shifted)))
    config = ExperimentConfig("fleet-scaling", seeds=(0, 1), sim_minutes=2.0, final_minutes=1.0,
                              learner_yaml=str(REPO / "config" / "experiment_learner.yaml"),
                              out=str(tmp_path / "runs"), results=str(tmp_path / "results"))  # fmt: skip
    report = run_experiment(config)  # every run finished: nothing runs (no ROS, no simulator needed)

    one, four = report["arms"]["1 robot"], report["arms"]["4 robots"]
    # At the budget: the last minute's two bins. Seed 0: (0.6 + 0.8) / 2 = 0.7; seed 1: (0.8 + 1.0) / 2 = 0.9.
    assert one["success_at_budget"] == {"mean": 0.8, "std": 0.1, "n": 2}
    # To 80%: 1 robot at 2.0 and 1.5 min; 4 robots in the first bin (0.5 min): 3.5x faster.
    assert one["minutes_to"]["0.8"] == {"mean": 1.75, "std": 0.25, "n": 2, "reached": 2}
    assert four["minutes_to"]["0.8"]["mean"] == 0.5 and four["speedup"]["0.8"] == 3.5
    assert one["episodes_per_sim_hour"]["mean"] == 40 * 30  # 40 episodes in 2 simulated minutes
    assert one["samples_per_episode"]["mean"] == 120 * 32 / 40  # the learner's draws per episode brought
    written = json.loads((tmp_path / "results" / "fleet-scaling.json").read_text())
    assert written["arms"]["2 robots"]["runs"][0]["curve"][-1][0] == 2.0  # the bin past the budget left out
    markdown = (tmp_path / "results" / "fleet-scaling.md").read_text()
    assert "| 4 robots | 2 | 100% ± 0% |" in markdown and "3.5x to 80%" in markdown
    assert (tmp_path / "results" / "fleet-scaling.png").stat().st_size > 0


def test_experiment_settings_are_checked():
    with pytest.raises(ConfigError, match="must be one of"):
        ExperimentConfig("robots")
    with pytest.raises(ConfigError, match="final_minutes"):
        ExperimentConfig("algorithms", sim_minutes=1.0, final_minutes=2.0)
    assert [a.slug for a in ARMS["algorithms"]] == ["pretrained-only", "offline-hg-dagger", "sop-hg-dagger",
                                                     "sop-recap"]  # fmt: skip
