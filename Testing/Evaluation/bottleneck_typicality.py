"""Does the default model's own U-Net see a contrast change (gamma 1.25, which costs it 1.5 dB and passes every check)?

For each BraTS case, the whole-volume synthesis runs once on the T1ce as given and once on its gamma-1.25 change
(input_shift.py's), and the refiner U-Net's deepest features (its last encoder block) are summarised per channel by
their mean and standard deviation over the volume. Leave one case out: each source's typicality score is the mean
|z| of its features against the other 13 cases' unshifted ones. An out-of-distribution note would need the changed
sources above the unshifted ones. Writes docs/evaluation/uncertainty/BOTTLENECK_TYPICALITY.md.

    python Testing/Evaluation/bottleneck_typicality.py [--brats ../shared/data/brats18] [--features FILE.npz]

``--features`` reads (or, when missing, writes) the features, so the summary can be redone without the ~50 minutes
of synthesis on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHIFTS = ("none", "gamma 1.25")


def bottleneck_features(brats: Path) -> Dict[Tuple[str, str], np.ndarray]:
    """(case, shift) → per-channel mean then standard deviation of the refiner's last encoder block."""
    import torch

    from MedSynthLogic.dataset_cases import find_cases
    from MedSynthLogic.model_file import bundled_model_path, load_model
    from MedSynthLogic.models import UNet3D
    from MedSynthLogic.normalisation import brain_mask
    from MedSynthLogic.volume_io import read_volume
    from MedSynthLogic.volume_synthesis import synthesize_volume
    from input_shift import shifted_sources

    torch.set_num_threads(2)
    model = load_model(bundled_model_path())
    sums: List[Tuple[np.ndarray, np.ndarray, int]] = []

    def keep(module, inputs, output) -> None:  # noqa: ARG001
        o = output.float()
        sums.append((o.sum(dim=(0, 2, 3, 4)).numpy(), (o * o).sum(dim=(0, 2, 3, 4)).numpy(), o[0, 0].numel()))

    for unet in (m for m in model.chain.modules() if isinstance(m, UNet3D)):
        unet.encoders[-1].register_forward_hook(keep)
    out: Dict[Tuple[str, str], np.ndarray] = {}
    for case in find_cases(brats):
        source = read_volume(case.source)
        mask = brain_mask(source.array, model.config.normalisation.mask_threshold)
        for shift, shifted in shifted_sources(case, mask, source).items():
            if shift not in SHIFTS:
                continue
            sums.clear()
            with torch.no_grad():
                synthesize_volume(model, shifted, mask)
            total, squares, n = (sum(parts) for parts in zip(*sums))
            mean = total / n
            out[(case.case_id, shift)] = np.concatenate([mean, np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))])
            print(case.case_id, shift, flush=True)
    return out


def scores(features: Dict[Tuple[str, str], np.ndarray], part: slice) -> Dict[str, np.ndarray]:
    """shift → per case, the mean |z| against the other cases' unshifted features."""
    cases = sorted({case for case, _ in features})
    out = {shift: [] for shift in SHIFTS}
    for case in cases:
        reference = np.stack([features[(other, "none")][part] for other in cases if other != case])
        mu, sd = reference.mean(axis=0), reference.std(axis=0) + 1e-6
        for shift in SHIFTS:
            out[shift].append(float(np.mean(np.abs((features[(case, shift)][part] - mu) / sd))))
    return {shift: np.array(values) for shift, values in out.items()}


def report(features: Dict[Tuple[str, str], np.ndarray], brats: Path) -> str:
    half = len(next(iter(features.values()))) // 2
    lines = ["# Does the U-Net's deepest layer see a contrast change?", "",
             f"`python Testing/Evaluation/bottleneck_typicality.py --brats {brats}` (summary written "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; the default model, fp32 on the CPU). Per source, "
             "the mean |z| of the refiner's last encoder block's per-channel statistics against the other 13 cases' "
             "unshifted T1ce (leave-one-out).", "",
             "| features | gamma 1.25 above the same case unshifted | gamma 1.25 above every unshifted score |",
             "|---|---|---|"]
    for name, part in (("channel means", slice(0, half)), ("channel standard deviations", slice(half, 2 * half)),
                       ("both", slice(0, 2 * half))):
        s = scores(features, part)
        n = len(s["none"])
        lines.append(f"| {name} | {int((s['gamma 1.25'] > s['none']).sum())} of {n} | "
                     f"{int((s['gamma 1.25'] > s['none'].max()).sum())} of {n} |")
    s = scores(features, slice(0, half))
    cases = sorted({case for case, _ in features})
    lines += ["", "Per case, channel means (score unshifted → gamma 1.25):", ""]
    lines += [f"- {case}: {a:.2f} → {b:.2f}" for case, a, b in zip(cases, s["none"], s["gamma 1.25"])]
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brats", type=Path, default=REPO.parent / "shared" / "data" / "brats18")
    p.add_argument("--features", type=Path, default=None)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "evaluation" / "uncertainty" / "BOTTLENECK_TYPICALITY.md")
    args = p.parse_args(argv)
    if args.features is not None and args.features.is_file():
        stored = np.load(args.features)
        features = {tuple(key.split("|")): stored[key] for key in stored.files}
    else:
        features = bottleneck_features(args.brats)
        if args.features is not None:
            np.savez(args.features, **{"|".join(key): value for key, value in features.items()})
    text = report(features, args.brats)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
