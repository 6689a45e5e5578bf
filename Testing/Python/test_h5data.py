"""HDF5 patch files: writer/reader round trip, schema validation, lazy per-worker reads, auto-context."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from MedSynthLogic.errors import DataError
from MedSynthLogic.h5data import PatchDataset, PatchFileWriter, load_volumes, open_patch_file, patch_file_info
from MedSynthLogic.patches import centre_crop, extract_patches, flip_patches, pad_volume, sample_corners

S, T, PAD = 10, 4, 3


def _make_file(path, n_cases=2, per_case=6, flip_axis=2, seed=0):
    """A small patch file built like dataset_prep does; returns (path, padded volumes per case)."""
    rng = np.random.default_rng(seed)
    ids = [f"case{i}" for i in range(n_cases)]
    vols = {}
    w = PatchFileWriter(path, n_cases * per_case * 2, S, T, {"source_patch": S}, ids, PAD, flip_axis=flip_axis, seed=seed)
    for cid in ids:
        # Values exactly representable in float16, so stored volumes equal the float32 ones.
        src = pad_volume((rng.integers(0, 256, size=(14, 15, 16)) / 128).astype(np.float32), PAD)
        tgt = pad_volume((rng.integers(0, 256, size=(14, 15, 16)) / 256).astype(np.float32), PAD)
        mask = np.zeros(src.shape, bool)
        mask[5:-5, 5:-5, 5:-5] = True
        w.add_volume(cid, src, tgt, mask, {"mode": "percentile", "scale": 2.0}, {"mode": "percentile", "scale": 3.0}, attrs={"spacing": [1, 1, 1]})
        c = sample_corners(mask, per_case, S, rng)
        cf = sample_corners(mask, per_case, S, rng)
        sp = np.concatenate([extract_patches(src, c, S), flip_patches(extract_patches(src, cf, S), flip_axis)])
        tp = np.concatenate([centre_crop(extract_patches(tgt, c, S), T), flip_patches(centre_crop(extract_patches(tgt, cf, S), T), flip_axis)])
        w.add_patches(cid, sp, tp, np.concatenate([c, cf]), np.r_[np.zeros(per_case), np.ones(per_case)])
        vols[cid] = (src, tgt, mask)
    w.close()
    return path, vols


@pytest.fixture()
def patch_file(tmp_path):
    return _make_file(tmp_path / "train.h5")


def _expected(vols, ds, i, flip_axis=2):
    cid = ds.case_ids[ds.case_index[i]]
    src, tgt, _ = vols[cid]
    s = extract_patches(src, ds.corner[i : i + 1], S)
    t = centre_crop(extract_patches(tgt, ds.corner[i : i + 1], S), T)
    if ds.flipped[i]:
        s, t = flip_patches(s, flip_axis), flip_patches(t, flip_axis)
    return s[0], t[0]


@pytest.mark.parametrize("in_memory", [True, False])
def test_round_trip_samples_match_volumes(patch_file, in_memory):
    path, vols = patch_file
    ds = PatchDataset(path, in_memory=in_memory)
    assert ds.in_memory is in_memory
    assert len(ds) == 24 and ds.channels == 1
    assert ds.flipped.sum() == 12
    for i in range(len(ds)):
        s, t = ds[i]
        assert s.dtype == torch.float32 and s.shape == (1, S, S, S) and t.shape == (1, T, T, T)
        es, et = _expected(vols, ds, i)
        np.testing.assert_array_equal(s.numpy(), es)
        np.testing.assert_array_equal(t.numpy(), et)


def test_file_order_is_shuffled_and_batches_agree(patch_file):
    path, _ = patch_file
    ds = PatchDataset(path, in_memory=False)
    assert not np.all(np.diff(ds.case_index) >= 0)  # cases interleaved
    mem = PatchDataset(path, in_memory=True)
    idx = [5, 1, 5, 20, 3]
    a, b = ds.read_batch(idx), mem.read_batch(idx)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    blk = ds.read_block(4, 12)
    assert blk[0].shape == (8, 1, S, S, S)
    assert torch.equal(blk[0], mem.read_batch(range(4, 12))[0])
    items = ds.__getitems__(idx)
    assert len(items) == 5 and torch.equal(items[3][0], ds[20][0])


def test_dataloader_with_workers_and_pickle(patch_file):
    path, _ = patch_file
    ds = PatchDataset(path, in_memory=False)
    ds[0]  # open a handle in this process; it must not travel to workers
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    n = 0
    for s, t in loader:
        assert s.shape[1:] == (1, S, S, S) and t.shape[1:] == (1, T, T, T)
        n += len(s)
    assert n == len(ds)
    ds.close()


def test_context_patches_match_cutting_the_context_volume(patch_file):
    path, vols = patch_file
    rng = np.random.default_rng(9)
    context = {cid: rng.normal(size=v[0].shape).astype(np.float32) for cid, v in vols.items()}
    for in_memory in (True, False):
        ds = PatchDataset(path, context=context, in_memory=in_memory)
        assert ds.channels == 2
        for i in range(len(ds)):
            s, _ = ds[i]
            assert s.shape == (2, S, S, S)
            z, y, x = ds.corner[i]
            direct = context[ds.case_ids[ds.case_index[i]]][z : z + S, y : y + S, x : x + S]
            if ds.flipped[i]:
                direct = np.flip(direct, axis=2)
            np.testing.assert_array_equal(s[1].numpy(), direct)
            np.testing.assert_array_equal(s[0].numpy(), _expected(vols, ds, i)[0][0])
        batch = ds.read_batch(range(len(ds)))[0]
        assert torch.equal(batch[7], ds[7][0])


def test_context_validation(patch_file):
    path, vols = patch_file
    with pytest.raises(DataError, match="case1"):
        PatchDataset(path, context={"case0": vols["case0"][0]})
    with pytest.raises(DataError, match="shape"):
        PatchDataset(path, context={c: v[0][1:] for c, v in vols.items()})


def test_load_volumes_and_info(patch_file):
    path, vols = patch_file
    loaded = load_volumes(path)
    assert sorted(loaded) == ["case0", "case1"]
    for cid, (src, tgt, mask) in vols.items():
        e = loaded[cid]
        assert e["source"].dtype == np.float32
        np.testing.assert_array_equal(e["source"], src)
        np.testing.assert_array_equal(e["target"], tgt)
        np.testing.assert_array_equal(e["mask"], mask)
        assert e["pad"] == PAD and e["source_transform"]["scale"] == 2.0 and e["spacing"] == [1, 1, 1]
    info = patch_file_info(path)
    assert info["n_patches"] == 24 and info["source_patch"] == S and info["case_ids"] == ["case0", "case1"]
    with h5py.File(path, "r") as f:
        assert f["source"].chunks == (1, 1, S, S, S) and f["source"].compression in ("lzf", "gzip")
        assert f["volumes/case0/source"].dtype == np.float16


def _mutate(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda f: f.__delitem__("target"), "target"),
        (lambda f: f.__delitem__("corner"), "corner"),
        (lambda f: (f.__delitem__("flipped"), f.create_dataset("flipped", data=np.zeros(3, np.uint8))), "different numbers"),
        (lambda f: (f.__delitem__("target"), f.create_dataset("target", data=np.zeros((24, 1, 5, 5, 5), np.float32))), "target_patch"),
        (lambda f: f.attrs.__setitem__("source_patch", 12), "source_patch=12"),
        (lambda f: f.attrs.__setitem__("format", "something-else"), "format"),
        (lambda f: f.attrs.__delitem__("model_config"), "model_config"),
        (lambda f: f.attrs.__setitem__("format_version", 99), "format_version"),
        (lambda f: f.__delitem__("volumes/case1"), "case1"),
        (lambda f: f.__delitem__("volumes/case0/mask"), "mask"),
    ],
)
def test_schema_violations_raise_data_error(patch_file, mutation, message):
    path, _ = patch_file
    _mutate(path, mutation)
    with pytest.raises(DataError, match=message) as info:
        open_patch_file(path)
    assert "medsynth prepare" in str(info.value)
    with pytest.raises(DataError):
        PatchDataset(path)


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_patch_file(tmp_path / "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="not a readable HDF5"):
        open_patch_file(bad)


def test_writer_refuses_unfilled_slots(tmp_path):
    w = PatchFileWriter(tmp_path / "x.h5", 4, S, T, {}, ["a"], PAD)
    with pytest.raises(ValueError, match="2 of 4"):
        w.add_patches("a", np.zeros((2, 1, S, S, S)), np.zeros((2, 1, T, T, T)), np.zeros((2, 3)), np.zeros(2))
        w.close()
