#!/usr/bin/env bash
# Evaluates the bundled model, the 1-D lookup baseline and the ablations on the fixed validation cases with
# `medsynth evaluate` (one protocol for all), writing OUT_DIR/<row>/metrics.{json,md}: the committed reports are
# docs/evaluation/<row>/. OUT_DIR must be a new folder (every command refuses to replace a file, the committed reports
# included); the models are read from docs/evaluation/models.
# usage: Testing/Evaluation/run_quality_report.sh CASES_DIR OUT_DIR
set -euo pipefail
if [ $# -ne 2 ] || [ -e "$2" ]; then
  echo "usage: $0 CASES_DIR OUT_DIR (a new folder; the committed reports are in docs/evaluation)" >&2
  exit 2
fi
CASES=$1
OUT=$2
mkdir -p "$OUT"
VAL=Brats18_2013_20_1,Brats18_CBICA_ALU_1,Brats18_TCIA02_370_1
TRAIN=Brats18_2013_11_1,Brats18_2013_3_1,Brats18_CBICA_ABM_1,Brats18_CBICA_AME_1,Brats18_TCIA01_201_1,Brats18_TCIA01_378_1,Brats18_TCIA01_499_1,Brats18_TCIA02_135_1,Brats18_TCIA03_265_1,Brats18_TCIA10_628_1,Brats18_TCIA10_639_1
M=docs/evaluation/models
# the paper's 3-stage FCN, the bundled default until session 26: the "bundled" rows describe it
BUNDLED=Resources/Models/medsynth_t1ce_t2_nie2018.safetensors
ev() {  # row name, options...
  local name=$1; shift
  echo "== $name"
  medsynth evaluate "$CASES" --cases "$VAL" --out "$OUT/$name" --label "$name" --progress none "$@"
}
medsynth fit-lookup "$CASES" "$OUT/lookup_t1ce_t2.json" --cases "$TRAIN" --progress none
ev baseline_lookup --lookup "$OUT/lookup_t1ce_t2.json"
# the same lookup on a source divided by its median: T1ce's 99.5th percentile follows the enhancing tumour
medsynth fit-lookup "$CASES" "$OUT/lookup_t1ce_t2_median.json" --cases "$TRAIN" --progress none \
  --config Testing/Evaluation/lookup_median_config.json
ev baseline_lookup_median --lookup "$OUT/lookup_t1ce_t2_median.json"
ev run1_stage0_l2 --model "$M/run1_stage0_l2.safetensors"
ev run1_stage0_l2_gdl --model "$M/run1_stage0_l2_gdl.safetensors"
ev run1_stage0_l2_gdl_adv --model "$M/run1_main_3stage_adv0.05.safetensors" --stages 1
ev run1_stage0_no_residual --model "$M/run1_stage0_no_residual.safetensors"
ev run1_acm_2stages --model "$M/run1_main_3stage_adv0.05.safetensors" --stages 2
ev run1_acm_3stages --model "$M/run1_main_3stage_adv0.05.safetensors" --stages 3
ev bundled_stage1 --model "$BUNDLED" --stages 1
ev bundled_2stages --model "$BUNDLED" --stages 2
ev bundled --model "$BUNDLED" --figures
ev bundled_flip_tta --model "$BUNDLED" --flip-tta
# the same model on the cases it was trained on: a fit no better than on validation means under-fitting
echo "== bundled_on_training_cases"
medsynth evaluate "$CASES" --cases "$TRAIN" --out "$OUT/bundled_on_training_cases" --label bundled_on_training_cases \
  --progress none --model "$BUNDLED"
ev bundled_plus_stage4 --model "$M/bundled_plus_stage4_cpu.safetensors"
# corrections at test time that need no retraining (MODEL_CARD.md: none helps)
python "$(dirname "$0")/test_time_adjustments.py" "$CASES" "$BUNDLED" "$OUT/TEST_TIME_ADJUSTMENTS.md" --cases "$VAL" --train-cases "$TRAIN"
