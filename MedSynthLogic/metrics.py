"""Image-quality metrics for synthetic T2: PSNR, 3D SSIM and MAE inside the brain (and the tumour).

Protocol: the reference is divided by its own 99.5th percentile inside the brain mask and clipped to [0, 1]
(``normalise_for_metrics``). A MedSynth prediction is in a documented unit (network units × ``output_scale``,
where 1 = the target's 99.5th percentile), so it is divided by that scale (``pred_scale``) and clipped the same
way: a prediction with too little contrast is penalised, as it should be. A prediction of unknown unit
(``pred_scale=None``, e.g. another tool's output) is divided by its own percentile instead. Metrics then use
``data_range=1``. ``psnr_calibrated`` is a diagnostic, not a score: the PSNR left after the best per-case gain
and offset (least squares in the mask), i.e. the error that is not a global brightness/contrast mismatch with
this case's reference. PSNR of identical images is ``inf``; the JSON report writes non-finite
numbers as ``null`` and summaries average the finite values only (``n`` says how many).

A target in a fixed unit (``window``: CT in Hounsfield units) is not rescaled per image: prediction and reference
both map the window to [0, 1] (``window_unit``), so a prediction three times too bright no longer scores 150 dB,
and ``mae_target_unit`` gives the MAE in the target's own unit (HU).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from .atomic import atomic_write_text
from .dataset_cases import IMAGE_SUFFIXES, image_ending, image_stem
from .errors import DataError, GeometryError, InputImageError, MedSynthError
from .progress import json_safe
from .volume_io import Volume, read_volume, region_on_grid, same_grid

ArrayLike = Union[np.ndarray, Volume]
METRICS = ("psnr", "ssim", "mae", "psnr_tumour", "ssim_tumour", "mae_tumour", "psnr_calibrated", "mae_target_unit")
SSIM_WINDOW = 7


def _arr(x: Optional[ArrayLike]) -> Optional[np.ndarray]:
    if x is None:
        return None
    return x.array if isinstance(x, Volume) else np.asarray(x)


def _region(mask: Optional[np.ndarray], shape: Tuple[int, ...]) -> np.ndarray:
    return np.ones(shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)


def normalise_for_metrics(raw: ArrayLike, mask: Optional[np.ndarray], percentile: float = 99.5) -> np.ndarray:
    """``raw`` divided by its own ``percentile`` inside ``mask`` and clipped to [0, 1] (float32).

    Applied to prediction and reference separately. An image that is 0 everywhere in the mask (a failed
    prediction) stays all 0, so it scores badly instead of raising.
    """
    a = _arr(raw).astype(np.float32, copy=False)
    values = a[_region(mask, a.shape)]
    scale = float(np.percentile(values, percentile)) if values.size else 0.0
    if not scale > 0:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip(a / np.float32(scale), 0.0, 1.0).astype(np.float32, copy=False)


def window_unit(raw: ArrayLike, window: Tuple[float, float]) -> np.ndarray:
    """``raw`` in a fixed unit (e.g. HU) with the window ``(low, high)`` mapped to [0, 1] and clipped (float32)."""
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise InputImageError(f"The metric window must run upwards, got {window}.")
    a = _arr(raw).astype(np.float32, copy=False)
    return np.clip((a - np.float32(low)) / np.float32(high - low), 0.0, 1.0).astype(np.float32, copy=False)


def mae(pred: np.ndarray, target: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean absolute error over ``mask`` (all voxels if None)."""
    region = _region(mask, np.shape(target))
    return float(np.mean(np.abs(np.asarray(pred, np.float64)[region] - np.asarray(target, np.float64)[region])))


def psnr(pred: np.ndarray, target: np.ndarray, mask: Optional[np.ndarray] = None, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over ``mask``: 10·log10(data_range² / MSE); ``inf`` for identical images.
    Both images in the metrics' unit ([0, 1] with the default ``data_range``): raw intensities give meaningless
    negative dB, so call :func:`evaluate_case` for raw images."""
    region = _region(mask, np.shape(target))
    diff = np.asarray(pred, np.float64)[region] - np.asarray(target, np.float64)[region]
    if diff.size == 0:
        raise DataError("PSNR over an empty region is undefined.", "Check the brain mask.")
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def psnr_after_gain_offset(pred: np.ndarray, target: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """PSNR (data range 1) of ``a·pred + b`` against ``target`` over ``mask``, with a, b fitted by least squares.

    Separates a per-case brightness/contrast mismatch, which no local model can know from the source alone,
    from errors in structure; the fitted values are clipped to [0, 1] like the protocol's.
    """
    region = _region(mask, np.shape(target))
    p = np.asarray(pred, np.float64)[region]
    t = np.asarray(target, np.float64)[region]
    design = np.stack([p, np.ones_like(p)], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(design, t, rcond=None)
    fitted = np.clip(gain * p + offset, 0.0, 1.0)
    mse = float(np.mean((fitted - t) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _bbox(region: np.ndarray, margin: int) -> Tuple[slice, ...]:
    """Bounding box of ``region`` grown by ``margin`` so SSIM windows at its edge see the same neighbours."""
    slices = []
    for axis in range(region.ndim):
        hit = np.flatnonzero(np.any(region, axis=tuple(a for a in range(region.ndim) if a != axis)))
        slices.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, region.shape[axis])))
    return tuple(slices)


def ssim_map(pred: np.ndarray, target: np.ndarray, region: np.ndarray, data_range: float = 1.0) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """3D SSIM map (skimage, 7³ uniform window) over the bounding box of ``region``, and that box's slices."""
    from skimage.metrics import structural_similarity

    if not region.any():
        raise DataError("SSIM over an empty region is undefined.", "Check the brain mask.")
    box = _bbox(region, SSIM_WINDOW // 2)
    p = np.asarray(pred, np.float64)[box]
    t = np.asarray(target, np.float64)[box]
    win = min(SSIM_WINDOW, *(n if n % 2 else n - 1 for n in p.shape))
    if win < 3:
        raise DataError(f"The region is too thin for 3D SSIM (box {p.shape}).", "SSIM needs at least 3 voxels per axis.")
    _, smap = structural_similarity(p, t, data_range=data_range, full=True, win_size=win)
    return smap, box


def ssim3d(pred: np.ndarray, target: np.ndarray, mask: Optional[np.ndarray] = None, data_range: float = 1.0) -> float:
    """Mean of the 3D SSIM map over ``mask`` (computed on the mask's bounding box for speed); 1 for identical images."""
    region = _region(mask, np.shape(target))
    smap, box = ssim_map(pred, target, region, data_range)
    return float(np.mean(smap[region[box]]))


def metric_images(pred: np.ndarray, target: np.ndarray, brain: np.ndarray, percentile: float = 99.5,
                  pred_scale: Optional[float] = None,
                  window: Optional[Tuple[float, float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Prediction and reference in the metrics' unit ([0, 1], the protocol above), both 0 outside ``brain``: what
    every metric reads, and what ``evaluate``'s figures draw their error from."""
    if window is not None:
        pn, tn = window_unit(pred, window), window_unit(target, window)
    elif pred_scale is None:
        pn, tn = normalise_for_metrics(pred, brain, percentile), normalise_for_metrics(target, brain, percentile)
    else:
        pn, tn = scale_prediction(pred, brain, pred_scale), normalise_for_metrics(target, brain, percentile)
    # both images inside the mask only, as the prediction already was: SSIM's windows at the mask's edge read the
    # reference's tissue outside it otherwise (a CT's skull under an MR brain mask: 0.21 → −0.03, PSNR unchanged)
    return np.where(brain, pn, np.float32(0.0)), np.where(brain, tn, np.float32(0.0))


def evaluate_case(
    pred: ArrayLike,
    target: ArrayLike,
    mask: Optional[ArrayLike] = None,
    seg: Optional[ArrayLike] = None,
    percentile: float = 99.5,
    pred_scale: Optional[float] = None,
    window: Optional[Tuple[float, float]] = None,
) -> Dict[str, Any]:
    """Brain metrics (and tumour metrics where ``seg`` has labels > 0) of one case, after the normalisation protocol
    (``window``: both images in a fixed unit, mapped by :func:`window_unit`, with ``mae_target_unit`` too).

    The project scores a MedSynth synthesis with ``pred_scale`` = its model's ``normalisation.output_scale`` (1000;
    ``evaluation.evaluate_cases`` passes it). Without it the prediction is divided by its own percentile, the
    protocol for another tool's output of unknown unit: on the FCN and the L2-only blend that read 0.8–4.5 dB lower per
    case (docs/evaluation/TEST_TIME_ADJUSTMENTS.md).

    ``mask`` defaults to ``target > 0`` (skull-stripped reference). Tumour metrics use the same brain-normalised
    images, restricted to tumour voxels (SSIM: the brain SSIM map averaged over tumour voxels).
    """
    p, t, m, s = _arr(pred), _arr(target), _arr(mask), _arr(seg)
    if p.shape != t.shape:
        raise GeometryError(f"Prediction {p.shape} and reference {t.shape} have different sizes.", "Resample one onto the other.")
    brain = (t > 0) if m is None else (m > 0)
    if (m is not None and m.shape != t.shape) or (s is not None and s.shape != t.shape):
        raise GeometryError(f"The mask {None if m is None else m.shape} or segmentation {None if s is None else s.shape} "
                            f"does not have the reference's size {t.shape} (z, y, x).", "Use files on the reference grid.")
    if not brain.any():
        raise InputImageError("The brain mask (or the reference) is empty.", "Check the mask / reference files.")
    if window is None and not float(np.percentile(t[brain], percentile)) > 0:  # it was scored as a black image
        raise DataError(f"The reference is 0 (or below) at its {percentile}th percentile inside the brain mask, so it "
                        "has no scale to score against.", "Check the reference (target) file, or leave this case out.")
    pn, tn = metric_images(p, t, brain, percentile, pred_scale, window)
    smap, box = ssim_map(pn, tn, brain)
    inner = brain[box]
    result: Dict[str, Any] = {
        "psnr": psnr(pn, tn, brain),
        "ssim": float(np.mean(smap[inner])),
        "mae": mae(pn, tn, brain),
        "psnr_calibrated": psnr_after_gain_offset(pn, tn, brain),
        "brain_voxels": int(brain.sum()),
    }
    if window is not None:
        result["mae_target_unit"] = result["mae"] * (float(window[1]) - float(window[0]))
    if s is not None:
        tumour = (s > 0) & brain
        result["tumour_voxels"] = int(tumour.sum())
        if tumour.any():
            result["psnr_tumour"] = psnr(pn, tn, tumour)
            result["ssim_tumour"] = float(np.mean(smap[tumour[box]]))
            result["mae_tumour"] = mae(pn, tn, tumour)
    return result


def _summary(cases: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for key in METRICS:
        values = np.array([c[key] for c in cases if key in c], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if values.size:
            out[key] = {
                "mean": float(finite.mean()) if finite.size else math.nan,
                "std": float(finite.std()) if finite.size else math.nan,
                "n": int(finite.size),
            }
    return out


def scale_prediction(pred: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """A prediction in a known unit, mapped to the reference's [0, 1] scale (0 outside the mask)."""
    if not scale > 0:
        raise InputImageError(f"pred_scale must be positive, got {scale}.")
    return np.where(mask, np.clip(pred / scale, 0.0, 1.0), 0.0).astype(np.float32)


def evaluate_pairs(
    pairs: Iterable[Tuple[str, Volume, Volume, Optional[ArrayLike], Optional[ArrayLike]]],
    percentile: float = 99.5,
    pred_scale: Optional[float] = None,
    window: Optional[Tuple[float, float]] = None,
) -> Dict[str, Any]:
    """Evaluate (case_id, prediction, reference, mask or None, seg or None) tuples: per-case metrics and mean ± std.

    Prediction and reference must share a grid (``GeometryError`` naming the case and the difference otherwise).
    """
    cases = [score_pair(case_id, pred, target, mask, seg, percentile, pred_scale, window)
             for case_id, pred, target, mask, seg in pairs]
    return scored_results(cases, percentile, pred_scale, window)


def score_pair(case_id: str, pred: ArrayLike, target: ArrayLike, mask: Optional[ArrayLike], seg: Optional[ArrayLike],
               percentile: float = 99.5, pred_scale: Optional[float] = None,
               window: Optional[Tuple[float, float]] = None) -> Dict[str, Any]:
    """One case's row (``{"case": case_id, **evaluate_case(...)}``); an error names the case. Scored as each case is
    made, so an evaluation holds one case's volumes at a time, not every case's."""
    try:
        if isinstance(pred, Volume) and isinstance(target, Volume):
            diffs = same_grid(pred, target)
            if diffs:
                raise GeometryError("Prediction and reference grids differ: " + "; ".join(diffs) + ".",
                                    "Resample the prediction onto the reference's grid, or let `medsynth evaluate` "
                                    "synthesize it on the source's grid.")
        return {"case": str(case_id), **evaluate_case(pred, target, mask, seg, percentile, pred_scale, window)}
    except MedSynthError as exc:
        raise exc.in_case(str(case_id)) from exc


def scored_results(cases: List[Dict[str, Any]], percentile: float = 99.5, pred_scale: Optional[float] = None,
                   window: Optional[Tuple[float, float]] = None) -> Dict[str, Any]:
    """The report of :func:`score_pair` rows: the protocol, the rows and their summary."""
    if not cases:
        raise DataError("There is nothing to evaluate (no prediction/reference pairs).")
    return {"protocol": scoring_protocol(percentile, pred_scale, window), "cases": cases, "summary": _summary(cases)}


def scoring_protocol(percentile: float, pred_scale: Optional[float] = None,
                     window: Optional[Tuple[float, float]] = None) -> str:
    """The sentence every report carries about how it scored (a resumed evaluation must score the same way)."""
    if window is not None:
        return (f"prediction and reference in the target's unit, the window {window[0]:g} to {window[1]:g} mapped to "
                "[0, 1] and clipped; PSNR/MAE over the mask (mae_target_unit: the MAE in the target's unit); SSIM "
                "(7x7x7 uniform window, data_range 1, both images 0 outside the mask) averaged over the mask; "
                + SUMMARY_RULE)
    pred = (
        f"prediction divided by its output scale {pred_scale:g} (1 = the reference's {percentile}th percentile)"
        if pred_scale is not None
        else f"prediction divided by its own {percentile}th percentile inside the brain mask"
    )
    return (
        f"reference divided by its {percentile}th percentile inside the brain mask; {pred}; both clipped to [0, 1]; "
        "PSNR/MAE over the mask; SSIM (7x7x7 uniform window, data_range 1, both images 0 outside the mask) averaged "
        "over the mask; " + SUMMARY_RULE
    )


#: How the summary row is computed (the standard deviation divides by n, not n − 1: with 3 cases it reads about
#: 18 % below the sample SD, so the rule is written into every report).
SUMMARY_RULE = ("summary: mean and population standard deviation (ddof 0) over the n cases that have the metric "
                "(tumour metrics: the cases with a tumour label)")


def _case_id(path: Path) -> str:
    return image_stem(path.name) if image_ending(path.name) else path.stem


def evaluate_folder(
    pred_dir: Union[str, os.PathLike],
    target_dir: Union[str, os.PathLike],
    mask_dir: Optional[Union[str, os.PathLike]] = None,
    seg_dir: Optional[Union[str, os.PathLike]] = None,
    percentile: float = 99.5,
) -> Dict[str, Any]:
    """Evaluate every image in ``pred_dir`` against the file of the same name in ``target_dir``.

    Optional ``mask_dir``/``seg_dir`` hold files of the same name too, read as their labels > 0 on the reference's
    grid (``volume.region_on_grid``: a mask stored in another voxel order was applied to the mirrored voxels). A
    prediction without its reference is a ``DataError`` (a silently skipped case would flatter the mean).
    """
    pred_root, target_root = Path(pred_dir), Path(target_dir)
    preds = sorted(p for p in pred_root.iterdir() if p.is_file() and image_ending(p.name))
    if not preds:
        raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in {pred_root}.")

    def load(folder: Optional[Union[str, os.PathLike]], name: str, required: bool) -> Optional[Volume]:
        if folder is None:
            return None
        path = Path(folder) / name
        if not path.exists():
            if required:
                raise DataError(f"{path} is missing (needed for the prediction {name}).", "Provide it or remove the prediction.")
            return None
        return read_volume(path)

    def on_grid(labels: Optional[Volume], reference: Volume) -> Optional[np.ndarray]:
        return None if labels is None else region_on_grid(labels, reference)[0]

    cases = []
    for p in preds:
        target = load(target_root, p.name, True)
        cases.append(score_pair(_case_id(p), read_volume(p), target, on_grid(load(mask_dir, p.name, True), target),
                                on_grid(load(seg_dir, p.name, False), target), percentile))
    return scored_results(cases, percentile)


def _cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # as metrics.json says it: null
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.2f}" if key.startswith("psnr") else f"{value:.4f}"


def markdown_table(results: Dict[str, Any]) -> str:
    """Per-case rows, a mean ± std row and the number of cases each mean is over, metrics as columns (a case
    without a tumour label has no tumour metrics, so those means can be over fewer cases)."""
    keys = [k for k in METRICS if k in results["summary"]]
    lines = ["| case | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for case in results["cases"]:
        lines.append(f"| {case['case']} | " + " | ".join(_cell(case.get(k), k) for k in keys) + " |")
    summary = results["summary"]
    lines.append(
        "| **mean ± std** | " + " | ".join(f"{_cell(summary[k]['mean'], k)} ± {_cell(summary[k]['std'], k)}" for k in keys) + " |"
    )
    lines.append("| n | " + " | ".join(str(summary[k].get("n", "")) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _predictor_line(results: Dict[str, Any]) -> str:
    """What was scored, as ``evaluate`` records it (``metrics.json`` alone named it before)."""
    if not results.get("model"):
        return ""
    parts = [f"Scored: `{results['model']}`"]
    if results.get("model_sha256"):
        parts.append(f"tensors SHA-256 {str(results['model_sha256'])[:16]}…")
    if results.get("label"):
        parts.append(f"label {results['label']!r}")
    if results.get("stages") is not None:
        parts.append(f"{results['stages']} stage(s)")
    if results.get("flip_tta"):
        parts.append("flip averaging")
    if results.get("precision"):
        parts.append(f"precision {results['precision']}")
    return "; ".join(parts) + ".\n\n"


def write_report(results: Dict[str, Any], json_path: Union[str, os.PathLike], md_path: Optional[Union[str, os.PathLike]] = None) -> None:
    """Write the results as strict JSON (non-finite → null) and as a Markdown table, each atomically; the
    results' ``notes`` stand above the table, where a reader of the table sees them."""
    atomic_write_text(json_path, json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    if md_path is not None:
        header = "# MedSynth evaluation\n\n" + _predictor_line(results)
        if results.get("protocol"):
            header += f"Protocol: {results['protocol']}.\n\n"
        notes = results.get("notes") or []
        if notes:  # what makes a figure below no held-out, accepted result (evaluation._report_notes)
            header += "\n>\n".join(f"> **Note:** {note}" for note in notes) + "\n\n"
        atomic_write_text(md_path, header + markdown_table(results))


__all__ = [
    "normalise_for_metrics",
    "scale_prediction",
    "psnr",
    "ssim3d",
    "ssim_map",
    "mae",
    "evaluate_case",
    "evaluate_pairs",
    "evaluate_folder",
    "write_report",
    "scoring_protocol",
    "markdown_table",
]


def scoring_of(norm: Any) -> Tuple[float, Optional[float], Optional[Tuple[float, float]]]:
    """(percentile, prediction scale, window): how ``metrics`` scores a predictor of this normalisation. A
    percentile-mode target scores the synthesis in its own unit, 1 = the target's ``percentile`` (99.5 was
    assumed: a perfect model trained at 99 could not pass 32.8 dB); a window-mode one in the window."""
    if norm.target.mode == "window":
        return 99.5, None, (float(norm.target.window_min), float(norm.target.window_max))
    if norm.target.mode == "percentile":
        return float(norm.target.percentile), float(norm.output_scale), None
    return 99.5, None, None
