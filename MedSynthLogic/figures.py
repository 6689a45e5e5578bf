"""Pictures for people: side-by-side panels, tri-planar comparison figures and loss curves (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from .atomic import atomic_path
from .progress import LOSS_KEYS, read_log

ROW_NAMES = ("axial", "coronal", "sagittal")


def _display_range(arr: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[float, float]:
    """1st–99.5th percentile inside the mask; 0 is black unless the image is mostly negative (e.g. CT in HU).

    A few negative voxels (an MR synthesis undershooting) must not turn the zero background grey.
    """
    values = arr[mask] if mask is not None and mask.any() else arr[arr != 0] if (arr != 0).any() else arr.ravel()
    if not values.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [1, 99.5]))
    lo = 0.0 if float(np.percentile(values, 5)) >= 0 else min(lo, 0.0)
    return lo, hi if hi > lo else lo + 1.0


def _slices(arr: np.ndarray, centre: Sequence[int]) -> list:
    z, y, x = (int(c) for c in centre)
    return [arr[z], np.flipud(arr[:, y, :]), np.flipud(arr[:, :, x])]


def focus_point(mask: np.ndarray, labels: Optional[np.ndarray] = None) -> Tuple[int, int, int]:
    """The tumour's centre of mass when labels are given, else the brain's: where a reader wants to look."""
    region = labels > 0 if labels is not None and (labels > 0).any() else mask
    if not region.any():
        return tuple(s // 2 for s in mask.shape)
    return tuple(int(round(c)) for c in np.argwhere(region).mean(axis=0))


def metric_unit_ranges(
    synthetic: str, reference: str, reference_array: np.ndarray, mask: np.ndarray, output_scale: float, percentile: float = 99.5
) -> Dict[str, Tuple[float, float]]:
    """Display windows in the metrics' unit: a synthesis 0–``output_scale``, its reference 0–its own percentile.

    Both then show 1 (the reference's 99.5th percentile in the brain) as white, so missing contrast in a
    synthesis is visible instead of being stretched away by a per-image window.
    """
    values = reference_array[mask] if mask.any() else reference_array.ravel()
    top = float(np.percentile(values, percentile)) if values.size else 0.0
    return {synthetic: (0.0, float(output_scale)), reference: (0.0, top if top > 0 else 1.0)}


def comparison_figure(
    path: str | Path,
    panels: Sequence[Tuple[str, np.ndarray]],
    mask: Optional[np.ndarray] = None,
    centre: Optional[Sequence[int]] = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
    error_max: float = 0.5,
    ranges: Optional[Mapping[str, Tuple[float, float]]] = None,
) -> Path:
    """Rows axial/coronal/sagittal, one column per panel (e.g. T1ce | synthetic T2 | real T2 | |error|).

    Each panel is scaled to its own 1st–99.5th percentile inside the mask unless ``ranges`` gives its window
    by name (so a synthesis and its reference can share one intensity unit), except a panel whose name starts
    with "|" (an absolute error in normalised units), shown with a hot colour map from 0 to ``error_max``.
    ``spacing`` is (x, y, z) so non-isotropic volumes keep their proportions; rows are as tall as their slices.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = panels[0][1]
    centre = centre or focus_point(mask if mask is not None else first != 0)
    sx, sy, sz = spacing
    nz, ny, nx = first.shape
    aspects = [sy / sx, sz / sx, sz / sy]
    heights = [ny * sy / (nx * sx), nz * sz / (nx * sx), nz * sz / (ny * sy)]
    col_width = 3.0
    fig, axes = plt.subplots(
        3, len(panels), figsize=(col_width * len(panels), col_width * sum(heights) + (0.9 if title else 0.5)),
        squeeze=False, gridspec_kw={"height_ratios": heights},
    )
    for col, (name, arr) in enumerate(panels):
        lo, hi = (ranges or {}).get(name) or _display_range(arr, mask)
        is_error = name.startswith("|")
        for row, (img, aspect) in enumerate(zip(_slices(arr, centre), aspects)):
            ax = axes[row][col]
            if is_error:
                ax.imshow(img, cmap="hot", vmin=0, vmax=error_max, aspect=aspect, interpolation="nearest")
            else:
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=11)
            if col == 0:
                ax.set_ylabel(ROW_NAMES[row], fontsize=11)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out


def plot_losses(csv_path: os.PathLike | str, png_path: os.PathLike | str) -> Path:
    """Draw training losses and validation loss/PSNR per stage into a PNG, written atomically.

    The x axis is the global step (stages laid end to end), so a multi-stage run reads left to right.
    When a resumed run repeated some iterations, the last row for a (stage, iteration) wins.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = read_log(csv_path)
    it_rows: Dict[tuple, Dict[str, Any]] = {}
    val_rows: Dict[tuple, Dict[str, Any]] = {}
    for row in rows:
        if row["stage"] is None or row["iteration"] is None:
            continue
        key = (row["stage"], row["iteration"])
        (it_rows if row["kind"] == "iteration" else val_rows)[key] = row
    stage_len: Dict[int, int] = {}
    for stage, it in list(it_rows) + list(val_rows):
        stage_len[stage] = max(stage_len.get(stage, 0), it)
    offsets: Dict[int, int] = {}
    total = 0
    for stage in sorted(stage_len):
        offsets[stage] = total
        total += stage_len[stage]

    fig = Figure(figsize=(10, 6), dpi=100)
    ax_loss = fig.add_subplot(2, 1, 1)
    ax_val = fig.add_subplot(2, 1, 2)
    keys = sorted(it_rows)
    x = [offsets[s] + i for s, i in keys]
    for name in LOSS_KEYS:
        ys = [it_rows[k][name] for k in keys]
        if any(v is not None for v in ys):
            ax_loss.plot(x, [float("nan") if v is None else v for v in ys], label=name, linewidth=1)
    vkeys = sorted(val_rows)
    vx = [offsets[s] + i for s, i in vkeys]
    if vkeys:
        vloss = [val_rows[k]["val_loss"] for k in vkeys]
        ax_loss.plot(vx, [float("nan") if v is None else v for v in vloss], "o-", label="val_loss", linewidth=1.5)
        psnr = [val_rows[k]["psnr"] for k in vkeys]
        if any(v is not None for v in psnr):
            ax_val.plot(vx, [float("nan") if v is None else v for v in psnr], "o-", label="PSNR (dB)")
        ssim = [val_rows[k]["ssim"] for k in vkeys]
        if any(v is not None for v in ssim):
            ax_ssim = ax_val.twinx()
            ax_ssim.plot(vx, [float("nan") if v is None else v for v in ssim], "s--", color="tab:red", label="SSIM")
            ax_ssim.set_ylabel("SSIM")
            lines = ax_val.get_lines() + ax_ssim.get_lines()
            ax_val.legend(lines, [line.get_label() for line in lines], loc="lower right", fontsize=8)
        elif ax_val.get_lines():
            ax_val.legend(loc="lower right", fontsize=8)
    for stage, off in offsets.items():
        if off > 0:
            ax_loss.axvline(off, color="grey", linestyle=":", linewidth=1)
            ax_val.axvline(off, color="grey", linestyle=":", linewidth=1)
    ax_loss.set_ylabel("loss")
    plotted = [it_rows[k][n] for k in keys for n in LOSS_KEYS if it_rows[k][n] is not None]
    if plotted and min(plotted) > 0:
        ax_loss.set_yscale("log")
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_loss.set_title("MedSynth training")
    ax_val.set_xlabel("iteration (all stages)")
    ax_val.set_ylabel("PSNR (dB)")
    fig.tight_layout()
    png = Path(png_path)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    return png
