"""Bad input through the real command line: one table, each row a `python -m MedSynthLogic.cli` process.

Every row makes its input in a folder of its own, runs the CLI and checks: the documented exit code, a message
that names the problem, no Python traceback, and no file created, changed or left half-written (temporary
``.*.tmp*`` files included) anywhere in that folder. The processes run a few at a time, so the whole table costs
about what the interpreter start-ups cost. The rows are also the table of Testing/Reliability.md.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

from _reliability import record

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180


@dataclasses.dataclass
class Shared:
    """Files every row may read but none may change: a tiny model, a small phantom pair, a prepared data folder."""

    root: Path
    model: Path
    t1ce: Path
    t2: Path
    data: Path
    config: Path


@dataclasses.dataclass(frozen=True)
class Row:
    """One bad input: ``make`` builds it in an empty folder and returns the CLI arguments that use it."""

    id: str
    what: str
    make: Callable[[Path, Shared], List[str]]
    code: int
    message: str
    output: Optional[str] = None  # the one file a successful row may create, relative to its folder
    absent: Optional[str] = None  # a folder the refused command must not leave behind, relative to its folder


# ------------------------------------------------------------------------------------------ input makers


def _tiny_config():
    """The conftest ``tiny_model_config`` (a function fixture, so not usable from this module-scoped setup)."""
    from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig

    gen = GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 4, 1))
    disc = DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8))
    return ModelConfig(generator=gen, discriminator=disc, stages=2)


def _nifti(path: Path, array: np.ndarray, dtype=None, slope: Optional[float] = None) -> Path:
    """Write ``array`` (x, y, z[, t]) as NIfTI with nibabel, which, unlike our writer, stores anything it is given."""
    import nibabel as nib

    img = nib.Nifti1Image(array, np.eye(4), dtype=dtype or array.dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))
    return path


def _synth(src: Path, out: Path, s: Shared, *extra: str) -> List[str]:
    return ["synthesize", str(src), str(out), "--model", str(s.model), *extra]


def _phantom_array(s: Shared) -> np.ndarray:
    from MedSynthLogic.volume_io import read_volume

    return read_volume(s.t1ce).array.transpose(2, 1, 0)  # x, y, z for nibabel


def _source(d: Path, s: Shared, name: str = "t1ce.nii.gz") -> Path:
    dst = d / name
    shutil.copyfile(s.t1ce, dst)
    return dst


def missing_file(d: Path, s: Shared) -> List[str]:
    return _synth(d / "no_such_t1ce.nii.gz", d / "out.nii.gz", s)


def empty_input_folder(d: Path, s: Shared) -> List[str]:
    """A folder source runs every matching file in it; one with none is refused before anything is made."""
    (d / "scans").mkdir()
    return _synth(d / "scans", d / "results", s)


def truncated_gzip(d: Path, s: Shared) -> List[str]:
    raw = s.t1ce.read_bytes()
    (d / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    return _synth(d / "cut.nii.gz", d / "out.nii.gz", s)


def truncated_voxels(d: Path, s: Shared) -> List[str]:
    """A complete gzip stream whose NIfTI holds fewer voxels than its header promises (ITK would pad with 0)."""
    raw = gzip.decompress(s.t1ce.read_bytes())
    (d / "short.nii.gz").write_bytes(gzip.compress(raw[: len(raw) - 4000]))
    return _synth(d / "short.nii.gz", d / "out.nii.gz", s)


def wrong_header(d: Path, s: Shared) -> List[str]:
    raw = bytearray(gzip.decompress(s.t1ce.read_bytes()))
    raw[0:4] = struct.pack("<i", 1234)  # sizeof_hdr must be 348
    raw[344:348] = b"xyz\0"  # and the magic "n+1\0"
    (d / "bad_header.nii").write_bytes(bytes(raw))
    return _synth(d / "bad_header.nii", d / "out.nii.gz", s)


def not_an_image(d: Path, s: Shared) -> List[str]:
    (d / "notes.nii.gz").write_bytes(gzip.compress(b"patient notes, not an image\n" * 50))
    return _synth(d / "notes.nii.gz", d / "out.nii.gz", s)


def image_2d(d: Path, s: Shared) -> List[str]:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.ones((24, 24), np.float32)), str(d / "slice.nii.gz"))
    return _synth(d / "slice.nii.gz", d / "out.nii.gz", s)


def image_4d(d: Path, s: Shared) -> List[str]:
    arr = _phantom_array(s)
    _nifti(d / "series.nii.gz", np.stack([arr, arr, arr], axis=-1))
    return _synth(d / "series.nii.gz", d / "out.nii.gz", s)


def image_rgb(d: Path, s: Shared) -> List[str]:
    import SimpleITK as sitk

    rgb = np.random.default_rng(0).integers(0, 255, size=(24, 24, 24, 3), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(d / "colour.nrrd"))
    return _synth(d / "colour.nrrd", d / "out.nii.gz", s)


def int_scaling_overflow(d: Path, s: Shared) -> List[str]:
    """int16 voxels whose scl_slope pushes them past float32's range (they would become inf)."""
    arr = np.clip(_phantom_array(s), 0, 30000).astype(np.int16)
    _nifti(d / "scaled.nii.gz", arr, slope=1e36)
    return _synth(d / "scaled.nii.gz", d / "out.nii.gz", s)


def float64_overflow(d: Path, s: Shared) -> List[str]:
    arr = _phantom_array(s).astype(np.float64) * 1e300
    _nifti(d / "huge_values.nii.gz", arr)
    return _synth(d / "huge_values.nii.gz", d / "out.nii.gz", s)


def int64_large(d: Path, s: Shared) -> List[str]:
    """int64 voxels up to ~2^52: beyond float32's exact integers, but a valid image; read as float32 and run."""
    arr = (_phantom_array(s).astype(np.int64) << 40)
    _nifti(d / "int64.nii.gz", arr, dtype=np.int64)
    return _synth(d / "int64.nii.gz", d / "out.nii.gz", s)


def all_zero(d: Path, s: Shared) -> List[str]:
    _nifti(d / "blank.nii.gz", np.zeros((24, 24, 24), np.float32))
    return _synth(d / "blank.nii.gz", d / "out.nii.gz", s)


def nan_voxels(d: Path, s: Shared) -> List[str]:
    arr = _phantom_array(s)
    arr[10, 10, 10:14] = np.nan
    _nifti(d / "nan.nii.gz", arr)
    return _synth(d / "nan.nii.gz", d / "out.nii.gz", s)


def inf_voxels(d: Path, s: Shared) -> List[str]:
    arr = _phantom_array(s)
    arr[3, 4, 5] = np.inf
    _nifti(d / "inf.nii", arr)
    return _synth(d / "inf.nii", d / "out.nii.gz", s)


def below_receptive_field(d: Path, s: Shared) -> List[str]:
    _nifti(d / "tiny.nii.gz", np.random.default_rng(0).random((5, 5, 5)).astype(np.float32) + 1)
    return _synth(d / "tiny.nii.gz", d / "out.nii.gz", s)


def huge_nifti_header(d: Path, s: Shared) -> List[str]:
    """A NIfTI-1 header claiming 30000³ float32 voxels (108 TB) with a 100-byte body: refused before allocating."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.float32)
    (d / "huge.nii").write_bytes(header.binaryblock + b"\0" * 104)
    return _synth(d / "huge.nii", d / "out.nii.gz", s)


def huge_mha_header(d: Path, s: Shared) -> List[str]:
    """A MetaImage claiming 100000³ voxels with a 10-byte body."""
    text = "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n"
    (d / "huge.mha").write_bytes(text.encode() + b"\0" * 10)
    return _synth(d / "huge.mha", d / "out.nii.gz", s)


def _case_folder(d: Path, s: Shared, t2_spacing=None, t2_origin=None, with_t2: bool = True) -> Path:
    from MedSynthLogic.volume_io import read_volume, write_volume

    case = d / "cases" / "c0"
    case.mkdir(parents=True)
    shutil.copyfile(s.t1ce, case / "c0_t1ce.nii.gz")
    if with_t2:
        t2 = read_volume(s.t2)
        t2 = dataclasses.replace(t2, spacing=t2_spacing or t2.spacing, origin=t2_origin or t2.origin)
        write_volume(t2, case / "c0_t2.nii.gz")
    return d / "cases"


def pair_other_grid(d: Path, s: Shared) -> List[str]:
    cases = _case_folder(d, s, t2_spacing=(1.2, 1.2, 1.2))
    return ["prepare", str(cases), str(d / "prepared"), "--config", str(s.config), "--geometry", "refuse"]


def pair_no_overlap(d: Path, s: Shared) -> List[str]:
    cases = _case_folder(d, s, t2_origin=(500.0, 0.0, 0.0))
    return ["prepare", str(cases), str(d / "prepared"), "--config", str(s.config)]


def empty_data_folder(d: Path, s: Shared) -> List[str]:
    (d / "cases").mkdir()
    return ["prepare", str(d / "cases"), str(d / "prepared"), "--config", str(s.config)]


def partial_data_folder(d: Path, s: Shared) -> List[str]:
    cases = _case_folder(d, s, with_t2=False)
    return ["prepare", str(cases), str(d / "prepared"), "--config", str(s.config)]


def train_without_patch_files(d: Path, s: Shared) -> List[str]:
    (d / "data").mkdir()
    return ["train", "--data", str(d / "data"), "--out", str(d / "model.safetensors"), "--model-config", str(s.config)]


def _train_on_edited_h5(d: Path, s: Shared, edit: Callable) -> List[str]:
    import h5py

    shutil.copytree(s.data, d / "data")
    with h5py.File(d / "data" / "train.h5", "r+") as f:
        edit(f)
    return ["train", "--data", str(d / "data"), "--out", str(d / "model.safetensors"), "--model-config", str(s.config),
            "--device", "cpu"]


def h5_missing_dataset(d: Path, s: Shared) -> List[str]:
    return _train_on_edited_h5(d, s, lambda f: f.__delitem__("target"))


def h5_mismatched_dataset(d: Path, s: Shared) -> List[str]:
    def shorten(f) -> None:
        corner = f["corner"][:-3]
        del f["corner"]
        f.create_dataset("corner", data=corner)

    return _train_on_edited_h5(d, s, shorten)


def h5_not_hdf5(d: Path, s: Shared) -> List[str]:
    shutil.copytree(s.data, d / "data")
    raw = (d / "data" / "train.h5").read_bytes()
    (d / "data" / "train.h5").write_bytes(raw[: len(raw) // 3])
    return ["train", "--data", str(d / "data"), "--out", str(d / "model.safetensors"), "--model-config", str(s.config)]


def _model_copy(d: Path, s: Shared) -> Path:
    dst = d / "model.safetensors"
    shutil.copyfile(s.model, dst)
    return dst


def _edit_model_header(path: Path, edit: Callable[[dict], None], reseal: bool = True) -> None:
    """Rewrite the MedSynth JSON header inside the safetensors header, keeping the tensor bytes.

    ``reseal`` recomputes the header checksum, as in a file genuinely written for another architecture or stage
    count; without it the edit is what a hand edit of the file looks like.
    """
    from MedSynthLogic.model_file import header_sha256

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    outer = json.loads(raw[8 : 8 + n])
    header = json.loads(outer["__metadata__"]["medsynth"])
    edit(header)
    if reseal:
        header["header_sha256"] = header_sha256(header)
    outer["__metadata__"]["medsynth"] = json.dumps(header)
    new = json.dumps(outer).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def model_truncated(d: Path, s: Shared) -> List[str]:
    model = _model_copy(d, s)
    raw = model.read_bytes()
    model.write_bytes(raw[: len(raw) - 1000])
    return ["synthesize", str(_source(d, s)), str(d / "out.nii.gz"), "--model", str(model)]


def model_other_architecture(d: Path, s: Shared) -> List[str]:
    model = _model_copy(d, s)

    def wider(h: dict) -> None:
        h["model_config"]["generator"]["filters"] = [8, 8, 8, 16, 16, 16, 8, 8, 1]

    _edit_model_header(model, wider)
    return ["synthesize", str(_source(d, s)), str(d / "out.nii.gz"), "--model", str(model)]


def model_other_stage_count(d: Path, s: Shared) -> List[str]:
    model = _model_copy(d, s)

    def three(h: dict) -> None:
        h["stages"] = 3
        h["model_config"]["stages"] = 3

    _edit_model_header(model, three)
    return ["synthesize", str(_source(d, s)), str(d / "out.nii.gz"), "--model", str(model)]


def model_fewer_stages_than_asked(d: Path, s: Shared) -> List[str]:
    return _synth(_source(d, s), d / "out.nii.gz", s, "--stages", "3")


def model_tampered_header(d: Path, s: Shared) -> List[str]:
    model = _model_copy(d, s)

    def retune(h: dict) -> None:
        h["model_config"]["normalisation"]["mask_threshold"] = 5.0  # config no longer what was trained

    _edit_model_header(model, retune, reseal=False)
    return ["synthesize", str(_source(d, s)), str(d / "out.nii.gz"), "--model", str(model)]


def model_tampered_weights(d: Path, s: Shared) -> List[str]:
    model = _model_copy(d, s)
    raw = bytearray(model.read_bytes())
    raw[-100] ^= 0x55
    model.write_bytes(bytes(raw))
    return ["synthesize", str(_source(d, s)), str(d / "out.nii.gz"), "--model", str(model)]


class _Evil:
    """A pickle that, if ever unpickled, would create the marker file next to it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker!r}",))


def model_malicious_pickle(d: Path, s: Shared) -> List[str]:
    import pickle

    (d / "model.safetensors").write_bytes(pickle.dumps(_Evil(str(d / "PWNED"))))
    return ["synthesize", str(_source(d, s)), str(d / "out.nii.gz"), "--model", str(d / "model.safetensors")]


def model_torch_checkpoint(d: Path, s: Shared) -> List[str]:
    import torch

    torch.save({"stage0.w": torch.zeros(3)}, d / "model.pt")
    return ["synthesize", str(_source(d, s)), str(d / "out.nii.gz"), "--model", str(d / "model.pt")]


def output_exists(d: Path, s: Shared) -> List[str]:
    (d / "out.nii.gz").write_bytes(b"an earlier result the user wants to keep")
    return _synth(_source(d, s), d / "out.nii.gz", s)


def output_equals_input(d: Path, s: Shared) -> List[str]:
    src = _source(d, s)
    return _synth(src, src, s, "--overwrite")


def output_folder_equals_input_folder(d: Path, s: Shared) -> List[str]:
    _source(d, s, "a_t1ce.nii.gz")
    return _synth(d, d, s, "--overwrite")


def output_folder_missing(d: Path, s: Shared) -> List[str]:
    return _synth(_source(d, s), d / "no" / "such" / "out.nii.gz", s)


def output_unwritable(d: Path, s: Shared) -> List[str]:
    folder = d / "read-only"
    folder.mkdir()
    _make_read_only(folder)
    return _synth(_source(d, s), folder / "out.nii.gz", s)


def output_folder_unwritable(d: Path, s: Shared) -> List[str]:
    folder = d / "read-only"
    folder.mkdir()
    _make_read_only(folder)
    (d / "in").mkdir()
    _source(d / "in", s, "a_t1ce.nii.gz")
    return _synth(d / "in", folder / "results", s)


def bad_option(d: Path, s: Shared) -> List[str]:
    return _synth(_source(d, s), d / "out.nii.gz", s, "--colour", "blue")


def bad_tile(d: Path, s: Shared) -> List[str]:
    return _synth(_source(d, s), d / "out.nii.gz", s, "--tile", "0")


def fit_lookup_output_exists(d: Path, s: Shared) -> List[str]:
    cases = _case_folder(d, s)
    (d / "lookup.json").write_text('{"an earlier lookup": 1}', encoding="utf-8")
    return ["fit-lookup", str(cases), str(d / "lookup.json")]


def fit_lookup_output_is_input(d: Path, s: Shared) -> List[str]:
    cases = _case_folder(d, s)
    return ["fit-lookup", str(cases), str(cases / "c0" / "c0_t1ce.nii.gz"), "--overwrite"]


def fit_lookup_bins_0(d: Path, s: Shared) -> List[str]:
    return ["fit-lookup", str(_case_folder(d, s)), str(d / "lookup.json"), "--bins", "0"]


def lookup_not_json(d: Path, s: Shared) -> List[str]:
    (d / "lookup.json").write_text("not JSON", encoding="utf-8")
    return ["evaluate", str(_case_folder(d, s)), "--lookup", str(d / "lookup.json"), "--out", str(d / "report")]


def lookup_missing(d: Path, s: Shared) -> List[str]:
    return ["evaluate", str(_case_folder(d, s)), "--lookup", str(d / "no_lookup.json"), "--out", str(d / "report")]


def evaluate_report_exists(d: Path, s: Shared) -> List[str]:
    (d / "report").mkdir()
    (d / "report" / "metrics.json").write_text('{"an earlier evaluation": 1}', encoding="utf-8")
    return ["evaluate", str(_case_folder(d, s)), "--model", str(s.model), "--out", str(d / "report")]


def train_run_folder_is_a_file(d: Path, s: Shared) -> List[str]:
    """A bare FileExistsError from mkdir: a traceback, exit 1."""
    (d / "run").write_text("a file, not a folder", encoding="utf-8")
    return ["train", "--data", str(s.data), "--out", str(d / "model.safetensors"), "--model-config", str(s.config),
            "--run-dir", str(d / "run")]


def evaluate_into_a_file(d: Path, s: Shared) -> List[str]:
    """A bare NotADirectoryError from mkdir: a traceback, exit 1."""
    (d / "notes.txt").write_text("a file", encoding="utf-8")
    return ["evaluate", str(_case_folder(d, s)), "--model", str(s.model), "--out", str(d / "notes.txt" / "report")]


def evaluate_a_model_and_a_lookup(d: Path, s: Shared) -> List[str]:
    """The lookup was scored, --model ignored, and the report named the lookup as the model."""
    (d / "lookup.json").write_text("{}", encoding="utf-8")
    return ["evaluate", str(_case_folder(d, s)), "--model", str(s.model), "--lookup", str(d / "lookup.json"),
            "--out", str(d / "report")]


def stop_file_there_already(d: Path, s: Shared) -> List[str]:
    """The file that stopped the last run would stop this one at once, every time."""
    (d / "STOP").write_text("", encoding="utf-8")
    return _synth(_source(d, s), d / "out.nii.gz", s, "--stop-file", str(d / "STOP"))


def output_name_too_long(d: Path, s: Shared) -> List[str]:
    return _synth(_source(d, s), d / ("a" * 300 + ".nii.gz"), s)


def negative_values(d: Path, s: Shared) -> List[str]:
    """A z-scored T1ce: its brain is partly below 0, which the brain mask (source > 0) would drop."""
    from MedSynthLogic.volume_io import write_volume

    vol = _phantom_volume(s, "t1ce")
    brain = vol.array > 0
    arr = vol.array.copy()
    arr[brain] = (arr[brain] - arr[brain].mean()) / arr[brain].std()
    write_volume(vol.with_array(arr), d / "zscored.nii.gz")
    return _synth(d / "zscored.nii.gz", d / "out.nii.gz", s)


def suffix_names_another_pair(d: Path, s: Shared) -> List[str]:
    """T1 files prepared with the T1ce→T2 config: the data and the model would carry different pairs."""
    cases = _case_folder(d, s)
    (cases / "c0" / "c0_t1ce.nii.gz").rename(cases / "c0" / "c0_t1.nii.gz")
    return ["prepare", str(cases), str(d / "prepared"), "--config", str(s.config), "--source-suffix", "t1"]


def val_fraction_too_large(d: Path, s: Shared) -> List[str]:
    """Refused before the output folder is made: no empty folder is left behind."""
    return ["prepare", str(_case_folder(d, s)), str(d / "prepared"), "--config", str(s.config), "--val-fraction", "1.5"]


def train_config_with_a_quoted_boolean(d: Path, s: Shared) -> List[str]:
    """JSON's "false" is a true string: the run trained adversarially without a word."""
    (d / "train.json").write_text(json.dumps({"adversarial": "false", "iterations": 2}), encoding="utf-8")
    return ["train", "--data", str(s.data), "--out", str(d / "model.safetensors"), "--model-config", str(s.config),
            "--train-config", str(d / "train.json")]


def train_config_with_a_quoted_number(d: Path, s: Shared) -> List[str]:
    """"iterations": "2" ended in a traceback (exit 1)."""
    (d / "train.json").write_text(json.dumps({"iterations": "2"}), encoding="utf-8")
    return ["train", "--data", str(s.data), "--out", str(d / "model.safetensors"), "--model-config", str(s.config),
            "--train-config", str(d / "train.json")]


def model_config_with_a_fractional_stage_count(d: Path, s: Shared) -> List[str]:
    """"stages": 2.5 was taken, and prepare wrote it into the data's header."""
    config = json.loads(s.config.read_text(encoding="utf-8"))
    (d / "model.json").write_text(json.dumps({**config, "stages": 2.5}), encoding="utf-8")
    return ["prepare", str(_case_folder(d, s)), str(d / "prepared"), "--config", str(d / "model.json")]


def train_onto_its_own_data(d: Path, s: Shared) -> List[str]:
    """--out data/train.h5 --overwrite replaced the training data with a model file."""
    shutil.copytree(s.data, d / "data")
    return ["train", "--data", str(d / "data"), "--out", str(d / "data" / "train.h5"), "--model-config", str(s.config),
            "--overwrite"]


def good_unicode_paths(d: Path, s: Shared) -> List[str]:
    folder = d / "dossier données ü 日本"
    folder.mkdir()
    src = _source(folder, s, "T1ce image ø.nii.gz")
    return _synth(src, folder / "synthèse T2 ü.nii.gz", s)


def _phantom_volume(s: Shared, which: str):
    from MedSynthLogic.volume_io import read_volume

    return read_volume(s.t2 if which == "t2" else s.t1ce)


def bright_rim(d: Path, s: Shared) -> List[str]:
    """A T1ce with scalp fat left around its brain by a skull-strip (a full-size phantom: in the small one a 3-voxel
    shell is too large a share of the brain for any rim to stand out)."""
    from scipy import ndimage

    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    t1ce = make_phantom(seed=0).t1ce
    brain = t1ce.array > 0
    rim = ndimage.binary_dilation(brain, iterations=3) & ~brain
    arr = t1ce.array.copy()
    arr[rim] = 1.3 * np.percentile(arr[brain], 99)
    write_volume(t1ce.with_array(arr), d / "rimmed_t1ce.nii.gz")
    return _synth(d / "rimmed_t1ce.nii.gz", d / "out.nii.gz", s)


def t2_as_source(d: Path, s: Shared) -> List[str]:
    """A T2 given as the T1ce: its histogram is T2-weighted (issue 13: it used to give a contrast-inverted 'T2')."""
    shutil.copyfile(s.t2, d / "case_t2.nii.gz")
    return _synth(d / "case_t2.nii.gz", d / "out.nii.gz", s)


def label_map_as_source(d: Path, s: Shared) -> List[str]:
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    p = make_phantom(shape=(24, 28, 24), seed=0)
    write_volume(p.t1ce.with_array(p.labels.astype(np.float32)), d / "case_seg.nii.gz")
    return _synth(d / "case_seg.nii.gz", d / "out.nii.gz", s)


def not_skull_stripped(d: Path, s: Shared) -> List[str]:
    """Scanner noise in the background, as in a head that was never skull-stripped."""
    from MedSynthLogic.volume_io import write_volume

    vol = _phantom_volume(s, "t1ce")
    noise = np.random.default_rng(0).uniform(1, 30, vol.shape).astype(np.float32)
    write_volume(vol.with_array(vol.array + noise), d / "head.nii.gz")
    return _synth(d / "head.nii.gz", d / "out.nii.gz", s)


def thick_slices(d: Path, s: Shared) -> List[str]:
    from MedSynthLogic.volume_io import write_volume

    write_volume(dataclasses.replace(_phantom_volume(s, "t1ce"), spacing=(1.0, 1.0, 5.0)), d / "thick.nii.gz")
    return _synth(d / "thick.nii.gz", d / "out.nii.gz", s)


def t2_forced(d: Path, s: Shared) -> List[str]:
    shutil.copyfile(s.t2, d / "case_t2.nii.gz")
    return _synth(d / "case_t2.nii.gz", d / "out.nii.gz", s, "--force")


def case_folder_without_t1ce(d: Path, s: Shared) -> List[str]:
    """BraTS naming, but only the T2: nothing is synthesized from the other sequences."""
    (d / "cases" / "c0").mkdir(parents=True)
    shutil.copyfile(s.t2, d / "cases" / "c0" / "c0_t2.nii.gz")
    return _synth(d / "cases", d / "results", s)


def case_folder_with_a_t2(d: Path, s: Shared) -> List[str]:
    """Checked before any compute: c0 is fine, but c1's 'T1ce' is a T2, so the batch stops before it starts."""
    for case, src in (("c0", s.t1ce), ("c1", s.t2)):
        (d / "cases" / case).mkdir(parents=True)
        shutil.copyfile(src, d / "cases" / case / f"{case}_t1ce.nii.gz")
    return _synth(d / "cases", d / "results", s)


def folder_to_file_output(d: Path, s: Shared) -> List[str]:
    (d / "cases" / "c0").mkdir(parents=True)
    shutil.copyfile(s.t1ce, d / "cases" / "c0" / "c0_t1ce.nii.gz")
    return _synth(d / "cases", d / "out.nii.gz", s)


def output_without_extension(d: Path, s: Shared) -> List[str]:
    return _synth(_source(d, s), d / "synthetic_t2", s)


def output_unknown_extension(d: Path, s: Shared) -> List[str]:
    return _synth(_source(d, s), d / "synthetic_t2.png", s)


def output_upper_case_extension(d: Path, s: Shared) -> List[str]:
    return _synth(_source(d, s), d / "SYNTHETIC_T2.NII.GZ", s)


def output_is_a_folder(d: Path, s: Shared) -> List[str]:
    (d / "results").mkdir()
    return _synth(_source(d, s), d / "results", s, "--overwrite")


_READ_ONLY_MOUNTS: List[Path] = []


def _make_read_only(folder: Path) -> None:
    """A folder nobody can write to: a read-only tmpfs for root (who ignores permissions), else mode 0555."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs: {done.stderr.decode(errors='replace').strip()}")
    _READ_ONLY_MOUNTS.append(folder)


ROWS = [
    Row("missing-file", "missing input file", missing_file, 3, "does not exist"),
    Row("empty-input-folder", "input folder without images", empty_input_folder, 3, "No files matching"),
    Row("truncated-gzip", "truncated .nii.gz (download cut short)", truncated_gzip, 3, "truncated"),
    Row("truncated-voxels", "complete gzip, fewer voxels than the header says", truncated_voxels, 3, "truncated"),
    Row("wrong-header", "NIfTI with a damaged header", wrong_header, 3, "not a readable image"),
    Row("not-an-image", "text file named .nii.gz", not_an_image, 3, "not a readable image"),
    Row("2d", "2D image", image_2d, 3, "2D image"),
    Row("4d", "4D image (3 volumes)", image_4d, 3, "4D image"),
    Row("rgb", "RGB (vector) image", image_rgb, 3, "3 values per voxel"),
    Row("int16-slope-overflow", "int16 with scl_slope 1e36 (overflows float32)", int_scaling_overflow, 3, "NaN or infinite"),
    Row("float64-overflow", "float64 voxels of 1e300", float64_overflow, 3, "beyond any image intensity"),
    Row("int64-large", "int64 voxels up to 2^52 (valid: read as float32)", int64_large, 0, "", output="out.nii.gz"),
    Row("all-zero", "all-zero volume", all_zero, 3, "The source is empty: every voxel is 0"),
    Row("nan", "NaN voxels", nan_voxels, 3, "4 voxels that are NaN or infinite"),
    Row("inf", "Inf voxel (uncompressed .nii)", inf_voxels, 3, "1 voxels that are NaN or infinite"),
    Row("below-receptive-field", "5×5×5 volume (receptive field 17³)", below_receptive_field, 3, "receptive field"),
    Row("huge-nifti", "NIfTI header claiming 30000³ voxels, 100-byte body", huge_nifti_header, 3, "too large"),
    Row("huge-mha", "MetaImage header claiming 100000³ voxels", huge_mha_header, 3, "too large"),
    Row("pair-other-grid", "T2 on another grid, --geometry refuse", pair_other_grid, 4, "not on the same voxel grid"),
    Row("pair-no-overlap", "T2 500 mm away (resampling finds nothing)", pair_no_overlap, 4, "does not overlap"),
    Row("empty-data-folder", "empty data folder", empty_data_folder, 5, "No cases found"),
    Row("partial-data-folder", "case without its T2", partial_data_folder, 5, "incomplete"),
    Row("no-patch-files", "train on a folder without train.h5", train_without_patch_files, 5, "medsynth prepare"),
    Row("h5-missing-dataset", "train.h5 without its target dataset", h5_missing_dataset, 5, "lacks the dataset(s) target"),
    Row("h5-mismatched", "train.h5 with 3 corners fewer than patches", h5_mismatched_dataset, 5, "inconsistent"),
    Row("h5-truncated", "train.h5 cut to a third", h5_not_hdf5, 5, "not a readable HDF5 file"),
    Row("model-truncated", "model file cut short", model_truncated, 6, "truncated"),
    Row("model-other-architecture", "model header for wider layers", model_other_architecture, 6, "another architecture"),
    Row("model-other-stages", "model header saying 3 stages, 2 stored", model_other_stage_count, 6, "another architecture"),
    Row("model-fewer-stages", "--stages 3 for a 2-stage model", model_fewer_stages_than_asked, 2, "2 auto-context stage(s); 3 were asked"),
    Row("model-tampered-header", "header edited by hand (configuration)", model_tampered_header, 6, "tampered"),
    Row("model-tampered-weights", "one weight byte flipped", model_tampered_weights, 6, "tampered"),
    Row("model-pickle", "malicious pickle named .safetensors", model_malicious_pickle, 6, "a pickle"),
    Row("model-torch-save", "torch.save file as --model", model_torch_checkpoint, 6, "not a MedSynth safetensors model"),
    Row("output-exists", "output exists, no --overwrite", output_exists, 7, "exists already"),
    Row("output-is-input", "output = input (even with --overwrite)", output_equals_input, 7, "is one of the inputs"),
    Row("output-folder-is-input", "folder run into its own folder", output_folder_equals_input_folder, 7, "is the input folder"),
    Row("output-folder-missing", "output folder does not exist", output_folder_missing, 7, "does not exist"),
    Row("output-unwritable", "output in a read-only folder", output_unwritable, 7, "not writable"),
    Row("output-folder-unwritable", "folder run into a read-only place", output_folder_unwritable, 7, "Cannot create the output folder"),
    Row("t2-as-source", "a T2 given as the T1ce", t2_as_source, 3, "intensities look T2-weighted"),
    Row("label-map-as-source", "a segmentation label map given as the T1ce", label_map_as_source, 3, "looks like a label map"),
    Row("not-skull-stripped", "noise in the background (not skull-stripped)", not_skull_stripped, 3, "does not look skull-stripped"),
    Row("thick-slices", "5 mm slices", thick_slices, 3, "voxels are strongly anisotropic"),
    Row("t2-forced", "a T2 given as the T1ce with --force (valid: warning, recorded in the header)", t2_forced, 0, "",
        output="out.nii.gz"),
    Row("case-folder-without-t1ce", "BraTS case folder holding only a T2", case_folder_without_t1ce, 3,
        "No files matching <case>/<case>_t1ce.nii.gz"),
    Row("case-folder-with-a-t2", "case folder whose second 'T1ce' is a T2 (refused before the first synthesis)",
        case_folder_with_a_t2, 3, "c1_t1ce.nii.gz does not look like the input"),
    Row("folder-to-file-output", "case folder as source, out.nii.gz as output", folder_to_file_output, 7, "is a file name"),
    Row("output-no-extension", "output name without an extension", output_without_extension, 7, "has no image extension"),
    Row("output-png", "output name ending in .png", output_unknown_extension, 7, "has extension '.png'"),
    Row("output-upper-case", "output name ending in .NII.GZ", output_upper_case_extension, 7,
        "know the ending only in lower case. Name it SYNTHETIC_T2.nii.gz"),
    Row("output-is-folder", "an existing folder as the output file (even with --overwrite)", output_is_a_folder, 7, "is a folder"),
    Row("fit-lookup-output-exists", "fit-lookup onto an existing file, no --overwrite", fit_lookup_output_exists, 7,
        "exists already"),
    Row("fit-lookup-output-is-input", "fit-lookup onto its own T1ce (even with --overwrite)", fit_lookup_output_is_input, 7,
        "is one of the inputs"),
    Row("fit-lookup-bins-0", "fit-lookup --bins 0", fit_lookup_bins_0, 2, "at least 2 intensity bins"),
    Row("lookup-not-json", "evaluate --lookup with a file that is not JSON", lookup_not_json, 5, "not an intensity lookup file"),
    Row("lookup-missing", "evaluate --lookup with a missing file", lookup_missing, 5, "Cannot read the lookup file"),
    Row("evaluate-report-exists", "evaluate into a folder holding an earlier report, no --overwrite",
        evaluate_report_exists, 7, "holds the report of an earlier evaluation"),
    Row("output-name-too-long", "an output file name of 307 characters", output_name_too_long, 7, "is too long"),
    Row("negative-values", "a z-scored T1ce (a third of the brain below 0)", negative_values, 3, "looks intensity-normalised"),
    Row("bright-rim", "a T1ce with scalp fat left around the brain (3 voxels)", bright_rim, 3,
        "looks incompletely skull-stripped"),
    Row("suffix-names-another-pair", "prepare --source-suffix t1 with the T1ce→T2 config", suffix_names_another_pair, 2,
        "hold a T1, but the model config names its source T1ce"),
    Row("val-fraction-too-large", "prepare --val-fraction 1.5", val_fraction_too_large, 2, "val_fraction",
        absent="prepared"),
    Row("train-config-quoted-boolean", 'a train config with "adversarial": "false"', train_config_with_a_quoted_boolean, 2,
        "TrainConfig.adversarial must be true or false"),
    Row("train-config-quoted-number", 'a train config with "iterations": "2"', train_config_with_a_quoted_number, 2,
        "TrainConfig.iterations must be a whole number"),
    Row("model-config-fractional-stages", 'a model config with "stages": 2.5', model_config_with_a_fractional_stage_count,
        2, "ModelConfig.stages must be a whole number", absent="prepared"),
    Row("train-onto-its-data", "train --out <data>/train.h5 --overwrite", train_onto_its_own_data, 7,
        "is one of the inputs"),
    Row("train-run-folder-is-a-file", "train --run-dir naming an existing file", train_run_folder_is_a_file, 7,
        "is a file"),
    Row("evaluate-into-a-file", "evaluate --out under an existing file", evaluate_into_a_file, 7,
        "Cannot create the output folder"),
    Row("evaluate-model-and-lookup", "evaluate --model M --lookup L", evaluate_a_model_and_a_lookup, 2,
        "Give --model or --lookup, not both", absent="report"),
    Row("stop-file-exists", "--stop-file naming a file that exists already", stop_file_there_already, 2,
        "exists already: the command would stop at once"),
    Row("bad-option", "unknown option", bad_option, 2, "unrecognized arguments"),
    Row("bad-tile", "--tile 0", bad_tile, 2, "tile size must be positive"),
    Row("unicode-paths", "spaces and non-ASCII in every path (valid)", good_unicode_paths, 0, "",
        output="dossier données ü 日本/synthèse T2 ü.nii.gz"),
]


# ------------------------------------------------------------------------------------------------ running


def _snapshot(folder: Path) -> Dict[str, str]:
    """Every file under ``folder`` (hidden and temporary ones too) → sha256 of its bytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclasses.dataclass
class Result:
    row: Row
    argv: List[str]
    folder: Path
    before: Dict[str, str]
    after: Dict[str, str]
    code: Optional[int]
    stdout: str
    stderr: str
    skipped: Optional[str] = None
    seconds: float = 0.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Shared:
    import torch

    from MedSynthLogic.config import to_dict
    from MedSynthLogic.dataset_prep import Case, prepare_dataset
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.models import build_generators
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    root = tmp_path_factory.mktemp("shared")
    cfg = _tiny_config()
    torch.manual_seed(0)
    save_model(root / "model.safetensors", build_generators(cfg).eval(), cfg)
    (root / "model_config.json").write_text(json.dumps(to_dict(cfg)), encoding="utf-8")
    cases = []
    for seed in range(2):
        p = make_phantom(shape=(24, 28, 24), seed=seed)
        write_volume(p.t1ce, root / f"c{seed}_t1ce.nii.gz")
        write_volume(p.t2, root / f"c{seed}_t2.nii.gz")
        cases.append(Case(f"c{seed}", root / f"c{seed}_t1ce.nii.gz", root / f"c{seed}_t2.nii.gz"))
    prepare_dataset(cases, root / "data", cfg, patches_per_case=8, val_cases=["c1"], seed=0)
    return Shared(root, root / "model.safetensors", root / "c0_t1ce.nii.gz", root / "c0_t2.nii.gz", root / "data",
                  root / "model_config.json")


def _run(row: Row, folder: Path, s: Shared) -> Result:
    folder.mkdir()
    try:
        argv = row.make(folder, s)
    except pytest.skip.Exception as exc:
        return Result(row, [], folder, {}, {}, None, "", "", skipped=str(exc))
    before = _snapshot(folder)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "MedSynthLogic.cli", *argv], cwd=REPO, env=env, capture_output=True,
                          timeout=TIMEOUT_S)
    return Result(row, argv, folder, before, _snapshot(folder), done.returncode,
                  done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"),
                  seconds=time.monotonic() - t0)


@pytest.fixture(scope="module")
def results(tmp_path_factory, shared) -> Dict[str, Result]:
    """Run every row's CLI process, a few at a time (each is mostly interpreter and torch start-up)."""
    base = tmp_path_factory.mktemp("bad inputs")
    try:
        with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
            futures = {row.id: pool.submit(_run, row, base / row.id, shared) for row in ROWS}
            yield {rid: f.result() for rid, f in futures.items()}
    finally:
        for folder in _READ_ONLY_MOUNTS:
            subprocess.run(["umount", str(folder)], capture_output=True)
        _READ_ONLY_MOUNTS.clear()


def _shown(argv: List[str], folder: Path, s: Shared) -> str:
    """The command as the report shows it: paths relative to the row's folder or the shared files."""
    parts = []
    for a in argv:
        for base, label in ((folder, ""), (s.root, "")):
            if a.startswith(str(base)):
                a = label + os.path.relpath(a, base)
                break
        parts.append(f"'{a}'" if " " in a else a)
    return "medsynth " + " ".join(parts)


def _message(stderr: str, folder: Path, s: Shared) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith(("medsynth: error:", "medsynth train: error:", "usage:"))]
    text = next((ln for ln in lines if "error:" in ln), stderr.strip().splitlines()[-1] if stderr.strip() else "")
    text = text.split("error:", 1)[-1].strip()
    for base in (folder, s.root):
        text = text.replace(str(base) + os.sep, "").replace(str(base), ".")
    return text if len(text) <= 140 else text[:137] + "…"


def test_table_covers_the_issue():
    """Each bullet of the issue has at least one row (a guard against rows being dropped later)."""
    ids = {r.id for r in ROWS}
    assert len(ids) == len(ROWS)
    for needed in ("missing-file", "truncated-gzip", "wrong-header", "2d", "4d", "rgb", "int16-slope-overflow", "all-zero",
                   "nan", "below-receptive-field", "huge-nifti", "pair-other-grid", "empty-data-folder",
                   "partial-data-folder", "h5-missing-dataset", "h5-mismatched", "model-truncated",
                   "model-other-architecture", "model-other-stages", "model-tampered-header", "output-exists",
                   "output-unwritable", "output-is-input", "t2-as-source", "label-map-as-source",
                   "not-skull-stripped", "thick-slices", "case-folder-without-t1ce", "folder-to-file-output",
                   "output-no-extension", "output-is-folder"):
        assert needed in ids


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, results: Dict[str, Result], shared: Shared) -> None:
    res = results[row.id]
    if res.skipped:
        pytest.skip(res.skipped)
    where = f"\n$ {' '.join(res.argv)}\nstdout:\n{res.stdout[-2000:]}\nstderr:\n{res.stderr[-3000:]}"
    assert res.code == row.code, where
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, where
    if row.code:
        assert row.message in res.stderr, where
        assert res.stderr.count("\n") <= 8, where  # a short message, not a dump
    created = sorted(set(res.after) - set(res.before))
    changed = sorted(k for k in res.before if res.after.get(k) != res.before[k])
    expected = [row.output] if row.output else []
    assert created == expected and not changed, (created, changed, where)
    assert not (res.folder / "PWNED").exists()
    assert row.absent is None or not (res.folder / row.absent).exists(), (row.absent, where)
    if row.output:
        from MedSynthLogic.volume_io import read_volume

        out = read_volume(res.folder / row.output)
        assert np.isfinite(out.array).all() and out.array.any()
    record("bad_input", case=row.what, id=row.id, command=_shown(res.argv, res.folder, shared), exit_code=res.code,
           message=_message(res.stderr, res.folder, shared) if row.code else "(synthesised, as it should be)",
           files_lost=len(changed))


def test_read_refuses_a_volume_larger_than_free_memory(tmp_path, monkeypatch, shared):
    """In-process (the limit is faked): a volume that fits the size limits but not the RAM is refused unread."""
    from MedSynthLogic import volume_io, volume_read
    from MedSynthLogic.errors import ResourceError

    monkeypatch.setattr(volume_read, "available_ram", lambda: 100_000)
    with pytest.raises(ResourceError, match="Not enough memory to read") as info:
        volume_io.read_volume(shared.t1ce)
    assert info.value.exit_code == 8
    record("bad_input", case="volume larger than the free RAM (faked in-process)", id="ram", command="read_volume(…)",
           exit_code=8, message=str(info.value).replace(str(shared.root) + os.sep, ""), files_lost=0)
