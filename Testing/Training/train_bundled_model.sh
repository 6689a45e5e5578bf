#!/usr/bin/env bash
# Trains the bundled T1ce→T2 model and its stage-0 ablations with MedSynthLogic's own CLI (nothing bypasses it).
#
# usage: Testing/Training/train_bundled_model.sh CASES_DIR WORK_DIR
#   CASES_DIR  BraTS-named cases (<case>/<case>_t1ce.nii.gz, _t2.nii.gz)
#   WORK_DIR   receives data/ (HDF5 patches), the model files, JSON-lines logs and run folders
# Environment: DEVICE (cuda), IT (iterations per stage), BS (batch), PPC (patches per case), MEDSYNTH (command),
#   MAIN_OPTS (extra options of the main 3-stage run), ABLATIONS (1: also train the stage-0 ablations beside it).
# Re-running it on the same WORK_DIR continues: the patch files are kept and each run resumes from its newest
# checkpoint, so a schedule longer than one session (or one 10-minute GPU command, under `timeout -s TERM`,
# which makes training checkpoint and stop) is a series of identical calls.
# The validation split is fixed here and recorded in every model file's header (manifest summary).
set -euo pipefail
CASES=$1
WORK=$2
VAL=Brats18_2013_20_1,Brats18_CBICA_ALU_1,Brats18_TCIA02_370_1
MEDSYNTH=${MEDSYNTH:-medsynth}
DEVICE=${DEVICE:-cuda}
IT=${IT:-2500}
BS=${BS:-64}
PPC=${PPC:-1200}
WORKERS=${WORKERS:-0}
mkdir -p "$WORK"
t0=$(date +%s)
if [ ! -f "$WORK/data/manifest.json" ]; then
  $MEDSYNTH prepare "$CASES" "$WORK/data" --patches-per-case "$PPC" --val-cases "$VAL" --seed 0 --progress none --overwrite
  echo "prepare: $(( $(date +%s) - t0 )) s"
fi

common=(--data "$WORK/data" --device "$DEVICE" --batch-size "$BS" --iterations "$IT" --val-every 500
        --checkpoint-every 1000 --log-every 50 --num-workers "$WORKERS" --seed 0 --progress json --overwrite)
run() {  # name, extra options...
  local name=$1; shift
  local resume=()
  compgen -G "$WORK/${name}_run/ckpt_*.pt" > /dev/null && resume=(--resume)
  $MEDSYNTH train "${common[@]}" --out "$WORK/$name.safetensors" --run-dir "$WORK/${name}_run" "${resume[@]}" "$@" \
    >> "$WORK/$name.jsonl" 2>> "$WORK/$name.log" && echo "$name: done after $(( $(date +%s) - t0 )) s" \
    || echo "$name: FAILED ($?) after $(( $(date +%s) - t0 )) s"
}
# shellcheck disable=SC2086
run main --stages 3 ${MAIN_OPTS:-} &
if [ "${ABLATIONS:-1}" = 1 ]; then
  run ablation_l2 --stages 1 --no-adversarial --lambda-gdl 0 &
  run ablation_l2_gdl --stages 1 --no-adversarial &
  run ablation_no_residual --stages 1 --no-residual &
fi
wait
echo "total: $(( $(date +%s) - t0 )) s"
