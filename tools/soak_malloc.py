"""A finished soak's growth, judged again with malloc's bytes in use beside each kind's resident memory: for a run
whose JSON predates that figure, from its samples (soak_samples.json beside the JSON) and its robots' logs.

    .venv/bin/python tools/soak_malloc.py results/chaos/soak.json <the soak's out>/fleet/logs

The run's start (its samples' times count from it) is the JSON's `started_at`, or else its first sensor gap's
wall time less that fault's planned moment (the gap starts when injected: within the soak's 1 s tick).
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

from sop_ros.fleet.soak import SoakConfig, judge_growth, malloc_reports, with_malloc


def started_at(report: dict) -> float:
    if "started_at" in report:
        return report["started_at"]
    gap = next(f for f in report["faults"] if f["kind"] == "sensor_gap")
    return report["sensor_gaps"][0]["off"] - gap["at_s"]


def main(json_path: str, logs_dir: str) -> None:
    report = json.loads(Path(json_path).read_text())
    samples = json.loads((Path(json_path).parent / "soak_samples.json").read_text())
    logs = "".join(p.read_text(errors="replace") for p in sorted(Path(logs_dir).glob("robot_*.log")))
    known = {f.name for f in fields(SoakConfig)}
    config = SoakConfig(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in report["config"].items() if k in known})  # fmt: skip
    joined = with_malloc(samples, malloc_reports(logs, started_at(report)), config.sample_s)
    for role, g in sorted(judge_growth(joined, config).items()):
        in_use = "no malloc figures"
        if "malloc_in_use_mb_median" in g:
            in_use = (f"malloc in use {g['malloc_in_use_mb_median']:.1f} MB, {g['malloc_in_use_mb_per_hour']:+.1f} +- "
                      f"{g['malloc_in_use_mb_per_hour_95']:.1f} MB/h")  # fmt: skip
        print(f"{role:26s} RSS {g['rss_mb_median']:.1f} MB, {g['rss_growth_mb_per_hour']:+.1f} +- "
              f"{g['rss_growth_mb_per_hour_95']:.1f} MB/h ({g['rss_growth_per_hour']:+.2%}/h); {in_use}; "
              f"{'ok' if g['ok'] else 'FAILS'}")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
