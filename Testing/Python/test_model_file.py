"""Model files: round trip, header, and every way a file can be wrong (architecture, stages, truncation, tampering,
pickles) ending in a clear ModelFileError/UsageError rather than a wrong synthesis or executed code."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from MedSynthLogic.config import GeneratorConfig, ModelConfig, to_dict
from MedSynthLogic.errors import ModelFileError, OutputError, UsageError
from MedSynthLogic.model_file import (
    FORMAT,
    FORMAT_VERSION,
    header_sha256,
    LoadedModel,
    bundled_model_path,
    load_model,
    read_header,
    save_model,
    tensors_sha256,
)

from _models import random_chain


@pytest.fixture()
def saved(tmp_path, tiny_model_config):
    chain = random_chain(tiny_model_config)
    path = tmp_path / "model.safetensors"
    save_model(path, chain, tiny_model_config, training={"iterations": 7, "data": Path("/x")}, metrics={"psnr": 30.5})
    return path, chain, tiny_model_config


def _rewrite_safetensors(path: Path, edit, reseal: bool = True) -> None:
    """Edit the raw safetensors JSON header (and keep the data bytes) to simulate hand-made or tampered files.

    ``reseal`` recomputes the MedSynth header checksum, as a file written by another MedSynth or for another
    architecture would have it, so the check under test is the one after the checksum.
    """
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    head = edit(head)
    if reseal:
        try:
            meta = json.loads(head["__metadata__"]["medsynth"])
        except (KeyError, TypeError, ValueError):
            meta = None
        if isinstance(meta, dict) and "header_sha256" in meta:
            meta["header_sha256"] = header_sha256(meta)
            head["__metadata__"]["medsynth"] = json.dumps(meta)
    new = json.dumps(head).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + data)


def test_round_trip_same_outputs(saved):
    path, chain, cfg = saved
    model = load_model(path)
    assert isinstance(model, LoadedModel)
    assert model.config == cfg and model.stages == 2 and model.path == path
    assert not model.chain.training
    torch.manual_seed(1)
    x1 = torch.rand(1, 1, 20, 20, 20)
    x2 = torch.rand(1, 2, 20, 20, 20)
    with torch.no_grad():
        for k, x in enumerate((x1, x2)):
            assert torch.equal(chain.stages[k](x), model.chain.stages[k](x))


def test_header_contents(saved):
    path, chain, cfg = saved
    h = read_header(path)
    assert h["format"] == FORMAT == "medsynth-model" and h["format_version"] == FORMAT_VERSION == 1
    assert h["model_config"] == to_dict(cfg) and h["stages"] == 2
    assert h["training"] == {"iterations": 7, "data": "/x"} and h["metrics"] == {"psnr": 30.5}
    assert len(h["tensors_sha256"]) == 64 and h["medsynth_version"] and h["created"]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        names = list(fh.keys())
        assert all(fh.get_tensor(n).dtype == torch.float32 for n in names)
    assert {n.split(".")[0] for n in names} == {"stage0", "stage1"}
    assert "stage1.body.0.weight" in names


def test_load_fewer_stages_and_too_many(saved):
    path, chain, _ = saved
    one = load_model(path, stages=1)
    assert one.stages == 1 and one.config.stages == 1 and one.header["stages"] == 2
    with pytest.raises(UsageError, match="has 2 auto-context stage"):
        load_model(path, stages=3)
    with pytest.raises(UsageError):
        load_model(path, stages=0)


def test_partial_chain_saved_with_its_stage_count(tmp_path, tiny_model_config):
    cfg1 = dataclasses.replace(tiny_model_config, stages=1)
    chain = random_chain(cfg1)
    path = save_model(tmp_path / "m.safetensors", chain, tiny_model_config)
    assert read_header(path)["stages"] == 1 and load_model(path).stages == 1


def test_wrong_architecture_named(saved, tmp_path):
    path, _, cfg = saved
    other = dataclasses.replace(cfg, generator=GeneratorConfig(filters=(4, 4, 4, 8, 8, 16, 4, 4, 1)))

    def edit(head):
        meta = json.loads(head["__metadata__"]["medsynth"])
        meta["model_config"] = to_dict(other)
        head["__metadata__"]["medsynth"] = json.dumps(meta)
        return head

    _rewrite_safetensors(path, edit)
    with pytest.raises(ModelFileError, match=r"another architecture: .*stage0\.body\.\d+\..* shape"):
        load_model(path)


def test_config_that_does_not_rebuild(saved):
    path, _, _ = saved

    def edit(head):
        meta = json.loads(head["__metadata__"]["medsynth"])
        meta["model_config"]["generator"]["no_such_setting"] = 1
        head["__metadata__"]["medsynth"] = json.dumps(meta)
        return head

    _rewrite_safetensors(path, edit)
    with pytest.raises(ModelFileError, match="does not rebuild"):
        load_model(path)


def test_truncated_file(saved):
    path, _, _ = saved
    raw = path.read_bytes()
    for cut in (len(raw) - 100, 40, 5):
        path.write_bytes(raw[:cut])
        with pytest.raises(ModelFileError):
            load_model(path)
        with pytest.raises(ModelFileError):  # the torch-free header reader checks that the tensors fill the file too
            read_header(path)
    path.write_bytes(raw + b"\0" * 8)
    with pytest.raises(ModelFileError, match="its tensors need"):
        read_header(path)


def test_tampered_tensor_fails_checksum(saved):
    path, _, _ = saved
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x40
    path.write_bytes(bytes(raw))
    assert read_header(path)["format"] == FORMAT
    with pytest.raises(ModelFileError, match="tampered or corrupt"):
        load_model(path)


def test_tampered_header_checksum(saved):
    path, _, _ = saved

    def edit(head):
        meta = json.loads(head["__metadata__"]["medsynth"])
        meta["tensors_sha256"] = "0" * 64
        head["__metadata__"]["medsynth"] = json.dumps(meta)
        return head

    _rewrite_safetensors(path, edit)
    with pytest.raises(ModelFileError, match="tampered or corrupt"):
        load_model(path)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: {**h, "__metadata__": {"other": "x"}}, "not a MedSynth safetensors model"),
        (lambda h: {**h, "__metadata__": {"medsynth": "{not json"}}, "not valid JSON"),
        (lambda h: {**h, "__metadata__": {"medsynth": json.dumps({"format": "x"})}}, "not a MedSynth"),
        (
            lambda h: {**h, "__metadata__": {"medsynth": json.dumps({"format": "medsynth-model", "format_version": 9})}},
            "format version 9",
        ),
    ],
)
def test_bad_headers(saved, edit, match):
    path, _, _ = saved
    _rewrite_safetensors(path, edit)
    with pytest.raises(ModelFileError, match=match):
        read_header(path)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    for name, writer in [
        ("model.pt", lambda p: p.write_bytes(pickle.dumps(_Evil(str(marker))))),
        ("model.safetensors", lambda p: p.write_bytes(pickle.dumps(_Evil(str(marker))))),
        ("ckpt.pt", lambda p: torch.save({"x": _Evil(str(marker))}, p)),
    ]:
        p = tmp_path / name
        writer(p)
        for fn in (load_model, read_header):
            with pytest.raises(ModelFileError, match="not a MedSynth safetensors model") as refused:
                fn(p)
            assert "medsynth export CHECKPOINT" in refused.value.hint  # what turns a training checkpoint into a model
        assert not marker.exists()


def test_missing_unreadable_and_folder(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="folder"):
        load_model(tmp_path)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError):
        load_model(empty)


def test_plain_safetensors_without_header(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(p))
    with pytest.raises(ModelFileError, match="without a MedSynth header"):
        load_model(p)


def test_save_refuses_existing_without_overwrite(saved, tiny_model_config):
    path, chain, cfg = saved
    with pytest.raises(OutputError):
        save_model(path, chain, cfg, overwrite=False)
    save_model(path, chain, cfg)


def test_save_refuses_mismatched_config(tmp_path, tiny_model_config):
    chain = random_chain(tiny_model_config)
    with pytest.raises(ModelFileError, match="another architecture"):
        save_model(tmp_path / "m.safetensors", chain, ModelConfig(stages=2))


def test_checksum_depends_on_names_and_bytes():
    a = {"x": torch.zeros(3), "y": torch.ones(2)}
    assert tensors_sha256(a) == tensors_sha256(dict(reversed(list(a.items()))))
    assert tensors_sha256(a) != tensors_sha256({"x": torch.zeros(3), "z": torch.ones(2)})
    assert tensors_sha256(a) != tensors_sha256({"x": torch.zeros(3), "y": torch.ones(2).reshape(1, 2)})


def test_no_unsafe_torch_load_in_package(repo_root):
    import ast

    for src in (repo_root / "MedSynthLogic").glob("*.py"):
        for node in ast.walk(ast.parse(src.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    kw = {k.arg: k.value for k in node.keywords}
                    ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    assert ok, f"{src.name}:{node.lineno} calls torch.load without weights_only=True"


def test_bundled_model_path(monkeypatch, tmp_path, saved):
    path, _, _ = saved
    monkeypatch.setenv("MEDSYNTH_MODEL", str(path))
    assert bundled_model_path() == path
    monkeypatch.setenv("MEDSYNTH_MODEL", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ModelFileError, match="MEDSYNTH_MODEL"):
        bundled_model_path()
    monkeypatch.setenv("MEDSYNTH_MODEL", str(tmp_path))
    with pytest.raises(ModelFileError, match="a folder, not a model file"):  # it said "does not exist"
        bundled_model_path()
    monkeypatch.delenv("MEDSYNTH_MODEL")
    try:
        p = bundled_model_path()
    except ModelFileError as exc:
        assert "--model" in str(exc)
    else:
        assert p.name == "medsynth_t1ce_t2.safetensors" and p.parent.name == "Models"


def test_edited_header_is_detected(saved):
    """A hand edit of the header (here: the output scale) that keeps the tensors valid is still refused."""
    path, _, _ = saved

    def edit(head):
        meta = json.loads(head["__metadata__"]["medsynth"])
        meta["model_config"]["normalisation"]["output_scale"] = 1.0
        head["__metadata__"]["medsynth"] = json.dumps(meta)
        return head

    _rewrite_safetensors(path, edit, reseal=False)
    with pytest.raises(ModelFileError, match="tampered"):
        read_header(path)


def test_a_header_with_number_keys_reads_back(tmp_path, tiny_model_config):
    """JSON makes keys strings and sorts them otherwise ("10" before "2"): the checksum was taken before, so the
    file saved and was then refused as tampered with."""
    path = save_model(tmp_path / "m.safetensors", random_chain(tiny_model_config), tiny_model_config,
                      metrics={"per_stage": {2: 0.5, 10: 0.7}})
    assert read_header(path)["metrics"]["per_stage"] == {"2": 0.5, "10": 0.7}


COMMITTED_MODELS = sorted((Path(__file__).resolve().parents[2]).glob("**/*.safetensors"))


@pytest.mark.parametrize("path", [p for p in COMMITTED_MODELS if not any(part.startswith(".") for part in p.parts)],
                         ids=lambda p: p.name)
def test_every_committed_model_file_passes_its_checksums(path):
    """The quality report re-evaluates the committed ablation models: a file older than a format change must fail here."""
    from MedSynthLogic.model_file import load_model, read_header

    header = read_header(path)
    loaded = load_model(path)
    assert len(loaded.chain.stages) == header["stages"] >= 1


@pytest.mark.parametrize("field, value, problem", [
    ("shape", "12", "bad entry"), ("shape", [2.0], "bad entry"), ("shape", [-1, -2], "bad entry"),
    ("data_offsets", ["0", "8"], "bad entry"), ("dtype", "Q7", "of a type this MedSynth does not read"),
    ("dtype", ["F32"], "of a type this MedSynth does not read"),
])
def test_the_torch_free_header_reader_is_as_strict_as_safetensors(saved, field, value, problem):
    """The header reader checks the tensor table by hand (torch-free, for the panel before the installer): a table
    that safetensors refuses (a shape given as a string, negative dims, string offsets) must be refused too."""
    path, _, _ = saved
    name = next(k for k in json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
                if k != "__metadata__")

    def edit(head):
        head[name][field] = value
        return head

    _rewrite_safetensors(path, edit)
    with pytest.raises(ModelFileError, match=problem):
        read_header(path)
