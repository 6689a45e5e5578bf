"""MRML scene work for the Slicer module, kept free of Qt so it runs (and is tested) with PyPI's ``slicer-core``:
geometry, volume nodes ↔ :class:`Volume`, files, and the slice views.

Every function takes the scene or the nodes it works on as arguments and never touches ``slicer.mrmlScene``:
the module passes the application's scene, tests pass a private one. ``slicer`` and ``vtk`` are imported inside the
functions so ``import MedSynthLogic`` (and the CLI) work where Slicer is absent.

Geometry. MedSynth's ``Volume`` is ITK/LPS: physical point = origin + direction · diag(spacing) · (i, j, k), with the
array in (z, y, x) = (k, j, i) order. A Slicer volume node stores IJK→RAS, and RAS = diag(-1, -1, 1) · LPS, so
IJK→RAS = diag(-1, -1, 1) · [direction · diag(spacing) | origin]. Slicer's voxel array (``arrayFromVolume``) is
also (k, j, i), so arrays pass through unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputImageError, OutputError

if TYPE_CHECKING:
    from .volume_io import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


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
        raise InputImageError("The volume's IJK to RAS matrix is degenerate (zero or non-finite spacing).",
                              "Check its voxel size and directions (Volumes module, Volume Information), or load "
                              "the file again.")
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


def node_ijk_to_world(node: Any) -> Optional[np.ndarray]:
    """The node's IJK→RAS in world coordinates, its parent transforms applied as hardening them would; the local
    one without a parent transform; None when a parent transform is not linear (it cannot be a matrix)."""
    import vtk

    local = node_ijk_to_ras(node)
    parent = node.GetParentTransformNode()
    if parent is None:
        return local
    if not parent.IsTransformToWorldLinear():
        return None
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)]) @ local


def _ijk_to_ras_read(node: Any) -> np.ndarray:
    """The IJK→RAS the synthesis reads a node with: in world coordinates, or its own under a non-linear transform."""
    world = node_ijk_to_world(node)
    return node_ijk_to_ras(node) if world is None else world


def node_spacing(node: Any) -> Tuple[float, float, float]:
    """The voxel size (x, y, z) the synthesis reads from the node: in world coordinates, a linear parent transform
    applied, as ``volume_from_node`` gives it (what the time estimate must count)."""
    return geometry_from_ijk_to_ras(_ijk_to_ras_read(node))[0]


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


def check_has_voxels(node: Any) -> None:
    """Refuse a node without an image, or with an image of no voxels (an empty ``vtkImageData``)."""
    if node is None or node.GetImageData() is None:
        raise InputImageError("The selected volume has no image data.", "Pick a volume that holds an image.")
    image = node.GetImageData()
    if image.GetPointData() is None or image.GetPointData().GetScalars() is None or min(image.GetDimensions()) < 1:
        raise InputImageError("The selected volume has no voxels.", "Pick a volume that holds an image.")


def volume_from_node(node: Any) -> "Volume":
    """A ``Volume`` (float32 copy of the voxels, LPS geometry) from a scalar volume node, in world coordinates.

    A linear parent transform is applied to the geometry (not the voxels), as hardening it would: a transform that
    fixes a wrong header's orientation must reach the synthesis, whose axis order and voxel size follow the
    geometry. The voxel order stays the node's, so the synthetic image stored with the node's own IJK→RAS under the
    same transform lies where the source does. A non-linear parent transform is not applied
    (``node_ijk_to_world`` is None; the panel says so).
    """
    import slicer.util

    from .volume_io import Volume

    check_has_voxels(node)
    image = node.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise InputImageError("The selected volume is not a scalar image (it has several components per voxel).",
                              "Pick a grey-scale volume: a colour (RGB) or vector image is no MR scan.")
    array = np.array(slicer.util.arrayFromVolume(node), dtype=np.float32, copy=True)
    if array.ndim != 3:
        raise InputImageError(f"The selected volume is not 3D (array shape {array.shape}).",
                              "Pick a 3D volume of the whole brain.")
    if not np.all(np.isfinite(array)):
        raise InputImageError("The selected volume contains NaN or infinite values.",
                              "Replace them (e.g. by 0 outside the brain) or export the volume again.")
    spacing, origin, direction = geometry_from_ijk_to_ras(_ijk_to_ras_read(node))
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
    try:
        update_node_from_volume(node, volume, reference=reference)
    except Exception:  # a volume not on the reference's grid leaves no empty node behind
        scene.RemoveNode(node)
        raise
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
    from .volume_read import check_nifti_complete, header_problem

    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"Image file {path} does not exist.", "Check the path and the spelling.")
    check_nifti_complete(path)  # Slicer's reader, as ITK's, pads a truncated NIfTI with zeros and reads NaN as 0
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
        raise header_problem(path) or InputImageError(f"Could not read {path} as a volume (unsupported or corrupt file).")
    node.SetAndObserveStorageNodeID(storage.GetID())
    if node.GetImageData().GetNumberOfScalarComponents() != 1:
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputImageError(f"{path} is not a scalar image (it has several components per voxel).",
                              "Load a grey-scale volume: a colour (RGB) or vector image is no MR scan.")
    node.CreateDefaultDisplayNodes()
    return node


def save_volume_node(node: Any, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write a volume node's image (float32, in world coordinates as ``volume_from_node`` reads it) to ``path``
    atomically, format from the extension: what the synthesis child reads."""
    from .volume_write import write_volume

    return write_volume(volume_from_node(node), path, overwrite=overwrite)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ----------------------------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------------------------


def nodes_of_class(scene: Any, class_name: str) -> List[Any]:
    """The scene's nodes of ``class_name`` or a subclass, in scene order."""
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def find_layout_node(scene: Any, create: bool = True) -> Any:
    """The scene's layout node (the application creates one; a bare scene gets a new one when ``create``)."""
    nodes = nodes_of_class(scene, "vtkMRMLLayoutNode")
    if nodes:
        return nodes[0]
    if not create:
        return None
    return scene.AddNewNodeByClass("vtkMRMLLayoutNode")


def slice_composite_node(scene: Any, layout_name: str, create: bool = True) -> Any:
    """The slice composite node of view ``layout_name`` ("Red", "Yellow", …), created the way Slicer does if absent."""
    for node in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
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
    for node in nodes_of_class(scene, "vtkMRMLSliceNode"):
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

    Skull-stripped MR is mostly zeros and a synthetic CT mostly air at the window's bottom (−1000 HU), so
    percentiles are taken over the voxels above the volume's minimum, its background, when there are enough of
    them; otherwise the window would collapse onto the background (a synthetic CT's brain showed flat grey). A
    display node with the grey colour table is created when absent (a bare ``slicer-core`` scene has no colour nodes).
    """
    import slicer.util

    array = slicer.util.arrayFromVolume(node)
    finite = array[np.isfinite(array)]
    foreground = finite[finite > finite.min()] if finite.size else finite
    values = foreground if foreground.size >= max(100, finite.size // 100) else finite
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
    if display is None:  # a node no longer in a scene (deleted) gets none
        raise OutputError(f"The volume '{node.GetName()}' is not in the scene any more: it cannot be shown.")
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
