"""A case's files read onto its source's grid: what ``evaluate`` scores, ``fit-lookup`` and ``fit-error-map`` fit on.

One reader for all three, so a case with a mask file or a target on another grid is the same case to each of them.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional

import numpy as np

from .dataset_cases import Case
from .errors import DataError


class CaseOnSourceGrid(NamedTuple):
    """A case's files as one grid: what ``evaluate`` scores and ``fit-lookup`` fits on. ``mask``: the brain, which
    the synthesis reads; ``scored``: the part of it the target covers, which the scores and the lookup's fit read."""

    source: Any
    target: Any
    mask: np.ndarray
    tumour: Optional[np.ndarray]
    notes: List[str]
    scored: np.ndarray


def read_case(case: Case, mask_threshold: float, tumour: bool = True, target_fill: float = 0.0) -> CaseOnSourceGrid:
    """One case on its source's grid: the source and target Volumes, the brain mask, the tumour region (the
    segmentation's labels > 0; None without one) and the sentences saying what was resampled.

    The mask is the case's own mask file when it has one (as ``prepare`` trained with it), else the source's
    threshold mask. A target, mask or segmentation on another grid is resampled onto the source's and said so: a
    segmentation read as it was marked a misplaced tumour region, and a resampled target scored 1.3 dB lower.
    ``tumour``: False leaves the segmentation unread (fit-lookup has no use for it); ``target_fill``: the target's
    background where a resampled target does not reach (``dataset_prep.target_background``).
    """
    from .normalisation import brain_mask
    from .volume_io import align_pair, field_of_view_on_grid, read_volume

    raw_target = read_volume(case.target)
    source, target, notes = align_pair(read_volume(case.source), raw_target, policy="resample", fill=target_fill)
    seg = _on_source_grid(read_volume(case.seg), source, "segmentation", notes) if case.seg and tumour else None
    if case.mask:
        mask = _on_source_grid(read_volume(case.mask), source, "mask", notes)
    else:
        mask = brain_mask(source.array, mask_threshold)
    scored = mask
    if notes and target is not raw_target:  # resampled: beyond its field of view the target holds no data
        scored = mask & field_of_view_on_grid(raw_target, source)
        missed = int(np.count_nonzero(mask) - np.count_nonzero(scored))
        if missed == int(np.count_nonzero(mask)):
            raise DataError("The target's field of view does not reach the brain mask: there is nothing to score.",
                            "Check that the target belongs to this case and lies in the same space as the source.")
        if missed:
            notes.append(f"The target's field of view misses {missed} of the brain mask's {int(mask.sum())} voxels "
                         f"({100.0 * missed / mask.sum():.1f} %): they are not scored.")
    return CaseOnSourceGrid(source, target, mask, seg, notes, scored)


def _on_source_grid(labels: Any, source: Any, what: str, notes: List[str]) -> np.ndarray:
    """``labels > 0`` on the source's grid (``volume.region_on_grid``), with a note when it had to be resampled."""
    from .volume_io import region_on_grid

    region, diffs = region_on_grid(labels, source)
    if diffs:
        notes.append(f"Resampled the {what} onto the source grid: " + "; ".join(diffs) + ".")
    return region
