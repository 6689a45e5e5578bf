"""HDF5 patch files (``medsynth prepare`` output) ↔ torch: schema, validation, writer and ``PatchDataset``.

Schema (``docs/ARCHITECTURE.md``), version 1:

* root attrs: ``format="medsynth-patches"``, ``format_version=1``, ``source_patch`` (S), ``target_patch`` (T),
  ``model_config`` (JSON of ``ModelConfig``), plus ``flip_axis``, ``pad`` (the halo), ``case_ids`` (JSON list;
  ``case_index`` indexes it), ``split``, ``seed``, ``medsynth_version``, ``prepare_run`` (the id the
  manifest and the other split's file of the same ``prepare`` share).
* ``source`` float32 (N, 1, S, S, S), ``target`` float32 (N, 1, T, T, T): one patch per chunk, lzf-compressed
  by default (measured on real BraTS patches: lzf writes ~1.75x faster than gzip-1 and reads as fast, at 56 vs
  39 KiB/patch; the byte-shuffle filter makes both slower and larger), gzip-1 on request.
* ``case_index`` int32 (N,), ``corner`` int32 (N, 3), ``flipped`` uint8 (N,).
  ``corner`` is the (z, y, x) corner of the S³ source cube in the case's *unflipped* padded volume; a flipped
  sample is that cube flipped along ``flip_axis`` (so auto-context cuts at ``corner`` and flips). A ``unet3d`` file
  may hold negative corners (a volume shorter than the crop, cut with zeros around it); its training reads the volumes.
* ``volumes/<case_id>``: ``source``, ``target`` (normalised, edge-padded by ``pad``; stored as float16 to
  halve the file size, error ≤ 1e-3 on values ≤ 2, read back as float32), ``mask`` uint8 (zero-padded);
  attrs ``case_id``, ``pad``, ``source_transform``, ``target_transform`` (JSON), ``shape`` (unpadded),
  ``spacing``/``origin``/``direction``.

Patches are written in a globally shuffled order (a seeded permutation of the N slots), so any contiguous
block of the file is a random mix of cases and of flipped/unflipped samples: reading a block is one
sequential HDF5 read, which is what makes out-of-RAM training fast (:meth:`PatchDataset.read_block`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import DataError
from .volume_io import available_ram

FORMAT = "medsynth-patches"
FORMAT_VERSION = 1
PATCH_DATASETS = ("source", "target", "case_index", "corner", "flipped")
REQUIRED_ATTRS = ("format", "format_version", "source_patch", "target_patch", "model_config")
VOLUME_DATASETS = ("source", "target", "mask")
_HINT = "Re-run `medsynth prepare` to rebuild the patch files."

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PatchFileWriter",
    "open_patch_file",
    "patch_file_info",
    "load_volumes",
    "PatchDataset",
]


def _json_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _str_attr(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class PatchFileWriter:
    """Writes one patch file with N preallocated, globally shuffled slots; used by ``dataset_prep``.

    Preallocating N and scattering each case's patches to seeded random slots gives a shuffled file without
    holding all patches in memory; with one patch per chunk the scattered writes cost nothing extra.
    Write into a temporary path (``atomic.atomic_path``) and call :meth:`close` before it is renamed.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        n_patches: int,
        source_patch: int,
        target_patch: int,
        model_config: Mapping[str, Any],
        case_ids: Sequence[str],
        pad: int,
        flip_axis: int = 2,
        seed: int = 0,
        compression: str = "lzf",
        shuffle: bool = False,
        volume_dtype: str = "float16",
        attrs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        from . import __version__

        self.n = int(n_patches)
        self.S, self.T = int(source_patch), int(target_patch)
        self.case_ids = list(case_ids)
        self.pad = int(pad)
        self.volume_dtype = np.dtype(volume_dtype)
        comp: Dict[str, Any] = {"compression": "lzf"} if compression == "lzf" else {"compression": "gzip", "compression_opts": 1}
        if compression not in ("lzf", "gzip"):
            raise ValueError(f"compression must be 'lzf' or 'gzip', got {compression!r}.")
        self._comp = comp
        self.f = h5py.File(path, "w", libver=("earliest", "latest"))
        a = self.f.attrs
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
        a["source_patch"] = self.S
        a["target_patch"] = self.T
        a["model_config"] = json.dumps(dict(model_config))
        a["flip_axis"] = int(flip_axis)
        a["pad"] = self.pad
        a["case_ids"] = json.dumps(self.case_ids)
        a["seed"] = int(seed)
        a["medsynth_version"] = __version__
        a["volume_dtype"] = self.volume_dtype.name
        for key, value in (attrs or {}).items():
            a[key] = value if isinstance(value, (int, float, str, np.integer, np.floating)) else json.dumps(value)
        S, T, n = self.S, self.T, self.n
        self.source = self.f.create_dataset("source", (n, 1, S, S, S), np.float32, chunks=(1, 1, S, S, S), shuffle=shuffle, **comp)
        self.target = self.f.create_dataset("target", (n, 1, T, T, T), np.float32, chunks=(1, 1, T, T, T), shuffle=shuffle, **comp)
        self._case_index = np.full(n, -1, np.int32)
        self._corner = np.zeros((n, 3), np.int32)
        self._flipped = np.zeros(n, np.uint8)
        self.volumes = self.f.create_group("volumes")
        self._slots = np.random.default_rng(seed).permutation(n)
        self._next = 0

    def add_volume(
        self,
        case_id: str,
        source: np.ndarray,
        target: np.ndarray,
        mask: np.ndarray,
        source_transform: Mapping[str, Any],
        target_transform: Mapping[str, Any],
        attrs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Store a case's normalised, padded volumes (chunked 32³-ish blocks so cutting a patch reads little)."""
        g = self.volumes.create_group(case_id)
        chunks = tuple(min(32, s) for s in source.shape)
        g.create_dataset("source", data=source.astype(self.volume_dtype), chunks=chunks, **self._comp)
        g.create_dataset("target", data=target.astype(self.volume_dtype), chunks=chunks, **self._comp)
        g.create_dataset("mask", data=mask.astype(np.uint8), chunks=chunks, **self._comp)
        g.attrs["case_id"] = case_id
        g.attrs["pad"] = self.pad
        g.attrs["source_transform"] = json.dumps(dict(source_transform))
        g.attrs["target_transform"] = json.dumps(dict(target_transform))
        for key, value in (attrs or {}).items():
            g.attrs[key] = json.dumps(value)

    def add_patches(
        self,
        case_id: str,
        source: np.ndarray,
        target: np.ndarray,
        corners: np.ndarray,
        flipped: np.ndarray,
    ) -> np.ndarray:
        """Write k patches of one case into the next k shuffled slots; returns the slots used."""
        k = len(source)
        if self._next + k > self.n:
            raise ValueError(f"More patches than the {self.n} preallocated.")
        slots = self._slots[self._next : self._next + k]
        self._next += k
        order = np.argsort(slots)
        idx = slots[order]
        ci = self.case_ids.index(case_id)
        src = np.ascontiguousarray(np.asarray(source, dtype=np.float32)[order])
        tgt = np.ascontiguousarray(np.asarray(target, dtype=np.float32)[order])
        # One write per run of consecutive slots: h5py's fancy-index writes are ~15x slower than this loop.
        for a, b in _runs(idx):
            sel = np.s_[int(idx[a]) : int(idx[a]) + (b - a)]
            self.source.write_direct(src, np.s_[a:b], sel)
            self.target.write_direct(tgt, np.s_[a:b], sel)
        self._case_index[idx] = ci
        self._corner[idx] = np.asarray(corners, dtype=np.int32)[order]
        self._flipped[idx] = np.asarray(flipped, dtype=np.uint8)[order]
        return idx

    def close(self) -> None:
        """Close the file; refuses to leave unfilled slots (they would be zero patches)."""
        filled = self._next
        try:
            if filled == self.n:
                self.f.create_dataset("case_index", data=self._case_index)
                self.f.create_dataset("corner", data=self._corner)
                self.f.create_dataset("flipped", data=self._flipped)
        finally:
            self.f.close()
        if filled != self.n:
            raise ValueError(f"Only {filled} of {self.n} patch slots were written.")


def _runs(sorted_idx: np.ndarray) -> List[Tuple[int, int]]:
    """[start, stop) positions of the runs of consecutive values in a sorted index array."""
    if len(sorted_idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(sorted_idx)]])
    return list(zip(starts.tolist(), stops.tolist()))


def open_patch_file(path: Union[str, os.PathLike]) -> h5py.File:
    """Open a patch file read-only after checking its schema; the caller closes it.

    Checking everything up front turns a stale, truncated or foreign file into one clear ``DataError``
    (naming what is missing or inconsistent) instead of an obscure failure hours into training.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"The patch file {p} does not exist.", _HINT)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise DataError(f"{p} is not a readable HDF5 file ({exc}).", _HINT) from exc
    try:
        _validate(f, p)
    except DataError:
        f.close()
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        # h5py reports a damaged object header, heap or attribute as one of these only when it is read.
        f.close()
        raise DataError(f"{p} is damaged: {' '.join(str(exc).split())[:300]}.", _HINT) from exc
    except BaseException:
        f.close()
        raise
    return f


def _validate(f: h5py.File, p: Path) -> None:
    missing_attrs = [a for a in REQUIRED_ATTRS if a not in f.attrs]
    if missing_attrs:
        raise DataError(f"{p} is not a MedSynth patch file: attribute(s) {', '.join(missing_attrs)} missing.", _HINT)
    if _str_attr(f.attrs["format"]) != FORMAT:
        raise DataError(f"{p} has format {_str_attr(f.attrs['format'])!r}, expected {FORMAT!r}.", _HINT)
    version = int(f.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise DataError(f"{p} has format_version {version}; this MedSynth reads up to {FORMAT_VERSION}.", "Update MedSynth or re-run `medsynth prepare`.")
    missing = [d for d in PATCH_DATASETS if not isinstance(f.get(d), h5py.Dataset)]
    if missing:
        raise DataError(f"{p} lacks the dataset(s) {', '.join(missing)}.", _HINT)
    S, T = int(f.attrs["source_patch"]), int(f.attrs["target_patch"])
    n = f["source"].shape[0] if f["source"].ndim else -1
    problems: List[str] = []
    src, tgt = f["source"], f["target"]
    if src.ndim != 5 or tuple(src.shape[2:]) != (S, S, S):
        problems.append(f"source has shape {src.shape}, expected (N, C, {S}, {S}, {S}) from source_patch={S}")
    if tgt.ndim != 5 or tuple(tgt.shape[1:]) != (1, T, T, T):
        problems.append(f"target has shape {tgt.shape}, expected (N, 1, {T}, {T}, {T}) from target_patch={T}")
    if f["corner"].ndim != 2 or f["corner"].shape[1:] != (3,):
        problems.append(f"corner has shape {f['corner'].shape}, expected (N, 3)")
    for name in ("case_index", "flipped"):
        if f[name].ndim != 1:
            problems.append(f"{name} has shape {f[name].shape}, expected (N,)")
    counts = {d: (f[d].shape[0] if f[d].ndim else 0) for d in PATCH_DATASETS}
    if len(set(counts.values())) != 1:
        problems.append("the datasets hold different numbers of patches (" + ", ".join(f"{k}={v}" for k, v in counts.items()) + ")")
    if problems:
        raise DataError(f"{p} is inconsistent: " + "; ".join(problems) + ".", _HINT)
    if n == 0:
        raise DataError(f"{p} holds no patches.", _HINT)
    case_ids = _case_ids(f)
    vols = f.get("volumes")
    if case_ids is not None:
        ci = f["case_index"][...]
        if ci.min() < 0 or ci.max() >= len(case_ids):
            raise DataError(f"{p}: case_index refers to cases beyond the {len(case_ids)} listed in case_ids.", _HINT)
        if not isinstance(vols, h5py.Group):
            raise DataError(f"{p} lacks the 'volumes' group.", _HINT)
        absent = [c for c in case_ids if c not in vols]
        if absent:
            raise DataError(f"{p} lacks volumes for case(s) {', '.join(absent)}.", _HINT)
    if isinstance(vols, h5py.Group):
        for cid, g in vols.items():
            miss = [d for d in VOLUME_DATASETS if not isinstance(g.get(d), h5py.Dataset)]
            if miss:
                raise DataError(f"{p}: volumes/{cid} lacks {', '.join(miss)}.", _HINT)
            shapes = {d: g[d].shape for d in VOLUME_DATASETS}
            if len(set(shapes.values())) != 1 or len(g["source"].shape) != 3:
                raise DataError(f"{p}: volumes/{cid} has mismatched shapes {shapes}.", _HINT)


def _case_ids(f: h5py.File) -> Optional[List[str]]:
    if "case_ids" in f.attrs:
        return list(_json_attr(f.attrs["case_ids"]))
    vols = f.get("volumes")
    if isinstance(vols, h5py.Group):
        return sorted(vols.keys())
    return None


def patch_file_info(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Summary of a validated patch file: counts, patch sizes, case ids, flip axis, pad, model config."""
    with open_patch_file(path) as f:
        return {
            "path": str(path),
            "n_patches": int(f["source"].shape[0]),
            "channels": int(f["source"].shape[1]),
            "source_patch": int(f.attrs["source_patch"]),
            "target_patch": int(f.attrs["target_patch"]),
            "case_ids": _case_ids(f) or [],
            "flip_axis": int(f.attrs.get("flip_axis", 2)),
            "flipped_copy": bool(f.attrs.get("flipped_copy", 1)),  # prepare's flip_axis None: no flips anywhere
            "pad": int(f.attrs.get("pad", 0)),
            "model_config": _json_attr(f.attrs["model_config"]),
            "split": _str_attr(f.attrs.get("split", "")),
            "prepare_run": _str_attr(f.attrs.get("prepare_run", "")),  # empty in files of MedSynth before 2026-12-08
        }


def load_volumes(path: Union[str, os.PathLike], cases: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """The normalised padded volumes of a patch file: case_id → {source, target (float32), mask (bool), pad, …}.

    Auto-context stages run the earlier generators over these to build their context channel, and
    validation computes whole-volume metrics on them (crop ``pad`` voxels per side to get the original grid).
    """
    out: Dict[str, Dict[str, Any]] = {}
    with open_patch_file(path) as f:
        vols = f.get("volumes")
        if not isinstance(vols, h5py.Group):
            raise DataError(f"{path} stores no volumes.", _HINT)
        ids = list(cases) if cases is not None else (_case_ids(f) or sorted(vols.keys()))
        for cid in ids:
            if cid not in vols:
                raise DataError(f"{path} has no volume for case {cid}.", _HINT)
            g = vols[cid]
            entry: Dict[str, Any] = {
                "case_id": cid,
                "source": g["source"][...].astype(np.float32),
                "target": g["target"][...].astype(np.float32),
                "mask": g["mask"][...].astype(bool),
                "pad": int(g.attrs.get("pad", f.attrs.get("pad", 0))),
            }
            for key, value in g.attrs.items():
                if key not in entry:
                    entry[key] = _json_attr(value)
            out[cid] = entry
    return out


class PatchDataset(Dataset):
    """Training pairs from a patch file: ``(source (C, S, S, S), target (1, T, T, T))`` float32 tensors.

    The HDF5 file is opened lazily in the process that reads it (and reopened after a fork), so the dataset
    is safe with DataLoader workers and DDP; it pickles without the handle.

    ``context`` (case_id → previous-stage synthesis on the same padded grid as ``volumes/<case_id>/source``)
    makes the source 2-channel, ``[source, context cut at corner, flipped like the sample]``, for
    auto-context stages. ``in_memory`` (True, False or "auto": when source+target fit in
    ``memory_limit_bytes`` and in half the available RAM) reads all patches into RAM once; otherwise batches
    are read through :meth:`__getitems__` (one read per run of consecutive rows) or :meth:`read_block`.
    Measured on 2 shared CPU cores (Testing/Benchmarks/results/prepare.txt): RAM ≈ 120 000 patches/s, lazy
    random batches ≈ 2 200/s, lazy contiguous blocks ≈ 3 100/s per process (lzf decompression bound), so keep
    the file in RAM when it fits and otherwise use several DataLoader workers.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        context: Optional[Mapping[str, np.ndarray]] = None,
        in_memory: Union[bool, str] = "auto",
        memory_limit_bytes: int = 4 << 30,
    ) -> None:
        self.path = Path(path)
        with open_patch_file(self.path) as f:
            self.source_patch = int(f.attrs["source_patch"])
            self.target_patch = int(f.attrs["target_patch"])
            self.flip_axis = int(f.attrs.get("flip_axis", 2))
            self.pad = int(f.attrs.get("pad", 0))
            self.case_ids: List[str] = _case_ids(f) or []
            self.case_index = f["case_index"][...].astype(np.int64)
            self.corner = f["corner"][...].astype(np.int64)
            self.flipped = f["flipped"][...].astype(bool)
            self._n = int(f["source"].shape[0])
            self.source_channels = int(f["source"].shape[1])
            self.model_config = _json_attr(f.attrs["model_config"])
            nbytes = f["source"].size * 4 + f["target"].size * 4
            vol_shapes = {cid: tuple(f["volumes"][cid]["source"].shape) for cid in self.case_ids if "volumes" in f and cid in f["volumes"]}
        self.context: Optional[Dict[str, np.ndarray]] = None
        if context is not None:
            self.context = self._check_context(context, vol_shapes)
        self._file: Optional[h5py.File] = None
        self._pid: Optional[int] = None
        self._src: Optional[np.ndarray] = None
        self._tgt: Optional[np.ndarray] = None
        if in_memory is True or (in_memory == "auto" and nbytes <= min(memory_limit_bytes, available_ram() // 2)):
            self.load_all()

    def _check_context(self, context: Mapping[str, np.ndarray], shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, np.ndarray]:
        missing = [c for c in self.case_ids if c not in context]
        if missing:
            raise DataError(f"Context volumes missing for case(s) {', '.join(missing)} of {self.path}.", "Pass one padded synthesis per case.")
        out: Dict[str, np.ndarray] = {}
        for cid in self.case_ids:
            arr = np.asarray(context[cid], dtype=np.float32)
            if cid in shapes and arr.shape != shapes[cid]:
                raise DataError(
                    f"Context for case {cid} has shape {arr.shape}, the padded volume is {shapes[cid]}.",
                    "Pad the previous stage's synthesis by the halo (edge mode) before passing it.",
                )
            out[cid] = arr
        return out

    @property
    def channels(self) -> int:
        """Source channels as returned: 1, or 2 with context."""
        return self.source_channels + (1 if self.context is not None else 0)

    def __len__(self) -> int:
        return self._n

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def _h5(self) -> h5py.File:
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            self._file = h5py.File(self.path, "r")
            self._pid = pid
        return self._file

    def close(self) -> None:
        """Close this process's file handle (reopened on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._pid = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def load_all(self) -> "PatchDataset":
        """Read every patch into RAM (one pass over the file), the fastest option when it fits."""
        if self._src is None:
            with h5py.File(self.path, "r") as f:
                self._src = f["source"][...]
                self._tgt = f["target"][...]
        return self

    @property
    def in_memory(self) -> bool:
        return self._src is not None

    def _read(self, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Rows ``idx`` (any order, duplicates allowed) of source and target, one sorted HDF5 selection."""
        if self._src is not None:
            return self._src[idx], self._tgt[idx]
        uniq, inverse = np.unique(idx, return_inverse=True)
        f = self._h5()
        out = []
        for name in ("source", "target"):
            dset = f[name]
            buf = np.empty((len(uniq),) + dset.shape[1:], dset.dtype)
            # One read per run of consecutive rows: much faster than h5py's fancy (point-list) selection.
            for a, b in _runs(uniq):
                dset.read_direct(buf, np.s_[int(uniq[a]) : int(uniq[a]) + (b - a)], np.s_[a:b])
            out.append(buf[inverse] if len(uniq) != len(idx) or np.any(np.diff(idx) <= 0) else buf)
        return out[0], out[1]

    def _with_context(self, src: np.ndarray, idx: np.ndarray) -> np.ndarray:
        from .patches import extract_patches, flip_patches

        ctx = np.empty((len(idx), 1) + src.shape[2:], np.float32)
        cis = self.case_index[idx]
        for ci in np.unique(cis):
            sel = np.flatnonzero(cis == ci)
            rows = idx[sel]
            ctx[sel] = extract_patches(self.context[self.case_ids[ci]], self.corner[rows], self.source_patch)
        ctx = flip_patches(ctx, self.flip_axis, self.flipped[idx])
        return np.concatenate([src.astype(np.float32, copy=False), ctx], axis=1)

    def read_batch(self, indices: Union[Sequence[int], np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
        """A batch as two tensors ``(B, C, S, S, S)``, ``(B, 1, T, T, T)``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"Patch index out of range for {self._n} patches.")
        idx = idx % max(self._n, 1)
        src, tgt = self._read(idx)
        if self.context is not None:
            src = self._with_context(src, idx)
        return torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)), torch.from_numpy(np.ascontiguousarray(tgt, dtype=np.float32))

    def read_block(self, start: int, stop: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Patches ``start:stop`` in one sequential read; the file order is shuffled, so a random block is a random batch."""
        start, stop = max(0, int(start)), min(self._n, int(stop))
        return self.read_batch(np.arange(start, stop))

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        s, t = self.read_batch([int(i)])
        return s[0], t[0]

    def __getitems__(self, indices: Sequence[int]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Batched fetch used by ``DataLoader`` (one HDF5 selection per batch instead of one read per patch)."""
        s, t = self.read_batch(list(indices))
        return list(zip(s.unbind(0), t.unbind(0)))
