#!/usr/bin/env bash
# Trains the unet3d candidate (2 auto-context stages) on the CPU with MedSynthLogic's own CLI, as a series of
# identical background calls across sessions: each call resumes from the newest checkpoint of its run folder, or,
# on a new machine without that folder, starts from INIT_MODEL (the committed candidate) when one is given.
#
# usage: nice -n 19 Testing/Training/train_unet.sh CASES_DIR WORK_DIR
# Environment: MEDSYNTH (command), THREADS (torch threads, default 2), PRECISION (default: bf16 where the CPU has
#   AVX-512 BF16 or AMX, else fp32), INIT_MODEL (model file whose weights start the run on a new machine),
#   STOP_AFTER (run this many iterations, checkpoint and exit 0: a slice that ends before a session does),
#   RUN (name of the run: WORK/RUN.safetensors and WORK/RUN_run/; default unet, the main run),
#   MODEL_CONFIG (default unet_model_config.json beside this script; a later run names its own),
#   TRAIN_CONFIG (default unet_train_config.json beside this script; likewise),
#   KEEP_EVERY (checkpoints at every N-th iteration of a stage that rotation keeps; default 1000, the points the
#   evaluation plans in UNET_RECIPE.md name), PRIOR_MODEL (a model file whose synthesis stage 0 refines:
#   `--prior-model`; WORK must then be prepared with MODEL_CONFIG's normalisation, which is the prior's).
# The schedule (unet_train_config.json: 3000 iterations per stage, cosine) and the split are fixed in advance.
set -euo pipefail
CASES=$1
WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/run_common.sh"
RUN=${RUN:-unet}
MODEL_CONFIG=${MODEL_CONFIG:-$HERE/unet_model_config.json}
TRAIN_CONFIG=${TRAIN_CONFIG:-$HERE/unet_train_config.json}
mkdir -p "$WORK"
prepare_unet_data "$CASES" "$WORK" "$MODEL_CONFIG"
resume=($(resume_flag "$WORK/${RUN}_run"))
init=()
[ ${#resume[@]} -eq 0 ] && [ -n "${INIT_MODEL:-}" ] && init=(--init-model "$INIT_MODEL" --start-stage "${START_STAGE:-0}")
slice=()
[ -n "${STOP_AFTER:-}" ] && slice=(--stop-after "$STOP_AFTER")
prior=()
[ -n "${PRIOR_MODEL:-}" ] && prior=(--prior-model "$PRIOR_MODEL")
exec $MEDSYNTH train --data "$WORK/data" --model-config "$MODEL_CONFIG" \
  --train-config "$TRAIN_CONFIG" --precision "$PRECISION" --device cpu \
  --out "$WORK/$RUN.safetensors" --run-dir "$WORK/${RUN}_run" --progress json --overwrite --keep-every "${KEEP_EVERY:-1000}" "${resume[@]}" "${init[@]}" "${slice[@]}" "${prior[@]}"
