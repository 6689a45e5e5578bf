"""Tiled whole-volume inference: exactness against an independent whole-volume reference, masking, geometry,
progress, cancellation, flip TTA, out-of-memory retry, memory bound and the file/folder helpers."""

from __future__ import annotations

import dataclasses
import threading
import tracemalloc

import numpy as np
import pytest
import torch

from MedSynthLogic import tiled_synthesis
from MedSynthLogic.errors import Cancelled, GeometryError, InputImageError, OutputError, ResourceError, UsageError
from MedSynthLogic.inference import mask_bbox, synthesize_array, synthesize_file, synthesize_folder, synthesize_volume
from MedSynthLogic.model_file import LoadedModel, load_model, save_model
from MedSynthLogic.volume_io import Volume, read_volume, write_volume

from _models import random_chain

SHAPE = (22, 25, 19)


def _reference(chain, src: np.ndarray, stages: int) -> np.ndarray:
    """The definition: each stage runs once over the whole volume padded by its halo with edge values."""
    prev = None
    for k in range(stages):
        gen = chain.stages[k]
        channels = [src] if k == 0 else [src, prev]
        x = np.stack([np.pad(c, gen.halo, mode="edge") for c in channels])[None]
        with torch.no_grad():
            prev = gen(torch.from_numpy(x))[0, 0].numpy()
    return prev


@pytest.fixture()
def source() -> np.ndarray:
    return np.random.default_rng(0).random(SHAPE, dtype=np.float32)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("stages", [1, 2])
def test_tiled_equals_whole_volume(tiny_model_config, source, stages, residual):
    cfg = dataclasses.replace(tiny_model_config, generator=dataclasses.replace(tiny_model_config.generator, residual=residual))
    chain = random_chain(cfg)
    ref = _reference(chain, source, stages)
    one_tile = synthesize_array(chain, source, None, stages=stages, tile=64)
    assert np.abs(one_tile - ref).max() < 1e-5
    for tile in (4, 7, 12):
        tiled = synthesize_array(chain, source, None, stages=stages, tile=tile)
        assert tiled.dtype == np.float32 and tiled.shape == SHAPE
        assert np.abs(tiled - one_tile).max() < 1e-5, tile


def test_mask_zero_outside_nonzero_inside_and_exact(tiny_model_config, source):
    chain = random_chain(tiny_model_config)
    mask = np.zeros(SHAPE, bool)
    mask[3:15, 0:9, 5:19] = True
    mask[4, 20, 2] = True
    ref = _reference(chain, source, 2)
    for tile in (5, 64):
        out = synthesize_array(chain, source, mask, stages=2, tile=tile)
        assert np.all(out[~mask] == 0)
        assert np.count_nonzero(out[mask]) == mask.sum()
        assert np.abs(out - ref * mask).max() < 1e-5


def test_tiles_far_from_mask_are_skipped_and_result_stays_exact(tiny_model_config):
    chain = random_chain(tiny_model_config)
    src = np.random.default_rng(3).random((44, 30, 30), dtype=np.float32)
    mask = np.zeros(src.shape, bool)
    mask[1:4, 2:5, 1:4] = True
    mask[40:43, 25:28, 24:28] = True
    events = []
    out = synthesize_array(chain, src, mask, stages=2, tile=4, progress=events.append)
    assert np.abs(out - _reference(chain, src, 2) * mask).max() < 1e-5
    stage0_total = events[0]["total"]
    assert stage0_total < 11 * 8 * 8  # the box is the whole volume; skipping leaves far fewer tiles


def test_empty_mask_gives_zeros(tiny_model_config, source):
    chain = random_chain(tiny_model_config)
    out = synthesize_array(chain, source, np.zeros(SHAPE, bool), stages=2)
    assert out.shape == SHAPE and not out.any()


def test_mask_bbox():
    m = np.zeros((4, 5, 6), bool)
    assert mask_bbox(m) is None
    m[1, 2, 3] = m[2, 4, 0] = True
    assert mask_bbox(m) == ((1, 3), (2, 5), (0, 4))


def test_bad_arguments(tiny_model_config, source):
    chain = random_chain(tiny_model_config)
    with pytest.raises(UsageError, match="2 auto-context stage"):
        synthesize_array(chain, source, None, stages=3)
    with pytest.raises(GeometryError):
        synthesize_array(chain, source, np.ones((2, 2, 2), bool))
    with pytest.raises(UsageError):
        synthesize_array(chain, source[0], None)
    with pytest.raises(UsageError):
        synthesize_array(chain, source, None, precision="int8")


def test_progress_events_monotone(tiny_model_config, source):
    chain = random_chain(tiny_model_config)
    events = []
    synthesize_array(chain, source, None, stages=2, tile=8, progress=events.append)
    assert events and all(e["event"] == "progress" and e["task"] == "synthesize" and e["stages"] == 2 for e in events)
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    assert fractions[-1] == pytest.approx(1.0)
    assert [e["stage"] for e in events] == sorted(e["stage"] for e in events)
    last = events[-1]
    assert last["stage"] == 1 and last["done"] == last["total"] == 3 * 4 * 3


@pytest.mark.parametrize("kind", ["callable", "event"])
def test_cancel_raises_promptly(tiny_model_config, source, kind):
    chain = random_chain(tiny_model_config)
    events = []
    if kind == "callable":
        cancel = lambda: len(events) >= 3  # noqa: E731
    else:
        cancel = threading.Event()

    def progress(e):
        events.append(e)
        if kind == "event" and len(events) >= 3:
            cancel.set()

    with pytest.raises(Cancelled):
        synthesize_array(chain, source, None, stages=2, tile=4, progress=progress, cancel=cancel)
    assert events[-1]["stage"] == 0 and events[-1]["fraction"] < 0.5


def test_a_cancel_during_the_last_batch_stops_before_any_result(tiny_model_config, source):
    chain = random_chain(tiny_model_config)
    events = []
    asked = lambda: bool(events) and events[-1]["stage"] == 1 and events[-1]["done"] == events[-1]["total"]  # noqa: E731
    with pytest.raises(Cancelled):
        synthesize_array(chain, source, None, stages=2, tile=64, progress=events.append, cancel=asked)


def test_flip_tta_symmetric(tiny_model_config):
    chain = random_chain(tiny_model_config)
    a = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
    sym = 0.5 * (a + a[:, :, ::-1])
    mask = np.zeros(SHAPE, bool)
    mask[2:20, 3:22, 3:16] = True
    out = synthesize_array(chain, sym, mask, stages=2, tile=6, flip_tta=True)
    assert np.abs(out - out[:, :, ::-1]).max() < 1e-5
    plain = synthesize_array(chain, sym, mask, stages=2, tile=6)
    assert np.abs(plain - plain[:, :, ::-1]).max() > 1e-4
    # TTA is the mean of the volume's and the mirrored volume's synthesis, per stage (checked on one stage).
    ref1 = 0.5 * (_reference(chain, a, 1) + _reference(chain, a[:, :, ::-1].copy(), 1)[:, :, ::-1])
    assert np.abs(synthesize_array(chain, a, None, stages=1, tile=5, flip_tta=True) - ref1).max() < 1e-5


def test_bf16_close_to_fp32(tiny_model_config, source):
    chain = random_chain(tiny_model_config)
    fp32 = synthesize_array(chain, source, None, stages=2)
    bf16 = synthesize_array(chain, source, None, stages=2, precision="bf16")
    assert np.abs(bf16 - fp32).max() < 0.05 * np.abs(fp32).max()


def test_chain_in_training_mode_is_used_as_in_eval_and_left_untouched(tiny_model_config, source):
    chain = random_chain(tiny_model_config)
    ref = _reference(chain, source, 2)
    chain.train()
    before = {k: v.clone() for k, v in chain.state_dict().items()}
    out = synthesize_array(chain, source, None, stages=2, tile=9)
    assert chain.training and np.abs(out - ref).max() < 1e-5
    assert all(torch.equal(before[k], v) for k, v in chain.state_dict().items())


def test_out_of_memory_halves_tile_then_gives_up(tiny_model_config, source, monkeypatch):
    chain = random_chain(tiny_model_config)
    ref = _reference(chain, source, 2)
    original = tiled_synthesis._StageRunner.__call__
    tiles_seen = []

    def picky(self, batch, flip):
        tiles_seen.append(batch.shape[2] - 2 * self.halo)
        if batch.shape[2] - 2 * self.halo > 6:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, batch, flip)

    monkeypatch.setattr(tiled_synthesis._StageRunner, "__call__", picky)
    monkeypatch.setattr(tiled_synthesis, "MIN_TILE", 4)
    events = []
    out = synthesize_array(chain, source, None, stages=2, tile=24, progress=events.append)
    assert np.abs(out - ref).max() < 1e-5
    assert max(tiles_seen) > 6 and min(tiles_seen) <= 6
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions)

    def always(self, batch, flip):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tiled_synthesis._StageRunner, "__call__", always)
    with pytest.raises(ResourceError, match="out of memory"):
        synthesize_array(chain, source, None, stages=2, tile=64)


def test_memory_bounded_by_tile_not_volume(tiny_model_config, monkeypatch):
    """Host arrays: the result, one earlier stage and one batch of tiles; no padded or per-stage volume copies."""
    monkeypatch.setattr(tiled_synthesis, "BATCH_VOXELS", 1)
    chain = random_chain(tiny_model_config)
    src = np.random.default_rng(2).random((48, 48, 48), dtype=np.float32)
    tile, halo = 16, tiny_model_config.generator.halo
    batch_bytes = 2 * (tile + 2 * halo) ** 3 * 4
    tracemalloc.start()
    try:
        synthesize_array(chain, src, None, stages=2, tile=tile)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * src.nbytes + 3 * batch_bytes, (peak / src.nbytes, batch_bytes / src.nbytes)


def _volume(arr: np.ndarray) -> Volume:
    return Volume(arr, spacing=(0.9, 1.1, 2.5), origin=(-10.0, 3.5, 7.25), direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))


@pytest.fixture()
def model_file(tmp_path, tiny_model_config):
    path = tmp_path / "model.safetensors"
    save_model(path, random_chain(tiny_model_config), tiny_model_config)
    return path


def test_synthesize_volume_geometry_mask_and_units(model_file, phantom):
    import dataclasses

    from MedSynthLogic.orientation import axis_order

    src = _volume(phantom.t1ce.array)
    model = load_model(model_file)  # trained, say, on this odd voxel size: synthesized as it is, not resampled
    model = dataclasses.replace(model, config=dataclasses.replace(model.config, input=dataclasses.replace(
        model.config.input, spacing_mm=axis_order(src.direction).spacing(src.spacing))))
    out = synthesize_volume(model, src, device="cpu", tile=20)
    assert out.shape == src.shape and out.array.dtype == np.float32
    assert (out.spacing, out.origin, out.direction) == (src.spacing, src.origin, src.direction)
    inside = src.array > model.config.normalisation.mask_threshold
    assert np.all(out.array[~inside] == 0) and np.all(out.array[inside] >= 0)
    from MedSynthLogic.normalisation import denormalise_output, normalise_source

    norm, _ = normalise_source(src.array, inside, model.config.normalisation)
    order = axis_order(src.direction)
    assert not order.is_identity  # this grid is rotated: the network sees it in the training data's axis order
    canonical = synthesize_array(model.chain, np.ascontiguousarray(order.forward(norm)),
                                 np.ascontiguousarray(order.forward(inside)), tile=64)
    expected = denormalise_output(order.inverse(canonical), model.config.normalisation)
    assert np.count_nonzero(expected[inside]) > 0.5 * inside.sum()
    assert np.allclose(out.array, expected, rtol=1e-5, atol=1e-3)
    given = synthesize_volume(model, src, mask=phantom.mask, stages=1, device="cpu")
    assert np.all(given.array[~phantom.mask] == 0)
    with pytest.raises(GeometryError):
        synthesize_volume(model, src, mask=np.ones((3, 3, 3), bool), device="cpu")
    with pytest.raises(InputImageError, match="source is empty: every voxel is 0"):
        synthesize_volume(model, src.with_array(np.zeros(src.shape, np.float32)), device="cpu")
    with pytest.raises(InputImageError, match="mask is empty"):
        synthesize_volume(model, src, mask=np.zeros(src.shape, bool), device="cpu")


def test_synthesize_file_and_folder(model_file, phantom, tmp_path):
    src = _volume(phantom.t1ce.array)
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    a, b = in_dir / "a.nii.gz", in_dir / "b.nii.gz"
    write_volume(src, a)
    write_volume(src.with_array(phantom.t1ce.array[:, :, ::-1].copy()), b)
    out = tmp_path / "a_t2.nii.gz"
    with pytest.raises(InputImageError, match="--force"):  # 2.5 mm slices fail the spacing check
        synthesize_file(model_file, a, out, device="cpu")
    assert not out.exists()
    events = []
    assert synthesize_file(model_file, a, out, device="cpu", progress=events.append, force=True) == out
    written = read_volume(out)
    assert written.shape == src.shape and np.allclose(written.spacing, src.spacing) and np.allclose(written.origin, src.origin)
    assert np.allclose(written.direction, src.direction, atol=1e-6)
    assert events[-1]["fraction"] == pytest.approx(1.0)
    warning = [e for e in events if e["event"] == "warning"]
    assert len(warning) == 2 and warning[0]["input_checks"] == ["spacing", "anisotropy"]
    assert "synthesized resampled to those" in warning[1]["message"], "a forced voxel size is resampled too"
    with pytest.raises(OutputError):
        synthesize_file(model_file, a, out, device="cpu")
    with pytest.raises(OutputError):
        synthesize_file(model_file, a, a, overwrite=True, device="cpu")
    model = load_model(model_file, stages=1)
    assert isinstance(model, LoadedModel)
    folder_events = []
    with pytest.raises(InputImageError, match="No files matching <case>/<case>_t1ce"):
        synthesize_folder(model, in_dir, tmp_path / "out", device="cpu", force=True)
    with pytest.raises(InputImageError, match="a.nii.gz does not look like"):
        synthesize_folder(model, in_dir, tmp_path / "out", pattern="*.nii.gz", device="cpu")
    assert not (tmp_path / "out").exists(), "a refused batch left its output folder behind"
    outs = synthesize_folder(model, in_dir, tmp_path / "out", pattern="*.nii.gz", device="cpu", force=True,
                             progress=folder_events.append)
    assert [p.name for p in outs] == ["a_synthetic_t2.nii.gz", "b_synthetic_t2.nii.gz"] and all(p.is_file() for p in outs)
    assert {e["file"] for e in folder_events} == {1, 2} and all(e["files"] == 2 for e in folder_events)
    with pytest.raises(OutputError):
        synthesize_folder(model, in_dir, in_dir, overwrite=True, device="cpu")
    with pytest.raises(InputImageError):
        synthesize_folder(model, in_dir, tmp_path / "o2", pattern="*.mha", device="cpu")


def test_a_folder_synthesis_uses_each_cases_mask_beside_its_source(model_file, phantom, tmp_path):
    """A folder synthesis ignored the <case>_mask files that prepare and evaluate read (a review: an MR→CT model on
    head masks gave CTs up to 2307 HU apart from the evaluated ones), and --mask with a folder was dropped silently."""
    from MedSynthLogic.cli import main

    src = phantom.t1ce
    half = phantom.mask.copy()
    half[:, :, : half.shape[2] // 2] = False
    root = tmp_path / "cases"
    for case in ("c0", "c1"):
        (root / case).mkdir(parents=True)
        write_volume(src, root / case / f"{case}_t1ce.nii.gz")
    write_volume(src.with_array(half.astype(np.float32)), root / "c0" / "c0_mask.nii.gz")
    outs = synthesize_folder(model_file, root, tmp_path / "out", device="cpu")
    quiet = [].append  # the phantom's notes as events, not as Python warnings in the test run's summary
    with_mask = synthesize_file(model_file, root / "c0" / "c0_t1ce.nii.gz", tmp_path / "m.nii.gz",
                                mask_path=root / "c0" / "c0_mask.nii.gz", device="cpu", progress=quiet)
    without = synthesize_file(model_file, root / "c1" / "c1_t1ce.nii.gz", tmp_path / "n.nii.gz", device="cpu",
                              progress=quiet)
    np.testing.assert_array_equal(read_volume(outs[0]).array, read_volume(with_mask).array)
    np.testing.assert_array_equal(read_volume(outs[1]).array, read_volume(without).array)
    assert np.all(read_volume(outs[0]).array[~half] == 0) and np.any(read_volume(outs[1]).array[~half] != 0)
    assert main(["synthesize", str(root), str(tmp_path / "o2"), "--model", str(model_file), "--mask",
                 str(root / "c0" / "c0_mask.nii.gz"), "--progress", "none"]) == 2
    assert not (tmp_path / "o2").exists()
    # the same mask stored in the other x order (prepare and evaluate read it in place): it stopped the batch part-way
    from MedSynthLogic.volume_io import Volume

    d = np.array(src.direction).reshape(3, 3)
    origin = np.array(src.origin) + d[:, 0] * src.spacing[0] * (src.shape[2] - 1)
    d[:, 0] *= -1
    (root / "c2").mkdir()
    write_volume(src, root / "c2" / "c2_t1ce.nii.gz")
    write_volume(Volume(np.ascontiguousarray(half[:, :, ::-1]).astype(np.float32), src.spacing, tuple(origin),
                        tuple(d.ravel())), root / "c2" / "c2_mask.nii.gz")
    events = []
    outs = synthesize_folder(model_file, root, tmp_path / "o3", device="cpu", progress=events.append)
    np.testing.assert_array_equal(read_volume(outs[2]).array, read_volume(with_mask).array)
    assert any(e["event"] == "warning" and "the mask is on another grid" in e["message"] for e in events)


def test_a_model_trained_inside_mask_files_warns_a_synthesis_without_one(tiny_model_config, phantom, tmp_path):
    """Its mask is then the threshold mask it never saw (a review: an MR→CT model on head masks); prepare's manifest
    says which training cases had a mask file, and the training record counts them."""
    import dataclasses

    from MedSynthLogic.model_file import save_model
    from _models import random_chain

    cfg = dataclasses.replace(tiny_model_config, stages=1)
    masked = save_model(tmp_path / "masked.safetensors", random_chain(cfg), cfg,
                        training={"data": {"train_cases": 3, "mask_files": 3}})
    plain = save_model(tmp_path / "plain.safetensors", random_chain(cfg), cfg, training={"data": {"train_cases": 3}})
    write_volume(phantom.t1ce, tmp_path / "t1ce.nii.gz")
    write_volume(phantom.t1ce.with_array(phantom.mask.astype(np.float32)), tmp_path / "mask.nii.gz")
    for model, mask, warned in ((masked, None, True), (masked, tmp_path / "mask.nii.gz", False), (plain, None, False)):
        events = []
        synthesize_file(model, tmp_path / "t1ce.nii.gz", tmp_path / "out.nii.gz", mask_path=mask, overwrite=True,
                        device="cpu", progress=events.append)
        said = [e for e in events if e["event"] == "warning" and e.get("input_checks") == ["mask"]]
        assert bool(said) == warned and (not said or "trained inside mask files (3 of its 3" in said[0]["message"])


def test_synthesis_options_name_keywords_every_layer_takes():
    """One options object is handed from the folder and file layers down: each of its fields is a keyword of every layer."""
    import inspect

    from MedSynthLogic.inference import SynthesisOptions

    fields = set(SynthesisOptions().keywords())
    assert fields == {"stages", "device", "flip_tta", "tile", "progress", "cancel", "precision"}
    for layer in (synthesize_array, synthesize_volume, synthesize_file, synthesize_folder):
        assert fields <= set(inspect.signature(layer).parameters), layer.__name__


def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16(monkeypatch):
    """``auto`` synthesis: bf16 where the CPU computes it natively, float32 on other CPUs; an explicit choice wins."""
    from MedSynthLogic import devices

    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.synthesis_dtype(cpu) == torch.bfloat16
    assert devices.synthesis_dtype(cpu, "fp32") is None
    assert devices.arithmetic_name("cpu") == "bfloat16"
    assert devices.autocast_dtype(cpu) is None, "training's auto stays float32 on the CPU"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.synthesis_dtype(cpu) is None
    assert devices.synthesis_dtype(cpu, "bf16") == torch.bfloat16
    assert devices.arithmetic_name("cpu") == "float32"
    with pytest.raises(UsageError, match="fp16 is a GPU precision"):  # emulated on the CPU: minutes, not seconds
        devices.synthesis_dtype(cpu, "fp16")


def test_what_a_python_user_passes_by_mistake_gets_a_clear_error(model_file, phantom):
    """A bare array, NaN voxels, a model path, a loaded model where a config is meant: each used to end in an
    AttributeError or a numpy error from deep inside, or (NaN) in holes in the synthesis."""
    from MedSynthLogic.input_checks import check_source
    from MedSynthLogic.uncertainty import synthesize_with_uncertainty

    model = load_model(model_file)
    src = _volume(phantom.t1ce.array)
    for call in (synthesize_volume, synthesize_with_uncertainty):
        with pytest.raises(UsageError, match="Expected a Volume, got ndarray.*volume_from_nibabel"):
            call(model, phantom.t1ce.array, device="cpu")
    with pytest.raises(UsageError, match="Expected a Volume"):
        check_source(phantom.t1ce.array, model.config)
    holed = phantom.t1ce.array.copy()
    holed[20, 20, 20:23] = [np.nan, np.inf, -np.inf]
    with pytest.raises(InputImageError, match="3 voxels that are NaN or infinite"):
        synthesize_volume(model, src.with_array(holed), device="cpu")
    with pytest.raises(InputImageError, match="NaN or infinite"):
        check_source(src.with_array(holed), model.config)
    by_path = synthesize_volume(str(model_file), src, device="cpu", tile=20)
    np.testing.assert_array_equal(by_path.array, synthesize_volume(model, src, device="cpu", tile=20).array)
    assert check_source(src, model) == check_source(src, model.config)
    with pytest.raises(UsageError, match="Expected a model"):
        synthesize_volume(42, src, device="cpu")
    with pytest.raises(InputImageError, match="singular"):
        Volume(phantom.t1ce.array, direction=(1, 0, 0, 1, 0, 0, 0, 0, 1))


def test_a_nibabel_image_becomes_the_volume_read_volume_gives(phantom, tmp_path):
    nib = pytest.importorskip("nibabel")
    from MedSynthLogic.volume_io import volume_from_nibabel

    path = write_volume(_volume(phantom.t1ce.array), tmp_path / "t1ce.nii.gz")
    via_file, via_nibabel = read_volume(path), volume_from_nibabel(nib.load(str(path)))
    np.testing.assert_array_equal(via_nibabel.array, via_file.array)
    np.testing.assert_allclose(via_nibabel.spacing, via_file.spacing, atol=1e-5)
    np.testing.assert_allclose(via_nibabel.origin, via_file.origin, atol=1e-4)
    np.testing.assert_allclose(via_nibabel.direction, via_file.direction, atol=1e-5)
    with pytest.raises(InputImageError, match="must be 3D"):
        volume_from_nibabel(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)))


def test_a_source_of_another_voxel_size_is_synthesized_at_the_training_one(model_file, phantom):
    """The networks count voxels: a 0.5 mm source is resampled to the model's 1 mm, synthesized, and the result
    resampled back onto its own grid (a BraTS T1ce upsampled to 0.5 mm was 2.8 dB worse synthesized as it was);
    a 0.94 mm source (a 256 matrix over 240 mm) is synthesized as it is."""
    from MedSynthLogic.volume import Volume, resample_like
    from MedSynthLogic.voxel_size import needs_resampling

    model = load_model(model_file)
    src = phantom.t1ce
    assert src.spacing == (1.0, 1.0, 1.0)
    fine = resample_like(src, Volume(np.zeros(tuple(2 * n for n in src.shape), np.float32), (0.5, 0.5, 0.5),
                                     tuple(o - 0.25 for o in src.origin), src.direction))
    events = []
    out = synthesize_volume(model, fine, device="cpu", progress=events.append)
    assert out.shape == fine.shape and (out.spacing, out.origin) == (fine.spacing, fine.origin)
    (warning,) = [e["message"] for e in events if e["event"] == "warning"]
    assert "0.5 × 0.5 × 0.5 mm" in warning and "resampled" in warning
    direct = synthesize_volume(model, src, device="cpu")
    back = resample_like(out, src).array
    inside = direct.array > 0
    assert np.corrcoef(back[inside], direct.array[inside])[0, 1] > 0.95, "the 1 mm synthesis, up to interpolation"
    assert np.all(out.array[fine.array <= model.config.normalisation.mask_threshold] == 0)
    assert not needs_resampling((0.9375, 0.9375, 1.0), (1.0, 1.0, 1.0)) and needs_resampling((0.8, 1.0, 1.0), (1.0,) * 3)


def test_resampling_back_keeps_a_brain_at_the_images_edge_and_a_given_masks_rim(model_file):
    """Review findings: a brain reaching the far edge of a 0.5 mm image came back 0 on its last slices (the 1 mm grid
    ended half a voxel short), a given mask's rim read half its value (fine voxels interpolated towards the coarse
    background), and a one-slice mask vanished on the 1 mm grid."""
    from MedSynthLogic.volume import Volume
    from MedSynthLogic.volume_synthesis import resampled_back, resampled_to_training

    model = load_model(model_file)
    full = Volume(np.full((71, 70, 70), 100.0, np.float32), (0.5, 0.5, 0.5), (3.0, -2.0, 1.0),
                  (0, 1, 0, -1, 0, 0, 0, 0, 1))
    grid, grid_mask = resampled_to_training(model, full, None, None)
    assert grid_mask is None and grid.spacing == (1.0, 1.0, 1.0) and np.all(grid.array == 100.0)
    back = resampled_back(model, full, None, grid.with_array(np.full(grid.shape, 7.0, np.float32)), None)
    assert np.all(back.array == 7.0), "every brain voxel, the last slices too"
    zz, yy, xx = np.mgrid[:71, :70, :70]
    ball = (zz - 35) ** 2 + (yy - 35) ** 2 + (xx - 35) ** 2 < 25 ** 2
    head = full.with_array(np.full(full.shape, 40.0, np.float32))
    grid, grid_mask = resampled_to_training(model, head, ball, None)
    result = grid.with_array(np.where(grid_mask, 1000.0, 0.0).astype(np.float32))
    back = resampled_back(model, head, ball, result, grid_mask)
    assert np.allclose(back.array[ball], 1000.0) and np.all(back.array[~ball] == 0)
    slab = np.zeros(full.shape, bool)
    slab[35, 10:40, 10:40] = True
    assert resampled_to_training(model, head, slab, None)[1].any(), "a one-slice mask does not vanish"


def test_the_size_refusal_names_the_size_the_networks_would_see(tiny_model_config):
    from MedSynthLogic.volume import Volume
    from MedSynthLogic.source_requirements import check_receptive_field

    with pytest.raises(InputImageError, match=r"\(100, 100, 30\) voxels \(x, y, z\) once resampled to the model's "
                                              r"voxel size, \(50, 50, 15\)"):
        check_receptive_field(tiny_model_config, Volume(np.ones((30, 100, 100), np.float32), (0.5, 0.5, 0.5)))


def test_synthesis_refuses_a_thin_volume_naming_the_files_own_size(model_file):
    """The refusal ran on the copy resampled to the model's voxel size, so it named that copy's size as the
    source's (and did the resampling first)."""
    from MedSynthLogic.volume import Volume

    thin = Volume(np.full((5, 64, 64), 100.0, np.float32), (1.0, 1.0, 3.0))
    with pytest.raises(InputImageError, match=r"\(64, 64, 5\) voxels \(x, y, z\) once resampled to the model's "
                                              r"voxel size, \(64, 64, 15\)"):
        synthesize_volume(load_model(model_file), thin, device="cpu")


def test_a_folder_with_an_empty_source_is_refused_before_the_first_synthesis(model_file, phantom, tmp_path):
    """The all-zero source passes the input checks and was refused only in its own synthesis, after the files
    before it were written: a folder synthesis stopped part-way, against its promise."""
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    write_volume(phantom.t1ce, in_dir / "a.nii.gz")
    write_volume(phantom.t1ce.with_array(np.zeros_like(phantom.t1ce.array)), in_dir / "b.nii.gz")
    for force in (False, True):
        with pytest.raises(InputImageError, match="b.nii.gz: The source is empty"):
            synthesize_folder(model_file, in_dir, tmp_path / "out", pattern="*.nii.gz", device="cpu", force=force)
        assert not (tmp_path / "out").exists()


def test_an_oblique_thick_slice_source_is_synthesized_as_the_same_voxels_stored_aligned(model_file, phantom):
    """The resampling to the training voxel size went through the oblique direction, whose rounding left values of
    1e-7 in the background; the threshold mask read them as brain, and the same voxels gave another synthesis (max
    41 of a ~740 range with the default model; a synthesis review, session 42). It is now a scaling along the
    source's own axes, whatever its direction."""
    from MedSynthLogic.volume import Volume
    from MedSynthLogic.volume_synthesis import resampled_to_training

    model = load_model(model_file)
    thick = np.ascontiguousarray(phantom.t1ce.array[1::3])  # a 1 × 1 × 3 mm scan

    def rotation(axis: int, degrees: float) -> np.ndarray:
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        return r

    aligned = Volume(thick, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    oblique = Volume(thick, (1.0, 1.0, 3.0), (3.0, -7.0, 11.0), tuple((rotation(2, 40) @ rotation(0, 20)).reshape(9)))
    grids = [resampled_to_training(model, volume, None, None)[0] for volume in (aligned, oblique)]
    np.testing.assert_array_equal(grids[0].array, grids[1].array)
    a, o = (synthesize_volume(model, volume, device="cpu").array for volume in (aligned, oblique))
    np.testing.assert_allclose(a, o, atol=1e-3 * float(np.abs(a).max()))
