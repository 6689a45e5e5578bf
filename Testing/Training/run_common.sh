# Sourced by the U-Net training scripts here (train_unet.sh, unet_ablation_l2_only.sh, fcn_same_hours.sh,
# train_median_chain.sh): the split fixed in UNET_RECIPE.md, the command, the thread count, the CPU precision rule
# and when a run resumes, so the runs compared agree.
VAL=Brats18_2013_20_1,Brats18_CBICA_ALU_1,Brats18_TCIA02_370_1
MEDSYNTH=${MEDSYNTH:-medsynth}
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
# PRECISION, when not given: bf16 where the CPU has AVX-512 BF16 or AMX, else fp32.
if [ -z "${PRECISION:-}" ]; then
  PRECISION=fp32
  grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && PRECISION=bf16
fi

# prepare_unet_data CASES WORK [MODEL_CONFIG]: the stored volumes the U-Net cuts its crops from, once per WORK
# folder, normalised as MODEL_CONFIG says (default unet_model_config.json; a run with another normalisation, such
# as one on a prior model, needs its own WORK).
prepare_unet_data() {
  if [ ! -f "$2/data/manifest.json" ]; then
    $MEDSYNTH prepare "$1" "$2/data" --config "${3:-$HERE/unet_model_config.json}" --patches-per-case 1 \
      --val-cases "$VAL" --seed 0 --progress none --overwrite
  fi
}

# newest_checkpoint RUN_DIR [STAGE]: the newest checkpoint of a run folder (names sort by stage, then iteration),
# only of STAGE (e.g. s00) when given; nothing when there is none.
newest_checkpoint() {
  ls "$1"/ckpt_${2:-s*}_it*.pt 2>/dev/null | sort | tail -1 || true
}

# resume_flag RUN_DIR: --resume when the run folder holds a checkpoint, else nothing: resume=($(resume_flag DIR)).
resume_flag() {
  if [ -n "$(newest_checkpoint "$1")" ]; then echo --resume; fi
}

# train_stage1_to RUN_DIR AT TRAIN_ARGS...: `medsynth train TRAIN_ARGS` for stage 1 of the run in RUN_DIR on to its
# iteration AT, resuming from its newest stage-1 checkpoint; nothing when the run is there already.
train_stage1_to() {
  local run=$1 at=$2 newest done_its=0 resume=()
  shift 2
  newest=$(newest_checkpoint "$run" s00)
  if [ -n "$newest" ]; then
    done_its=$((10#$(basename "$newest" .pt | sed 's/.*_it//')))
    resume=(--resume)
  fi
  [ "$done_its" -lt "$at" ] || return 0
  $MEDSYNTH train "$@" --run-dir "$run" --stop-after $((at - done_its)) "${resume[@]}"
}

# run_clock RUN_DIR: the run's own training time in whole seconds (the `time` column of its training log, which
# counts across resumes); 0 before its first logged iteration.
run_clock() {
  if [ -f "$1/training_log.csv" ]; then
    awk -F, 'NR > 1 && $11 != "" { t = $11 } END { printf "%d", t }' "$1/training_log.csv"
  else
    echo 0
  fi
}
