"""The learner on one GPU and on two torchrun ranks (NCCL), same global batch: samples/s of each, to ranks.json.

    python3 tools/device_check_ranks.py DEMOS OUT STEPS BATCH      (tools/device_check.sh runs it with 2+ GPUs)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sop_ros.bench.learner import bench_config
from sop_ros.configs import to_dict
from sop_ros.configs.learner import learner_status_path


def learner_samples_per_s(demos: Path, workdir: Path, name: str, steps: int, batch: int, ranks: int) -> float:
    config = to_dict(bench_config(demos, workdir, name, steps, batch, threads=0, device="cuda"))
    config["serve_robots"] = False  # the data path and the training alone
    config["publish_every_steps"] = steps
    config["log_every_s"] = 1.0
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "sop_ros.cli", "learner", "--config", str(path)]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                   *command[1:]]  # fmt: skip
    subprocess.run(command, check=True, env=os.environ)
    return float(json.loads(learner_status_path(config["checkpoint_dir"]).read_text())["samples_per_s"])


def main() -> None:
    demos, out, steps, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    workdir = Path(tempfile.mkdtemp(prefix="sop-ranks-"))
    one = learner_samples_per_s(demos, workdir, "one", steps, batch, 1)
    two = learner_samples_per_s(demos, workdir, "two", steps, batch, 2)
    result = {"batch_size": batch, "steps": steps, "one_rank_samples_per_s": round(one, 1),
              "two_ranks_samples_per_s": round(two, 1), "speed_up": round(two / one, 3)}  # fmt: skip
    (out / "ranks.json").write_text(json.dumps(result, indent=2) + "\n")
    print(result)


if __name__ == "__main__":
    main()
