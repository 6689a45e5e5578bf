"""Whole-volume synthesis with the U-Net generator kind: one forward over the brain's frame, or exact tiles.

The frame: the brain mask's bounding box grown by ``MARGIN`` voxels, each edge rounded up to a multiple of the
U-Net's downsampling; beyond the volume the frame holds zeros, as the training crops do (their windows pass the
volume's edges with zeros: a brain cut by the field of view, as in 10 of the 14 BraTS cases, had its bottom slice
repeated below it at inference, an input the network never trained on). Every stage runs over
the same frame; stage k sees ``[source, synthesis of stage k−1 inside the mask]``, exactly as training builds
its context. When the frame holds more than ``max_voxels`` it is cut into tiles whose input windows reach
``GeneratorConfig.tile_halo`` (the receptive radius, on the downsampling grid) past the tile and stop at the frame's
edges, so each tile sees what a whole-frame run sees: tiled output equals the whole-frame output (to float
rounding, without flip averaging), and memory is bounded by the largest window (the tile plus the halo on each
side, at most the frame). A halo is wide (128 voxels for the bundled refiner), so on a brain-sized frame a window
is the whole frame whatever the tile: then tiles would repeat the whole forward once per tile for no memory saved,
and the frame runs in one forward instead.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .devices import synthesis_dtype
from .errors import Cancelled
from .left_right import LeftRight
from .patches import cut_window
from .unet_folding import inference_copy

#: Context around the brain box (voxels) so the network's own zero padding stays off the brain's edge.
MARGIN = 16
#: A frame up to this many voxels runs in one forward (a 256³ frame at 16 channels is ~1 GB per activation).
UNET_MAX_VOXELS = 256**3
#: Tile edge when a frame is too large (a multiple of every supported downsampling).
UNET_TILE = 128

Box = Tuple[Tuple[int, int], ...]
Report = Callable[[int, int, int], None]


def frame_of(box: Box, shape: Sequence[int], multiple: int, margin: int = MARGIN) -> Box:
    """The frame around ``box``: grown by ``margin``, each edge rounded up to ``multiple`` (centred, may pass the volume)."""
    frame = []
    for (a, b), _n in zip(box, shape):
        a, b = a - margin, b + margin
        extra = -(b - a) % multiple
        a -= extra // 2
        frame.append((a, b + extra - extra // 2))
    return tuple(frame)


def tiles_of(size: int, tile: int, multiple: int) -> List[Tuple[int, int]]:
    """Split ``size`` (a multiple of ``multiple``) into nearly equal parts of at most ``tile``, on the ``multiple`` grid."""
    units = size // multiple
    n = max(1, math.ceil(size / tile))
    base, extra = divmod(units, n)
    out, start = [], 0
    for i in range(n):
        stop = start + (base + (1 if i < extra else 0)) * multiple
        out.append((start, stop))
        start = stop
    return out


class _Runner:
    """One U-Net stage on ``device``: an eval-mode inference copy (``unet_folding``), channels-last, autocast by
    ``precision``, in the left–right ``view``. The caller's generator is left untouched (it may be mid-training)."""

    def __init__(self, gen: nn.Module, device: torch.device, precision: str, view: LeftRight) -> None:
        self.gen, self.device, self.view = inference_copy(gen), device, view
        self.dtype = synthesis_dtype(device, precision)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = self.view.batch(torch.from_numpy(x[None]).to(self.device)).contiguous(memory_format=torch.channels_last_3d)
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with ctx:
            out = self.gen(t).float()[:, 0]
        if self.dtype == torch.float16 and not bool(torch.isfinite(out).all()):  # fp16 overflowed: float32 again
            out = self.gen(t).float()[:, 0]
        return self.view.merged(out)[0].cpu().numpy()


def _run_stage(runner: _Runner, inputs: np.ndarray, halo: int, multiple: int, max_voxels: int, tile: int,
               stage: int, report: Report, cancel: Any) -> np.ndarray:
    """One stage over the frame ``inputs`` (C, Z, Y, X): one forward, or tiles whose windows stop at the frame."""
    shape = inputs.shape[1:]
    grid = [(z, y, x) for z in tiles_of(shape[0], tile, multiple) for y in tiles_of(shape[1], tile, multiple)
            for x in tiles_of(shape[2], tile, multiple)]
    windows = [tuple((max(0, a - halo), min(n, b + halo)) for (a, b), n in zip(t, shape)) for t in grid]
    covers_frame = any(all(b - a == n for (a, b), n in zip(w, shape)) for w in windows)
    if int(np.prod(shape)) <= max_voxels or covers_frame:
        report(stage, 0, 1)
        out = runner(inputs)
        stop_if_cancelled(cancel)  # asked during the one forward: stop before the next stage or the write
        report(stage, 1, 1)
        return out
    out = np.empty(shape, dtype=np.float32)
    report(stage, 0, len(grid))
    for i, (t, window) in enumerate(zip(grid, windows)):
        stop_if_cancelled(cancel)
        result = runner(inputs[(slice(None),) + tuple(slice(a, b) for a, b in window)])
        inner = tuple(slice(a - w, b - w) for (a, b), (w, _) in zip(t, window))
        out[tuple(slice(a, b) for a, b in t)] = result[inner]
        report(stage, i + 1, len(grid))
    stop_if_cancelled(cancel)  # asked during the last tile's forward, as above
    return out


def is_cancelled(cancel: Any) -> bool:
    """Whether a synthesis was asked to stop: ``cancel`` is None, an Event-like object, or a callable."""
    if cancel is None:
        return False
    return bool(cancel.is_set()) if hasattr(cancel, "is_set") else bool(cancel())


def stop_if_cancelled(cancel: Any) -> None:
    """Raise :class:`Cancelled` when the synthesis was asked to stop (checked before and after every forward)."""
    if is_cancelled(cancel):
        raise Cancelled("Synthesis cancelled.")


def synthesize_unet(
    chain: nn.Module,
    src: np.ndarray,
    mask: Optional[np.ndarray],
    box: Box,
    stages: int,
    device: torch.device,
    precision: str,
    view: LeftRight,
    report: Report,
    cancel: Any,
    max_voxels: int = UNET_MAX_VOXELS,
    tile: int = UNET_TILE,
    margin: int = MARGIN,
    context: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Stages 0..stages−1 of a U-Net chain over the frame of ``box``; float32 network units, 0 outside ``mask``.

    ``context``: a prior model's whole-volume synthesis (0 outside ``mask``), stage 0's second channel.

    ``margin`` is there for measuring, not tuning: the output depends on it everywhere in the brain, because the
    receptive field spans the whole frame (``Testing/Benchmarks/unet_frame_margin.py``).
    """
    cfg = chain.config.generator
    multiple, halo = cfg.size_multiple, cfg.tile_halo
    frame = frame_of(box, src.shape, multiple, margin)
    src_f = cut_window(src, frame, mode="constant").astype(np.float32, copy=False)
    mask_f = cut_window(mask.astype(np.float32), frame, mode="constant") if mask is not None else None
    tile = max(multiple, tile // multiple * multiple)
    prev = None if context is None else cut_window(context.astype(np.float32, copy=False), frame, mode="constant")
    with torch.inference_mode():
        for k in range(stages):
            channels = [src_f] if prev is None else [src_f, prev]
            runner = _Runner(chain.stages[k], device, precision, view)
            out = _run_stage(runner, np.stack(channels), halo, multiple, max_voxels, tile, k, report, cancel)
            prev = out * mask_f if mask_f is not None else out
    result = np.zeros(src.shape, dtype=np.float32)
    inside = tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(frame, src.shape))
    offset = tuple(slice(s.start - a, s.stop - a) for s, (a, _) in zip(inside, frame))
    result[inside] = prev[offset]
    if mask is not None:
        result *= mask
    return result
