#!/usr/bin/env bash
# The paper's FCN trained on the CPU for the training time the U-Net's stage 1 took to reach its iteration 960
# (BUDGET_S; UNET_RECIPE.md, "FCN against U-Net for the same CPU hours"), then exported and evaluated once.
# The bundled model's recipe (bundled_train_config.json, λ_adv 0.01, 3 stages) at the CPU batch of its stage 3
# (64), in the precision run_common.sh picks (as the U-Net's runs); evaluated in float32 like every other row.
# Called again, it resumes until the run's own clock (the `time` column of its training log, cumulative across
# resumes) reaches the budget; SIGTERM from `timeout` makes it checkpoint and stop.
#
# usage: nice -n 19 Testing/Training/fcn_same_hours.sh CASES_DIR WORK_DIR
# Environment: MEDSYNTH (command), THREADS (default 2), BUDGET_S (required: the U-Net run's own clock at iteration
#   960 on the same machine and code; UNET_RECIPE.md, session 17).
set -euo pipefail
CASES=$1
WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/run_common.sh"
BUDGET_S=${BUDGET_S:?set BUDGET_S to the U-Net run\'s clock at iteration 960 (UNET_RECIPE.md, session 17)}
RUN=$WORK/fcn_same_hours
mkdir -p "$RUN"
if [ ! -f "$RUN/data/manifest.json" ]; then
  $MEDSYNTH prepare "$CASES" "$RUN/data" --patches-per-case 1200 --val-cases "$VAL" --seed 0 --progress none --overwrite
fi
left=$((BUDGET_S - $(run_clock "$RUN/run")))
if [ "$left" -gt 0 ]; then
  resume=($(resume_flag "$RUN/run"))
  rc=0
  timeout -s TERM "$left" $MEDSYNTH train --data "$RUN/data" --train-config "$HERE/bundled_train_config.json" \
    --lambda-adv 0.01 --batch-size 64 --precision "$PRECISION" --device cpu --out "$RUN/fcn.safetensors" --run-dir "$RUN/run" \
    --progress json --overwrite "${resume[@]}" >> "$RUN/train.jsonl" 2>> "$RUN/train.log" || rc=$?
  case $rc in 0|124|130) ;; *) echo "training failed ($rc), see $RUN/train.log" >&2; exit "$rc";; esac
  if [ "$rc" -ne 0 ]; then
    echo "stopped at the budget or by a signal; call again to go on until ${BUDGET_S} s"
    [ "$(run_clock "$RUN/run")" -ge $((BUDGET_S - 60)) ] || exit 0
  fi
fi
newest=$(newest_checkpoint "$RUN/run")
[ -n "$newest" ] || { echo "no checkpoint in $RUN/run to export" >&2; exit 5; }
stage=$((10#$(basename "$newest" | sed 's/ckpt_s\([0-9]*\)_.*/\1/')))
$MEDSYNTH export "$newest" "$RUN/fcn_same_hours.safetensors" --stages $((stage + 1)) --overwrite
$MEDSYNTH evaluate "$CASES" --model "$RUN/fcn_same_hours.safetensors" --cases "$VAL" --out "$RUN/evaluation" \
  --label "nie2018 FCN, ${BUDGET_S} s of CPU training" --precision fp32 --progress none
