#!/usr/bin/env bash
# The pretraining-scale experiment: base policies from 5, ~10 and 20 demonstrations per task on five Meta-World
# tasks, each evaluated through the real nodes on seeds no demonstration used. Writes results/pretrain-scale/.
# Usage: tools/pretrain_scale.sh   (after `make build`; about 2.5 h on 2 CPU cores)
# The ~10 point is trained on its own collection (10 per task, the same seeds as the first 10 of the 20 per task;
# 47 of its 50 episodes were successes, and pretraining uses successes only).
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-61}" MUJOCO_GL=egl
TASKS=reach-v3,push-v3,pick-place-v3,drawer-open-v3,window-open-v3
sop() { .venv/bin/sop "$@"; }
sop collect-demos --tasks "$TASKS" --episodes-per-task 20 --robots 2 --out runs/demos5x20
sop collect-demos --tasks "$TASKS" --episodes-per-task 10 --robots 2 --out runs/demos5
sop pretrain --demos runs/demos5x20 --demos-per-task 5 --out runs/scale/base5_d5.pt --steps 1500 --batch-size 64 --seed 0
sop pretrain --demos runs/demos5 --out runs/base5.pt --steps 1500 --batch-size 64 --seed 0
sop pretrain --demos runs/demos5x20 --demos-per-task 20 --out runs/scale/base5_d20.pt --steps 1500 --batch-size 64 --seed 0
for ckpt in runs/scale/base5_d5 runs/base5 runs/scale/base5_d20; do
  sop export --policy "$ckpt.pt" --out "$ckpt.onnx"
  sop eval --policy "$ckpt.onnx" --tasks "$TASKS" --episodes-per-task 10 --robots 2 --out "runs/scale/eval_$(basename "$ckpt")"
done
.venv/bin/python tools/scale_table.py runs/scale/eval_base5_d5 runs/scale/eval_base5 runs/scale/eval_base5_d20 \
  --out results/pretrain-scale
