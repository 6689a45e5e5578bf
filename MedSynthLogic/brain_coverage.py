"""Does the brain lie whole inside the image, and does a given brain mask fit this source? Notes, never refusals.

Two inputs that pass every check and still give a worse synthesis, found by a hostile-input walk-through:
- a brain cut by the field of view (a crop through it): near the cut the networks see no context, and a case cut at
  mid-brain lost about 1 dB within 15 voxels of the cut; BraTS brains touch only the inferior edge (the brain stem
  leaves the image in 9 of the 14 cases), so that edge is not reported;
- a ``--mask`` of another patient (or another image): 13 % of the brain lay outside it and 2.9 % of it on the
  source's empty background, where the synthesis was made up and the uncertainty map read lowest.
Like the name and enhancement notes, they are printed, recorded in the output's header and asked about in the panel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Union

import numpy as np

from .orientation import axis_order

if TYPE_CHECKING:
    from .config import ModelConfig
    from .volume import Volume

#: Brain area (mm²) on one edge of the image (other than the inferior one) above which the brain counts as cut: the
#: same contact whatever the voxel size (100 voxels of 1 mm²).
EDGE_AREA_MAX_MM2 = 100.0
#: A given mask with more than this fraction of it on the source's empty background, and as much of the source's
#: non-empty voxels outside it, is noted (another patient's mask: 2.9 % and 13 %).
MASK_MISFIT_MAX = 0.02
#: The image's edges in the canonical (z, y, x) order along +S, +P, +L: (axis, index) → name.
EDGES = {(0, -1): "superior", (1, 0): "anterior", (1, -1): "posterior", (2, 0): "right", (2, -1): "left"}


def coverage_notes(volume: "Volume", model_config: "ModelConfig", mask: Union["Volume", np.ndarray, None] = None
                   ) -> List[str]:
    """The sentences for a brain cut by the image's edge and for a given mask that does not fit the source."""
    threshold = model_config.normalisation.mask_threshold
    given = None if mask is None else np.asarray(getattr(mask, "array", mask)) > 0
    brain = given if given is not None else volume.array > threshold
    notes = cut_edges_note(volume, brain)
    if given is not None:
        notes += mask_fit_note(volume.array, given, threshold)
    return notes


def cut_edges_note(volume: "Volume", brain: np.ndarray) -> List[str]:
    """A sentence naming the edges (in patient terms) where more than ``EDGE_AREA_MAX_MM2`` of brain lies."""
    order = axis_order(volume.direction)
    canonical = order.forward(brain)
    spacing_zyx = order.spacing(volume.spacing)[::-1]
    cut = []
    for (axis, index), name in EDGES.items():
        count = int(np.count_nonzero(np.take(canonical, index, axis=axis)))
        area = count * float(np.prod([s for a, s in enumerate(spacing_zyx) if a != axis]))
        if area > EDGE_AREA_MAX_MM2:
            cut.append(f"{name} ({area:.0f} mm²)")
    if not cut:
        return []
    return [f"the brain reaches the image's {', '.join(cut)} edge: the field of view cuts it, and near the cut the "
            "synthesis sees no anatomy beyond it and is less reliable (a case cut at mid-brain lost about 1 dB there)"]


def mask_fit_note(source: np.ndarray, mask: np.ndarray, threshold: float) -> List[str]:
    """A sentence when more than ``MASK_MISFIT_MAX`` of a given mask lies on the source's empty background and as much
    of the source's non-empty voxels lies outside it: a mask of another brain. Either alone is common and harmless (a
    dilated mask; a head that is not skull-stripped, whose scalp lies outside its brain mask)."""
    inside, filled = int(np.count_nonzero(mask)), source > threshold
    on_empty = int(np.count_nonzero(mask & ~filled))
    left_out = int(np.count_nonzero(filled & ~mask))
    if not inside or on_empty <= MASK_MISFIT_MAX * inside or left_out <= MASK_MISFIT_MAX * max(int(filled.sum()), 1):
        return []
    return [f"the given brain mask does not fit this image: {100 * on_empty / inside:.1f}% of it lies where the "
            f"source is empty and {100 * left_out / max(int(filled.sum()), 1):.1f}% of the image's non-empty voxels lie "
            "outside it. Is it this patient's mask, made on this image? Where it covers empty background the "
            "synthesis has no image to work from"]
