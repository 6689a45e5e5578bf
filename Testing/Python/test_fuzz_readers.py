"""Property-based fuzzing of everything that parses a user's file: image reader, model file, checkpoint, HDF5.

The property: whatever the bytes, the reader either returns a result or raises its own documented error
(``InputImageError``, ``ModelFileError``/``UsageError``, ``ModelFileError``, ``DataError``), never another
exception type, which the CLI would show as a traceback. Inputs are random bytes and mutations (byte flips,
truncations, splices, header edits) of valid files, so most of them get past the first magic-number check.
"""

from __future__ import annotations

import faulthandler
import gzip
import hashlib
import json
import struct
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _reliability import record
from MedSynthLogic.errors import DataError, InputImageError, ModelFileError, UsageError

FUZZ = settings(max_examples=300, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# torch warns about the odd pickle protocols that mutated payloads claim; the refusal is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
# A hang in a C reader would block the suite forever; this dumps every thread's stack and exits instead.
HANG_GUARD_S = 300


@pytest.fixture(autouse=True, scope="module")
def hang_guard():
    faulthandler.dump_traceback_later(HANG_GUARD_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def scratch() -> Path:
    """One folder reused by every example (hypothesis examples cannot take function fixtures such as tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="medsynth-fuzz-") as d:
        yield Path(d)


COUNTS: Dict[str, int] = {}


def _count(target: str) -> None:
    COUNTS[target] = COUNTS.get(target, 0) + 1


@pytest.fixture(autouse=True, scope="module")
def report_counts():
    yield
    for target, n in COUNTS.items():
        record("fuzz", target=target, examples=n)


class Blob(bytes):
    """Bytes of a valid file, shown by size, so a failing example's report is not a 100 kB dump."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


def mutate(data: bytes, draw_ops: List[tuple]) -> bytes:
    """Apply byte edits: ("flip", pos, mask), ("cut", pos), ("insert", pos, bytes), ("set", pos, byte)."""
    buf = bytearray(data)
    for op in draw_ops:
        if not buf:
            break
        pos = op[1] % len(buf)
        if op[0] == "flip":
            buf[pos] ^= op[2] or 1
        elif op[0] == "set":
            buf[pos] = op[2]
        elif op[0] == "cut":
            del buf[pos:]
        elif op[0] == "insert":
            buf[pos:pos] = op[2]
    return bytes(buf)


def ops(max_pos: int = 1 << 20, near_start: int = 0) -> st.SearchStrategy:
    """Edit lists, biased towards the first ``near_start`` bytes (the header) when given."""
    pos = st.integers(0, max_pos)
    if near_start:
        pos = st.one_of(st.integers(0, near_start), pos)
    op = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("set"), pos, st.sampled_from([0, 1, 0x7F, 0x80, 0xFF])),
        st.tuples(st.just("cut"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
    )
    return st.lists(op, min_size=1, max_size=4)


# ------------------------------------------------------------------------------------------------ images


@pytest.fixture(scope="module")
def valid_images(scratch) -> Dict[str, bytes]:
    """A small volume in each format the reader is asked to read, as bytes (NIfTI also uncompressed)."""
    from MedSynthLogic.volume_io import Volume, write_volume

    arr = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32) * 100
    vol = Volume(arr, spacing=(1.0, 1.5, 2.0), origin=(1.0, 2.0, 3.0))
    out = {}
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        path = scratch / f"valid{suffix}"
        write_volume(vol, path)
        out[suffix] = path.read_bytes()
    out[".nii"] = gzip.decompress(out[".nii.gz"])
    return {k: Blob(v) for k, v in out.items()}


def _read_only_input_errors(path: Path) -> None:
    from MedSynthLogic.volume_io import read_volume

    try:
        # Small limits: a mutated header may claim a large volume, which must not be allocated in a test.
        vol = read_volume(path, max_axis=64, max_voxels=64**3)
    except InputImageError:
        return
    assert vol.array.ndim == 3 and vol.array.dtype == np.float32 and np.isfinite(vol.array).all()


@FUZZ
@given(suffix=st.sampled_from([".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".hdr", ".img"]), data=st.binary(max_size=2048))
def test_read_volume_random_bytes(scratch, suffix, data):
    path = scratch / f"random{suffix}"
    path.write_bytes(data)
    _read_only_input_errors(path)
    _count("read_volume (random bytes)")


@FUZZ
@given(suffix=st.sampled_from([".nii.gz", ".nii", ".nrrd", ".mha"]), edits=ops(near_start=400))
def test_read_volume_mutated_files(scratch, valid_images, suffix, edits):
    path = scratch / f"mutated{suffix}"
    path.write_bytes(mutate(valid_images[suffix], edits))
    _read_only_input_errors(path)
    _count("read_volume (mutated NIfTI/NRRD/MHA)")


@FUZZ
@given(edits=ops(near_start=400))
def test_read_volume_mutated_inside_gzip(scratch, valid_images, edits):
    """Edits to the NIfTI inside an intact gzip stream: the header and voxels change, the compression is fine."""
    path = scratch / "inner.nii.gz"
    path.write_bytes(gzip.compress(mutate(valid_images[".nii"], edits)))
    _read_only_input_errors(path)
    _count("read_volume (mutated NIfTI inside valid gzip)")


@FUZZ
@given(
    key=st.sampled_from(["NDims", "DimSize", "ElementType", "ElementSpacing", "ElementNumberOfChannels", "HeaderSize",
                         "CompressedData", "ElementDataFile", "Offset", "TransformMatrix", "BinaryDataByteOrderMSB"]),
    value=st.one_of(st.integers(-(2**40), 2**40).map(str), st.text(max_size=20).map(lambda t: t.replace("\n", " ")),
                    st.lists(st.integers(-5, 70000), min_size=1, max_size=5).map(lambda v: " ".join(map(str, v)))),
)
def test_read_volume_edited_metaimage_header(scratch, valid_images, key, value):
    """The text header of a MetaImage with one field set to a random value (sizes, types, data file names…)."""
    head, sep, body = valid_images[".mha"].partition(b"ElementDataFile = LOCAL\n")
    lines = [ln for ln in head.decode("latin-1").splitlines() if not ln.startswith(key + " ")]
    text = "\n".join(lines + [f"{key} = {value}"]) + "\n"
    path = scratch / "edited.mha"
    path.write_bytes(text.encode("utf-8", "replace") + (sep if key != "ElementDataFile" else b"") + body)
    _read_only_input_errors(path)
    _count("read_volume (edited MetaImage header fields)")


# ----------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def valid_model(scratch) -> bytes:
    from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.models import build_generators

    cfg = ModelConfig(generator=GeneratorConfig(filters=(2, 2, 2, 2, 2, 2, 2, 2, 1)),
                      discriminator=DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8)), stages=2)
    torch.manual_seed(0)
    path = scratch / "valid.safetensors"
    save_model(path, build_generators(cfg).eval(), cfg)
    return Blob(path.read_bytes())


def _model_only_model_errors(path: Path) -> None:
    from MedSynthLogic.model_file import load_model, read_header

    try:
        read_header(path)
        loaded = load_model(path)
    except (ModelFileError, UsageError):
        return
    assert len(loaded.chain.stages) == loaded.config.stages


def _header_len(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


@FUZZ
@given(edits=ops(near_start=2000))
def test_model_file_mutated_bytes(scratch, valid_model, edits):
    path = scratch / "mutated.safetensors"
    path.write_bytes(mutate(valid_model, edits))
    _model_only_model_errors(path)
    _count("model file (byte flips, cuts, inserts)")


@FUZZ
@given(data=st.binary(max_size=512), prefix=st.sampled_from([b"", b"\x80\x04", b"PK\x03\x04", b"\x10\x00\x00\x00\x00\x00\x00\x00{"]))
def test_model_file_random_bytes(scratch, data, prefix):
    path = scratch / "random.safetensors"
    path.write_bytes(prefix + data)
    _model_only_model_errors(path)
    _count("model file (random bytes)")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _config_paths(obj, prefix=()) -> List[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _config_paths(v, prefix + (k,))
    return out


@FUZZ
@given(data=st.data())
def test_model_file_edited_json_header(scratch, valid_model, data):
    """One field anywhere in the MedSynth JSON header (the model config included) replaced by a random JSON value
    or deleted, with the safetensors framing kept valid, so the MedSynth checks are what is exercised."""
    n = _header_len(valid_model)
    outer = json.loads(valid_model[8 : 8 + n])
    header = json.loads(outer["__metadata__"]["medsynth"])
    paths = [p for p in _config_paths(header) if p]
    where = data.draw(st.sampled_from(paths))
    parent = header
    for k in where[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()):
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(JSON_VALUES)
    outer["__metadata__"]["medsynth"] = json.dumps(header)
    new = json.dumps(outer).encode()
    path = scratch / "edited.safetensors"
    path.write_bytes(struct.pack("<Q", len(new)) + new + valid_model[8 + n :])
    _model_only_model_errors(path)
    _count("model file (edited JSON header)")


@FUZZ
@given(data=st.data())
def test_model_file_edited_tensor_table(scratch, valid_model, data):
    """The safetensors tensor table (dtype, shape, offsets) edited: what a hand-made or foreign file looks like."""
    n = _header_len(valid_model)
    outer = json.loads(valid_model[8 : 8 + n])
    name = data.draw(st.sampled_from(sorted(k for k in outer if k != "__metadata__")))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
    outer[name][field] = data.draw(st.one_of(
        st.sampled_from(["F16", "I64", "U8", "BOOL", "F64", "X9"]),
        st.lists(st.integers(-3, 2**40), max_size=5),
        JSON_VALUES,
    ))
    new = json.dumps(outer).encode()
    path = scratch / "table.safetensors"
    path.write_bytes(struct.pack("<Q", len(new)) + new + valid_model[8 + n :])
    _model_only_model_errors(path)
    _count("model file (edited tensor table)")


# ------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def valid_checkpoint(scratch) -> bytes:
    from MedSynthLogic import checkpoint as ck

    state = {
        "stage": 0,
        "iteration": 4,
        "weights": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        "rng": torch.get_rng_state()[:64],
        "config": json.dumps({"a": 1}),
    }
    return Blob(ck.save_checkpoint(scratch / ck.checkpoint_name(0, 4), state).read_bytes())


def _checkpoint_only_model_errors(path: Path) -> None:
    from MedSynthLogic import checkpoint as ck

    try:
        state = ck.load_checkpoint(path)
    except ModelFileError:
        return
    assert isinstance(state, dict)


@FUZZ
@given(edits=ops(near_start=200))
def test_checkpoint_mutated_bytes(scratch, valid_checkpoint, edits):
    path = scratch / "mutated.pt"
    path.write_bytes(mutate(valid_checkpoint, edits))
    _checkpoint_only_model_errors(path)
    _count("checkpoint (byte flips, cuts, inserts)")


@FUZZ
@given(edits=ops(max_pos=4096))
def test_checkpoint_mutated_payload_with_valid_checksum(scratch, valid_checkpoint, edits):
    """The payload mutated and the header's size and sha256 recomputed, so torch.load(weights_only=True) itself
    parses the damaged archive: it must still end in ModelFileError."""
    from MedSynthLogic import checkpoint as ck

    rest = valid_checkpoint[len(ck.MAGIC) :]
    line, _, payload = rest.partition(b"\n")
    header = json.loads(line)
    payload = mutate(payload, edits)
    header.update(size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    path = scratch / "resealed.pt"
    path.write_bytes(ck.MAGIC + json.dumps(header).encode() + b"\n" + payload)
    _checkpoint_only_model_errors(path)
    _count("checkpoint (mutated payload, checksum resealed)")


@FUZZ
@given(data=st.binary(max_size=512), magic=st.booleans())
def test_checkpoint_random_bytes(scratch, data, magic):
    from MedSynthLogic import checkpoint as ck

    path = scratch / "random.pt"
    path.write_bytes((ck.MAGIC if magic else b"") + data)
    _checkpoint_only_model_errors(path)
    _count("checkpoint (random bytes)")


# -------------------------------------------------------------------------------------------------- HDF5


@pytest.fixture(scope="module")
def valid_h5(scratch) -> bytes:
    from MedSynthLogic.h5data import PatchFileWriter
    from MedSynthLogic.patches import extract_patches, pad_volume, sample_corners

    S, T, pad = 10, 4, 3
    rng = np.random.default_rng(0)
    path = scratch / "valid.h5"
    w = PatchFileWriter(path, 4, S, T, {"source_patch": S}, ["c0"], pad, flip_axis=2, seed=0)
    src = pad_volume(rng.random((12, 12, 12), dtype=np.float32), pad)
    mask = np.ones(src.shape, bool)
    w.add_volume("c0", src, src, mask, {"mode": "percentile", "scale": 1.0}, {"mode": "percentile", "scale": 1.0})
    corners = sample_corners(mask, 4, S, rng)
    patches = extract_patches(src, corners, S)
    w.add_patches("c0", patches, patches[:, :, 3:7, 3:7, 3:7], corners, np.zeros(4))
    w.close()
    return Blob(path.read_bytes())


def _in_child(fn: Callable[[], None], limit_s: float) -> str:
    """Run ``fn`` in a forked child: "ok", "error: …" (an unexpected exception) or "hang" after ``limit_s``.

    HDF5 is a C library that can loop on some damaged files; a fork keeps such a loop from freezing the suite
    and lets the test name the file instead.
    """
    import os
    import signal
    import time
    import traceback

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_end)
        try:
            fn()
            msg = "ok"
        except BaseException:
            msg = "error: " + traceback.format_exc()[-2000:]
        os.write(write_end, msg.encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            with os.fdopen(read_end, "rb") as fh:
                return fh.read().decode() or f"error: child ended with status {status}"
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_end)
    return "hang"


@settings(FUZZ, max_examples=150)
@given(edits=ops(max_pos=1 << 16, near_start=4096))
def test_patch_file_mutated_bytes(scratch, valid_h5, edits):
    from MedSynthLogic.h5data import open_patch_file

    path = scratch / "mutated.h5"
    path.write_bytes(mutate(valid_h5, edits))

    def check() -> None:
        try:
            open_patch_file(path).close()
        except DataError:
            pass

    outcome = _in_child(check, limit_s=10.0)
    if outcome != "ok":
        keep = scratch.parent / f"medsynth-fuzz-h5-{outcome[:4]}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}.h5"
        keep.write_bytes(path.read_bytes())
        pytest.fail(f"open_patch_file on a damaged file: {outcome} (file kept as {keep})")
    _count("HDF5 patch file (byte flips, cuts, inserts)")
