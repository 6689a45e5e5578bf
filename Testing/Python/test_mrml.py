"""mrml.py against the real MRML library (PyPI ``slicer-core``): geometry, files, views, plots, parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed for MRML tests")
sitk = pytest.importorskip("SimpleITK")

from MedSynthLogic import mrml  # noqa: E402
from MedSynthLogic.errors import InputImageError  # noqa: E402
from MedSynthLogic.volume_io import Volume, read_volume  # noqa: E402


def _oblique_direction() -> tuple:
    a, b, c = 0.35, -0.2, 0.1
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    return tuple((rz @ rx @ ry).ravel())


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def oblique_nifti(tmp_path):
    rng = np.random.default_rng(1)
    array = (rng.random((7, 9, 11)) * 1000).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.25, 2.5))
    image.SetOrigin((-91.5, 120.25, -33.0))
    image.SetDirection(_oblique_direction())
    path = tmp_path / "dossier ü" / "case 01_t1ce.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(image, str(path))
    return path


def test_geometry_matrix_round_trip():
    spacing, origin, direction = (0.8, 1.25, 2.5), (-91.5, 120.25, -33.0), _oblique_direction()
    m = mrml.ijk_to_ras_from_geometry(spacing, origin, direction)
    # RAS = diag(-1, -1, 1) · LPS for the first voxel's corner and for a voxel step along i.
    assert np.allclose(m[:3, 3], [91.5, -120.25, -33.0])
    d = np.array(direction).reshape(3, 3)
    assert np.allclose(m[:3, 0], np.diag([-1, -1, 1]) @ d[:, 0] * 0.8)
    s2, o2, d2 = mrml.geometry_from_ijk_to_ras(m)
    assert np.allclose(s2, spacing) and np.allclose(o2, origin) and np.allclose(d2, direction)


def test_load_matches_simpleitk(scene, oblique_nifti):
    node = mrml.load_volume_file(scene, oblique_nifti)
    assert node.GetName() == "case 01_t1ce"
    assert node.GetStorageNode() is not None and node.GetDisplayNode() is not None
    vol = mrml.volume_from_node(node)
    ref = read_volume(oblique_nifti)
    img = sitk.ReadImage(str(oblique_nifti))
    assert vol.array.dtype == np.float32 and vol.array.shape == (7, 9, 11)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(img).astype(np.float32))
    np.testing.assert_allclose(vol.spacing, img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(vol.direction, img.GetDirection(), atol=1e-6)
    assert np.allclose(vol.origin, ref.origin, atol=1e-5) and np.allclose(vol.direction, ref.direction, atol=1e-6)


def test_node_from_volume_keeps_ijk_to_ras(scene, oblique_nifti):
    source = mrml.load_volume_file(scene, oblique_nifti)
    vol = mrml.volume_from_node(source)
    synthetic = vol.with_array(vol.array * 0.5)
    with_ref = mrml.node_from_volume(scene, synthetic, "case synthetic T2", reference=source)
    np.testing.assert_array_equal(mrml.node_ijk_to_ras(with_ref), mrml.node_ijk_to_ras(source))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(with_ref), synthetic.array)
    from_numbers = mrml.node_from_volume(scene, synthetic, "case synthetic T2")
    np.testing.assert_allclose(mrml.node_ijk_to_ras(from_numbers), mrml.node_ijk_to_ras(source), atol=1e-9)
    assert from_numbers.GetName() != with_ref.GetName()


def test_node_from_volume_refuses_other_grid(scene, oblique_nifti):
    source = mrml.load_volume_file(scene, oblique_nifti)
    with pytest.raises(InputImageError):
        mrml.node_from_volume(scene, Volume(np.zeros((3, 3, 3), np.float32)), "x", reference=source)


def test_save_round_trip(scene, oblique_nifti, tmp_path):
    source = mrml.load_volume_file(scene, oblique_nifti)
    (tmp_path / "sortie é").mkdir()
    out = mrml.save_volume_node(source, tmp_path / "sortie é" / "saved.nii.gz")
    again = read_volume(out)
    ref = read_volume(oblique_nifti)
    np.testing.assert_array_equal(again.array, ref.array)
    np.testing.assert_allclose(again.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(again.direction, ref.direction, atol=1e-5)
    assert sorted(p.name for p in out.parent.iterdir()) == ["saved.nii.gz"]
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputImageError, match="no image data"):  # Slicer's writer reports success and writes nothing
        mrml.save_volume_node(empty, tmp_path / "empty.nii.gz")


def test_the_panels_load_refuses_a_truncated_nifti_and_nan_voxels_as_the_cli_does(scene, tmp_path):
    """Slicer's reader filled the missing half of a truncated .nii with zeros and read NaN/inf as 0, so the panel's
    "Load T1ce" took both files that `medsynth synthesize` refuses (a review, checked in slicer-core)."""
    import nibabel as nib

    data = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32) + 1
    whole = tmp_path / "whole.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(whole))
    raw = whole.read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 2])
    n_before = scene.GetNumberOfNodes()
    with pytest.raises(InputImageError, match="truncated"):
        mrml.load_volume_file(scene, tmp_path / "cut.nii")
    data[3, 4, 5], data[6, 7, 8] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "nan.nii"))
    with pytest.raises(InputImageError, match="NaN|infinite"):
        mrml.load_volume_file(scene, tmp_path / "nan.nii")
    assert scene.GetNumberOfNodes() == n_before
    assert mrml.load_volume_file(scene, whole).GetImageData() is not None


def test_load_missing_or_bad_file(scene, tmp_path):
    with pytest.raises(InputImageError):
        mrml.load_volume_file(scene, tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image at all")
    n_before = scene.GetNumberOfNodes()
    with pytest.raises(InputImageError, match="not a readable image or is damaged"):  # read_volume's words now
        mrml.load_volume_file(scene, bad)
    assert scene.GetNumberOfNodes() == n_before


def test_a_4d_file_is_refused_as_4d_not_as_corrupt(scene, tmp_path):
    """Slicer's reader fails on a 4D NIfTI and the panel said "unsupported or corrupt file" (a review, session 45);
    the header says what it is, as the command line does."""
    import nibabel as nib

    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), dtype=np.float32), np.eye(4)), series)
    n_before = scene.GetNumberOfNodes()
    with pytest.raises(InputImageError, match=r"is a 4D image \(size \(8, 8, 8, 3\)\)") as err:
        mrml.load_volume_file(scene, series)
    assert "Extract the single 3D volume" in err.value.hint and scene.GetNumberOfNodes() == n_before


def test_volume_from_node_without_image(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputImageError):
        mrml.volume_from_node(node)


def test_show_side_by_side(scene, oblique_nifti):
    left = mrml.load_volume_file(scene, oblique_nifti)
    right = mrml.node_from_volume(scene, mrml.volume_from_node(left), "synthetic T2", reference=left)
    result = mrml.show_side_by_side(scene, left, right)
    layout = mrml.find_layout_node(scene, create=False)
    assert layout is result["layout"]
    assert layout.GetViewArrangement() == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    red = mrml.slice_composite_node(scene, "Red", create=False)
    yellow = mrml.slice_composite_node(scene, "Yellow", create=False)
    assert red.GetBackgroundVolumeID() == left.GetID()
    assert yellow.GetBackgroundVolumeID() == right.GetID()
    assert red.GetLinkedControl() and yellow.GetLinkedControl()
    assert red.GetForegroundVolumeID() is None and yellow.GetLabelVolumeID() is None
    # Called again (second synthesis): the same nodes are reused, not duplicated.
    mrml.show_side_by_side(scene, left, right)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLLayoutNode") == 1


def test_show_side_by_side_aligns_existing_slice_nodes(scene, oblique_nifti):
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    slices = {}
    for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal")):
        node = scene.CreateNodeByClass("vtkMRMLSliceNode")
        node.UnRegister(None)
        node.SetLayoutName(name)
        node.SetSingletonTag(name)
        slices[name] = scene.AddNode(node)
        slices[name].SetOrientation(orientation)
    slices["Yellow"].SetSliceOffset(40.0)
    left = mrml.load_volume_file(scene, oblique_nifti)
    right = mrml.node_from_volume(scene, mrml.volume_from_node(left), "synthetic", reference=left)
    mrml.show_side_by_side(scene, left, right)
    assert slices["Red"].GetOrientationString() == "Axial" == slices["Yellow"].GetOrientationString()
    assert slices["Red"].GetSliceOffset() == pytest.approx(slices["Yellow"].GetSliceOffset())
    assert slices["Red"].GetSliceOffset() == pytest.approx(mrml.volume_center_ras(left)[2], abs=1e-6)


def test_set_window_level_creates_grey_display(scene):
    array = np.zeros((10, 20, 20), np.float32)
    array[2:8, 5:15, 5:15] = np.linspace(100, 300, 600, dtype=np.float32).reshape(6, 10, 10)
    node = mrml.node_from_volume(scene, Volume(array), "v")
    node.SetAndObserveDisplayNodeID(None)
    low, high = mrml.set_window_level(node)
    assert 100 <= low < 110 and 290 < high <= 300
    display = node.GetDisplayNode()
    assert display is not None and not display.GetAutoWindowLevel()
    assert display.GetWindowLevelMin() == pytest.approx(low) and display.GetWindowLevelMax() == pytest.approx(high)
    colour = scene.GetNodeByID(display.GetColorNodeID())
    assert colour is not None and colour.GetName() == "Grey"
    flat = mrml.node_from_volume(scene, Volume(np.full((4, 4, 4), 7, np.float32)), "flat")
    low, high = mrml.set_window_level(flat)
    assert high > low
    ct = np.full((10, 20, 20), -1000.0, np.float32)  # a synthetic CT: air at the window's bottom, brain 10-45 HU
    ct[2:8, 5:15, 5:15] = np.linspace(10, 45, 600, dtype=np.float32).reshape(6, 10, 10)
    low, high = mrml.set_window_level(mrml.node_from_volume(scene, Volume(ct), "ct"))
    assert 10 <= low < 12 and 43 < high <= 45  # was -1000 to 45: the brain flat grey


def test_training_plot_grows_with_events(scene):
    plot = mrml.TrainingPlot(scene)
    assert plot.number_of_rows == 0
    assert set(plot.series_nodes) == set(mrml.PLOTTED_LOSSES)
    assert plot.chart_node.GetNumberOfPlotSeriesNodes() == len(mrml.PLOTTED_LOSSES)
    for series in plot.series_nodes.values():
        assert series.GetTableNodeID() == plot.table_node.GetID() and series.GetXColumnName() == "iteration"
    losses = {"g": 1.5, "d": 0.7, "l2": 0.2, "gdl": 0.1, "g_adv": 0.69}
    assert plot.add_event({"event": "iteration", "stage": 0, "iteration": 10, "iterations": 100, "losses": losses})
    assert plot.add_event({"event": "validation", "stage": 0, "iteration": 10, "psnr": 24.5, "ssim": 0.81})
    assert plot.number_of_rows == 1
    assert plot.value(0, "val_psnr") == pytest.approx(24.5) and plot.value(0, "g") == pytest.approx(1.5)
    assert plot.add_event({"event": "iteration", "stage": 1, "iteration": 20, "iterations": 100, "losses": {"g": 1.0}})
    assert plot.number_of_rows == 2
    assert plot.value(1, "iteration") == 120 and plot.value(1, "stage") == 1
    assert math.isnan(plot.value(1, "d")) and math.isnan(plot.value(1, "val_psnr"))
    assert plot.add_event({"event": "validation", "stage": 1, "iteration": 40, "psnr": 26.0, "ssim": 0.85})
    assert plot.number_of_rows == 3 and math.isnan(plot.value(2, "g"))
    assert not plot.add_event({"event": "checkpoint", "path": "x"})
    assert not plot.add_event({"event": "log", "line": "hello"})
    assert plot.number_of_rows == 3
    table = plot.table_node.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(mrml.TRAINING_COLUMNS)
    # a resumed run whose first event is a later stage's validation (stopped during it): placed in that stage's range
    resumed = mrml.TrainingPlot(scene, iterations_per_stage=10)
    assert resumed.add_event({"event": "validation", "stage": 1, "iteration": 10, "psnr": 20.0, "ssim": 0.5})
    assert resumed.value(0, "iteration") == 20


def test_a_node_the_synthesis_cannot_read_is_refused_with_what_to_do(scene):
    """The panel shows an error's hint as its advice: these refusals had none (a review)."""
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "with nan")
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 8)
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    image.GetPointData().GetScalars().Fill(1.0)
    image.GetPointData().GetScalars().SetValue(5, float("nan"))
    node.SetAndObserveImageData(image)
    with pytest.raises(InputImageError, match="NaN") as info:
        mrml.volume_from_node(node)
    assert info.value.hint.startswith("Replace them")
    rgb = vtk.vtkImageData()
    rgb.SetDimensions(8, 8, 8)
    rgb.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(rgb)
    with pytest.raises(InputImageError, match="not a scalar image") as info:
        mrml.volume_from_node(node)
    assert "grey-scale" in info.value.hint
