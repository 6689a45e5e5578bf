"""`medsynth prepare` backend: case discovery, split, and patch files that match the schema and the volumes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from MedSynthLogic.dataset_prep import Case, find_cases, prepare_dataset, select_cases, split_cases
from MedSynthLogic.dataset_cases import case_glob
from MedSynthLogic.errors import DataError, GeometryError, InputImageError, OutputError, UsageError
from MedSynthLogic.h5data import PatchDataset, load_volumes, open_patch_file
from MedSynthLogic.patches import centre_crop, extract_patches

SHAPE = (36, 40, 34)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _pair(seed, shape=SHAPE):
    """A skull-stripped-looking source/target pair (Volumes) and the mask; the phantom module when present."""
    from MedSynthLogic.volume_io import Volume

    try:
        from MedSynthLogic.phantom import make_phantom

        ph = make_phantom(shape=shape, seed=seed)
        return ph.t1ce, ph.t2
    except ImportError:
        rng = np.random.default_rng(seed)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        brain = (z**2 + y**2 + x**2) < 0.6
        t1 = np.where(brain, 400 + 100 * rng.random(shape), 0).astype(np.float32)
        t2 = np.where(brain, 900 - 0.5 * t1 + 50 * rng.random(shape), 0).astype(np.float32)
        return Volume(t1, spacing=(1.0, 1.0, 1.2)), Volume(t2, spacing=(1.0, 1.0, 1.2))


def _brats_folder(root, n=3, shape=SHAPE):
    from MedSynthLogic.volume_io import write_volume

    for i in range(n):
        cid = f"Case_{i:02d}"
        src, tgt = _pair(i, shape)
        (root / cid).mkdir(parents=True)
        write_volume(src, root / cid / f"{cid}_t1ce.nii.gz")
        write_volume(tgt, root / cid / f"{cid}_t2.nii.gz")
    return root


# ------------------------------------------------------------------------------------------ discovery


def test_find_cases_brats_naming(tmp_path):
    for cid in ("B", "A", "C"):
        _touch(tmp_path / cid / f"{cid}_t1ce.nii.gz")
        _touch(tmp_path / cid / f"{cid}_t2.nii.gz")
        _touch(tmp_path / cid / f"{cid}_t1.nii.gz")
        _touch(tmp_path / cid / f"{cid}_flair.nii.gz")
    _touch(tmp_path / "A" / "A_seg.nii.gz")
    (tmp_path / "notes").mkdir()
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["A", "B", "C"]
    assert cases[0].source.name == "A_t1ce.nii.gz" and cases[0].target.name == "A_t2.nii.gz"
    assert cases[0].seg.name == "A_seg.nii.gz" and cases[1].seg is None and cases[0].mask is None
    flair = find_cases(tmp_path, source_suffix="t1", target_suffix="flair")
    assert flair[0].source.name == "A_t1.nii.gz" and flair[0].target.name == "A_flair.nii.gz"


def test_partial_folder_names_incomplete_cases(tmp_path):
    for cid in ("A", "B", "C"):
        _touch(tmp_path / cid / f"{cid}_t1ce.nii.gz")
    _touch(tmp_path / "A" / "A_t2.nii.gz")
    _touch(tmp_path / "C" / "C_t2.nii.gz")
    _touch(tmp_path / "D" / "D_t2.nii.gz")
    with pytest.raises(DataError) as info:
        find_cases(tmp_path)
    msg = str(info.value)
    assert "B (no target matching 'B/B_t2.nii*')" in msg and "D (no source matching 'D/D_t1ce.nii*')" in msg
    assert "skip-incomplete" in msg
    assert [c.case_id for c in find_cases(tmp_path, skip_incomplete=True)] == ["A", "C"]


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="No cases found") as info:
        find_cases(tmp_path)
    assert "--csv" in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        find_cases(tmp_path / "nope")


def test_find_cases_patterns(tmp_path):
    for cid in ("s1", "s2"):
        _touch(tmp_path / cid / "anat" / f"sub-{cid}_T1w_ce.nii.gz")
        _touch(tmp_path / cid / "anat" / f"sub-{cid}_T2w.nii.gz")
    cases = find_cases(tmp_path, source_pattern="{case}/anat/*T1*.nii.gz", target_pattern="{case}/anat/*T2*.nii.gz")
    assert [(c.case_id, c.source.name, c.target.name) for c in cases] == [
        ("s1", "sub-s1_T1w_ce.nii.gz", "sub-s1_T2w.nii.gz"),
        ("s2", "sub-s2_T1w_ce.nii.gz", "sub-s2_T2w.nii.gz"),
    ]
    _touch(tmp_path / "s2" / "anat" / "sub-s2_T1w_other.nii.gz")
    with pytest.raises(DataError, match="s2"):
        find_cases(tmp_path, source_pattern="{case}/anat/*T1*.nii.gz", target_pattern="{case}/anat/*T2*.nii.gz")
    with pytest.raises(UsageError):
        find_cases(tmp_path, source_pattern="*/anat/*T1*.nii.gz", target_pattern="{case}/anat/*T2*.nii.gz")


def test_a_wildcard_beside_the_case_id_is_refused_not_a_crash(tmp_path):
    """'*{case}' made the glob '**_T1w…', which pathlib refused with a ValueError traceback; where the id ends
    would be a guess anyway."""
    for cid in ("01", "02"):
        _touch(tmp_path / f"sub-{cid}_T1w.nii.gz")
        _touch(tmp_path / f"sub-{cid}_FLAIR.nii.gz")
    for source, target in (("*{case}_T1w.nii.gz", "*{case}_FLAIR.nii.gz"), ("sub-{case}*.nii.gz", "sub-{case}_FLAIR.nii.gz")):
        with pytest.raises(UsageError, match="a wildcard touches {case}"):
            find_cases(tmp_path, source_pattern=source, target_pattern=target)
    cases = find_cases(tmp_path, source_pattern="sub-{case}_T1w.nii.gz", target_pattern="sub-{case}_FLAIR.nii.gz")
    assert [c.case_id for c in cases] == ["01", "02"]
    assert case_glob("{case}/*T1*.nii.gz") == "*/*T1*.nii.gz"


def test_find_cases_flat_pattern_with_suffix(tmp_path):
    for cid in ("p1", "p2"):
        _touch(tmp_path / f"{cid}_t1ce.nii.gz")
        _touch(tmp_path / f"{cid}_t2.nii.gz")
    cases = find_cases(tmp_path, pattern="{case}_{suffix}.nii.gz")
    assert [c.case_id for c in cases] == ["p1", "p2"]
    assert cases[1].target == tmp_path / "p2_t2.nii.gz"


def test_find_cases_csv(tmp_path):
    data = tmp_path / "data"
    for cid in ("x", "y"):
        _touch(data / f"{cid}_a.nii.gz")
        _touch(data / f"{cid}_b.nii.gz")
    _touch(data / "x_mask.nii.gz")
    absolute = _touch(tmp_path / "elsewhere" / "y_seg.nii.gz")
    table = tmp_path / "cases.csv"
    table.write_text(f"case,source,target,mask,seg\nx,data/x_a.nii.gz,data/x_b.nii.gz,data/x_mask.nii.gz,\ny,data/y_a.nii.gz,data/y_b.nii.gz,,{absolute}\n")
    cases = find_cases(None, csv=table)
    assert cases[0] == Case("x", data / "x_a.nii.gz", data / "x_b.nii.gz", data / "x_mask.nii.gz", None)
    assert cases[1].seg == absolute and cases[1].mask is None
    table.write_text("case,source,target\nx,data/x_a.nii.gz,data/missing.nii.gz\ny,data/y_a.nii.gz,data/y_b.nii.gz\n")
    with pytest.raises(DataError, match="x .*missing"):
        find_cases(None, csv=table)
    assert [c.case_id for c in find_cases(None, csv=table, skip_incomplete=True)] == ["y"]
    refused = [
        ("case,src,target\nx,a,b\n", "source"),
        ("case,source,target\nx,data/x_a.nii.gz,data/x_b.nii.gz\nx,data/y_a.nii.gz,data/y_b.nii.gz\n", "lines 2 and 3"),
        # a data review (session 42): an identity row, and one subject under two ids (training and validation both)
        ("case,source,target\nx,data/x_a.nii.gz,data/x_a.nii.gz\n", "line 2: case x names the same file"),
        ("case,source,target\nx,data/x_a.nii.gz,data/x_b.nii.gz\nx2,data/x_a.nii.gz,data/x_b.nii.gz\n",
         "line 3: the source .*x_a.nii.gz of case x2 is also named by case x"),
    ]
    for text, why in refused:
        table.write_text(text)
        with pytest.raises(DataError, match=why):
            find_cases(None, csv=table)


def test_split_cases_deterministic_by_id():
    cases = [Case(f"c{i}", f"s{i}", f"t{i}") for i in range(10)]
    train, val = split_cases(cases, val_fraction=0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert not {c.case_id for c in train} & {c.case_id for c in val}
    again = split_cases(list(reversed(cases)), val_fraction=0.2, seed=3)
    assert [c.case_id for c in again[1]] == [c.case_id for c in val]
    assert split_cases(cases[:2], val_fraction=0.1)[1] != []  # at least one validation case
    assert split_cases(cases, val_fraction=0.0)[1] == []
    t, v = split_cases(cases, val_cases=["c7", "c1"])
    assert [c.case_id for c in v] == ["c1", "c7"] and len(t) == 8
    with pytest.raises(UsageError, match="c99"):
        split_cases(cases, val_cases=["c99"])
    with pytest.raises(UsageError):
        split_cases(cases[:1], val_cases=["c0"])
    with pytest.raises(UsageError, match="leaves no case for training"):  # prepare wrote val.h5 alone
        split_cases(cases[:1], val_fraction=0.6)


def test_prepare_and_train_configs_refuse_a_seed_numpy_cannot_take(tmp_path):
    """A negative seed failed in numpy with a traceback: prepare's after its folder existed, train's at its first
    batch after the contexts were built; prepare's 2³² drew seed 0's patches (review 54)."""
    from MedSynthLogic.config import ModelConfig, TrainConfig
    from MedSynthLogic.dataset_prep import prepare_dataset

    with pytest.raises(UsageError, match="seed"):
        TrainConfig(seed=-1)
    cases = [Case(f"c{i}", tmp_path / f"s{i}.nii.gz", tmp_path / f"t{i}.nii.gz") for i in range(2)]
    for seed in (-1, 2**32):
        with pytest.raises(UsageError, match="seed must be in"):
            prepare_dataset(cases, tmp_path / "out", ModelConfig(), seed=seed)
    assert not (tmp_path / "out").exists()


def test_select_cases_keeps_the_given_order_and_refuses_unknown_ids():
    cases = [Case(f"c{i}", f"s{i}", f"t{i}") for i in range(4)]
    assert [c.case_id for c in select_cases(cases, ["c3", "c0", "c3"])] == ["c3", "c0"]
    with pytest.raises(UsageError, match=r"not found: c9") as info:
        select_cases(cases, ["c1", "c9"], "Training case")
    assert "Training case" in str(info.value) and "c0, c1, c2, c3" in info.value.hint


# ------------------------------------------------------------------------------------------ prepare


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig

    root = tmp_path_factory.mktemp("prep")
    data = _brats_folder(root / "data")
    cfg = ModelConfig(
        generator=GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 4, 1)),
        discriminator=DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8)),
        stages=2,
    )
    events = []
    cases = find_cases(data)
    manifest = prepare_dataset(cases, root / "out", cfg, patches_per_case=20, val_fraction=0.34, seed=1, progress=events.append)
    return root, data, cfg, cases, manifest, events


def test_prepare_writes_schema_conformant_files(prepared):
    root, _, cfg, _, manifest, _ = prepared
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train.h5", "val.h5"]
    S, T = cfg.source_patch, cfg.target_patch
    for split, n_cases in (("train", 2), ("val", 1)):
        with open_patch_file(out / f"{split}.h5") as f:
            assert f.attrs["format"] == "medsynth-patches" and f.attrs["format_version"] == 1
            assert f.attrs["source_patch"] == S and f.attrs["target_patch"] == T
            assert json.loads(f.attrs["model_config"])["source_patch"] == S
            assert f["source"].shape == (n_cases * 40, 1, S, S, S) and f["source"].dtype == np.float32
            assert f["target"].shape == (n_cases * 40, 1, T, T, T)
            assert f["source"].chunks == (1, 1, S, S, S) and f["source"].compression == "lzf"
            assert f["case_index"].dtype == np.int32 and f["corner"].dtype == np.int32 and f["flipped"].dtype == np.uint8
            assert int(f["flipped"][...].sum()) == n_cases * 20
            assert len(f["volumes"]) == n_cases
            g = next(iter(f["volumes"].values()))
            pad = cfg.generator.halo
            assert g["source"].shape == tuple(s + 2 * pad for s in SHAPE) and g["mask"].dtype == np.uint8
            assert g.attrs["pad"] == pad
            assert json.loads(g.attrs["source_transform"])["mode"] == "percentile"


def test_prepare_splits_by_case_and_manifest(prepared):
    root, data, cfg, cases, manifest, events = prepared
    on_disk = json.loads((root / "out" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    train_ids = set(manifest["splits"]["train"])
    val_ids = set(manifest["splits"]["val"])
    assert len(train_ids) == 2 and len(val_ids) == 1 and not train_ids & val_ids
    assert train_ids | val_ids == {c.case_id for c in cases}
    assert manifest["counts"] == {"train": 80, "val": 40}
    assert manifest["seed"] == 1 and manifest["pad"] == cfg.generator.halo
    for split in ("train", "val"):
        ds = PatchDataset(root / "out" / f"{split}.h5")
        assert set(ds.case_ids) == set(manifest["splits"][split])
    for cid, entry in manifest["cases"].items():
        assert entry["source"] == os.path.abspath(data / cid / f"{cid}_t1ce.nii.gz")
        assert entry["shape"] == list(SHAPE) and entry["patches"] == 40
        assert entry["normalisation"]["source"]["scale"] > 0
        assert entry["patches_centred_in_mask"] >= 36  # 90 % of 40 inside by construction
        assert entry["timings"]["total_s"] > 0
    assert [e["done"] for e in events] == [0, 1, 2, 3]
    assert all(e["event"] == "progress" and e["task"] == "prepare" and e["total"] == 3 for e in events)


def test_prepared_patches_are_cut_from_the_stored_volumes(prepared):
    root, _, cfg, _, _, _ = prepared
    S, T, pad = cfg.source_patch, cfg.target_patch, cfg.generator.halo
    path = root / "out" / "train.h5"
    vols = load_volumes(path)
    ds = PatchDataset(path)
    for i in range(len(ds)):
        v = vols[ds.case_ids[ds.case_index[i]]]
        s, t = ds[i]
        es = extract_patches(v["source"], ds.corner[i : i + 1], S)[0, 0]
        et = centre_crop(extract_patches(v["target"], ds.corner[i : i + 1], S), T)[0, 0]
        if ds.flipped[i]:
            es, et = np.flip(es, axis=2), np.flip(et, axis=2)
        # stored volumes are float16, patches float32
        np.testing.assert_allclose(s[0].numpy(), es, atol=2e-3)
        np.testing.assert_allclose(t[0].numpy(), et, atol=2e-3)
    assert ds.flipped.any() and (~ds.flipped).any()
    centred = np.array([vols[ds.case_ids[ci]]["mask"][tuple(c + S // 2)] for ci, c in zip(ds.case_index, ds.corner)])
    assert centred.sum() >= 2 * 2 * round(20 * 0.9)  # 2 cases × 2 copies × 90 % forced inside
    assert all(v["pad"] == pad for v in vols.values())


def test_prepare_target_patches_match_original_grid(prepared):
    """The T³ target at corner c is the normalised target on the original grid at [c, c+T)."""
    root, data, cfg, _, manifest, _ = prepared
    from MedSynthLogic.normalisation import brain_mask, normalise_target
    from MedSynthLogic.volume_io import read_volume

    ds = PatchDataset(root / "out" / "val.h5")
    cid = ds.case_ids[0]
    src = read_volume(data / cid / f"{cid}_t1ce.nii.gz").array
    tgt, _ = normalise_target(read_volume(data / cid / f"{cid}_t2.nii.gz").array, brain_mask(src), cfg.normalisation)
    T = cfg.target_patch
    checked = 0
    for i in range(len(ds)):
        z, y, x = ds.corner[i]
        if max(z + T - SHAPE[0], y + T - SHAPE[1], x + T - SHAPE[2], 0) or min(z, y, x) < 0:
            continue
        ref = tgt[z : z + T, y : y + T, x : x + T]
        if ds.flipped[i]:
            ref = np.flip(ref, axis=2)
        np.testing.assert_array_equal(ds[i][1][0].numpy(), ref)
        checked += 1
    assert checked > 0


def test_prepare_refuses_existing_outputs_and_is_deterministic(prepared, tmp_path):
    root, _, cfg, cases, manifest, _ = prepared
    with pytest.raises(OutputError, match="overwrite"):
        prepare_dataset(cases, root / "out", cfg, patches_per_case=5)
    out2 = tmp_path / "again"
    m2 = prepare_dataset(cases, out2, cfg, patches_per_case=20, val_fraction=0.34, seed=1, compression="gzip")
    assert m2["splits"] == manifest["splits"]
    with h5py.File(root / "out" / "train.h5", "r") as a, h5py.File(out2 / "train.h5", "r") as b:
        assert b["source"].compression == "gzip"
        np.testing.assert_array_equal(a["corner"][...], b["corner"][...])
        np.testing.assert_array_equal(a["source"][...], b["source"][...])
    m3 = prepare_dataset(cases, out2, cfg, patches_per_case=3, val_fraction=0.0, flip_axis=None, overwrite=True)
    assert m3["counts"] == {"train": 9, "val": 0} and m3["splits"]["val"] == []
    assert not (out2 / "val.h5").exists()
    assert not list(out2.glob(".*tmp*"))
    # a prepare killed outright (out of memory, kill -9) leaves its temporary files: the next one says so, keeps them
    left = out2 / ".train.h5.t6w34iil.tmp.h5"
    left.write_bytes(b"\0" * 2**20)
    events = []
    prepare_dataset(cases, out2, cfg, patches_per_case=3, val_fraction=0.0, overwrite=True, progress=events.append)
    (warning,) = [e["message"] for e in events if e["event"] == "warning" and "temporary" in e["message"]]
    assert ".train.h5.t6w34iil.tmp.h5" in warning and "(1 MiB)" in warning and left.exists()


def test_prepare_mask_file_geometry_and_errors(tmp_path):
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.volume_io import Volume, write_volume

    cfg = ModelConfig(source_patch=20)
    src, tgt = _pair(7, shape=(24, 26, 22))
    write_volume(src, tmp_path / "s.nii.gz")
    moved = Volume(tgt.array, spacing=tgt.spacing, origin=(src.origin[0] + 0.5,) + tuple(src.origin[1:]), direction=tgt.direction)
    write_volume(moved, tmp_path / "t.nii.gz")
    mask = np.zeros(src.shape, np.float32)
    mask[8:16, 8:18, 8:14] = 1
    write_volume(src.with_array(mask), tmp_path / "m.nii.gz")
    case = Case("m1", tmp_path / "s.nii.gz", tmp_path / "t.nii.gz", mask=tmp_path / "m.nii.gz")
    with pytest.raises(GeometryError, match="Case m1"):
        prepare_dataset([case], tmp_path / "o1", cfg, patches_per_case=4, geometry="refuse")
    m = prepare_dataset([case], tmp_path / "o2", cfg, patches_per_case=10, inside_fraction=1.0, val_fraction=0.0)
    assert any("Resampled" in n for n in m["cases"]["m1"]["notes"])
    assert m["cases"]["m1"]["mask_voxels"] == int(mask.sum())
    assert m["cases"]["m1"]["patches_centred_in_mask"] == 20
    # a mask of 0/255 on a grid one voxel over: read as a region, as evaluate reads it (prepare and evaluate share it)
    shifted = Volume(np.roll(mask * 255.0, 1, axis=2), spacing=src.spacing,
                     origin=(src.origin[0] - src.spacing[0],) + tuple(src.origin[1:]), direction=src.direction)
    write_volume(shifted, tmp_path / "m255.nii.gz")
    on_grid = Case("m3", tmp_path / "s.nii.gz", tmp_path / "s.nii.gz", mask=tmp_path / "m255.nii.gz")
    with pytest.raises(GeometryError, match="The mask is not on the source grid"):
        prepare_dataset([on_grid], tmp_path / "o5", cfg, patches_per_case=4, geometry="refuse")
    m = prepare_dataset([on_grid], tmp_path / "o6", cfg, patches_per_case=4, val_fraction=0.0)
    assert any(n.startswith("Resampled the mask onto the source grid") for n in m["cases"]["m3"]["notes"])
    assert m["cases"]["m3"]["mask_voxels"] == int(mask.sum())
    write_volume(src.with_array(np.zeros_like(mask)), tmp_path / "empty.nii.gz")
    bad = Case("m2", tmp_path / "s.nii.gz", tmp_path / "s.nii.gz", mask=tmp_path / "empty.nii.gz")
    with pytest.raises(DataError, match="Case m2: The brain mask is empty"):
        prepare_dataset([bad], tmp_path / "o3", cfg, patches_per_case=4)
    assert not (tmp_path / "o3" / "train.h5").exists() and not list((tmp_path / "o3").glob(".*"))
    with pytest.raises(DataError):
        prepare_dataset([], tmp_path / "o4", cfg)
    # a segmentation the manifest records for evaluate is read here: an unreadable one failed only after training
    (tmp_path / "seg.nii.gz").write_bytes(b"not an image")
    unreadable = Case("m4", tmp_path / "s.nii.gz", tmp_path / "t.nii.gz", mask=tmp_path / "m.nii.gz", seg=tmp_path / "seg.nii.gz")
    with pytest.raises(InputImageError, match="Case m4: .*seg.nii.gz"):
        prepare_dataset([unreadable], tmp_path / "o7", cfg, patches_per_case=4, val_fraction=0.0)
    write_volume(shifted, tmp_path / "seg.nii.gz", overwrite=True)
    m = prepare_dataset([unreadable], tmp_path / "o8", cfg, patches_per_case=4, val_fraction=0.0)
    assert any(n.startswith("The segmentation is on another grid") for n in m["cases"]["m4"]["notes"])


def test_the_manifest_keeps_the_names_of_linked_files(prepared, tmp_path):
    """A dataset of symbolic links into a store: the manifest names the links the user gave, not the store's files."""
    root, data, cfg, cases, _, _ = prepared
    store, linked = tmp_path / "store", tmp_path / "linked"
    store.mkdir()
    links = []
    for n, path in enumerate((cases[0].source, cases[0].target)):
        (store / f"blob{n}").write_bytes(Path(path).read_bytes())
        (linked / cases[0].case_id).mkdir(parents=True, exist_ok=True)
        links.append(linked / cases[0].case_id / Path(path).name)
        links[-1].symlink_to(store / f"blob{n}")
    m = prepare_dataset([Case(cases[0].case_id, *links)], tmp_path / "out", cfg, patches_per_case=4, val_fraction=0.0)
    entry = m["cases"][cases[0].case_id]
    assert (entry["source"], entry["target"]) == tuple(str(link) for link in links)


@pytest.mark.brats
def test_prepare_two_real_brats_cases(brats_dir, tmp_path):
    from MedSynthLogic.config import ModelConfig

    cases = find_cases(brats_dir)[:2]
    cfg = ModelConfig()
    m = prepare_dataset(cases, tmp_path / "out", cfg, patches_per_case=16, val_fraction=0.5)
    assert m["counts"] == {"train": 32, "val": 32}
    for split in ("train", "val"):
        ds = PatchDataset(tmp_path / "out" / f"{split}.h5")
        s, t = ds[0]
        assert s.shape == (1, 32, 32, 32) and t.shape == (1, 16, 16, 16)
        assert float(s.max()) <= cfg.normalisation.source.clip_max + 1e-6
    for entry in m["cases"].values():
        assert entry["shape"] == [155, 240, 240] and entry["seg"] is not None
        assert entry["patches_centred_in_mask"] >= 2 * round(16 * 0.9)


def test_prepare_warns_of_target_tissue_outside_the_mask_and_of_a_ct_under_an_mr_normalisation(tmp_path):
    """An MR→CT pair: the CT's skull lies outside the MR brain mask (training never sees it, the synthesis leaves it
    at air), and a CT read with the default percentile normalisation loses its negative HU; both were silent."""
    from scipy import ndimage

    from MedSynthLogic.config import IntensityConfig, ModelConfig, NormalisationConfig
    from MedSynthLogic.dataset_prep import prepare_dataset, target_warnings
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    p = make_phantom(shape=(40, 44, 40), seed=0)
    brain = p.t1ce.array > 0
    skull = ndimage.binary_dilation(brain, iterations=4) & ~brain
    ct = np.where(brain, 35.0, -1000.0).astype(np.float32)
    ct[skull] = 1000.0
    (tmp_path / "cases" / "c1").mkdir(parents=True)
    write_volume(p.t1ce, tmp_path / "cases" / "c1" / "c1_t1.nii.gz")
    write_volume(p.t1ce.with_array(ct), tmp_path / "cases" / "c1" / "c1_ct.nii.gz")
    window = NormalisationConfig(target=IntensityConfig(mode="window", window_min=-1000.0, window_max=2000.0))
    events = []
    manifest = prepare_dataset(find_cases(tmp_path / "cases", source_suffix="t1", target_suffix="ct"), tmp_path / "data",
                               ModelConfig(source_name="T1", target_name="CT", normalisation=window),
                               patches_per_case=4, val_fraction=0.0, progress=events.append)
    warned = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warned) == 1 and warned[0].startswith("c1: ") and "outside the mask" in warned[0]
    assert "warnings" not in manifest["cases"]["c1"] and any("outside the mask" in n for n in manifest["cases"]["c1"]["notes"])
    clipped = target_warnings(np.where(brain, -5.0, 0.0).astype(np.float32), brain, ModelConfig().normalisation.target)
    assert len(clipped) == 1 and '"window"' in clipped[0]
    assert target_warnings(p.t2.array, brain, ModelConfig().normalisation.target) == []
    # a brain CT is >= 0 HU inside an MR brain mask: its air outside the mask gives it away (this one passed silently)
    in_hu = target_warnings(np.where(brain, 35.0, -1000.0).astype(np.float32), brain, ModelConfig().normalisation.target)
    assert len(in_hu) == 1 and "outside the mask are at or below -500 (air in HU)" in in_hu[0] and '"window"' in in_hu[0]


def test_prepare_warns_about_a_source_that_synthesize_would_refuse(tmp_path):
    """A pair listed the wrong way round (the T2 as the source of a T1ce→T2 model) used to be prepared without a
    word, although `medsynth synthesize` refuses that source; prepare goes on but says so, per case."""
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.dataset_prep import prepare_dataset
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    p = make_phantom(shape=(40, 44, 40), seed=0)
    for case, (source, target) in {"right": (p.t1ce, p.t2), "swapped": (p.t2, p.t1ce)}.items():
        (tmp_path / "cases" / case).mkdir(parents=True)
        write_volume(source, tmp_path / "cases" / case / f"{case}_t1ce.nii.gz")
        write_volume(target, tmp_path / "cases" / case / f"{case}_t2.nii.gz")
    events = []
    prepare_dataset(find_cases(tmp_path / "cases"), tmp_path / "data", ModelConfig(), patches_per_case=4,
                    val_fraction=0.0, progress=events.append)
    warned = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warned) == 1, warned
    assert warned[0].startswith("swapped: the source does not look like the model's input: its intensities look "
                                "T2-weighted") and "`medsynth synthesize` refuses such a source" in warned[0]


def test_prepare_warns_of_a_source_that_is_not_skull_stripped_unless_a_mask_file_says_where_the_brain_is():
    """Prepare always checked with its own threshold mask, which turns the skull-stripping check off: a whole head
    was prepared (and trained, its "brain" the whole volume) without a word, while synthesize refuses it (review 54)."""
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.dataset_prep import source_warnings
    from MedSynthLogic.normalisation import brain_mask
    from MedSynthLogic.phantom import make_phantom

    p = make_phantom(shape=(40, 44, 40), seed=0)
    head = p.t1ce.with_array(np.where(p.mask, p.t1ce.array, 300.0).astype(np.float32))  # a bright surround
    cfg = ModelConfig()
    mask = brain_mask(head.array, cfg.normalisation.mask_threshold)
    assert any("skull-stripped" in w for w in source_warnings(head, mask, cfg))
    assert not any("skull-stripped" in w for w in source_warnings(head, p.mask, cfg, mask_given=True))
    assert not any("skull-stripped" in w for w in source_warnings(p.t1ce, p.mask, cfg))


def test_prepare_itself_warns_of_a_head_without_a_mask_file_and_not_with_one(tmp_path):
    """The same through prepare_dataset: the warning comes when no <case>_mask file says where the brain is."""
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.dataset_prep import prepare_dataset
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    p = make_phantom(shape=(40, 44, 40), seed=0)
    head = p.t1ce.with_array(np.where(p.mask, p.t1ce.array, 300.0).astype(np.float32))
    for case in ("head", "masked"):
        (tmp_path / "cases" / case).mkdir(parents=True)
        write_volume(head, tmp_path / "cases" / case / f"{case}_t1ce.nii.gz")
        write_volume(p.t2, tmp_path / "cases" / case / f"{case}_t2.nii.gz")
    write_volume(p.t1ce.with_array(p.mask.astype(np.float32)), tmp_path / "cases" / "masked" / "masked_mask.nii.gz")
    events = []
    prepare_dataset(find_cases(tmp_path / "cases"), tmp_path / "data", ModelConfig(), patches_per_case=4,
                    val_fraction=0.0, progress=events.append)
    skull = [e["message"] for e in events if e["event"] == "warning" and "skull-stripped" in e["message"]]
    assert len(skull) == 1 and skull[0].startswith("head:"), skull


def test_prepare_warns_of_source_files_named_as_another_sequence(tmp_path):
    """--source-pattern '{case}/{case}_t1.nii.gz' with a FLAIR→T2 config prepared T1s as FLAIRs without a word (the
    histogram rule cannot tell them): the file names say it, and prepare now does, per case."""
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.dataset_cases import CaseFiles
    from MedSynthLogic.dataset_prep import prepare_dataset
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    p = make_phantom(shape=(40, 44, 40), seed=0)
    (tmp_path / "cases" / "c0").mkdir(parents=True)
    write_volume(p.t1ce, tmp_path / "cases" / "c0" / "c0_t1.nii.gz")
    write_volume(p.t2, tmp_path / "cases" / "c0" / "c0_t2.nii.gz")
    cases = CaseFiles("{case}/{case}_t1.nii.gz", "{case}/{case}_t2.nii.gz").find(tmp_path / "cases", "flair", "t2")
    events = []
    prepare_dataset(cases, tmp_path / "data", ModelConfig(source_name="FLAIR", target_name="T2"), patches_per_case=4,
                    val_fraction=0.0, progress=events.append)
    warned = [e["message"] for e in events if e["event"] == "warning"]
    assert warned == ["c0: the source file: its name 'c0_t1' names a T1, and the model expects a FLAIR."], warned


def test_prepare_warns_of_a_voxel_size_unlike_the_configs(tmp_path):
    """Synthesis resamples every source to the config's input.spacing_mm: 0.7 mm data trained under the default 1 mm
    would be synthesized at a voxel size it never saw, so prepare says to set it (a matching config is quiet)."""
    import dataclasses

    from MedSynthLogic.config import InputExpectations, ModelConfig
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    p = make_phantom(shape=(40, 44, 40), seed=0)
    (tmp_path / "cases" / "fine").mkdir(parents=True)
    for volume, name in ((p.t1ce, "t1ce"), (p.t2, "t2")):
        write_volume(dataclasses.replace(volume, spacing=(0.7, 0.7, 0.7)), tmp_path / "cases" / "fine" / f"fine_{name}.nii.gz")
    for cfg, expected in ((ModelConfig(), 1), (ModelConfig(input=InputExpectations(spacing_mm=(0.7, 0.7, 0.7))), 0)):
        events = []
        prepare_dataset(find_cases(tmp_path / "cases"), tmp_path / f"data{expected}", cfg, patches_per_case=4,
                        val_fraction=0.0, progress=events.append)
        warned = [e["message"] for e in events if e["event"] == "warning" and "input.spacing_mm" in e["message"]]
        assert len(warned) == expected, warned
        assert all("its voxels (0.7 × 0.7 × 0.7 mm) are not the 1 × 1 × 1 mm of the config's input.spacing_mm"
                   in message for message in warned)


def test_a_case_folder_whose_files_brats_naming_misses_is_named_not_left_out(tmp_path):
    """`upper/upper_T1CE.nii.gz` and `mha/mha_t1ce.mha` were left out of prepare without a word, while synthesize on
    the same folder read them (a data review, session 42); a folder of other files (notes, synthetic images) is no
    case."""
    for cid in ("p1", "p2"):
        _touch(tmp_path / cid / f"{cid}_t1ce.nii.gz")
        _touch(tmp_path / cid / f"{cid}_t2.nii.gz")
    _touch(tmp_path / "upper" / "upper_T1CE.nii.gz")
    _touch(tmp_path / "upper" / "upper_T2.nii.gz")
    _touch(tmp_path / "mha" / "mha_t1ce.mha")
    _touch(tmp_path / "notes" / "readme.txt")
    _touch(tmp_path / "synthetic_t2" / "p1_synthetic_t2.nii.gz")  # synthesize's output folder is no case (a review)
    with pytest.raises(DataError, match=r"2 case\(s\) .* incomplete: mha \(holds mha_t1ce.mha but no mha_t1ce.nii.gz.*"
                                        r"upper \(holds upper_T1CE.nii.gz, upper_T2.nii.gz but no upper_t1ce.nii.gz"):
        find_cases(tmp_path)
    assert [c.case_id for c in find_cases(tmp_path, skip_incomplete=True)] == ["p1", "p2"]
    assert [c.case_id for c in find_cases(tmp_path, only=["p1"])] == ["p1", "p2"]  # not selected: not judged
    assert [c.case_id for c in find_cases(tmp_path, source_suffix="T1CE", target_suffix="T2", only=["upper"])] == ["upper"]


def test_a_target_whose_field_of_view_misses_part_of_the_brain_is_said(tmp_path):
    """A T2 with its lowest slices cut off was resampled onto the source with 0 there and trained as black brain,
    without a word (a data review, session 42: 5.2 % of the mask); prepare did not print the resampling either. The
    mask is not narrowed: it also normalises the source, which synthesis reads whole (a diff review)."""
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.volume_io import Volume, write_volume

    cfg = ModelConfig(source_patch=20)
    src, tgt = _pair(5, shape=(30, 26, 22))
    mask = src.array > 0
    write_volume(src, tmp_path / "s.nii.gz")
    cut = 6  # the target's field of view starts 6 slices higher (z is the array's first axis)
    short = Volume(np.ascontiguousarray(tgt.array[cut:]), spacing=tgt.spacing,
                   origin=tuple(o + cut * tgt.spacing[2] * d for o, d in zip(tgt.origin, tgt.direction[2::3])),
                   direction=tgt.direction)
    write_volume(short, tmp_path / "t.nii.gz")
    events = []
    m = prepare_dataset([Case("c", tmp_path / "s.nii.gz", tmp_path / "t.nii.gz")], tmp_path / "out", cfg,
                        patches_per_case=4, val_fraction=0.0, progress=events.append)
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    missed = int(mask[:cut].sum())
    assert missed > 0 and any(w.startswith("c: Resampled the target onto the source grid") for w in warnings)
    assert any(f"the target's field of view misses {missed} of the brain mask's {int(mask.sum())} voxels" in w
               for w in warnings), warnings
    assert m["cases"]["c"]["mask_voxels"] == int(mask.sum())  # kept: it normalises the source as synthesis does
    # The target's percentile is taken where it has data, as evaluate takes it: the fill voxels lowered it.
    from MedSynthLogic.normalisation import normalise_target

    filled, reached = tgt.array.astype(np.float32), mask.copy()
    filled[:cut], reached[:cut] = 0, False
    recorded = m["cases"]["c"]["normalisation"]["target"]
    assert recorded == pytest.approx(normalise_target(filled, mask, cfg.normalisation, fit_mask=reached)[1].to_dict())
    assert recorded != pytest.approx(normalise_target(filled, mask, cfg.normalisation)[1].to_dict())


def test_a_dataset_whose_largest_case_would_not_fit_in_memory_is_refused_before_any_case(tmp_path, monkeypatch):
    """Each file's read was checked alone (12 B/voxel) while a case needs ~27 B/voxel of its largest file: a big
    case could be ended by the system half-way through a prepare. Now the headers are read first."""
    from MedSynthLogic import volume_io
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.dataset_prep import PREPARE_BYTES_PER_VOXEL
    from MedSynthLogic.errors import ResourceError
    from MedSynthLogic.volume_io import write_volume

    data = _brats_folder(tmp_path / "data", n=2)
    big_shape = (40, 44, 38)
    src, tgt = _pair(5, big_shape)
    (data / "Case_big").mkdir()
    write_volume(src, data / "Case_big" / "Case_big_t1ce.nii.gz")
    write_volume(tgt, data / "Case_big" / "Case_big_t2.nii.gz")
    cases = find_cases(data)
    need = int(np.prod(big_shape)) * PREPARE_BYTES_PER_VOXEL
    monkeypatch.setattr(volume_io, "available_ram", lambda: need - 1)
    with pytest.raises(ResourceError, match=r"prepare case Case_big: its largest image has 66,880 voxels, and preparing it needs about 1.7 MiB; 1.7 MiB") as info:
        prepare_dataset(cases, tmp_path / "out", ModelConfig(), patches_per_case=2)
    assert info.value.exit_code == 8 and not (tmp_path / "out").exists()
    monkeypatch.setattr(volume_io, "available_ram", lambda: need)
    manifest = prepare_dataset(cases, tmp_path / "out", ModelConfig(), patches_per_case=2, val_fraction=0.0)
    assert sorted(manifest["splits"]["train"]) == ["Case_00", "Case_01", "Case_big"]


def test_a_target_of_finer_voxels_says_its_resolution_is_lost_and_how_to_keep_it(tmp_path):
    """3T (1 mm) → 7T (0.5 mm): the target went onto the source's grid with only a resampling note (a review)."""
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.volume_io import Volume, resample_like, write_volume

    src, tgt = _pair(0)
    fine = resample_like(tgt, Volume(np.zeros(tuple(2 * n for n in tgt.shape), np.float32), tuple(s / 2 for s in tgt.spacing),
                                     tuple(o - s / 4 for o, s in zip(tgt.origin, tgt.spacing)), tgt.direction))
    (tmp_path / "data" / "c0").mkdir(parents=True)
    write_volume(src, tmp_path / "data" / "c0" / "c0_t1ce.nii.gz")
    write_volume(fine, tmp_path / "data" / "c0" / "c0_t2.nii.gz")
    events = []
    prepare_dataset(find_cases(tmp_path / "data"), tmp_path / "out", ModelConfig(), patches_per_case=2, val_fraction=0.0,
                    progress=events.append)
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("are finer than the source's" in w and "resample the sources onto the targets' grid" in w for w in warnings)
