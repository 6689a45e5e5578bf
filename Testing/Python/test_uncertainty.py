"""The uncertainty map: its parts and geometry, the CLI option (real subprocesses) and the Slicer overlay (real MRML)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from MedSynthLogic.errors import OutputError
from MedSynthLogic.inference import synthesize_volume
from MedSynthLogic.model_file import LoadedModel, load_model, save_model
from MedSynthLogic.models import build_generators
from MedSynthLogic.uncertainty import check_uncertainty_path, combine_parts, synthesize_with_uncertainty
from MedSynthLogic.volume_io import Volume, read_volume, write_volume

from _models import random_chain

# Voxels within 10 % of the models' 1 mm, so the parts are computed on this grid (a source further off is resampled:
# test_a_resampled_source_gets_its_map_on_the_training_grid_then_back).
SPACING, ORIGIN, DIRECTION = (0.95, 1.05, 1.08), (-10.0, 3.5, 7.25), (0, 1, 0, -1, 0, 0, 0, 0, 1)


def _convs(chain: torch.nn.Module):
    return [m for m in chain.modules() if isinstance(m, torch.nn.Conv3d)]


def _lopsided(chain: torch.nn.Module) -> torch.nn.Module:
    """A left–right gradient in every first-layer kernel, and a last layer loud enough to pass it on (a random
    body's output is nearly constant), so the model is far from mirror-symmetric; its output stays mostly positive."""
    with torch.no_grad():
        for stage in chain.stages:
            convs = _convs(stage)
            convs[0].weight[..., 0] += 0.3
            convs[0].weight[..., -1] -= 0.3
            convs[-1].weight *= 50.0
            convs[-1].bias += 12.0  # above the output's floor of 0, which would hide the disagreement
    return chain


def _mirror_symmetric(chain: torch.nn.Module) -> torch.nn.Module:
    """Make every kernel symmetric along x: then S(mirror(x)) = mirror(S(x)) exactly (up to rounding)."""
    with torch.no_grad():
        for conv in _convs(chain):
            conv.weight.copy_(0.5 * (conv.weight + torch.flip(conv.weight, dims=(-1,))))
    return chain


def _model(cfg, chain, tmp_path, name: str) -> LoadedModel:
    path = tmp_path / f"{name}.safetensors"
    save_model(path, chain, cfg)
    return load_model(path)


@pytest.fixture()
def source(phantom) -> Volume:
    return Volume(phantom.t1ce.array, spacing=SPACING, origin=ORIGIN, direction=DIRECTION)


@pytest.fixture()
def lopsided(tiny_model_config, tmp_path) -> LoadedModel:
    return _model(tiny_model_config, _lopsided(random_chain(tiny_model_config)), tmp_path, "lopsided")


def test_map_geometry_mask_parts_and_synthesis(lopsided, source):
    events = []
    r = synthesize_with_uncertainty(lopsided, source, device="cpu", tile=20, progress=events.append)
    unc = r.uncertainty
    assert unc.shape == source.shape and unc.array.dtype == np.float32
    assert (unc.spacing, unc.origin, unc.direction) == (source.spacing, source.origin, source.direction)
    inside = source.array > lopsided.config.normalisation.mask_threshold
    assert np.all(unc.array[~inside] == 0) and np.all(unc.array >= 0)
    # The synthesis is exactly synthesize_volume's; the stage part is |last stage − the stage before|.
    plain = synthesize_volume(lopsided, source, device="cpu", tile=20)
    np.testing.assert_array_equal(r.synthesis.array, plain.array)
    previous = synthesize_volume(lopsided, source, stages=1, device="cpu", tile=20)
    np.testing.assert_allclose(r.stages, np.abs(plain.array - previous.array) * inside, atol=1e-3)
    np.testing.assert_allclose(unc.array, np.sqrt(0.5 * (r.flip**2 + r.stages**2)), rtol=1e-5, atol=1e-4)
    assert r.flip[inside].mean() > 1.0 and r.stages[inside].mean() > 1.0  # output units: neither part is empty
    # One bar's worth of progress over the four passes, never going back.
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {e["passes"] for e in events} == {3} and events[-1]["task"] == "uncertainty (previous stage)"


def test_flip_part_vanishes_only_for_a_mirror_symmetric_model(tiny_model_config, tmp_path, source, lopsided):
    _model(tiny_model_config, _mirror_symmetric(_lopsided(random_chain(tiny_model_config))), tmp_path, "sym")
    one_stage = load_model(tmp_path / "sym.safetensors", stages=1)
    r = synthesize_with_uncertainty(one_stage, source, device="cpu", tile=20)
    assert r.stages is None
    scale = np.abs(r.synthesis.array).max()
    assert scale > 100 and np.abs(r.uncertainty.array).max() < 1e-4 * scale
    lop = synthesize_with_uncertainty(load_model(tmp_path / "lopsided.safetensors", stages=1), source, device="cpu", tile=20)
    assert lop.stages is None and lop.uncertainty.array.max() > 0.01 * np.abs(lop.synthesis.array).max()


def test_a_resampled_source_gets_its_map_on_the_training_grid_then_back(tiny_model_config, tmp_path, phantom):
    """A 0.5 mm source: the whole map is computed on the 1 mm grid the synthesis runs on, then resampled back once.
    Its passes used to run on the 0.5 mm grid beside a resampled synthesis; a mirror-symmetric model's flip part must
    still vanish, and the synthesis is synthesize_volume's."""
    from MedSynthLogic.volume import resample_like

    _model(tiny_model_config, _mirror_symmetric(_lopsided(random_chain(tiny_model_config))), tmp_path, "sym")
    sym = load_model(tmp_path / "sym.safetensors", stages=1)
    src = phantom.t1ce
    fine = resample_like(src, Volume(np.zeros(tuple(2 * n for n in src.shape), np.float32), (0.5, 0.5, 0.5),
                                     tuple(o - 0.25 for o in src.origin), src.direction))
    events = []
    r = synthesize_with_uncertainty(sym, fine, device="cpu", progress=events.append)
    assert r.uncertainty.shape == fine.shape and r.uncertainty.spacing == fine.spacing
    assert len([e for e in events if e["event"] == "warning" and "resampled" in e["message"]]) == 1
    np.testing.assert_array_equal(r.synthesis.array, synthesize_volume(sym, fine, device="cpu").array)
    assert np.abs(r.synthesis.array).max() > 100 and np.abs(r.uncertainty.array).max() < 1e-3 * np.abs(r.synthesis.array).max()
    assert np.all(r.uncertainty.array[fine.array <= 0] == 0)


def test_flip_tta_changes_the_synthesis_not_the_map(lopsided, source):
    plain = synthesize_with_uncertainty(lopsided, source, stages=1, device="cpu", tile=20)
    tta = synthesize_with_uncertainty(lopsided, source, stages=1, device="cpu", tile=20, flip_tta=True)
    np.testing.assert_array_equal(tta.synthesis.array, synthesize_volume(lopsided, source, stages=1, device="cpu", tile=20, flip_tta=True).array)
    np.testing.assert_allclose(tta.uncertainty.array, plain.uncertainty.array, atol=1e-3)


def test_combine_parts_is_the_rms():
    flip, stages = np.array([3.0, 0.0]), np.array([4.0, 2.0])
    np.testing.assert_allclose(combine_parts(flip, stages), np.sqrt([12.5, 2.0]))
    np.testing.assert_array_equal(combine_parts(flip, None), flip)


def test_uncertainty_path_checks(tmp_path):
    out, unc = tmp_path / "t2.nii.gz", tmp_path / "unc.nii.gz"
    with pytest.raises(OutputError, match="both be written"):
        check_uncertainty_path(out, out)
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputError, match="both be written"):  # another spelling of one file (a synthesis review):
        check_uncertainty_path(tmp_path / "out" / ".." / "t2.nii.gz", out)  # with --overwrite the map was lost
    src = tmp_path / "src.nii.gz"
    with pytest.raises(OutputError, match="one of the inputs"):  # an input not written yet, spelled another way
        check_uncertainty_path(tmp_path / "out" / ".." / "src.nii.gz", out, inputs=(src,))
    with pytest.raises(OutputError, match="one of the inputs"):
        check_uncertainty_path(src, out, inputs=(src,))
    unc.write_bytes(b"old")
    with pytest.raises(OutputError, match="exists"):
        check_uncertainty_path(unc, out)
    assert check_uncertainty_path(unc, out, overwrite=True) == unc
    for bad, problem in ((tmp_path / "map.png", "extension '.png'"), (tmp_path / "map", "no image extension"),
                         (tmp_path / "out", "path .* is a folder")):  # each was refused only after every pass
        with pytest.raises(OutputError, match=problem):
            check_uncertainty_path(bad, out, overwrite=True)


def _medsynth(*args, expect: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "MedSynthLogic.cli", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc


def test_cli_writes_the_map_and_refuses_bad_paths_before_work(lopsided, phantom, tmp_path):
    # 1 mm voxels, as the model expects (the input checks refuse 2.5 mm); origin and direction still unusual.
    source = Volume(phantom.t1ce.array, spacing=(1.0, 1.0, 1.0), origin=ORIGIN, direction=DIRECTION)
    src, out, unc = tmp_path / "case_t1ce.nii.gz", tmp_path / "syn_t2.nii.gz", tmp_path / "unc.nii.gz"
    write_volume(source, src)
    model = tmp_path / "lopsided.safetensors"
    proc = _medsynth("synthesize", src, out, "--model", model, "--device", "cpu", "--precision", "fp32", "--uncertainty", unc, "--progress", "json", expect=0)
    assert '"uncertainty"' in proc.stdout.splitlines()[-1]
    written, synthetic = read_volume(unc), read_volume(out)
    assert written.shape == source.shape and np.allclose(written.spacing, source.spacing) and np.allclose(written.origin, ORIGIN)
    assert np.allclose(written.direction, DIRECTION)
    inside = source.array > 0
    assert np.all(written.array[~inside] == 0) and written.array[inside].max() > 0
    expected = synthesize_with_uncertainty(lopsided, source, device="cpu")
    np.testing.assert_allclose(written.array, expected.uncertainty.array, atol=1e-2)
    np.testing.assert_allclose(synthetic.array, expected.synthesis.array, atol=1e-2)
    import SimpleITK as sitk  # the map's file says what it holds (its description was empty)

    assert sitk.ReadImage(str(unc)).GetMetaData("descrip") == "MedSynth flip/stage disagreement of the synthetic T2, in its unit"
    stamp = (unc.stat().st_mtime_ns, out.stat().st_mtime_ns)
    # Refused at once (exit 7, nothing touched): the map exists, the map is the output (the source: see above).
    other = tmp_path / "other_t2.nii.gz"
    for args in ((other, "--uncertainty", unc), (other, "--uncertainty", other)):
        proc = _medsynth("synthesize", src, *args, "--model", model, "--device", "cpu", "--progress", "json", expect=7)
        assert "Traceback" not in proc.stderr and '"progress"' not in proc.stdout
    assert not other.exists() and (unc.stat().st_mtime_ns, out.stat().st_mtime_ns) == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    _medsynth("synthesize", tmp_path, tmp_path / "outdir", "--model", model, "--uncertainty", unc, expect=2)


def test_the_synthesis_is_written_before_its_map(lopsided, phantom, tmp_path, monkeypatch):
    """The map was written first: a synthesis whose own write failed left an orphan map, and a rerun without
    --overwrite was refused because that map existed. Now the product comes first; a failing map leaves it whole."""
    from MedSynthLogic import volume_io
    from MedSynthLogic.errors import OutputError
    from MedSynthLogic.inference import synthesize_file

    src, out, unc = tmp_path / "case_t1ce.nii.gz", tmp_path / "syn_t2.nii.gz", tmp_path / "unc.nii.gz"
    write_volume(Volume(phantom.t1ce.array), src)
    real_write = volume_io.write_volume

    def map_fails(vol, path, *args, **kwargs):
        if str(path) == str(unc):
            raise OutputError("the disk filled up (simulated)")
        return real_write(vol, path, *args, **kwargs)

    monkeypatch.setattr(volume_io, "write_volume", map_fails)
    with pytest.raises(OutputError, match="simulated"):
        synthesize_file(lopsided, src, out, device="cpu", precision="fp32", uncertainty_path=unc, force=True,
                        progress=[].append)
    assert out.is_file() and not unc.exists()


def test_overlay_on_the_synthetic_image_with_legend(source, tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core is needed for MRML tests")
    from MedSynthLogic import mrml

    scene = slicer.vtkMRMLScene()
    yellow = scene.CreateNodeByClass("vtkMRMLSliceNode")
    yellow.UnRegister(None)
    yellow.SetLayoutName("Yellow")
    yellow.SetSingletonTag("Yellow")
    yellow = scene.AddNode(yellow)
    synthetic = mrml.node_from_volume(scene, source.with_array(source.array * 0.5), "case synthetic T2")
    unc_array = np.where(source.array > 0, np.linspace(0, 200, source.array.size).reshape(source.shape), 0).astype(np.float32)
    path = tmp_path / "unc.nii.gz"
    write_volume(source.with_array(unc_array), path)
    node, shown = mrml.load_uncertainty_overlay(scene, path, synthetic, opacity=0.4)
    assert node.GetName() == "case synthetic T2 uncertainty"
    assert node.GetStorageNode() is None and scene.GetNumberOfNodesByClass("vtkMRMLVolumeArchetypeStorageNode") == 0
    path.unlink()  # the child's temporary file goes with its folder: the node keeps its image
    assert mrml.volume_from_node(node).array.max() == pytest.approx(unc_array.max())
    np.testing.assert_array_equal(mrml.node_ijk_to_ras(node), mrml.node_ijk_to_ras(synthetic))
    composite = mrml.slice_composite_node(scene, "Yellow", create=False)
    assert composite.GetBackgroundVolumeID() == synthetic.GetID()
    assert composite.GetForegroundVolumeID() == node.GetID() and composite.GetForegroundOpacity() == pytest.approx(0.4)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeIron" and scene.GetNodeByID("vtkMRMLColorTableNodeIron")
    low, high = shown["window"]
    assert low == 0 and high == pytest.approx(np.percentile(unc_array[unc_array > 0], 99), rel=1e-4)
    assert display.GetWindow() == pytest.approx(high) and display.GetApplyThreshold() and 0 < display.GetLowerThreshold() < 1e-3
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node)
    assert legend is shown["legend"] and legend.GetPrimaryDisplayNode() is display and legend.GetVisibility()
    assert "Uncertainty" in legend.GetTitleText() and legend.GetViewNodeIDs() == (yellow.GetID(),)
    # A second call reuses the legend instead of stacking another one.
    mrml.show_uncertainty_overlay(scene, node, synthetic, threshold=50.0)
    assert slicer.vtkSlicerColorLogic.GetNumberOfColorLegendDisplayNodes(node) == 1 and display.GetLowerThreshold() == 50.0
    # A volume loaded for another patient is not shown under this map: it leaves the views, its legend hides.
    assert mrml.hide_uncertainty_overlays(scene) == 1
    assert not composite.GetForegroundVolumeID() and not legend.GetVisibility() and scene.GetNodeByID(node.GetID())
    assert composite.GetBackgroundVolumeID() == synthetic.GetID() and mrml.hide_uncertainty_overlays(scene) == 0
    mrml.show_uncertainty_overlay(scene, node, synthetic)
    assert composite.GetForegroundVolumeID() == node.GetID() and legend.GetVisibility()
    # A map on another grid is refused and leaves no node behind.
    small = tmp_path / "small.nii.gz"
    write_volume(Volume(np.ones((5, 6, 7), np.float32), SPACING, ORIGIN, DIRECTION), small)
    before = scene.GetNumberOfNodes()
    with pytest.raises(Exception, match="shape|grid"):
        mrml.load_uncertainty_overlay(scene, small, synthetic)
    assert scene.GetNumberOfNodes() == before


def test_the_map_file_names_a_learned_map_as_an_expected_error(lopsided):
    import dataclasses

    from MedSynthLogic.uncertainty import uncertainty_metadata

    with_map = dataclasses.replace(lopsided, error_map=object())
    assert "expected |error| of the synthetic T2" in uncertainty_metadata(with_map)["ITK_FileNotes"]
    assert "disagreement" in uncertainty_metadata(with_map, stages=1)["ITK_FileNotes"]  # the map fits all stages only


def test_a_mirror_symmetric_unet_has_no_flip_part_around_a_brain_of_odd_width(tmp_path, phantom):
    """The U-Net runs on the brain box rounded up to its downsampling; around a box of odd width that frame cannot
    be centred, so mirroring the whole volume put the mirrored pass's frame one voxel off the mirror of the plain
    pass's, and a model that treats both sides alike showed a flip part. Each window is now mirrored in place."""
    from MedSynthLogic.tiled_synthesis import mask_bbox

    from test_unet import randomise, small_unet

    cfg = small_unet(stages=1, unet_channels=(4, 8), unet_upsample="trilinear")
    chain = build_generators(cfg)
    randomise(chain, scale=0.1)
    _mirror_symmetric(chain)
    sym = _model(cfg, chain, tmp_path, "sym_unet")
    array = phantom.t1ce.array.copy()
    box = mask_bbox(array > sym.config.normalisation.mask_threshold)
    if (box[2][1] - box[2][0]) % 2 == 0:
        array[:, :, box[2][1] - 1] = 0.0
    x_box = mask_bbox(array > sym.config.normalisation.mask_threshold)[2]
    assert (x_box[1] - x_box[0]) % 2 == 1
    r = synthesize_with_uncertainty(sym, Volume(array, spacing=(1.0, 1.0, 1.0)), device="cpu")
    scale = np.abs(r.synthesis.array).max()
    assert scale > 1.0 and np.abs(r.flip).max() < 1e-4 * scale


def test_the_overlay_lies_voxel_for_voxel_on_a_synthesis_under_a_reflecting_transform(source, tmp_path):
    """A source under a mirror transform (one that fixes a wrong header) has a left-handed world grid: Slicer's reader
    reordered the map file's voxels, and the synthetic node's grid stamped on them showed the map mirrored (a review,
    checked in slicer-core). The map is read as the synthesis is."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is needed for MRML tests")
    import vtk

    from MedSynthLogic import mrml

    scene = slicer.vtkMRMLScene()
    src = mrml.node_from_volume(scene, source, "case t1ce")
    mirror = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 0, -1.0)
    mirror.SetMatrixTransformToParent(matrix)
    src.SetAndObserveTransformNodeID(mirror.GetID())
    synthetic = mrml.node_from_volume(scene, source.with_array(source.array * 0.5), "case synthetic T2", reference=src)
    world = mrml.volume_from_node(synthetic)  # the grid the child writes its files on
    pattern = np.arange(world.array.size, dtype=np.float32).reshape(world.shape)
    write_volume(world.with_array(pattern), tmp_path / "unc.nii.gz")
    node, _ = mrml.load_uncertainty_overlay(scene, tmp_path / "unc.nii.gz", synthetic)
    np.testing.assert_array_equal(mrml.volume_from_node(node).array, pattern)
    np.testing.assert_array_equal(mrml.node_ijk_to_ras(node), mrml.node_ijk_to_ras(synthetic))
