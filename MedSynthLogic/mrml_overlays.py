"""What the Slicer module draws in a scene beyond the images: the uncertainty map laid over the synthetic image,
and the live training plot (a table, a series per loss and a chart). Qt-free, like :mod:`.mrml_scene`, whose
node and view helpers these build on; ``slicer`` and ``vtk`` are imported inside the functions.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .errors import InputImageError
from .mrml_scene import builtin_color_node, node_from_volume, nodes_of_class, slice_composite_node, slice_node


#: Node attribute of an uncertainty map: the ID of the synthetic volume it was made for (a record; IDs are not
#: remapped when a saved scene is added to another, so the link is ``UNCERTAINTY_ROLE``).
UNCERTAINTY_OF = "MedSynth.UncertaintyOf"
#: Node reference role from an uncertainty map to its synthetic volume: MRML remaps it when a scene is imported.
UNCERTAINTY_ROLE = "MedSynthUncertaintyOf"

#: Columns of the training table; ``iteration`` counts across stages so the x axis never goes back.
TRAINING_COLUMNS: Tuple[str, ...] = ("iteration", "stage", "g", "d", "l2", "gdl", "g_adv", "val_psnr", "val_ssim")
#: Losses drawn as one plot series each.
PLOTTED_LOSSES: Tuple[str, ...] = ("g", "d", "l2", "gdl")
#: Fixed series colours (a bare scene has no random colour table for ``SetUniqueColor``).
SERIES_COLORS: Dict[str, Tuple[float, float, float]] = {
    "g": (0.12, 0.47, 0.71),
    "d": (0.84, 0.15, 0.16),
    "l2": (0.17, 0.63, 0.17),
    "gdl": (1.0, 0.5, 0.05),
}


# ----------------------------------------------------------------------------------------------------------------
# Uncertainty overlay
# ----------------------------------------------------------------------------------------------------------------

#: Colour table of the uncertainty overlay: black → red → yellow → white, so hot means unreliable.
UNCERTAINTY_COLORS = "Iron"


def show_uncertainty_overlay(
    scene: Any,
    uncertainty_node: Any,
    synthetic_node: Any,
    view: str = "Yellow",
    opacity: float = 0.5,
    window: Optional[Tuple[float, float]] = None,
    threshold: Optional[float] = None,
    title: str = "Uncertainty (synthetic image units)",
) -> Dict[str, Any]:
    """Lay the uncertainty map over the synthetic image in ``view``, in colour, with a colour legend.

    The synthetic image stays the background; the map becomes the foreground at ``opacity`` with the Iron colour
    table over ``window`` (default: 0 to the 99th percentile of its non-zero voxels). Voxels below ``threshold``
    (default: any value above 0, so the zero outside the brain) are transparent, so only the brain is tinted. The
    legend is Slicer's own (``vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode``, as the Colors module makes
    it), shown in ``view`` when its slice node exists, else in every view. Returns the nodes it touched.
    """
    import slicer
    import slicer.util

    dims = [n.GetImageData().GetDimensions() if n is not None and n.GetImageData() is not None else None
            for n in (uncertainty_node, synthetic_node)]
    if dims[0] is None or dims[1] is None or dims[0] != dims[1]:
        raise InputImageError(
            f"The uncertainty map's grid {dims[0]} does not match the synthetic image's {dims[1]}.",
            "Load the uncertainty map written with this synthetic image.",
        )
    values = slicer.util.arrayFromVolume(uncertainty_node)
    positive = values[np.isfinite(values) & (values > 0)]
    if window is None:
        high = float(np.percentile(positive, 99.0)) if positive.size else 1.0
        window = (0.0, high if high > 0 else 1.0)
    low, high = float(window[0]), float(window[1])
    display = uncertainty_node.GetDisplayNode()
    if display is None:
        uncertainty_node.CreateDefaultDisplayNodes()
        display = uncertainty_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(builtin_color_node(scene, UNCERTAINTY_COLORS).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(low, high)
    display.AutoThresholdOff()
    lower = float(threshold) if threshold is not None else float(np.nextafter(np.float32(0), np.float32(1)))
    upper = float(values.max()) if values.size else 1.0
    display.SetThreshold(lower, max(upper, lower))
    display.ApplyThresholdOn()

    composite = slice_composite_node(scene, view)
    composite.SetBackgroundVolumeID(synthetic_node.GetID())
    composite.SetForegroundVolumeID(uncertainty_node.GetID())
    composite.SetForegroundOpacity(float(opacity))

    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # the application's Colors module does this
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(display)
    legend.SetTitleText(title)
    legend.SetLabelFormat("%.0f")
    legend.SetVisibility(True)
    view_node = slice_node(scene, view)
    if view_node is not None:
        legend.SetViewNodeIDs([view_node.GetID()])
    return {"display": display, "legend": legend, "composite": composite, "window": (low, high)}


def load_uncertainty_overlay(
    scene: Any, path: str | os.PathLike, synthetic_node: Any, name: Optional[str] = None, **options: Any
) -> Tuple[Any, Dict[str, Any]]:
    """Read the map ``medsynth synthesize --uncertainty`` wrote and show it with :func:`show_uncertainty_overlay`.

    The node takes the synthetic node's grid and parent transform (as the synthetic image takes the source's), so
    the two overlay exactly. It keeps no storage node, like the synthetic image: the file is the synthesis's
    temporary output, and File › Save would otherwise offer its deleted folder and the same name for every map.
    Returns ``(node, what show_uncertainty_overlay returned)``.
    """
    from .volume_read import read_volume

    # read as the synthesis is read (outcomes): Slicer's reader reorders the voxels of a file on a left-handed grid (a
    # source under a reflecting transform), and the synthetic node's grid stamped on them mirrored the map
    node = node_from_volume(scene, read_volume(path), name or f"{synthetic_node.GetName()} uncertainty",
                            reference=synthetic_node)
    try:
        shown = show_uncertainty_overlay(scene, node, synthetic_node, **options)
    except Exception:
        _remove_with_attached(scene, node)
        raise
    node.SetAttribute(UNCERTAINTY_OF, synthetic_node.GetID())
    node.SetNodeReferenceID(UNCERTAINTY_ROLE, synthetic_node.GetID())
    return node, shown


def remove_uncertainty_overlays(scene: Any, synthetic_node: Any) -> int:
    """Remove the uncertainty maps loaded for ``synthetic_node`` (with their display, legend and storage nodes):
    a new synthesis into that node makes them wrong. Returns how many were removed. The node reference decides,
    not the ID in ``UNCERTAINTY_OF``: after a saved scene was added, that ID can name another synthetic volume."""
    maps = [node for node in nodes_of_class(scene, "vtkMRMLScalarVolumeNode") if node.GetNodeReferenceID(UNCERTAINTY_ROLE) == synthetic_node.GetID()]
    for node in maps:
        _remove_with_attached(scene, node)
    return len(maps)


def hide_uncertainty_overlays(scene: Any) -> int:
    """Take every uncertainty map off the slice views' foreground and hide its legend, the maps kept: a volume
    loaded for another patient would otherwise show under the previous synthesis's heat map. Returns how many
    views showed one."""
    import slicer

    maps = {node.GetID(): node for node in nodes_of_class(scene, "vtkMRMLScalarVolumeNode") if node.GetNodeReferenceID(UNCERTAINTY_ROLE)}
    cleared = 0
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        if composite.GetForegroundVolumeID() in maps:
            composite.SetForegroundVolumeID(None)
            cleared += 1
    for node in maps.values():
        legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node)
        if legend is not None:
            legend.SetVisibility(False)
    return cleared


def _remove_with_attached(scene: Any, node: Any) -> None:
    attached = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] + [node.GetStorageNode()]
    scene.RemoveNode(node)
    for other in attached:
        if other is not None:
            scene.RemoveNode(other)


# ----------------------------------------------------------------------------------------------------------------
# Training plot
# ----------------------------------------------------------------------------------------------------------------


class TrainingPlot:
    """A table, one plot series per loss and a chart, filled live from training progress events.

    ``iteration`` in the table counts across auto-context stages (stage k's iteration i is
    ``k * iterations + i``) so the curves run left to right through all stages; ``stage`` keeps the stage.
    Validation events fill ``val_psnr``/``val_ssim`` of the row of the same iteration, or add a row whose losses
    are NaN (plots leave gaps there).
    """

    def __init__(self, scene: Any, name: str = "MedSynth training", iterations_per_stage: int = 0) -> None:
        import vtk

        self.scene = scene
        self._per_stage = int(iterations_per_stage)  # known from the start: a resumed run may report a validation first
        self.table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} losses"))
        table = self.table_node.GetTable()
        for column in TRAINING_COLUMNS:
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            table.AddColumn(array)
        self.chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{name} chart"))
        self.chart_node.SetTitle(name)
        self.chart_node.SetXAxisTitle("iteration")
        self.chart_node.SetYAxisTitle("loss")
        self.series_nodes: Dict[str, Any] = {}
        for loss in PLOTTED_LOSSES:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{name} {loss}"))
            series.SetAndObserveTableNodeID(self.table_node.GetID())
            series.SetXColumnName("iteration")
            series.SetYColumnName(loss)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleNone)
            series.SetColor(*SERIES_COLORS[loss])
            self.chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
            self.series_nodes[loss] = series

    @property
    def number_of_rows(self) -> int:
        return int(self.table_node.GetTable().GetNumberOfRows())

    def remove(self) -> None:
        """Take the table, the chart and the series out of the scene (a run that failed before its first loss)."""
        for node in (*self.series_nodes.values(), self.chart_node, self.table_node):
            self.scene.RemoveNode(node)
        self.series_nodes = {}

    def value(self, row: int, column: str) -> float:
        table = self.table_node.GetTable()
        return float(table.GetValueByName(row, column).ToDouble())

    def add_event(self, event: Mapping[str, Any]) -> bool:
        """Record one progress event; returns True when it changed the table (iteration/validation events)."""
        kind = event.get("event")
        if kind not in ("iteration", "validation"):
            return False
        stage = int(event.get("stage", 0) or 0)
        iteration = int(event.get("iteration", 0) or 0)
        if event.get("iterations"):
            self._per_stage = int(event["iterations"])
        step = stage * self._per_stage + iteration
        table = self.table_node.GetTable()
        values: Dict[str, float] = {"iteration": float(step), "stage": float(stage)}
        if kind == "iteration":
            losses = event.get("losses") or {}
            for key in ("g", "d", "l2", "gdl", "g_adv"):
                values[key] = _as_float(losses.get(key))
            row = self._append_row(table)
        else:
            values["val_psnr"] = _as_float(event.get("psnr"))
            values["val_ssim"] = _as_float(event.get("ssim"))
            row = self.number_of_rows - 1
            if row < 0 or self.value(row, "iteration") != float(step):
                row = self._append_row(table)
        for column, value in values.items():
            table.SetValueByName(row, column, value)
        table.Modified()
        self.table_node.Modified()
        return True

    @staticmethod
    def _append_row(table: Any) -> int:
        row = table.InsertNextBlankRow(float("nan"))
        return int(row)


def _as_float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out if math.isfinite(out) else float("nan")
