#!/usr/bin/env bash
# The "L2 only" row of the U-Net ablation (UNET_RECIPE.md): the main run's data, split, seed, config and schedule
# with the GDL and adversarial terms off, stopped at stage 1's iteration 963, the point the main run was exported
# and evaluated at (L2 + GDL). Called again, it resumes from its run folder until it reaches that iteration, then
# exports the EMA weights and evaluates them once.
#
# usage: nice -n 19 Testing/Training/unet_ablation_l2_only.sh CASES_DIR WORK_DIR   (WORK_DIR: train_unet.sh's, for its data)
# Environment: MEDSYNTH (command), THREADS (default 2), PRECISION (as train_unet.sh), DEVICE (default cpu).
set -euo pipefail
CASES=$1
WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/run_common.sh"
AT=963
RUN=$WORK/ablation_l2_only
prepare_unet_data "$CASES" "$WORK"
mkdir -p "$RUN"
train_stage1_to "$RUN/run" "$AT" --data "$WORK/data" --model-config "$HERE/unet_model_config.json" \
  --train-config "$HERE/unet_train_config.json" --lambda-gdl 0 --no-adversarial --precision "$PRECISION" \
  --device "${DEVICE:-cpu}" --out "$RUN/l2_only.safetensors" --progress json --overwrite
newest=$(newest_checkpoint "$RUN/run" s00)
[ -n "$newest" ] || { echo "no checkpoint in $RUN/run to export" >&2; exit 5; }
$MEDSYNTH export "$newest" "$RUN/l2_only_it$AT.safetensors" --stages 1 --overwrite
$MEDSYNTH evaluate "$CASES" --model "$RUN/l2_only_it$AT.safetensors" --cases "$VAL" --out "$RUN/evaluation" \
  --label "unet3d, L2 only, stage 1 at iteration $AT (EMA)" --precision fp32 --progress none
