"""Does a source image look like what the model was trained on? Checked before any compute.

A T2, a FLAIR or a label map given as the "T1ce" used to give a plausible-looking but wrong synthesis, and a
head that is not skull-stripped or 5 mm slices went through without a word. The expectations come from the
model header (``ModelConfig.input``, :class:`~MedSynthLogic.config.InputExpectations`), so an MR→CT model
states its own. Three checks:

* **sequence** (a small rule on the intensity histogram inside the brain, measured on BraTS in
  ``docs/evaluation/INPUT_CHECKS.md`` by ``Testing/Evaluation/input_check_confusion.py``):

  - *label map* if every brain voxel is an integer and there are at most :data:`LABEL_MAX_VALUES` values, or if
    its :data:`LABEL_TOP_VALUES` commonest values hold at least :data:`LABEL_TOP_FRACTION` of the brain (a label
    map resampled linearly: fractional values at the label borders only; a flat image), or if the histogram's mode
    (below) lies at :data:`MAP_MODE_POSITION` of its range or higher (a probability map, a smoothed mask);
  - otherwise two statistics of the brain (eroded by :data:`EDGE_EROSION` voxels against skull-stripping
    partial volume) add up to ``t2_score``:

    - the *histogram score*: between the 0.5th and 99.5th percentiles, in :data:`HIST_BINS` bins smoothed with
      a Gaussian of :data:`HIST_SMOOTH` bins, the histogram's mode (the commonest intensity: white matter in T1
      and T2) gives ``fraction of voxels brighter than the mode − position of the mode in that range (0..1)``.
      In a T2-weighted image the mode sits low and most of the brain (grey matter, CSF, oedema) is brighter;
      in a T1-weighted one the mode sits high;
    - the *bright tail*: ``95th percentile / median − 1``. Oedema and CSF are bright in T2 and FLAIR and fill
      a large part of a glioma brain; in a T1ce only enhancing tissue and vessels are, a few percent of it.

    *T2-weighted* if ``t2_score ≥`` :data:`T2_SCORE_THRESHOLD`, else *T1-weighted*. It cannot tell T1 from
    T1ce. It catches every BraTS T2 and label map and half the FLAIRs: a FLAIR with little oedema has dark CSF
    and a white-matter peak like a T1.

  The check runs only when the model's ``input.sequence`` and ``source_name`` both name a sequence the rule
  knows (:data:`T1_WEIGHTED`, :data:`T2_WEIGHTED`; also names such as "T1_3T" that :mod:`.source_names` reads)
  and agree, and the model expects skull-stripped input; any other source (CT, PD, "MR", a whole head) gets no
  sequence check, and nor does a FLAIR source (the rule calls half the FLAIRs T1-weighted).
* **skull-stripped** (when no brain mask is given): at least ``min_background_fraction`` of the voxels are 0
  (≤ the model's mask threshold). A head whose air was set to 0 passes; a head with scanner noise does not, and
  then the sequence is not judged (the "brain" would be the whole head). A source whose brightest voxels crowd
  within :data:`RIM_WIDTH_MM` of the brain's edge (:func:`bright_rim_ratio` ≥ :data:`RIM_RATIO_MIN`; checked with
  the sequence, for a model whose sequence the rule knows, and not for a label map) is refused as incompletely
  skull-stripped: scalp fat or marrow left around the brain is bright in a T1, the model never saw it, and it made
  the sequence rule answer "T2-weighted", which sent the user looking for another sequence instead of another
  skull-strip.
* **spacing**: each axis within ``spacing_tolerance_mm`` of ``spacing_mm``; largest/smallest ≤ ``max_anisotropy``.
* **negative values** (MR sources, i.e. not ``window`` normalisation, where CT's negative HU are expected): more
  than :data:`NEGATIVE_MAX_FRACTION` of the non-zero voxels below 0 means an image already normalised (z-scored),
  not the scanner's intensities: the brain mask (source > threshold) would drop those voxels and the sequence
  rule would misread the histogram, so the sequence is then not judged.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import GeometryError, InputImageError
from .orientation import axis_order
from .voxel_size import describe as describe_voxels

if TYPE_CHECKING:
    from .config import ModelConfig
    from .volume_io import Volume

__all__ = [
    "InputFinding",
    "SequenceGuess",
    "check_source",
    "checks_run",
    "classify_sequence",
    "refuse_or_warn",
    "hints_for",
    "HINTS",
    "PANEL_HINTS",
    "checks_metadata",
    "sequence_kind",
    "source_brain",
    "brain_box",
    "bright_rim_ratio",
    "RIM_WIDTH_MM",
    "METADATA_KEY",
]

#: At most this many distinct integer values inside the brain: a label map, not an image.
LABEL_MAX_VALUES = 64
#: A brain whose this many commonest values hold :data:`LABEL_TOP_FRACTION` of its voxels is a label map, even
#: with fractional values. Measured on the 14 BraTS 2018 cases: the T1ce, T1, T2 and FLAIR at most 0.37 (the T1ce
#: of 2013_3_1; as 8-bit images too), a tissue-label map of the brain (its segmentation + 1) resampled linearly at
#: least 0.92 (zoomed 1.1 in-plane) and 0.98 (shifted half a voxel); midway. Resampled, such a map passed as a T1ce.
LABEL_TOP_VALUES = 8
LABEL_TOP_FRACTION = 0.65
#: A brain whose commonest intensity lies this high in its 0.5–99.5 percentile range is a map, not an MR image: a
#: brain probability map or smoothed mask (0.99). The 56 BraTS 2018 MR images reach at most 0.82 (a T1; T1ce
#: 0.32–0.76); midway-ish. Such a map passed as a T1ce, with only a note that it might be a T1 without contrast.
MAP_MODE_POSITION = 0.9
#: Voxels peeled off the brain mask before the histogram (the skull-stripped edge is partial volume).
EDGE_EROSION = 2
HIST_BINS = 64
HIST_SMOOTH = 1.5
#: ``t2_score`` at or above this: T2-weighted. Midway between the highest BraTS T1ce (0.558) and the lowest
#: BraTS T2 (0.790) of the 14 shared cases; see docs/evaluation/INPUT_CHECKS.md.
T2_SCORE_THRESHOLD = 0.67
#: Above this fraction of negative non-zero voxels an MR source is taken for an already normalised image.
NEGATIVE_MAX_FRACTION = 0.01
#: A voxel below this many times the positive voxels' 99th percentile is no resampling undershoot (an interpolation
#: overshoots by a fraction of the local contrast) but a bright voxel of an integer image that wrapped around: int16
#: holds at most 32767, and a T1ce scaled past it turns its enhancing rim into -32000s (a review, session 48).
WRAPPED_BELOW = -0.5
#: The bright tail is this percentile of the brain over its median.
TAIL_PERCENTILE = 95.0
#: Fewer brain voxels than this: too little to judge the sequence (no finding).
MIN_VOXELS = 500
#: The shell along the brain's edge, in millimetres, where :func:`bright_rim_ratio` looks for left-over scalp or
#: skull: a scalp has a thickness in mm, not in voxels (counted in voxels, a BraTS T1ce given a 3 mm rim read about
#: 30 % lower at 1.4 mm; docs/evaluation/input_checks/BRIGHT_RIM_VOXEL_SIZE.md).
RIM_WIDTH_MM = 3.0
#: ``bright_rim_ratio`` at or above this: bright tissue lines the brain's edge. Above the highest of the 56 BraTS
#: T1, T1ce, T2 and FLAIR files (2.85, a T1ce) and below every T1ce given a bright rim of fat's brightness (4.72;
#: docs/evaluation/input_checks/BRIGHT_RIM.md; drawn at 2.94 and 5.19 when the shell was 3 voxels, and kept).
RIM_RATIO_MIN = 4.0

T1_WEIGHTED = "T1-weighted"
T2_WEIGHTED = "T2-weighted"
LABEL_MAP = "label map"
#: Sequence names (lower case, without spaces, '-' and '_') the rule knows, by the kind it tells apart.
_KNOWN = {
    T1_WEIGHTED: ("t1", "t1ce", "t1c", "t1gd", "t1w", "t1post", "t1contrast", "mprage", "t1ceweighted"),
    T2_WEIGHTED: ("t2", "t2w", "flair", "t2flair", "t2weighted"),
}
#: Key of the JSON record in the output's header (NRRD/MetaImage keep it; NIfTI keeps the short note).
METADATA_KEY = "medsynth_input_checks"

MaskLike = Union["Volume", np.ndarray, None]


@dataclass(frozen=True)
class InputFinding:
    """One failed check: ``code`` (sequence, label_map, skull_stripped, negative_values, spacing, anisotropy), a sentence for the
    user, and the measured values behind it."""

    code: str
    message: str
    measured: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SequenceGuess:
    """What the sequence rule made of an image: ``kind`` (T1-weighted, T2-weighted, label map, or "unknown" when
    the brain is too small to judge) and the statistics it used."""

    kind: str
    t2_score: Optional[float]
    stats: Dict[str, float]


def sequence_kind(name: str) -> Optional[str]:
    """The kind the rule can tell for a sequence name (``"T1ce"`` → T1-weighted), or None for one it does not know.

    A name the file-name reader understands counts too (``"T1_3T"``, ``"MPRAGE 7T"`` → T1-weighted): a 3T→7T model
    named so used to get no sequence check at all, and a T2 went through it.
    """
    from .source_names import FLAIR, T1, T1CE, T2, named_sequence

    key = "".join(ch for ch in name.lower() if ch not in " -_")
    for kind, names in _KNOWN.items():
        if key in names:
            return kind
    named = named_sequence(name)
    if named is None:
        return None
    return T1_WEIGHTED if named.kind in (T1, T1CE) else T2_WEIGHTED if named.kind in (T2, FLAIR) else None


def _expected_kind(model_config: "ModelConfig") -> Optional[str]:
    """The kind the sequence rule checks for, or None: names it does not know or that disagree, models that take
    whole heads (the rule reads a skull-stripped brain's histogram), and a FLAIR source, which the rule cannot tell
    from a T1 (it read 7 of the 14 BraTS FLAIRs as T1-weighted: a FLAIR→T2 model refused half its own inputs)."""
    from .source_names import FLAIR, named_sequence

    if not model_config.input.skull_stripped:
        return None
    if any(getattr(named_sequence(name), "kind", None) == FLAIR
           for name in (model_config.input.sequence, model_config.source_name)):
        return None
    expected = sequence_kind(model_config.input.sequence)
    return expected if expected is not None and expected == sequence_kind(model_config.source_name) else None


def source_brain(volume: "Volume", mask: MaskLike, threshold: float) -> np.ndarray:
    """The brain the checks look at: ``mask`` (nonzero, on the source's grid) when given, else source > threshold."""
    if mask is None:
        return volume.array > threshold
    arr = np.asarray(mask.array if hasattr(mask, "array") else mask)
    if arr.shape != volume.shape:
        raise GeometryError(f"The mask's shape {arr.shape} differs from the source's {volume.shape}.",
                            "Resample the mask to the source first.")
    return arr > 0


def brain_box(array: np.ndarray, mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The mask's bounding box (plus the erosion margin) of both arrays: the rule never looks outside it."""
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    box = tuple(slice(max(0, int(i[0]) - 1), int(i[-1]) + 2) for i in idx)
    return array[box], mask[box]


def classify_sequence(array: np.ndarray, mask: np.ndarray) -> SequenceGuess:
    """Apply the sequence rule of the module docstring to the voxels of ``array`` inside ``mask``."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return SequenceGuess("unknown", None, {"brain_voxels": 0.0})
    arr, box_mask = brain_box(np.asarray(array, dtype=np.float32), mask)
    values = arr[box_mask]
    distinct, counts = np.unique(values, return_counts=True)
    if distinct.size <= LABEL_MAX_VALUES and np.all(distinct == np.round(distinct)):
        return SequenceGuess(LABEL_MAP, None, {"distinct_values": float(distinct.size)})
    top = float(np.sort(counts)[::-1][:LABEL_TOP_VALUES].sum()) / values.size
    if values.size >= MIN_VOXELS and top >= LABEL_TOP_FRACTION:
        return SequenceGuess(LABEL_MAP, None, {"distinct_values": float(distinct.size), "top_values_fraction": top})
    if values.size < MIN_VOXELS:
        return SequenceGuess("unknown", None, {"brain_voxels": float(values.size)})
    inner = ndimage.binary_erosion(box_mask, iterations=EDGE_EROSION)
    if int(inner.sum()) >= MIN_VOXELS:
        values = arr[inner]
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        return SequenceGuess("unknown", None, {"distinct_values": float(distinct.size)})
    counts, edges = np.histogram(values, bins=HIST_BINS, range=(float(lo), float(hi)))
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), HIST_SMOOTH)
    k = int(np.argmax(smooth))
    mode = 0.5 * (edges[k] + edges[k + 1])
    above = float(np.mean(values > mode))
    position = float((mode - lo) / (hi - lo))
    if position >= MAP_MODE_POSITION:
        return SequenceGuess(LABEL_MAP, None, {"distinct_values": float(distinct.size), "mode_position": round(position, 4)})
    median = float(np.median(values))
    tail = float(np.percentile(values, TAIL_PERCENTILE)) / median - 1.0 if median > 0 else 0.0
    score = above - position + tail
    kind = T2_WEIGHTED if score >= T2_SCORE_THRESHOLD else T1_WEIGHTED
    stats = {"above_mode": round(above, 4), "mode_position": round(position, 4), "bright_tail": round(tail, 4),
             "t2_score": round(score, 4)}
    return SequenceGuess(kind, round(score, 4), stats)


def bright_rim_ratio(array: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> float:
    """How much more often the brain's brightest 5 % lie within :data:`RIM_WIDTH_MM` of its edge than chance.

    1 means no preference for the edge. An incomplete skull-strip leaves scalp fat or marrow around the brain,
    bright in a T1: the brightest voxels then crowd into that shell, and the sequence rule reads the image as
    T2-weighted (docs/evaluation/input_checks/BRIGHT_RIM.md). ``spacing`` is the voxel size (x, y, z) in mm: the
    shell is the brain within that many millimetres (Euclidean) of a voxel outside it.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if int(mask.sum()) < MIN_VOXELS:
        return 1.0
    arr, brain = brain_box(np.asarray(array, dtype=np.float32), mask)
    depth = ndimage.distance_transform_edt(np.pad(brain, 1), sampling=tuple(float(s) for s in spacing)[::-1])
    shell = brain & (depth[1:-1, 1:-1, 1:-1] <= RIM_WIDTH_MM)
    bright = brain & (arr >= np.percentile(arr[brain], TAIL_PERCENTILE))
    if not bright.any() or not shell.any():
        return 1.0
    return float((bright & shell).sum() / bright.sum() / (shell.sum() / brain.sum()))


def checks_run(model_config: "ModelConfig", mask_given: bool) -> List[str]:
    """The names of the checks that apply to this model (and mask), for the record written with the output."""
    expect = model_config.input
    names = ["sequence"] if _expected_kind(model_config) else []
    if expect.skull_stripped and not mask_given:
        names.append("skull_stripped")
    if _judges_negatives(model_config):
        names.append("negative_values")
    return names + ["spacing"]


def check_source(volume: "Volume", model_config: "ModelConfig", mask: MaskLike = None) -> List[InputFinding]:
    """The failed checks of ``volume`` against the model's expectations (empty: it looks as expected).

    ``mask`` (a Volume or array on the source's grid, nonzero = brain) replaces ``source > mask_threshold`` as
    the brain and turns the skull-stripping check off. Nothing is raised for a failed check: the caller decides
    with :func:`refuse_or_warn`.
    """
    from .volume import as_volume

    volume = as_volume(volume)
    if hasattr(model_config, "chain") and hasattr(model_config, "config"):  # a LoadedModel: its config is meant
        model_config = model_config.config
    expect = model_config.input
    threshold = model_config.normalisation.mask_threshold
    findings: List[InputFinding] = []
    brain = source_brain(volume, mask, threshold)
    if expect.skull_stripped and mask is None:
        background = float(np.mean(volume.array <= threshold))
        if background < expect.min_background_fraction:
            faint = _faint_background_fraction(volume.array, threshold)
            findings.append(InputFinding(
                "skull_stripped",
                f"it does not look skull-stripped: only {100 * background:.1f}% of the voxels are background "
                f"(at most {threshold:g}, the model's brain mask threshold), "
                f"at least {100 * expect.min_background_fraction:.0f}% expected (or the volume is cropped through "
                "the brain; the model expects the whole skull-stripped brain with some background around it)"
                + (f"; {100 * faint:.0f}% of the voxels hold faint values near 0 instead, a background that is not "
                   "exactly 0 (set it to 0, or give the brain mask)"
                   if faint > expect.min_background_fraction and threshold == 0 else ""),
                {"background_fraction": round(background, 4), "faint_background_fraction": round(faint, 4)},
            ))
    negative = _negative_fraction(volume.array) if _judges_negatives(model_config) else 0.0
    wrapped = _wrapped_voxels(volume.array) if _judges_negatives(model_config) else (0, 0.0, 0.0)
    if wrapped[0] and negative <= NEGATIVE_MAX_FRACTION:
        count, lowest, bright = wrapped
        findings.append(InputFinding(
            "negative_values",
            f"{count} voxel(s) lie far below 0 (down to {lowest:g}, while the positive voxels' 99th percentile is "
            f"{bright:g}): the brightest voxels of an integer image wrapped around (a value past int16's 32767 "
            "stored as int16), so the enhancing tissue would be left out of the brain as holes; export it again as "
            "float or uint16",
            {"wrapped_voxels": count, "lowest": lowest, "positive_p99": bright},
        ))
    if negative > NEGATIVE_MAX_FRACTION:
        findings.append(InputFinding(
            "negative_values",
            f"{100 * negative:.1f}% of its non-zero voxels are negative: it looks intensity-normalised (e.g. "
            f"z-scored), or it is an image in another unit (a CT in HU), and the model expects the {model_config.source_name}'s "
            f"scanner intensities; the brain mask (source > {threshold:g}) would leave those voxels out (small "
            "negative values around the brain are a resampling's undershoot: clip them to 0)",
            {"negative_fraction": round(negative, 4)},
        ))
    expected = _expected_kind(model_config)
    if expected is not None and not findings:  # without a clean background the "brain" is the whole head
        guess = classify_sequence(volume.array, brain)
        wanted = model_config.input.sequence
        rim_judged = expect.skull_stripped and mask is None and guess.kind != LABEL_MAP
        ratio = bright_rim_ratio(volume.array, brain, volume.spacing) if rim_judged else 0.0
        if guess.kind == LABEL_MAP:
            findings.append(InputFinding(
                "label_map",
                f"it looks like a label map (segmentation), not a {wanted} image: "
                + (f"{100 * guess.stats['top_values_fraction']:.0f}% of the brain holds one of {LABEL_TOP_VALUES} "
                   "values (a label map resampled, or an image without contrast)"
                   if "top_values_fraction" in guess.stats else
                   f"its commonest value lies at {100 * guess.stats['mode_position']:.0f}% of its range, where an MR "
                   "image's brain has its brightest tissue (a probability map or a smoothed mask)"
                   if "mode_position" in guess.stats else
                   f"{int(guess.stats['distinct_values'])} distinct integer values inside the brain"),
                {"kind": guess.kind, **guess.stats},
            ))
        elif ratio >= RIM_RATIO_MIN:
            findings.append(InputFinding(
                "skull_stripped",
                f"bright tissue lines the edge of its brain ({ratio:.1f}× more of the brightest voxels within "
                f"{RIM_WIDTH_MM:g} mm of the edge than elsewhere): it looks incompletely skull-stripped, scalp or "
                "skull left around the brain" + (", which also makes its intensities look T2-weighted"
                                                 if guess.kind != expected else ""),
                {"bright_rim_ratio": round(ratio, 3), **guess.stats},
            ))
        elif guess.kind not in (expected, "unknown"):
            findings.append(InputFinding(
                "sequence",
                f"its intensities look {guess.kind}, not like the {wanted} ({expected}) the model was trained on "
                f"(t2_score {guess.t2_score:.3f}; {T2_WEIGHTED} from {T2_SCORE_THRESHOLD})"
                + (f"; if it is the {wanted}, its contrast has been changed (heavy noise, a strong gamma or windowing) "
                   "or its field of view cuts off much of the brain (the histogram then lacks the tissue cut off): the "
                   "model was not trained on such an image either" if guess.kind == T2_WEIGHTED else ""),
                {"kind": guess.kind, **guess.stats},
            ))
    spacing = axis_order(volume.direction).spacing(volume.spacing)  # the model's axes, whatever the file's order
    far = [abs(s - e) > expect.spacing_tolerance_mm + 1e-6 for s, e in zip(spacing, expect.spacing_mm)]
    if any(far):
        findings.append(InputFinding(
            "spacing",
            f"its voxel size {describe_voxels(spacing)} is not within {expect.spacing_tolerance_mm:g} mm of the "
            f"{describe_voxels(expect.spacing_mm)} the model was trained on",
            {"spacing_mm": list(spacing)},
        ))
    ratio = max(spacing) / min(spacing)
    if ratio > expect.max_anisotropy + 1e-6:
        findings.append(InputFinding(
            "anisotropy",
            f"its voxels are strongly anisotropic ({describe_voxels(spacing)}: {ratio:.1f}× longer along one axis; "
            f"at most {expect.max_anisotropy:g}×)",
            {"spacing_mm": list(spacing), "anisotropy": round(ratio, 3)},
        ))
    return findings


def _judges_negatives(model_config: "ModelConfig") -> bool:
    """An MR source (any normalisation but CT's ``window``) must not be negative; CT is, in air and fat."""
    return model_config.normalisation.source.mode != "window"


def _wrapped_voxels(array: np.ndarray) -> Tuple[int, float, float]:
    """(how many voxels lie below :data:`WRAPPED_BELOW` × the positive voxels' 99th percentile, the lowest value,
    that percentile); (0, 0, 0) when none do."""
    lowest = float(np.min(array)) if array.size else 0.0
    if lowest >= 0:
        return 0, 0.0, 0.0
    positive = array[array > 0]
    if not positive.size:
        return 0, 0.0, 0.0
    bright = float(np.percentile(positive, 99))
    count = int(np.count_nonzero(array < WRAPPED_BELOW * bright))
    return (count, lowest, bright) if count else (0, 0.0, 0.0)


def _negative_fraction(array: np.ndarray) -> float:
    """The fraction of the non-zero voxels below 0."""
    nonzero = int(np.count_nonzero(array))
    return float(np.count_nonzero(array < 0)) / nonzero if nonzero else 0.0


#: What to do about each failed check, in the order the hint names them.
HINTS = {
    "sequence": "Check that this is the right image: the sequence the model expects, skull-stripped, at the model's "
                "voxel size.",
    "label_map": "Pick the image itself, not a segmentation or label map.",
    "skull_stripped": "For a head that is not skull-stripped give its brain mask (--mask), or skull-strip it first.",
    "negative_values": "Use the image of the modality the model expects, with the scanner's intensities (not a "
                       "normalised export), or clip small negative values to 0.",
    "spacing": "Resample it to the model's voxel size named above first (in Slicer: Resample Scalar Volume); within the "
               "tolerance named above MedSynth resamples by itself.",
    "anisotropy": "Thick slices hold too little detail across them: use a 3D (near-isotropic) acquisition.",
}


#: A hint's wording in Slicer's panel, where the command line's names one of its options.
PANEL_HINTS = {
    "skull_stripped": "Skull-strip it first (in Slicer, e.g. with the SwissSkullStripper extension), or synthesize it "
                      "from the command line with its brain mask (--mask).",
}


def hints_for(codes: Iterable[str], panel: bool = False) -> List[str]:
    """What to do about the failed checks ``codes``, in :data:`HINTS`' order (the sequence hint when none has its
    own); ``panel``: :data:`PANEL_HINTS`' wording where the command line's names an option."""
    failed = set(codes)
    chosen = [code for code in HINTS if code in failed] or ["sequence"]
    return [PANEL_HINTS.get(code, HINTS[code]) if panel else HINTS[code] for code in chosen]


def _faint_background_fraction(array: np.ndarray, threshold: float) -> float:
    """The fraction of voxels above the mask threshold but below 1 % of the image's 99.5th percentile: a background
    left at small positive values (noise, a rescaled export), which the black-looking image hides."""
    above = array[array > threshold]
    if above.size == 0:
        return 0.0
    return float(np.count_nonzero(above < 0.01 * np.percentile(above, 99.5))) / array.size


def refuse_or_warn(
    findings: Sequence[InputFinding],
    force: bool,
    warn: Optional[Callable[[str], None]] = None,
    source: Any = "The source",
) -> None:
    """Raise :class:`InputImageError` (exit 3) for failed checks, or with ``force`` pass them to ``warn``.

    ``warn`` gets one sentence; without it a Python warning is issued, so an API user sees it too.
    """
    if not findings:
        return
    text = f"{source} does not look like the input this model expects: " + "; ".join(f.message for f in findings) + "."
    if not force:
        raise InputImageError(text, " ".join(hints_for(f.code for f in findings)) + " To synthesize anyway, knowing the result is unreliable, pass "
                              "--force (force=True in Python).")
    message = text + " Synthesizing anyway (--force): the result is unreliable."
    if warn is None:
        warnings.warn(message, UserWarning, stacklevel=2)
    else:
        warn(message)


def checks_metadata(
    findings: Sequence[InputFinding], forced: bool, model_config: "ModelConfig", mask_given: bool,
    notes: Sequence[str] = (),
) -> Dict[str, str]:
    """Header entries that record the checks with the output: the JSON record under :data:`METADATA_KEY` and a
    short note (``ITK_FileNotes``, NIfTI's 80-character description) saying whether they passed, and how many
    warnings came with them (NIfTI keeps nothing else, so its reader must not see a bare "passed"). ``notes``: the
    warnings that never refuse (what the source's name says, :mod:`.source_names`; no sign of contrast agent
    in a T1ce, :mod:`.enhancement`), kept with the record."""
    failed = [f.code for f in findings]
    record = {
        "checks": checks_run(model_config, mask_given),
        "passed": not failed,
        "forced": bool(forced and failed),
        "expected": asdict(model_config.input),
        "findings": [asdict(f) for f in findings],
        "notes": list(notes),
    }
    if failed:
        note = "input checks FAILED, forced: " + ",".join(failed)
    else:
        note = "input checks passed" + (f", {len(notes)} warning{'s' if len(notes) > 1 else ''}" if notes else "")
    return {
        METADATA_KEY: json.dumps(record, default=float),
        "ITK_FileNotes": f"MedSynth synthetic {model_config.target_name}; {note}"[:79],
    }
