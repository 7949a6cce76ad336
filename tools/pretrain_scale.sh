#!/usr/bin/env bash
# The pretraining-scale experiment: base policies (the default model) from 10, 20 and 40 demonstrations per task
# on five Meta-World tasks of MT10, the same pretraining budget each, every one evaluated through the real nodes
# on seeds no demonstration used. Writes results/pretrain-scale/.
# Usage: tools/pretrain_scale.sh   (after `make build`; about 1.5 h on 2 CPU cores)
# The three sizes are the first 10, 20 and 40 successful demonstrations of each task of one collection.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-61}" MUJOCO_GL=egl
TASKS=reach-v3,push-v3,drawer-open-v3,window-open-v3,button-press-topdown-v3
OUT=runs/scale
sop() { .venv/bin/sop "$@"; }
[ -f "$OUT/demos/summary.json" ] || sop collect-demos --tasks "$TASKS" --episodes-per-task 40 --robots 2 --out "$OUT/demos"
for n in 10 20 40; do
  ckpt="$OUT/base_d$n"
  [ -f "$ckpt.pt" ] || sop pretrain --demos "$OUT/demos" --demos-per-task "$n" --out "$ckpt.pt" --steps 3000 \
    --batch-size 32 --seed 0
  sop export --policy "$ckpt.pt" --out "$ckpt.onnx"
  sop eval --policy "$ckpt.onnx" --tasks "$TASKS" --episodes-per-task 20 --robots 2 --out "$OUT/eval_d$n"
done
mkdir -p results/pretrain-scale
rm -f results/pretrain-scale/*
.venv/bin/python tools/scale_table.py "$OUT/eval_d10" "$OUT/eval_d20" "$OUT/eval_d40" --out results/pretrain-scale \
  | tee results/pretrain-scale/table.md
for n in 10 20 40; do
  cp "$OUT/base_d$n.loss.json" "$OUT/base_d$n.loss.png" results/pretrain-scale/
  cp "$OUT/eval_d$n/eval.json" "results/pretrain-scale/eval_d$n.json"
done
