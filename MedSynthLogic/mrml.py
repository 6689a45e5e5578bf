"""MRML scene work for the Slicer module, Qt-free: the one import for the module and its helper package.

The work is in two modules, each with one job: :mod:`.mrml_scene` (geometry, volume nodes ↔ ``Volume``, files,
slice views, window/level and colour tables) and :mod:`.mrml_overlays` (the uncertainty overlay and the training
plot, built on those). Every function takes the scene or nodes it works on and never touches ``slicer.mrmlScene``.
"""

from __future__ import annotations

from .mrml_overlays import (
    PLOTTED_LOSSES,
    SERIES_COLORS,
    TRAINING_COLUMNS,
    UNCERTAINTY_COLORS,
    UNCERTAINTY_OF,
    UNCERTAINTY_ROLE,
    TrainingPlot,
    load_uncertainty_overlay,
    remove_uncertainty_overlays,
    show_uncertainty_overlay,
)
from .mrml_scene import (
    LPS_TO_RAS,
    builtin_color_node,
    check_has_voxels,
    ensure_display_node,
    find_layout_node,
    geometry_from_ijk_to_ras,
    grey_color_node,
    ijk_to_ras_from_geometry,
    load_volume_file,
    node_from_volume,
    node_ijk_to_ras,
    node_ijk_to_world,
    node_spacing,
    save_volume_node,
    set_window_level,
    show_side_by_side,
    slice_composite_node,
    slice_node,
    update_node_from_volume,
    volume_center_ras,
    volume_from_node,
)

__all__ = [
    "LPS_TO_RAS",
    "PLOTTED_LOSSES",
    "SERIES_COLORS",
    "TRAINING_COLUMNS",
    "UNCERTAINTY_COLORS",
    "UNCERTAINTY_OF",
    "UNCERTAINTY_ROLE",
    "TrainingPlot",
    "builtin_color_node",
    "check_has_voxels",
    "ensure_display_node",
    "find_layout_node",
    "geometry_from_ijk_to_ras",
    "grey_color_node",
    "ijk_to_ras_from_geometry",
    "load_uncertainty_overlay",
    "load_volume_file",
    "remove_uncertainty_overlays",
    "node_from_volume",
    "node_ijk_to_ras",
    "node_ijk_to_world",
    "node_spacing",
    "save_volume_node",
    "set_window_level",
    "show_side_by_side",
    "show_uncertainty_overlay",
    "slice_composite_node",
    "slice_node",
    "update_node_from_volume",
    "volume_center_ras",
    "volume_from_node",
]
