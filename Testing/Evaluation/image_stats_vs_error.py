"""Do whole-image statistics follow a source's mean error where the learned error map does not? (training cases)

The learned error map reads each voxel's neighbourhood, and fitted with shifted sources too it still did not rise for
a T1 given as the T1ce (docs/evaluation/UNCERTAINTY.md, session 35). The enhancement note's statistics
(:func:`MedSynthLogic.enhancement.enhancement_stats`) are whole-image numbers that tell a T1 from a T1ce. This asks,
before any map is built on them, whether they follow the mean |error| of each source the fit saw: it reads the
per-source mean errors that ``medsynth fit-error-map --variants t1,contrast`` printed (its log) and the gammas its
output's header records, rebuilds the same sources (``source_shifts``), and prints the Pearson r of each statistic
with the mean error over all sources and, per case, of their changes from the source as given. Training cases only:
no validation case is read.

    python Testing/Evaluation/image_stats_vs_error.py CASES_DIR FIT_LOG FITTED_MODEL
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from MedSynthLogic.dataset_cases import companion_t1
from MedSynthLogic.dataset_prep import find_cases, select_cases
from MedSynthLogic.enhancement import enhancement_stats
from MedSynthLogic.model_file import load_model
from MedSynthLogic.normalisation import brain_mask
from MedSynthLogic.source_shifts import contrast_in_brain, t1_in_place
from MedSynthLogic.volume_io import read_volume

STATS = ("bright_tail", "thin_bright", "spread")
LINE = re.compile(r"(\S+) \((.+)\): mean \|error\| ([0-9.]+)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases_dir", type=Path)
    ap.add_argument("fit_log", type=Path)
    ap.add_argument("model", type=Path, help="the model file fit-error-map --variants t1,contrast wrote")
    args = ap.parse_args()
    errors = {(m.group(1), m.group(2)): float(m.group(3))
              for m in map(LINE.match, args.fit_log.read_text().splitlines()) if m}
    model = load_model(args.model)
    drawn = model.error_map.fitted_on["variants"]
    rows = []
    for case in select_cases(find_cases(args.cases_dir), list(drawn), f"Case in {args.cases_dir}"):
        source = read_volume(case.source)
        mask = brain_mask(source.array, model.config.normalisation.mask_threshold)
        arrays = {"as given": source.array,
                  "t1": t1_in_place(companion_t1(case.source), source, mask).array,
                  "contrast": contrast_in_brain(source.array, mask, drawn[case.case_id]["contrast"]["gamma"])}
        for name, array in arrays.items():
            stats = enhancement_stats(array, mask)
            rows.append([errors[(case.case_id, name)]] + [getattr(stats, s) for s in STATS])
            print(case.case_id, name, " ".join(f"{v:.4f}" for v in rows[-1]), flush=True)
    table = np.array(rows)
    changes = np.concatenate([table[i + 1:i + 3] - table[i] for i in range(0, len(table), 3)])
    for k, stat in enumerate(STATS, start=1):
        print(f"{stat}: r with the mean |error| over {len(table)} sources {np.corrcoef(table[:, 0], table[:, k])[0, 1]:+.3f}; "
              f"r of the changes from as given ({len(changes)}) {np.corrcoef(changes[:, 0], changes[:, k])[0, 1]:+.3f}")


if __name__ == "__main__":
    main()
