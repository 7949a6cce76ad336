#!/usr/bin/env bash
# The GPU figures of the learner and the policy runtimes, in one run of under 8 minutes on a machine with an
# NVIDIA GPU, Python with torch, and no network (no ROS needed). From the repository root:
#
#   tools/device_check.sh                    # results in results/gpu/ (or $OUT, where the machine collects them)
#
# It needs recorded episodes to train on (DEMOS, default .demos/: e.g. 5 of each task from `sop collect-demos`,
# a few MB) and the wheels of what that Python lacks (WHEELS, default .whl/: eclipse-zenoh, cryptography, cffi,
# pycparser, mcap, mcap-ros2-support, lz4, zstandard, and onnxruntime-gpu to time ONNX Runtime's CUDA and
# TensorRT providers), which it installs into a folder of its own. Both stay out of git (`echo /.demos/ >>
# .git/info/exclude`, the same for /.whl/) and travel to the GPU machine beside the package. Per model preset
# (config/models/): the learner's samples/s on synthetic batches and on the recorded episodes on the GPU
# (real_over_synthetic, target >= 0.8), and every runtime's p50/p99 of one inference step (torch eager and CUDA
# graph, ONNX Runtime per provider) with its largest difference from torch on the CPU; with two GPUs, the
# learner on two torchrun ranks over NCCL. device_check.json sums it up, with the machine and GPU named.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
DEMOS=${DEMOS:-.demos}
WHEELS=${WHEELS:-.whl}
DEVICE=${DEVICE:-cuda}          # cpu: the same steps on the CPU, to try the script where no GPU is
PRESETS=${PRESETS:-"small medium large"}
STEPS=${STEPS:-}                 # learner steps per measurement (empty: per preset, about 5-10 s of GPU work each)
BUDGET_S=${BUDGET_S:-420}        # no new measurement starts after this long; the summary is written regardless
BATCH=${BATCH:-256}
ITERATIONS=${ITERATIONS:-100}    # inference steps timed per runtime
PRECISIONS=${PRECISIONS:-"fp32 bf16"}  # the learner's, each measured
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sop-site \
    "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/sop-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-61}
SOP=("$PYTHON" -m sop_ros.cli)
started=$(date +%s)

in_time() {  # in_time WHAT: false (and WHAT listed as skipped) once BUDGET_S has passed
  if [ $(( $(date +%s) - started )) -lt "$BUDGET_S" ]; then return 0; fi
  echo "$1 skipped: past the ${BUDGET_S} s budget" | tee -a "$OUT/failures.txt"
  return 1
}

first_precision=${PRECISIONS%% *}
for precision in $PRECISIONS; do  # every preset at the first precision (and its runtimes) before the next
  suffix=$([ "$precision" = fp32 ] && echo "" || echo "-$precision")
  for preset in $PRESETS; do
    case $preset in small) steps=${STEPS:-200} ;; medium) steps=${STEPS:-100} ;; *) steps=${STEPS:-40} ;; esac
    if in_time "learner bench of $preset ($precision)"; then
      echo "== $preset: learner ($steps steps of batch $BATCH on $DEVICE, $precision)"
      "${SOP[@]}" bench learner --json "$OUT/learner-$preset$suffix.json" --demos "$DEMOS" --robots 0 \
        --device "$DEVICE" --model-config "config/models/$preset.yaml" --steps "$steps" --batch-size "$BATCH" \
        --precision "$precision" || echo "learner bench of $preset ($precision) failed" | tee -a "$OUT/failures.txt"
    fi
    if [ "$precision" = "$first_precision" ] && in_time "inference bench of $preset"; then
      echo "== $preset: runtimes ($ITERATIONS inference steps each)"
      "${SOP[@]}" bench inference --runtimes-only --json "$OUT/inference-$preset.json" \
        --model-config "config/models/$preset.yaml" --iterations "$ITERATIONS" \
        || echo "inference bench of $preset failed" | tee -a "$OUT/failures.txt"
    fi
  done
done

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ] && [ "$DEVICE" = cuda ] && in_time "two-rank learner"; then
  echo "== two torchrun ranks over NCCL"
  "$PYTHON" tools/device_check_ranks.py "$DEMOS" "$OUT" "${STEPS:-100}" "$BATCH" \
    || echo "two-rank learner failed" | tee -a "$OUT/failures.txt"
fi

"$PYTHON" - "$OUT" "$started" <<'EOF'
import json, sys, time
from pathlib import Path

from sop_ros.host import machine

out, started = Path(sys.argv[1]), float(sys.argv[2])
summary = {"machine": machine(), "gpu": machine().get("gpu"), "minutes": round((time.time() - started) / 60, 1),
           "presets": {}}
for learner in sorted(out.glob("learner-*.json")):
    preset = learner.stem.removeprefix("learner-")  # e.g. medium, medium-bf16
    bench = json.loads(learner.read_text())
    inference = out / f"inference-{preset.split('-')[0]}.json"
    runtimes = json.loads(inference.read_text())["runtimes"] if inference.exists() else {}
    summary["presets"][preset] = {
        "parameters": bench["parameters"], "device": bench["device"], "precision": bench["precision"],
        "batch_size": bench["batch_size"],
        "synthetic_samples_per_s": bench["synthetic"]["samples_per_s"],
        "real_samples_per_s": bench["alone"]["while_stepping_samples_per_s"],
        "real_over_synthetic": bench["real_over_synthetic"], "target": 0.8,
        "met": bench["real_over_synthetic"] >= 0.8,
        "data_path_samples_per_s": bench["data_path_samples_per_s"],
        "runtimes_ms": {name: {"p50": r["p50_ms"], "p99": r["p99_ms"], "max_abs_diff": r.get("max_abs_diff")}
                        if "p99_ms" in r else r for name, r in runtimes.items()},
    }
ranks = out / "ranks.json"
if ranks.exists():
    summary["ranks"] = json.loads(ranks.read_text())
failures = out / "failures.txt"
summary["failures"] = failures.read_text().splitlines() if failures.exists() else []
(out / "device_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
