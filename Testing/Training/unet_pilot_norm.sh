#!/usr/bin/env bash
# The norm pilot of UNET_RECIPE.md (session 11): the main run's data, seed, crops and schedule with L2 + GDL only,
# stage 1, from scratch, with `norm: none`, in-training validation off, to iteration 600. Called again, it resumes
# from its run folder. At 600 it compares its logged training L2 with the main run's, paired by iteration over
# 301–600 (the main run's log: MAIN_LOG, default WORK/unet_run/training_log.csv).
#
# usage: nice -n 19 Testing/Training/unet_pilot_norm.sh CASES_DIR WORK_DIR   (WORK_DIR: train_unet.sh's, for its data)
# Environment: MEDSYNTH (command), THREADS (default 2), PRECISION (as train_unet.sh), DEVICE (default cpu), MAIN_LOG.
# (on a machine without the main run folder: MAIN_LOG=docs/evaluation/unet3d_training_log.csv, its committed copy).
set -euo pipefail
CASES=$1
WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/run_common.sh"
AT=600
RUN=$WORK/pilot_norm_none
prepare_unet_data "$CASES" "$WORK"
mkdir -p "$RUN"
train_stage1_to "$RUN/run" "$AT" --data "$WORK/data" --model-config "$HERE/unet_pilot_norm_none_model_config.json" \
  --train-config "$HERE/unet_train_config.json" --no-adversarial --val-every 0 --precision "$PRECISION" \
  --device "${DEVICE:-cpu}" --out "$RUN/norm_none.safetensors" --progress json --overwrite
python "$HERE/compare_training_logs.py" "$RUN/run/training_log.csv" "${MAIN_LOG:-$WORK/unet_run/training_log.csv}" \
  --stage 0 --first 301 --last $AT
