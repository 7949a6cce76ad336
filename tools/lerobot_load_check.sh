#!/usr/bin/env bash
# Does LeRobot itself read what `sop dataset export --format lerobot` writes? From the repository root:
#
#   tools/lerobot_load_check.sh [VENV]       # report in results/lerobot/load_check.json (or $OUT)
#
# 1. VENV (default /tmp/sop-lerobot-venv; never the project's .venv) gets LeRobot at a pinned version, made
#    once and reused: torch first, alone, then LeRobot and torchvision without their dependencies (LeRobot
#    0.4.4 asks for torch < 2.11, and pip would otherwise fetch another torch, several GB with its CUDA
#    libraries), then the few packages LeRobot's dataset code imports, under a constraints file that holds torch
#    and torchvision where they are. On a machine without a local CPU wheel of torch $TORCH, point pip at
#    PyTorch's CPU wheel index (PIP_EXTRA_INDEX_URL) before the first run.
# 2. The project's Python (SOP_PYTHON, default .venv/bin/python) records a few episodes with `sop collect-demos`
#    (TASKS, default push-v3,reach-v3; EPISODES per task, default 2; on ROS_DOMAIN_ID, default 63), unless
#    DEMOS names a folder of recorded episodes, and exports them with `sop dataset export --format lerobot`.
# 3. It notes what the export reported and, for the first, middle and last frame of each episode, the recorded
#    state, action and camera frames and the frames as the project's own reader decodes them.
# 4. LeRobot's Python loads the dataset with LeRobotDataset(repo_id, root=DIR, video_backend="pyav"), offline,
#    and checks counts, metadata, statistics, frames (dataset[i]), episode boundaries, a DataLoader batch
#    normalised as a policy does, and LeRobot's delete_episodes on it (tools/lerobot_load_check.py says what
#    each compares). It writes the JSON report and exits 1 when a check fails.
#
# Scratch files (episodes, dataset, HF cache) go to WORK (default a new /tmp/sop-lerobot-check.XXXXXX), kept for
# a look afterwards. About 20 s with the venv in place; making it takes a minute or more (torch alone is 190 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
LEROBOT=0.4.4       # the newest LeRobot for Python 3.11 (later releases need 3.12); datasets in format v3.0
TORCH=2.13.0
TORCHVISION=0.25.0  # the newest LeRobot 0.4.4 allows; later ones dropped the VideoReader its "pyav" backend uses
VENV=${1:-${LEROBOT_VENV:-/tmp/sop-lerobot-venv}}
SOP_PYTHON=${SOP_PYTHON:-.venv/bin/python}
OUT=${OUT:-results/lerobot/load_check.json}
TASKS=${TASKS:-push-v3,reach-v3}
EPISODES=${EPISODES:-2}
WORK=${WORK:-$(mktemp -d /tmp/sop-lerobot-check.XXXXXX)}
REPO_ID=sop-ros/load-check

if [ ! -x "$SOP_PYTHON" ]; then
  echo "no project Python at $SOP_PYTHON: run 'make venv' first, or set SOP_PYTHON" >&2
  exit 2
fi
mkdir -p "$WORK" "$(dirname "$VENV")"
project_prefix=$("$SOP_PYTHON" -c 'import sys; print(sys.prefix)')
if [ "$(realpath -m "$VENV")" = "$(realpath -m .venv)" ] || [ "$(realpath -m "$VENV")" = "$(realpath -m "$project_prefix")" ]; then
  echo "$VENV is the project's venv: give LeRobot a venv of its own" >&2
  exit 2
fi

# -- 1. LeRobot's venv ------------------------------------------------------------------------------------
pip_logged() {  # pip's output in the venv's install.log (it warns, rightly, that LeRobot asks for another torch)
  "$@" >> "$VENV/install.log" 2>&1 || { tail -20 "$VENV/install.log" >&2; echo "pip failed: $*" >&2; exit 2; }
}
PINS="lerobot==$LEROBOT torch==$TORCH torchvision==$TORCHVISION"
if [ "$(cat "$VENV/.sop_lerobot_check" 2>/dev/null)" != "$PINS" ]; then
  echo "== making $VENV: $PINS"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  PIP=(pip_logged "$VENV/bin/python" -m pip install --disable-pip-version-check)
  "${PIP[@]}" "torch==$TORCH"
  printf 'torch==%s\ntorchvision==%s\n' "$TORCH" "$TORCHVISION" > "$VENV/constraints.txt"
  "${PIP[@]}" --no-deps "lerobot==$LEROBOT" "torchvision==$TORCHVISION"
  # What `from lerobot.datasets.lerobot_dataset import LeRobotDataset` and the normaliser and editing tool the
  # check uses import, within LeRobot 0.4.4's own bounds; the constraints keep torch and torchvision as they are.
  "${PIP[@]}" -c "$VENV/constraints.txt" "datasets>=4.0,<5.0" "huggingface-hub>=0.34.2,<0.36" \
    "accelerate>=1.10,<2.0" "av>=15,<16" "packaging>=24.2,<26" "draccus==0.10.0" "pyserial>=3.5,<4.0" \
    "deepdiff>=7.0.1,<9.0" "einops>=0.8,<0.9" numpy pandas pyarrow pillow
  "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH')" \
    || { echo "torch in $VENV is no longer $TORCH" >&2; exit 2; }
  echo "$PINS" > "$VENV/.sop_lerobot_check"
fi

# -- 2. episodes and the export ----------------------------------------------------------------------------
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 SVT_LOG=1
if [ -z "${DEMOS:-}" ]; then
  DEMOS=$WORK/demos
  SOURCE="{\"recorded_by\": \"sop collect-demos --tasks $TASKS --episodes-per-task $EPISODES --robots 2\"}"
  echo "== recording $EPISODES episodes of each of $TASKS into $DEMOS"
  ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-63} MUJOCO_GL=${MUJOCO_GL:-egl} \
    ROS_LOG_DIR=$WORK/ros-log "$SOP_PYTHON" -m sop_ros.cli collect-demos --tasks "$TASKS" \
    --episodes-per-task "$EPISODES" --robots 2 --out "$DEMOS" > "$WORK/collect.log" 2>&1 \
    || { tail -20 "$WORK/collect.log" >&2; exit 1; }
else
  SOURCE='{"recorded_by": "given (DEMOS)"}'
fi
rm -rf "$WORK/dataset" "$WORK/edited"
echo "== sop dataset export --format lerobot"
"$SOP_PYTHON" -m sop_ros.cli dataset export --format lerobot --demos "$DEMOS" --out "$WORK/dataset" \
  --repo-id "$REPO_ID" | tee "$WORK/export.log"

# -- 3. what the frames should hold ------------------------------------------------------------------------
"$SOP_PYTHON" tools/lerobot_load_check.py reference --dataset "$WORK/dataset" --demos "$DEMOS" \
  --export-log "$WORK/export.log" --out "$WORK/reference.npz"

# -- 4. LeRobot reads it -----------------------------------------------------------------------------------
echo "== LeRobot $LEROBOT loads it"
env -u PYTHONPATH HF_HUB_OFFLINE=1 HF_HOME="$WORK/hf" HF_LEROBOT_HOME="$WORK/hf/lerobot" \
  "$VENV/bin/python" tools/lerobot_load_check.py check --dataset "$WORK/dataset" --reference "$WORK/reference.npz" \
  --repo-id "$REPO_ID" --json "$OUT" --work "$WORK" --source "$SOURCE"
