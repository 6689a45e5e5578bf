"""volume_io: geometry round trips, every refusal with its message, atomic writes, the nibabel fallback, resampling."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from MedSynthLogic import volume as vol_core
from MedSynthLogic.errors import GeometryError, InputImageError, OutputError, UsageError
from MedSynthLogic.volume_io import Volume, align_pair, ensure_not_empty, read_volume, resample_like, same_grid, write_volume


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


OBLIQUE = tuple(_rotation(0.3, -0.2, 0.15).ravel())
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _volume(shape=(6, 7, 8), direction=OBLIQUE, seed=0) -> Volume:
    arr = np.random.default_rng(seed).random(shape).astype(np.float32) * 1000
    return Volume(arr, spacing=(0.9, 1.25, 2.5), origin=(-12.5, 30.25, 7.0), direction=direction)


def _assert_same(a: Volume, b: Volume, tol: float = 1e-5) -> None:
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, atol=tol)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".hdr"])
@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED], ids=["oblique", "lps-flipped"])
def test_geometry_round_trip(tmp_path: Path, ext: str, direction) -> None:
    vol = _volume(direction=direction)
    out = write_volume(vol, tmp_path / f"v{ext}")
    back = read_volume(out)
    assert back.array.dtype == np.float32 and back.shape == (6, 7, 8)
    _assert_same(vol, back)
    # nothing but the image (and its data file for two-file formats) is left behind
    expected = {f"v{ext}"} | ({"v.img"} if ext == ".hdr" else set()) | ({"v.raw"} if ext == ".mhd" else set())
    assert set(os.listdir(tmp_path)) == expected


def test_volume_helpers() -> None:
    vol = _volume()
    assert vol.shape == (6, 7, 8)
    other = vol.with_array(np.zeros((6, 7, 8)))
    assert other.array.dtype == np.float32 and other.origin == vol.origin and other.direction == vol.direction
    with pytest.raises(GeometryError):
        vol.with_array(np.zeros((6, 7, 9)))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.float64])
def test_integer_and_double_types_become_float32(tmp_path: Path, dtype) -> None:
    arr = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 3).astype(dtype)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "i.nrrd"))
    vol = read_volume(tmp_path / "i.nrrd")
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, arr.astype(np.float32))


def test_large_integers_are_accepted_but_absurd_values_refused(tmp_path: Path) -> None:
    arr = np.full((4, 5, 6), 2**40 + 1, dtype=np.int64)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "big.nrrd"))
    assert read_volume(tmp_path / "big.nrrd").array[0, 0, 0] == np.float32(2**40)
    arr = np.ones((4, 5, 6))
    arr[1, 2, 3] = 1e35
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "huge.nrrd"))
    with pytest.raises(InputImageError, match="beyond any image intensity"):
        read_volume(tmp_path / "huge.nrrd")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="does not exist") as info:
        read_volume(tmp_path / "nope.nii.gz")
    assert "Check the path" in str(info.value) and info.value.exit_code == 3
    with pytest.raises(InputImageError, match="is a folder"):
        read_volume(tmp_path)


def test_truncated_gzip_is_refused(tmp_path: Path) -> None:
    write_volume(_volume(shape=(20, 20, 20)), tmp_path / "v.nii.gz")
    data = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputImageError, match="truncated") as info:
        read_volume(tmp_path / "t.nii.gz")
    assert "copy the complete file again" in str(info.value)


@pytest.mark.parametrize("name,data_name", [("v.nii", "v.nii"), ("v.hdr", "v.img"), ("v.nrrd", "v.nrrd"), ("v.mha", "v.mha")])
def test_truncated_uncompressed_is_refused(tmp_path: Path, name: str, data_name: str) -> None:
    vol = _volume(shape=(20, 20, 20))
    sitk.WriteImage(vol_core.to_sitk_image(sitk, vol), str(tmp_path / name), useCompression=False)
    data = (tmp_path / data_name).read_bytes()
    (tmp_path / data_name).write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputImageError, match="truncated|damaged"):
        read_volume(tmp_path / name)


def test_bad_header_and_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "junk.nii").write_bytes(b"not an image" * 50)
    with pytest.raises(InputImageError, match="not a readable image or is damaged") as info:
        read_volume(tmp_path / "junk.nii")
    assert "re-export" in str(info.value)
    (tmp_path / "bad.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 5 6\nElementDataFile = LOCAL\n")
    with pytest.raises(InputImageError, match="damaged"):
        read_volume(tmp_path / "bad.mha")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputImageError, match="not a readable image"):
        read_volume(tmp_path / "notes.txt")


def test_2d_and_single_slice_refused(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image(5, 6, sitk.sitkFloat32), str(tmp_path / "2d.nii.gz"))
    with pytest.raises(InputImageError, match="2D image.*3D volume"):
        read_volume(tmp_path / "2d.nii.gz")
    sitk.WriteImage(sitk.Image([5, 6, 1], sitk.sitkFloat32), str(tmp_path / "slice.nii.gz"))
    with pytest.raises(InputImageError, match="2D image"):
        read_volume(tmp_path / "slice.nii.gz")


def test_4d_refused_but_single_volume_4d_accepted(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image([5, 6, 7, 3], sitk.sitkFloat32), str(tmp_path / "4d.nii.gz"))
    with pytest.raises(InputImageError, match="4D image.*Extract the single 3D volume"):
        read_volume(tmp_path / "4d.nii.gz")
    sitk.WriteImage(sitk.Image([5, 6, 7, 1], sitk.sitkFloat32), str(tmp_path / "4d1.nii.gz"))
    assert read_volume(tmp_path / "4d1.nii.gz").shape == (7, 6, 5)


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".mha"])
def test_rgb_refused(tmp_path: Path, ext: str) -> None:
    sitk.WriteImage(sitk.Image([5, 6, 7], sitk.sitkVectorUInt8, 3), str(tmp_path / f"rgb{ext}"))
    with pytest.raises(InputImageError, match="3 values per voxel.*scalar"):
        read_volume(tmp_path / f"rgb{ext}")


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".hdr", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_refused(tmp_path: Path, bad: float, ext: str, dtype) -> None:
    # ITK's NIfTI reader turns NaN/Inf into 0 silently; read_volume must still refuse them
    arr = np.ones((4, 5, 6), dtype=dtype)
    arr[2, 2, 2] = bad
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / f"n{ext}"))
    with pytest.raises(InputImageError, match="1 voxels that are NaN or infinite"):
        read_volume(tmp_path / f"n{ext}")


def test_too_large_refused_from_header(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image([40, 3, 3], sitk.sitkUInt8), str(tmp_path / "long.nrrd"))
    with pytest.raises(InputImageError, match="too large"):
        read_volume(tmp_path / "long.nrrd", max_axis=32)
    with pytest.raises(InputImageError, match="too large"):
        read_volume(tmp_path / "long.nrrd", max_voxels=100)


def test_empty_volume_reads_but_ensure_not_empty_refuses(tmp_path: Path) -> None:
    write_volume(Volume(np.zeros((4, 5, 6))), tmp_path / "z.nii.gz")
    vol = read_volume(tmp_path / "z.nii.gz")
    with pytest.raises(InputImageError, match="T1ce image is empty"):
        ensure_not_empty(vol, "T1ce image")
    ensure_not_empty(_volume(), "T1ce image")


def test_write_refuses_existing_and_input(tmp_path: Path) -> None:
    vol = _volume()
    path = write_volume(vol, tmp_path / "o.nii.gz")
    with pytest.raises(OutputError, match="exists already"):
        write_volume(vol, path)
    write_volume(vol.with_array(vol.array * 2), path, overwrite=True)
    np.testing.assert_array_equal(read_volume(path).array, vol.array * 2)
    with pytest.raises(OutputError, match="one of the inputs"):
        write_volume(vol, path, overwrite=True, inputs=(path,))
    (tmp_path / "o.img").write_bytes(b"someone's data")
    with pytest.raises(OutputError, match="o.img exists already"):
        write_volume(vol, tmp_path / "o.hdr")
    assert not (tmp_path / "o.hdr").exists()


@pytest.mark.parametrize("ext", [".nii.gz", ".hdr"])
def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str) -> None:
    vol = _volume()
    path = write_volume(vol, tmp_path / f"o{ext}")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_write(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half")
        raise RuntimeError("disk went away")

    monkeypatch.setattr(sitk, "WriteImage", half_write)
    with pytest.raises((OutputError, RuntimeError)):
        write_volume(vol.with_array(vol.array + 1), path, overwrite=True)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no temporary file, old image intact


def test_a_writer_error_naming_a_path_with_space_in_it_is_not_called_a_full_disk(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Any ITK message with "space" in it (its text holds the path: ~/workspace/...) was reported as a full disk."""
    def fails(image, filename, *args, **kwargs):
        raise RuntimeError(f"Could not create IO object for writing file {filename}")

    monkeypatch.setattr(sitk, "WriteImage", fails)
    (tmp_path / "workspace").mkdir()
    with pytest.raises(OutputError, match="Cannot write") as info:
        write_volume(_volume(), tmp_path / "workspace" / "o.mha")
    assert "No space" not in str(info.value)


def test_nibabel_fallback_matches_simpleitk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nibabel")
    import builtins

    vols = {"oblique": _volume(), "flipped": _volume(direction=FLIPPED, seed=1)}
    for name, vol in vols.items():
        write_volume(vol, tmp_path / f"{name}.nii.gz")
    with_sitk = {name: read_volume(tmp_path / f"{name}.nii.gz") for name in vols}

    real_import = builtins.__import__

    def no_sitk(name, *args, **kwargs):
        if name == "SimpleITK":
            raise ImportError("No module named 'SimpleITK'")
        return real_import(name, *args, **kwargs)

    (tmp_path / "other.mha").write_bytes(b"x")
    monkeypatch.setattr(builtins, "__import__", no_sitk)
    assert vol_core.sitk_module() is None
    for name, vol in vols.items():
        fallback = read_volume(tmp_path / f"{name}.nii.gz")
        _assert_same(with_sitk[name], fallback)
        _assert_same(vol, fallback)
        write_volume(vol, tmp_path / f"{name}_nib.nii.gz")  # the fallback writer
    with pytest.raises(InputImageError, match="SimpleITK is not installed"):
        read_volume(tmp_path / "other.mha")
    monkeypatch.undo()
    for name, vol in vols.items():
        _assert_same(vol, read_volume(tmp_path / f"{name}_nib.nii.gz"))


def test_same_grid_names_each_difference() -> None:
    a = _volume()
    assert same_grid(a, a.with_array(a.array * 0)) == []
    b = Volume(np.zeros((6, 7, 9)), spacing=(1.0, 1.25, 2.5), origin=(-12.5, 30.25, 9.0), direction=FLIPPED)
    diffs = same_grid(a, b)
    assert len(diffs) == 4
    assert diffs[0].startswith("size differs: (8, 7, 6) vs (9, 7, 6)")
    assert any(d.startswith("spacing differs: (0.9, 1.25, 2.5) vs (1, 1.25, 2.5)") for d in diffs)
    assert any(d.startswith("origin differs") and "7" in d and "9" in d for d in diffs)
    assert any(d.startswith("direction differs") for d in diffs)
    near = Volume(a.array, spacing=a.spacing, origin=(a.origin[0] + 1e-4, a.origin[1], a.origin[2]), direction=a.direction)
    assert same_grid(a, near) == []


def test_resample_like_and_align_pair() -> None:
    # a linear ramp along x is reproduced exactly by linear interpolation onto a shifted, finer grid
    z, y, x = np.meshgrid(np.arange(10), np.arange(12), np.arange(14), indexing="ij")
    moving = Volume((x * 2.0 + 1.0).astype(np.float32), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    reference = Volume(np.zeros((8, 10, 12), np.float32), spacing=(1.0, 1.0, 1.0), origin=(3.0, 4.0, 5.0))
    out = resample_like(moving, reference)
    assert out.shape == reference.shape and out.origin == reference.origin
    expected = (3.0 + np.arange(12)) / 2.0 * 2.0 + 1.0
    np.testing.assert_allclose(out.array[2, 3], expected, atol=1e-4)

    src, tgt, msgs = align_pair(reference, moving, policy="resample")
    assert src is reference and tgt.shape == reference.shape
    assert len(msgs) == 1 and "Resampled the target" in msgs[0] and "spacing differs" in msgs[0]
    with pytest.raises(GeometryError, match="not on the same voxel grid.*spacing differs"):
        align_pair(reference, moving, policy="refuse")
    same_src, same_tgt, none = align_pair(moving, moving.with_array(moving.array + 1), policy="refuse")
    assert none == [] and same_tgt.array[0, 0, 0] == 2.0
    with pytest.raises(UsageError):
        align_pair(moving, moving, policy="guess")
    far = Volume(np.ones((4, 4, 4)), origin=(1000.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="does not overlap"):
        align_pair(reference, far)


def test_scipy_resampling_fallback_matches_simpleitk() -> None:
    moving = _volume(shape=(9, 10, 11))
    reference = Volume(np.zeros((7, 8, 9)), spacing=(1.1, 1.0, 1.7), origin=(-11.0, 31.0, 8.0), direction=OBLIQUE)
    np.testing.assert_allclose(vol_core._resample_scipy(moving, reference), resample_like(moving, reference).array, atol=1e-2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(st.integers(2, 6), st.integers(2, 6), st.integers(2, 6)),
    seed=st.integers(0, 2**31),
    ext=st.sampled_from([".nii.gz", ".mha", ".nrrd"]),
    spacing=st.tuples(*[st.floats(0.1, 5.0)] * 3),
    origin=st.tuples(*[st.floats(-500.0, 500.0)] * 3),
)
def test_property_random_arrays_round_trip(tmp_path: Path, shape, seed, ext, spacing, origin) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.standard_normal(shape) * rng.uniform(1, 1e4)).astype(np.float32)
    vol = Volume(arr, spacing=spacing, origin=origin, direction=tuple(_rotation(*rng.uniform(-3, 3, 3)).ravel()))
    path = tmp_path / f"p{seed}{ext}"
    write_volume(vol, path, overwrite=True)
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    path.unlink()


def test_gzip_read_of_analyze_data_file(tmp_path: Path) -> None:
    vol = _volume()
    write_volume(vol, tmp_path / "a.hdr")
    (tmp_path / "a.img.gz").write_bytes(gzip.compress((tmp_path / "a.img").read_bytes()))
    (tmp_path / "a.img").unlink()
    np.testing.assert_array_equal(read_volume(tmp_path / "a.hdr").array, vol.array)


def test_volume_from_nibabel_refuses_colour_and_nan_as_read_volume_does() -> None:
    """An RGB nibabel image gave a TypeError traceback, and NaN voxels passed (a review)."""
    import nibabel as nib

    from MedSynthLogic.volume_io import volume_from_nibabel

    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    with pytest.raises(InputImageError, match="3 values per voxel"):
        volume_from_nibabel(nib.Nifti1Image(rgb, np.eye(4)))
    data = np.ones((4, 5, 6), np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(InputImageError, match="NaN|non-finite|infinite"):
        volume_from_nibabel(nib.Nifti1Image(data, np.eye(4)))
    data[1, 2, 3] = 2.0
    assert volume_from_nibabel(nib.Nifti1Image(data, np.eye(4))).array[3, 2, 1] == 2.0
