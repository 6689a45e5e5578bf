"""MRML scene work for the Slicer module, kept free of Qt so it runs (and is tested) with PyPI's ``slicer-core``.

Every function takes the scene or the nodes it works on as arguments and never touches ``slicer.mrmlScene``:
the module passes the application's scene, tests pass a private one. ``slicer`` and ``vtk`` are imported inside the
functions so ``import MedSynthLogic`` (and the CLI) work where Slicer is absent.

Geometry. MedSynth's ``Volume`` is ITK/LPS: physical point = origin + direction · diag(spacing) · (i, j, k), with the
array in (z, y, x) = (k, j, i) order. A Slicer volume node stores IJK→RAS, and RAS = diag(-1, -1, 1) · LPS, so
IJK→RAS = diag(-1, -1, 1) · [direction · diag(spacing) | origin]. Slicer's voxel array (``arrayFromVolume``) is
also (k, j, i), so arrays pass through unchanged.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import InputImageError, OutputError

if TYPE_CHECKING:
    from .volume_io import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

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
# Geometry
# ----------------------------------------------------------------------------------------------------------------


def ijk_to_ras_from_geometry(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """The 4×4 IJK→RAS matrix of an ITK/LPS grid (``direction`` row-major, 9 numbers)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ d @ np.diag(np.asarray(spacing, dtype=float))
    m[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=float)
    return m


def geometry_from_ijk_to_ras(
    matrix: np.ndarray,
) -> Tuple[Tuple[float, float, float], Tuple[float, float, float], Tuple[float, ...]]:
    """``(spacing, origin, direction)`` in ITK/LPS from a 4×4 IJK→RAS matrix."""
    m = np.asarray(matrix, dtype=float)
    lps = LPS_TO_RAS @ m[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise InputImageError("The volume's IJK to RAS matrix is degenerate (zero or non-finite spacing).")
    direction = lps / spacing
    origin = LPS_TO_RAS @ m[:3, 3]
    return (
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in origin),
        tuple(float(v) for v in direction.reshape(-1)),
    )


def node_ijk_to_ras(node: Any) -> np.ndarray:
    """The node's IJK→RAS matrix as a numpy array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def _set_node_ijk_to_ras(node: Any, matrix: np.ndarray) -> None:
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(matrix[r, c]))
    node.SetIJKToRASMatrix(m)


# ----------------------------------------------------------------------------------------------------------------
# Volume node <-> Volume
# ----------------------------------------------------------------------------------------------------------------


def volume_from_node(node: Any) -> "Volume":
    """A ``Volume`` (float32 copy of the voxels, LPS geometry) from a scalar volume node.

    A parent transform on the node is not applied: the synthetic image is written on the source's own grid,
    and putting it under the same transform keeps them aligned.
    """
    import slicer.util

    from .volume_io import Volume

    if node is None or node.GetImageData() is None:
        raise InputImageError("The selected volume has no image data.")
    image = node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise InputImageError("The selected volume is not a scalar image (it has several components per voxel).")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    if array.ndim != 3:
        raise InputImageError(f"The selected volume is not 3D (array shape {array.shape}).")
    if not np.all(np.isfinite(array)):
        raise InputImageError("The selected volume contains NaN or infinite values.")
    spacing, origin, direction = geometry_from_ijk_to_ras(node_ijk_to_ras(node))
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction)


def update_node_from_volume(node: Any, volume: "Volume", reference: Any = None) -> Any:
    """Write ``volume``'s voxels into an existing node; geometry from ``reference`` when given, else from ``volume``.

    Copying IJK→RAS from the reference node (instead of a round trip through LPS numbers) makes the synthetic
    volume's grid bit-identical to the source's, so Slicer treats them as the same grid.
    """
    import slicer.util

    array = np.ascontiguousarray(volume.array, dtype=np.float32)
    if reference is not None:
        ref_image = reference.GetImageData()
        if ref_image is not None and tuple(reversed(ref_image.GetDimensions())) != tuple(array.shape):
            raise InputImageError(
                f"The synthetic image has shape {tuple(array.shape)} but the reference volume has "
                f"{tuple(reversed(ref_image.GetDimensions()))}."
            )
        _set_node_ijk_to_ras(node, node_ijk_to_ras(reference))
        parent = reference.GetParentTransformNode()
        node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)
    else:
        _set_node_ijk_to_ras(node, ijk_to_ras_from_geometry(volume.spacing, volume.origin, volume.direction))
    slicer.util.updateVolumeFromArray(node, array)
    return node


def node_from_volume(scene: Any, volume: "Volume", name: str, reference: Any = None) -> Any:
    """A new ``vtkMRMLScalarVolumeNode`` in ``scene`` holding ``volume`` (see ``update_node_from_volume``)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    update_node_from_volume(node, volume, reference=reference)
    node.CreateDefaultDisplayNodes()
    return node


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def load_volume_file(scene: Any, path: str | os.PathLike, name: Optional[str] = None) -> Any:
    """Read an image file into a new scalar volume node through a ``vtkMRMLVolumeArchetypeStorageNode``.

    Storage nodes work both in the Slicer application and in ``slicer-core`` (``slicer.util.loadVolume`` needs the
    application). The storage node stays attached, so the volume is saved with the scene.
    """
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"Image file {path} does not exist.")
    if name is None:
        name = _stem(path)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.ResetFileNameList()
    storage.SetSingleFile(True)
    ok = storage.ReadData(node)
    if not ok or node.GetImageData() is None:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputImageError(f"Could not read {path} as a volume (unsupported or corrupt file).")
    node.SetAndObserveStorageNodeID(storage.GetID())
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputImageError(f"{path} is not a scalar image (it has several components per voxel).")
    node.CreateDefaultDisplayNodes()
    return node


def save_volume_node(node: Any, path: str | os.PathLike, overwrite: bool = True, compress: bool = True) -> Path:
    """Write a volume node to ``path`` (format from the extension) atomically, through a storage node."""
    import slicer

    from .atomic import atomic_path, check_output_path

    final = check_output_path(path, overwrite=overwrite)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetUseCompression(1 if compress else 0)
    with atomic_path(final) as tmp:
        tmp.unlink()
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node):
            raise OutputError(f"Could not write {final}.")
    return final


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ----------------------------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------------------------


def _nodes_of_class(scene: Any, class_name: str) -> List[Any]:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def find_layout_node(scene: Any, create: bool = True) -> Any:
    """The scene's layout node (the application creates one; a bare scene gets a new one when ``create``)."""
    nodes = _nodes_of_class(scene, "vtkMRMLLayoutNode")
    if nodes:
        return nodes[0]
    if not create:
        return None
    return scene.AddNewNodeByClass("vtkMRMLLayoutNode")


def slice_composite_node(scene: Any, layout_name: str, create: bool = True) -> Any:
    """The slice composite node of view ``layout_name`` ("Red", "Yellow", …), created the way Slicer does if absent."""
    for node in _nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        if node.GetLayoutName() == layout_name:
            return node
    if not create:
        return None
    import slicer

    node = slicer.vtkMRMLSliceCompositeNode()
    node.SetLayoutName(layout_name)
    node.SetSingletonTag(layout_name)
    return scene.AddNode(node)


def slice_node(scene: Any, layout_name: str) -> Any:
    """The slice node of view ``layout_name``, or None (only the application's slice logic creates them)."""
    for node in _nodes_of_class(scene, "vtkMRMLSliceNode"):
        if node.GetLayoutName() == layout_name:
            return node
    return None


def volume_center_ras(node: Any) -> Tuple[float, float, float]:
    """Centre of the volume's voxel grid in RAS (ignoring parent transforms)."""
    dims = np.array(node.GetImageData().GetDimensions(), dtype=float)
    centre_ijk = np.append((dims - 1.0) / 2.0, 1.0)
    ras = node_ijk_to_ras(node) @ centre_ijk
    return float(ras[0]), float(ras[1]), float(ras[2])


def show_side_by_side(
    scene: Any, left_node: Any, right_node: Any, orientation: str = "Axial"
) -> Dict[str, Any]:
    """Show ``left_node`` in the Red view and ``right_node`` in the Yellow view, side by side and linked.

    Sets the layout node to ``SlicerLayoutSideBySideView``, the views' backgrounds through their slice composite
    nodes (foreground and label cleared so nothing covers the comparison), links both composite nodes, and,
    where slice nodes exist (in the application), gives both the same orientation and slice position.
    Returns the nodes it touched so callers and tests can check them.
    """
    import slicer

    layout = find_layout_node(scene)
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    composites = {}
    for view, volume in (("Red", left_node), ("Yellow", right_node)):
        composite = slice_composite_node(scene, view)
        composite.SetBackgroundVolumeID(volume.GetID() if volume is not None else None)
        composite.SetForegroundVolumeID(None)
        composite.SetLabelVolumeID(None)
        composite.SetLinkedControl(1)
        composites[view] = composite
    slices = {view: slice_node(scene, view) for view in ("Red", "Yellow")}
    centre = volume_center_ras(left_node) if left_node is not None and left_node.GetImageData() else None
    for node in slices.values():
        if node is None:
            continue
        if node.HasSliceOrientationPreset(orientation):
            node.SetOrientation(orientation)
        if centre is not None:
            node.JumpSliceByCentering(*centre)
    red, yellow = slices["Red"], slices["Yellow"]
    if red is not None and yellow is not None:
        yellow.SetSliceOffset(red.GetSliceOffset())
        yellow.SetFieldOfView(*red.GetFieldOfView())
    return {"layout": layout, "composites": composites, "slices": slices}


def set_window_level(node: Any, lo_percentile: float = 1.0, hi_percentile: float = 99.0) -> Tuple[float, float]:
    """Fix the display window to the given percentiles of the volume's voxels; returns ``(low, high)``.

    Skull-stripped MR is mostly zeros, so percentiles are taken over non-zero voxels when there are enough of
    them; otherwise the window would collapse onto the background. A display node with the grey colour table is
    created when absent (a bare ``slicer-core`` scene has no colour nodes).
    """
    import slicer.util

    array = slicer.util.arrayFromVolume(node)
    finite = array[np.isfinite(array)]
    nonzero = finite[finite != 0]
    values = nonzero if nonzero.size >= max(100, finite.size // 100) else finite
    if values.size == 0:
        low, high = 0.0, 1.0
    else:
        low, high = (float(v) for v in np.percentile(values, [lo_percentile, hi_percentile]))
    if not high > low:
        high = low + 1.0
    display = ensure_display_node(node)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(low, high)
    return low, high


def ensure_display_node(node: Any) -> Any:
    """The node's scalar display node, created (with a grey colour node that exists in the scene) when missing."""
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    scene = node.GetScene()
    if scene is not None and (display.GetColorNodeID() is None or scene.GetNodeByID(display.GetColorNodeID()) is None):
        display.SetAndObserveColorNodeID(grey_color_node(scene).GetID())
    return display


def grey_color_node(scene: Any) -> Any:
    """Slicer's "Grey" colour table node, added to the scene (with Slicer's singleton ID) when the scene lacks it."""
    import slicer

    existing = scene.GetNodeByID("vtkMRMLColorTableNodeGrey")
    if existing is not None:
        return existing
    node = slicer.vtkMRMLColorTableNode()
    node.SetTypeToGrey()
    node.SetSingletonTag("Grey")
    node.SetName("Grey")
    node.SetHideFromEditors(True)
    return scene.AddNode(node)


def builtin_color_node(scene: Any, type_name: str) -> Any:
    """Slicer's built-in colour table ``type_name`` ("Iron", "Grey", …), added with its singleton ID when absent."""
    import slicer

    existing = scene.GetNodeByID(f"vtkMRMLColorTableNode{type_name}")
    if existing is not None:
        return existing
    node = slicer.vtkMRMLColorTableNode()
    getattr(node, f"SetTypeTo{type_name}")()
    node.SetSingletonTag(type_name)
    node.SetName(type_name)
    node.SetHideFromEditors(True)
    return scene.AddNode(node)


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
    the two overlay exactly. Returns ``(node, what show_uncertainty_overlay returned)``.
    """
    node = load_volume_file(scene, path, name=name or f"{synthetic_node.GetName()} uncertainty")
    try:
        update_node_from_volume(node, volume_from_node(node), reference=synthetic_node)
        shown = show_uncertainty_overlay(scene, node, synthetic_node, **options)
    except Exception:
        attached = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] + [node.GetStorageNode()]
        scene.RemoveNode(node)
        for other in attached:
            if other is not None:
                scene.RemoveNode(other)
        raise
    return node, shown


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

    def __init__(self, scene: Any, name: str = "MedSynth training") -> None:
        import vtk

        self.scene = scene
        self._per_stage = 0
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


# ----------------------------------------------------------------------------------------------------------------
# Parameters on plain scripted-module nodes
# ----------------------------------------------------------------------------------------------------------------


def module_parameter_node(scene: Any, module_name: str) -> Any:
    """The singleton ``vtkMRMLScriptedModuleNode`` of ``module_name``, found or created as Slicer's logic does it."""
    node = scene.GetSingletonNode(module_name, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(module_name)
        node.SetName(scene.GenerateUniqueName(module_name))
        node = scene.AddNode(node)
    if node.GetAttribute("ModuleName") != module_name:
        node.SetAttribute("ModuleName", module_name)
    return node


def set_parameters(node: Any, values: Mapping[str, Any]) -> None:
    """Store plain values as parameter strings in the encoding ``parameterNodeWrapper`` uses.

    bool → "True"/"False", numbers and paths → ``str``, str as is; lists/dicts → JSON. Node references are not
    parameters (use ``SetNodeReferenceID``).
    """
    was_modifying = node.StartModify()
    try:
        for name, value in values.items():
            if isinstance(value, bool):
                text = "True" if value else "False"
            elif isinstance(value, (list, tuple, dict)):
                text = json.dumps(value)
            else:
                text = str(value)
            node.SetParameter(name, text)
    finally:
        node.EndModify(was_modifying)


def get_parameters(node: Any, types: Mapping[str, type], defaults: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Read parameters back as the given types (missing ones from ``defaults`` or skipped)."""
    defaults = defaults or {}
    out: Dict[str, Any] = {}
    for name, typ in types.items():
        if not node.HasParameter(name):
            if name in defaults:
                out[name] = defaults[name]
            continue
        text = node.GetParameter(name)
        if typ is bool:
            out[name] = text == "True"
        elif typ in (list, tuple, dict):
            out[name] = typ(json.loads(text))
        elif typ is Path:
            out[name] = Path(text)
        else:
            out[name] = typ(text)
    return out
