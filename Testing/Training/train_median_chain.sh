#!/usr/bin/env bash
# The median-normalised chain of UNET_RECIPE.md (session 30): the bundled 3-stage FCN fine-tuned, one stage at a
# time, with its T1ce divided by the in-brain median (× 0.5) instead of the 99.5th percentile, then the default's
# refiner (run S's end) moved onto that FCN and fine-tuned on it. Every step is skipped when its model file exists
# and resumes from its run folder's newest checkpoint, so the chain is a series of identical background calls.
#
# usage: nice -n 19 Testing/Training/train_median_chain.sh CASES_DIR WORK_DIR REFINER_START
#   REFINER_START: the refiner whose weights the last step starts from (run S's end: the default's refiner unblended)
# Environment: as train_unet.sh (MEDSYNTH, THREADS, PRECISION), FCN (the FCN to start from; default the bundled
#   medsynth_t1ce_t2_nie2018.safetensors of this checkout), FCN_TRAIN_CONFIG (the FCN stages' training config;
#   default fcn_median_finetune_train_config.json; fcn_median_aug_finetune_train_config.json is the augmented chain's).
set -euo pipefail
CASES=$1
WORK=$2
REFINER_START=$3
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/run_common.sh"
FCN=${FCN:-$HERE/../../Resources/Models/medsynth_t1ce_t2_nie2018.safetensors}
FCN_CONFIG=$HERE/fcn_median_model_config.json
FCN_TRAIN_CONFIG=${FCN_TRAIN_CONFIG:-$HERE/fcn_median_finetune_train_config.json}
SOURCE='{"mode": "median", "median_value": 0.5, "clip_min": 0.0, "clip_max": 2.0}'
PY=${PYTHON:-python}
mkdir -p "$WORK"
[ -f "$WORK/fcn_init.safetensors" ] || $PY "$HERE/rebase_model.py" normalise "$FCN" "$WORK/fcn_init.safetensors" --source "$SOURCE"
if [ ! -f "$WORK/fcn_data/manifest.json" ]; then
  $MEDSYNTH prepare "$CASES" "$WORK/fcn_data" --config "$FCN_CONFIG" --patches-per-case 600 --val-cases "$VAL" --seed 0 \
    --progress none --overwrite
fi
for k in 0 1 2; do
  out=$WORK/fcn_s$((k + 1)).safetensors
  [ -f "$out" ] && continue
  init=$WORK/fcn_init.safetensors
  if [ "$k" -gt 0 ]; then
    init=$WORK/fcn_s${k}_init.safetensors
    [ -f "$init" ] || $PY "$HERE/rebase_model.py" extend "$WORK/fcn_s${k}.safetensors" "$WORK/fcn_init.safetensors" "$init"
  fi
  resume=($(resume_flag "$WORK/fcn_s$((k + 1))_run"))
  $MEDSYNTH train --data "$WORK/fcn_data" --model-config "$FCN_CONFIG" --train-config "$FCN_TRAIN_CONFIG" \
    --stages $((k + 1)) --start-stage "$k" --init-model "$init" --precision "$PRECISION" --device cpu \
    --out "$out" --run-dir "$WORK/fcn_s$((k + 1))_run" --progress json --overwrite "${resume[@]}"
done
[ -f "$WORK/refiner_init.safetensors" ] || $PY "$HERE/rebase_model.py" prior "$REFINER_START" "$WORK/fcn_s3.safetensors" "$WORK/refiner_init.safetensors"
RUN=${RUN:-refiner} MODEL_CONFIG=$HERE/unet_prior_l2_median_model_config.json \
  TRAIN_CONFIG=$HERE/unet_prior_l2_median_train_config.json PRIOR_MODEL=$WORK/fcn_s3.safetensors \
  INIT_MODEL=$WORK/refiner_init.safetensors START_STAGE=0 exec "$HERE/train_unet.sh" "$CASES" "$WORK"
