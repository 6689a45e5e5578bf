#!/usr/bin/env bash
# Run MedSynthTest (the ScriptedLoadableModuleTest in MedSynth/MedSynth.py) inside a real 3D Slicer, from this
# source checkout, without building the extension.
#
#   SLICER=/path/to/Slicer Testing/run_slicer_selftest.sh
#
# Needs a Slicer application (5.8 or later) with torch installed in it (PyTorch extension, or
# `PythonSlicer -m pip install torch`) plus Resources/requirements.txt, and the bundled model under
# Resources/Models. Not runnable on machines without the Slicer application (PyPI's slicer-core has no
# slicer.app, qt or ScriptedLoadableModule). Exits 0 when the test passes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SLICER="${SLICER:-$(command -v Slicer || true)}"
if [[ -z "${SLICER}" || ! -x "${SLICER}" ]]; then
  echo "Set SLICER to the Slicer executable (e.g. ~/Slicer-5.10.0-linux-amd64/Slicer)." >&2
  exit 2
fi

# The module imports MedSynthLogic from the repository root (MedSynth.py also adds it when it is missing).
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"

read -r -d '' CODE <<'PY' || true
import sys, traceback
import slicer
try:
    slicer.util.getModule("MedSynth")  # raises when the module did not load from --additional-module-paths
    if slicer.util.mainWindow() is not None:
        slicer.util.selectModule("MedSynth")  # also builds the widget (loads the .ui, connects the parameter node)
    import MedSynth
    test = MedSynth.MedSynthTest()
    test.messageDelay = 10
    test.runTest()
    print("MedSynthTest passed")
    exitCode = 0
except Exception:
    traceback.print_exc()
    exitCode = 1
slicer.util.exit(exitCode)
PY

# Set MEDSYNTH_WITH_GUI=1 to also open the main window, which builds the module widget from the .ui file.
WINDOW_OPTION="--no-main-window"
[[ "${MEDSYNTH_WITH_GUI:-0}" == "1" ]] && WINDOW_OPTION=""

exec "${SLICER}" --no-splash ${WINDOW_OPTION} --testing \
  --additional-module-paths "${REPO}/MedSynth" \
  --python-code "${CODE}"
