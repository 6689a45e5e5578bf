"""Render a MedSynth result the way the Slicer module shows it, offscreen, without the Slicer application.

    render_side_by_side.py SOURCE SYNTHETIC OUT.png [--size 512] [--slice-offset MM]

The source (T1ce) goes in the Red slice view on the left and the synthetic T2 in the Yellow view on the right,
both axial at the same slice position, grey window/level fixed to the 1st-99th percentile of the brain. The
scene, the slice nodes and the slice logic are Slicer's own (``trame-slicer``'s Qt-free ``SlicerApp`` around
PyPI's ``slicer-core``), and the scene is set up by the same ``MedSynthLogic.mrml`` functions the module uses
(``load_volume_file``, ``set_window_level``, ``show_side_by_side``). The two views are rendered offscreen
through EGL, captured with ``vtkWindowToImageFilter`` and written as one PNG by ``vtkPNGWriter``.

Environment. ``trame-slicer`` pins ``slicer-core`` 5.11.x and ``vtk`` 9.6.0, which clash with the project's main
environment (``slicer-core`` 5.13, ``vtk`` 9.6.2), so it lives in its own, git-ignored venv. This script needs
no torch; run it on existing output (e.g. from ``medsynth demo``, run in the main environment)::

    python3 -m venv .venv-render
    .venv-render/bin/pip install 'trame-slicer[standalone]==2.0.0' SimpleITK pytest
    .venv/bin/medsynth demo --out /tmp/demo
    PYTHONPATH=. .venv-render/bin/python Testing/render_side_by_side.py \\
        /tmp/demo/phantom_t1ce.nii.gz /tmp/demo/phantom_synthetic_t2.nii.gz docs/images/slicer_side_by_side.png

(``SimpleITK`` and ``pytest`` are for ``Testing/Python/test_render_offscreen.py``, which writes the phantom and,
where torch is installed too, runs the whole demo.) Offscreen rendering uses Mesa's EGL
(Debian: ``libegl1``, ``libgl1-mesa-dri``); ``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow`` is set unless the
environment already chooses a window class.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Dict, Optional

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Slicer's own description of the side-by-side layout (qMRMLLayoutManager), registered so the layout node knows it.
SIDE_BY_SIDE_XML = (
    '<layout type="horizontal">'
    ' <item><view class="vtkMRMLSliceNode" singletontag="Red">'
    '  <property name="orientation" action="default">Axial</property>'
    '  <property name="viewlabel" action="default">R</property>'
    '  <property name="viewcolor" action="default">#F34A33</property>'
    ' </view></item>'
    ' <item><view class="vtkMRMLSliceNode" singletontag="Yellow">'
    '  <property name="orientation" action="default">Axial</property>'
    '  <property name="viewlabel" action="default">Y</property>'
    '  <property name="viewcolor" action="default">#EDD54C</property>'
    ' </view></item>'
    '</layout>'
)
VIEW_COLORS = {"Red": (0xF3 / 255, 0x4A / 255, 0x33 / 255), "Yellow": (0xED / 255, 0xD5 / 255, 0x4C / 255)}
SEPARATOR_PX = 4


_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def _ras_letter(slice_node, column: int) -> str:
    """The patient direction (R/L/A/P/S/I) of the screen's +x (column 0) or +y (column 1) axis in a slice view."""
    matrix = slice_node.GetSliceToRAS()
    vector = [matrix.GetElement(row, column) for row in range(3)]
    axis = max(range(3), key=lambda i: abs(vector[i]))
    return ("RAS"[axis] if vector[axis] > 0 else "LPI"[axis])


def render_side_by_side(
    source: Path,
    synthetic: Path,
    out: Path,
    size: int = 512,
    slice_offset: Optional[float] = None,
    annotate: bool = True,
) -> Dict[str, object]:
    """Render SOURCE (Red, left) and SYNTHETIC (Yellow, right) axially; write OUT.png; return what was shown."""
    import numpy as np
    import slicer
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition
    from vtkmodules.util.numpy_support import numpy_to_vtk, vtk_to_numpy
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkRenderingAnnotation import vtkCornerAnnotation
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

    from MedSynthLogic import mrml

    app = SlicerApp()
    scene = app.scene

    # The layout node the application would have, with Slicer's side-by-side description registered on it.
    layout = mrml.find_layout_node(scene)
    if not layout.IsLayoutDescription(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView):
        layout.AddLayoutDescription(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView, SIDE_BY_SIDE_XML)

    # Red and Yellow slice views: each has its own vtkMRMLSliceLogic, slice node and offscreen EGL render window.
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    views = {
        "Red": app.view_manager.create_view(ViewLayoutDefinition.slice_view("Axial", label="Red", color="#F34A33")),
        "Yellow": app.view_manager.create_view(
            ViewLayoutDefinition.slice_view("Axial", label="Yellow", color="#EDD54C")
        ),
    }
    app.view_manager.set_current_view_ids(list(views))
    for view in views.values():
        view.render_window().SetSize(size, size)
        view.update_size(size, size)

    source_node = mrml.load_volume_file(scene, source)
    synthetic_node = mrml.load_volume_file(scene, synthetic)
    windows = {"Red": mrml.set_window_level(source_node), "Yellow": mrml.set_window_level(synthetic_node)}

    # What the module does after a run: backgrounds, linked composites, same orientation and slice position.
    shown = mrml.show_side_by_side(scene, source_node, synthetic_node, orientation="Axial")
    red_slice, yellow_slice = shown["slices"]["Red"], shown["slices"]["Yellow"]
    # Each view fits its slice node to its window and background (ResizeSliceNode + FitSliceToBackground), as
    # Slicer does when a volume is shown; both volumes share one grid, so both views get the same field of view.
    for view in views.values():
        view.fit_view_to_content()
    if slice_offset is not None:
        red_slice.SetSliceOffset(float(slice_offset))
    else:
        red_slice.JumpSliceByCentering(*mrml.volume_center_ras(source_node))
    app.app_logic.GetSliceLogic(red_slice).SnapSliceOffsetToIJK()  # on a voxel plane, not between two
    yellow_slice.SetSliceOffset(red_slice.GetSliceOffset())
    offsets = {"Red": red_slice.GetSliceOffset(), "Yellow": yellow_slice.GetSliceOffset()}

    labels = {"Red": ("T1ce (source)", source_node), "Yellow": ("synthetic T2", synthetic_node)}
    for name, view in views.items():
        if annotate:
            corner = vtkCornerAnnotation()
            corner.SetMaximumFontSize(15)
            title, node = labels[name]
            corner.SetText(2, title)  # upper left
            low, high = windows[name]
            corner.SetText(0, f"B: {node.GetName()}\nW {high - low:.0f}  L {(high + low) / 2:.0f}")  # lower left
            corner.SetText(1, f"S: {offsets[name]:.1f} mm")  # lower right
            right, up = (_ras_letter(shown["slices"][name], column) for column in (0, 1))
            for position, letter in ((5, right), (6, _OPPOSITE[right]), (7, up), (4, _OPPOSITE[up])):
                corner.SetText(position, letter)  # edges: which patient side each screen edge faces
            corner.GetTextProperty().SetColor(*VIEW_COLORS[name])
            view.renderer().AddViewProp(corner)
        view.render()

    images = []
    for name in ("Red", "Yellow"):
        capture = vtkWindowToImageFilter()
        capture.SetInput(views[name].render_window())
        capture.SetInputBufferTypeToRGB()
        capture.ReadFrontBufferOff()
        capture.Update()
        data = capture.GetOutput()
        w, h, _ = data.GetDimensions()
        images.append(vtk_to_numpy(data.GetPointData().GetScalars()).reshape(h, w, 3).copy())
    height = images[0].shape[0]
    gap = np.full((height, SEPARATOR_PX, 3), 96, dtype=np.uint8)
    joined = np.ascontiguousarray(np.concatenate([images[0], gap, images[1]], axis=1))

    out_image = vtkImageData()
    out_image.SetDimensions(joined.shape[1], joined.shape[0], 1)
    scalars = numpy_to_vtk(joined.reshape(-1, 3), deep=True)
    scalars.SetName("PNGImage")
    out_image.GetPointData().SetScalars(scalars)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = vtkPNGWriter()
    writer.SetFileName(str(out))
    writer.SetInputData(out_image)
    writer.Write()
    if writer.GetErrorCode():
        raise OSError(f"vtkPNGWriter could not write {out} (VTK error code {writer.GetErrorCode()}).")

    # Tear down quietly: with backgrounds still set, VTK's teardown re-runs the slice pipelines on released data.
    for view in views.values():
        view.set_render_blocked(True)
    for composite in shown["composites"].values():
        composite.SetBackgroundVolumeID(None)
    for view in views.values():
        view.finalize()
    return {
        "png": out,
        "size": (joined.shape[1], joined.shape[0]),
        "offsets": offsets,
        "windows": windows,
        "orientation": {name: node.GetOrientation() for name, node in shown["slices"].items()},
        "window_class": views["Red"].render_window().GetClassName(),
    }


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="source T1ce volume (left, Red view)")
    parser.add_argument("synthetic", type=Path, help="synthetic T2 volume (right, Yellow view)")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--size", type=int, default=512, help="pixels per view (square), default 512")
    parser.add_argument("--slice-offset", type=float, default=None,
                        help="axial slice position in mm (RAS S); default: the source's centre, as the module does")
    parser.add_argument("--no-annotations", action="store_true", help="no corner text in the views")
    args = parser.parse_args(argv)
    result = render_side_by_side(args.source, args.synthetic, args.out, size=args.size,
                                 slice_offset=args.slice_offset, annotate=not args.no_annotations)
    print(f"wrote {result['png']} {result['size'][0]}x{result['size'][1]} via {result['window_class']}; "
          f"orientation {result['orientation']}, slice offsets {result['offsets']}, windows {result['windows']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
