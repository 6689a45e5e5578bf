"""Does a source that should be a T1ce show any contrast enhancement? The intensity hint for a T1 given instead.

The sequence rule of :mod:`.input_checks` sees a T1 and a T1ce alike (both T1-weighted), and a name
(:mod:`.source_names`) can be silent or wrong. A non-contrast T1 synthesized as the T1ce costs the default model
1.2–1.5 dB and the enhancing rim (``docs/evaluation/input_shift*``, row "T1 instead of T1ce"). Gadolinium leaves
two marks that a non-contrast T1 lacks, and a T1ce shows at least one of them:

* a **bright tail**: the 99.5th percentile minus the median (enhancing tumour, choroid plexus, sinuses);
* **thin bright structures**: the 99th percentile of the white top-hat (the image minus its grey opening with a
  3×3×3 cube): enhancing vessels and rims a few voxels wide, which the opening removes.

Both are read on the logarithm of the image, lightly smoothed (Gaussian, sigma 1 voxel), and measured in units of
the brain's own spread there (its median minus its 5th percentile), so that a gamma change of the contrast, a
multiplicative field and 5 % noise move them little (the first form, on the raw intensities over the median, lost
half the T1 under a gamma of 1.25 or 5 % noise).

Both are read on a 1 mm grid, the voxel size their thresholds were drawn on: a source whose voxels differ from it
by more than synthesis's ``voxel_size.RESAMPLE_ABOVE`` is resampled first (linearly; its mask by nearest neighbour),
since the smoothing and the top-hat count voxels (a BraTS T1 at 1.4 mm read as enhancing in 7 of 14 cases, a T1ce at
0.7 mm as not enhancing in 3).

Both are read inside the brain eroded by the sequence rule's ``EDGE_EROSION`` voxels (the skull-stripped edge against a zero
background would itself look like a thin bright structure). A source below both thresholds gets a **note**, never a
refusal: a T1ce whose tumour and vessels barely enhance looks the same. The thresholds lie midway between the
highest T1 and the next T1ce of the 14 BraTS 2018 cases (``docs/evaluation/INPUT_CHECKS.md``, written by
``Testing/Evaluation/input_check_confusion.py``): every T1 noted and no T1ce, the same with each case left out of
the choice. The form was chosen among the eight of ``Testing/Evaluation/enhancement_forms.py`` on those same cases
(Testing/Training/UNET_RECIPE.md, session 34), so a held-out site may do worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import numpy as np

from .input_checks import EDGE_EROSION, MIN_VOXELS, brain_box, source_brain
from .source_names import T1CE, expected_sequence

if TYPE_CHECKING:
    from .config import ModelConfig
    from .input_checks import InputFinding
    from .volume_io import Volume

__all__ = ["EnhancementStats", "enhancement_stats", "enhancement_notes", "on_calibration_grid", "BRIGHT_TAIL_MIN",
           "THIN_BRIGHT_MIN", "CALIBRATION_SPACING_MM"]

#: A source whose bright tail reaches this shows enhancement (BraTS 2018: T1 0.37–1.07, T1ce 0.58–2.95, midway
#: between the highest T1 and the next T1ce 1.15).
BRIGHT_TAIL_MIN = 1.11
#: A source whose thin bright structures reach this show enhancement (BraTS 2018: T1 0.085–0.157, T1ce 0.185–0.675,
#: midway between them).
THIN_BRIGHT_MIN = 0.171
#: Gaussian smoothing (voxels) before the logarithm: 5 % noise would otherwise fill the top-hat.
SMOOTHING_SIGMA = 1.0
#: The brain's spread in the log image: the median minus this percentile.
SPREAD_PERCENTILE = 5.0
#: The voxel size (mm, every axis) the statistics are read at: the BraTS cases' that drew the thresholds.
CALIBRATION_SPACING_MM = 1.0
#: Findings that say the image is not a T1-weighted brain at all: then whether it enhances is beside the point.
NOT_THE_IMAGE_KIND = frozenset({"label_map", "sequence", "skull_stripped"})


@dataclass(frozen=True)
class EnhancementStats:
    """The two marks of contrast agent, each in units of the brain's spread in the log image (module docstring)."""

    bright_tail: float
    thin_bright: float
    #: Their unit, the brain's spread in the log image: a gamma γ multiplies it by γ (reported beside the marks).
    spread: float

    @property
    def enhances(self) -> bool:
        """At least one mark reaches its threshold."""
        return self.bright_tail >= BRIGHT_TAIL_MIN or self.thin_bright >= THIN_BRIGHT_MIN


def enhancement_stats(array: np.ndarray, mask: np.ndarray) -> Optional[EnhancementStats]:
    """The bright tail and thin-bright statistics of ``array`` inside ``mask``; None when too little brain is left."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return None
    arr, box_mask = brain_box(np.asarray(array, dtype=np.float32), mask)
    inner = ndimage.binary_erosion(box_mask, iterations=EDGE_EROSION)
    if int(inner.sum()) < MIN_VOXELS:  # too little brain to judge: no note
        return None
    median = float(np.median(arr[inner]))
    if median <= 0:
        return None
    smooth = ndimage.gaussian_filter(arr / np.float32(median), SMOOTHING_SIGMA)
    log = np.log(np.maximum(smooth, np.float32(1e-3)))
    low, mid, high = np.percentile(log[inner], [SPREAD_PERCENTILE, 50.0, 99.5])
    spread = float(mid - low)
    if spread <= 1e-6:  # a flat brain: nothing to measure against
        return None
    top_hat = log - ndimage.grey_opening(log, size=(3, 3, 3))
    return EnhancementStats(float(high - mid) / spread, float(np.percentile(top_hat[inner], 99)) / spread, spread)


def on_calibration_grid(array: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """``array`` and ``mask`` (z, y, x) resampled to :data:`CALIBRATION_SPACING_MM` when ``spacing`` (x, y, z) is
    farther from it than synthesis's resampling rule allows; else as they are."""
    from scipy import ndimage

    from .voxel_size import needs_resampling

    calibration = (CALIBRATION_SPACING_MM,) * 3
    mask = np.asarray(mask, dtype=bool)
    if not needs_resampling(tuple(spacing), calibration) or not mask.any():
        return array, mask
    array, mask = brain_box(np.asarray(array, dtype=np.float32), mask)  # the statistics read no more: a 2 mm head
    factors = [float(s) / CALIBRATION_SPACING_MM for s in tuple(spacing)[::-1]]  # upsampled whole took 0.8 GB
    return ndimage.zoom(array, factors, order=1), ndimage.zoom(mask.astype(np.uint8), factors, order=0).astype(bool)


def enhancement_notes(volume: "Volume", model_config: "ModelConfig", mask: Union["Volume", np.ndarray, None] = None,
                      findings: Sequence["InputFinding"] = ()) -> List[str]:
    """A sentence for the user when a model that expects a T1ce is given a source without either mark of contrast
    agent; empty otherwise, for a model whose source is not a T1ce, and when ``findings`` (the input checks') already
    say the image is no T1-weighted brain."""
    expected = expected_sequence(model_config)
    if expected is None or expected.kind != T1CE or any(f.code in NOT_THE_IMAGE_KIND for f in findings):
        return []
    array, brain = on_calibration_grid(volume.array, source_brain(volume, mask, model_config.normalisation.mask_threshold),
                                       volume.spacing)
    stats = enhancement_stats(array, brain)
    if stats is None or stats.enhances:
        return []
    return [f"it shows no sign of contrast enhancement (bright tail {stats.bright_tail:.2f}, below "
            f"{BRIGHT_TAIL_MIN}; thin bright structures {stats.thin_bright:.3f}, below {THIN_BRIGHT_MIN}): a T1 "
            "without contrast looks like this, and so does a T1ce whose tumour and vessels barely enhance, or a FLAIR "
            "with little oedema, which the sequence check can take for T1-weighted. If it is "
            "a non-contrast T1, the synthesis lacks the enhancing rim and is measurably worse (MODEL_CARD.md, Known "
            "failure modes)"]
