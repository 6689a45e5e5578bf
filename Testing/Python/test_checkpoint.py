"""Checkpoints: atomic, checksummed, loaded without unpickling, damaged files refused, old ones pruned."""

from __future__ import annotations

import json

import pytest
import torch

from MedSynthLogic import checkpoint as ck
from MedSynthLogic.errors import ModelFileError


def _state(stage=0, iteration=5):
    return {
        "stage": stage,
        "iteration": iteration,
        "weights": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        "rng": torch.get_rng_state(),
        "config": json.dumps({"a": 1}),
        "opt": torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-3).state_dict(),
    }


def test_roundtrip(tmp_path):
    p = ck.save_checkpoint(tmp_path / ck.checkpoint_name(0, 5), _state())
    state = ck.load_checkpoint(p)
    assert state["stage"] == 0 and state["iteration"] == 5
    assert torch.equal(state["weights"]["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert json.loads(state["config"]) == {"a": 1}
    assert ck.read_checkpoint_header(p)["iteration"] == 5
    assert [q.name for q in tmp_path.iterdir()] == [p.name]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_checkpoint_is_refused(tmp_path, damage):
    p = ck.save_checkpoint(tmp_path / "c.pt", _state())
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip":
        data[-50] ^= 0xFF
    elif damage == "garbage":
        data = bytearray(b"not a checkpoint at all")
    else:
        data = bytearray()
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        ck.load_checkpoint(p)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelFileError):
        ck.load_checkpoint(tmp_path / "nope.pt")


def test_pickled_code_is_never_executed(tmp_path):
    """A payload that would need unpickling of arbitrary objects is refused even with a valid checksum."""
    import hashlib
    import io

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf)
    payload = buf.getvalue()
    header = {"format": ck.FORMAT, "format_version": 1, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    p = tmp_path / "evil.pt"
    p.write_bytes(ck.MAGIC + json.dumps(header).encode() + b"\n" + payload)
    with pytest.raises(ModelFileError):
        ck.load_checkpoint(p)


def test_latest_and_prune_keep_newest_complete(tmp_path):
    paths = [ck.save_checkpoint(tmp_path / ck.checkpoint_name(s, i), _state(s, i)) for s, i in [(0, 10), (0, 20), (1, 5), (1, 10), (1, 15)]]
    (tmp_path / ".ckpt_s01_it000000020.pt.abc.tmp.pt").write_bytes(b"partial")
    assert ck.latest_checkpoint(tmp_path) == paths[-1]
    ck.prune_checkpoints(tmp_path, keep=3)
    assert ck.list_checkpoints(tmp_path) == paths[2:]
    # the three newest are damaged: the newest complete one (1, 5) must still survive pruning to keep=1
    for p in paths[3:]:
        p.write_bytes(p.read_bytes()[:-10])
    assert ck.latest_checkpoint(tmp_path) == paths[2]
    ck.prune_checkpoints(tmp_path, keep=1)
    assert paths[2].exists() and paths[4].exists()
    assert ck.latest_checkpoint(tmp_path / "missing") is None


def test_prune_keeps_every_nth_iteration_of_each_stage(tmp_path):
    paths = {(s, i): ck.save_checkpoint(tmp_path / ck.checkpoint_name(s, i), _state(s, i))
             for s in (0, 1) for i in (250, 500, 750, 1000, 1050)}
    deleted = ck.prune_checkpoints(tmp_path, keep=1, keep_every=500)
    kept = [(0, 500), (0, 1000), (1, 500), (1, 1000), (1, 1050)]
    assert ck.list_checkpoints(tmp_path) == [paths[k] for k in kept]
    assert sorted(deleted) == sorted(p for k, p in paths.items() if k not in kept)
    assert ck.checkpoint_iteration(tmp_path / "loss_curves.png") is None


def test_an_unreadable_checkpoint_is_skipped_by_the_scans_and_named_when_loaded(tmp_path, monkeypatch):
    """Only a missing file or a folder became a ModelFileError: one unreadable newest checkpoint (permissions, an
    I/O error) made latest_checkpoint and pruning, and so every --resume, end in a PermissionError (review 54)."""
    import builtins

    older, newer = (ck.save_checkpoint(tmp_path / ck.checkpoint_name(0, i), _state(0, i)) for i in (10, 20))

    def refuse_the_newest(path, *args, **kwargs):
        if str(path) == str(newer):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(ck, "open", refuse_the_newest, raising=False)
    assert ck.latest_checkpoint(tmp_path) == older
    with pytest.raises(ModelFileError, match="cannot be read: Permission denied"):
        ck.load_checkpoint(newer)
