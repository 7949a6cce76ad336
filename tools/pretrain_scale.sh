#!/usr/bin/env bash
# The pretraining-scale experiment: base policies from 5, 10 and 20 demonstrations per task on five Meta-World
# tasks, each evaluated through the real nodes on seeds no demonstration used. Writes results/pretrain-scale/.
# Usage: tools/pretrain_scale.sh   (after `make build`; about 2.5 h on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-61}" MUJOCO_GL=egl
TASKS=reach-v3,push-v3,pick-place-v3,drawer-open-v3,window-open-v3
.venv/bin/sop collect-demos --tasks "$TASKS" --episodes-per-task 20 --robots 2 --out runs/demos5x20
for n in 5 10 20; do
  .venv/bin/sop pretrain --demos runs/demos5x20 --demos-per-task "$n" --out "runs/scale/base5_d$n.pt" --steps 1500 --batch-size 64 --seed 0
  .venv/bin/sop export --policy "runs/scale/base5_d$n.pt" --out "runs/scale/base5_d$n.onnx"
  .venv/bin/sop eval --policy "runs/scale/base5_d$n.onnx" --tasks "$TASKS" --episodes-per-task 10 --robots 2 --out "runs/scale/eval_d$n"
done
.venv/bin/python tools/scale_table.py runs/scale/eval_d5 runs/scale/eval_d10 runs/scale/eval_d20 --out results/pretrain-scale
