"""Whole-volume synthesis: the auto-context stages run one after another over the volume, in exact tiles.

Why tiles are exact: the generator has only valid convolutions, so it is a sliding-window function; an input
tile of ``tile + 2·halo`` voxels gives exactly the ``tile`` output voxels a whole-volume run would give there.
Each output voxel is computed and written once, so there are no seams, no averaging and no zero borders, and
memory is bounded by the tile, not by the volume.

What "whole volume" means (and so what tiled inference reproduces): every stage's input is padded by its halo
with edge values (the volume's border voxels repeated, as training pads its volumes); stage 0 sees the normalised
source, stage k sees ``[source, raw synthesis of stage k−1]``. Only the brain mask's bounding box is needed in
the end, so the last stage is computed over that box and each earlier stage over the box grown by the halos of
the stages after it (clipped to the volume), which is exactly the context the later stages read. Outside the
mask the output is 0 (network units).

Speed (CPU): BatchNorm is folded into the convolutions, each ReLU runs inside its convolution
(``fused_conv.FusedConv3d``), tensors are channels-last 3D (oneDNN's fast layout for
3D convolutions, ~2× over the default layout here) and tiles are processed under ``torch.inference_mode``; tiles
whose voxels cannot reach a masked output are skipped. On CPUs with native bf16 (AVX-512 BF16 or AMX) ``auto``
runs bfloat16 autocast: about 2× faster for a whole volume, and the bundled model's output moves by 0.36 % of its
peak on average (46 dB; Testing/Benchmarks/results/unet_bf16_agreement.txt); other CPUs stay in float32, where bf16
is emulated and slow, and ``precision="fp32"`` keeps tiled output equal to a whole-volume run up to float32 rounding
(a review measured at most 4e-4 of a ~740 output range, session 42).
CUDA uses float16 autocast (error < 5e-5 network units on an H100), larger tiles, retries a batch in float32 if
float16 overflowed, and halves the tile on out-of-memory.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .devices import resolve_device, synthesis_dtype
from .errors import GeometryError, ResourceError, UsageError
from .fused_conv import FusedConv3d
from .left_right import LeftRight
from .models import AutoContextChain
from .progress import progress_event, warning_event
from .unet_inference import stop_if_cancelled, synthesize_unet

ProgressFn = Optional[Callable[[Dict[str, Any]], None]]
CancelFn = Any


#: Output tile edge on CPU. On the 2-core AVX-512 benchmark machine (Testing/Benchmarks/results/inference_cpu.txt)
#: tiles of 48 to 96 cost the same per output voxel (~2 µs, best of 3) and 128 is slower; 64 is chosen because
#: its activations (~130 MB per 64-channel layer) are a third of 96's at the same speed.
CPU_TILE = 64
#: Output tile edge on CUDA: activations of a 160³ output tile (176³ input, 64 channels, fp16) are ~0.7 GB.
CUDA_TILE = 160
#: Small tiles are batched up to this many input voxels per forward call (per-call overhead dominates below).
BATCH_VOXELS = 64**3
#: Smallest tile the out-of-memory retry goes down to before giving up.
MIN_TILE = 16

__all__ = [
    "BATCH_VOXELS",
    "CPU_TILE",
    "CUDA_TILE",
    "MIN_TILE",
    "SynthesisOptions",
    "default_tile",
    "mask_bbox",
    "synthesize_array",
]

Box = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class SynthesisOptions:
    """How to run a synthesis: one object handed down from the folder and file layers to the tile engine,
    so a new option is added in one place instead of in every signature on the way."""

    stages: Optional[int] = None
    device: Union[str, torch.device] = "auto"
    flip_tta: bool = False
    tile: Optional[int] = None
    progress: ProgressFn = None
    cancel: CancelFn = None
    precision: str = "auto"

    def keywords(self) -> Dict[str, Any]:
        """The options as keyword arguments of ``synthesize_array``/``synthesize_volume``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

def default_tile(device: torch.device) -> int:
    """The output tile edge used when none is given: the fastest measured size for the device type."""
    return CUDA_TILE if device.type == "cuda" else CPU_TILE


def mask_bbox(mask: np.ndarray) -> Optional[Box]:
    """Half-open (start, stop) per axis of the mask's bounding box, or None for an empty mask."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def _grow(box: Box, by: int, shape: Sequence[int]) -> Box:
    return tuple((max(0, a - by), min(n, b + by)) for (a, b), n in zip(box, shape))  # type: ignore[return-value]


def _split(length: int, tile: int) -> List[Tuple[int, int]]:
    """Split ``length`` into ceil(length/tile) nearly equal parts (sizes differ by at most one).

    Equal parts (rather than full tiles plus a thin remainder) keep the halo overhead and the number of distinct
    tile shapes (which can be batched together) small.
    """
    n = max(1, math.ceil(length / tile))
    base, extra = divmod(length, n)
    out, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out


class _StageRunner:
    """One generator prepared for inference: BatchNorm folded into the convolutions, each ReLU fused into the
    convolution before it (``FusedConv3d``), channels-last, on device.

    It runs ``Generator.forward`` in eval mode (body, then ``Generator.add_residual``) on a copy of the body, so
    the caller's model is left untouched (it may be in training mode mid-training).
    """

    def __init__(self, gen: nn.Module, device: torch.device, precision: str) -> None:
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        layers = list(gen.body)
        fused: List[nn.Module] = []
        i = 0
        while i < len(layers):
            layer = copy.deepcopy(layers[i]).eval()
            i += 1
            if isinstance(layer, nn.Conv3d) and i < len(layers) and isinstance(layers[i], nn.BatchNorm3d):
                layer = fuse_conv_bn_eval(layer, copy.deepcopy(layers[i]).eval())
                i += 1
            if isinstance(layer, nn.Conv3d) and i < len(layers) and isinstance(layers[i], nn.ReLU):
                layer = FusedConv3d(layer, "relu")
                i += 1
            fused.append(layer)
        self.body = nn.Sequential(*fused).to(device=device, dtype=torch.float32).to(memory_format=torch.channels_last_3d)
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.config = gen.config
        self.halo = int(gen.halo)
        self.add_residual = gen.add_residual
        self.in_channels = int(gen.config.in_channels)
        self.device = device
        self.precision = precision

    def _autocast(self, dtype: Optional[torch.dtype]) -> Any:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _forward(self, x: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
        with self._autocast(dtype):
            out = self.body(x)
        return self.add_residual(x, out.float())[:, 0]

    def __call__(self, batch: np.ndarray, view: LeftRight) -> np.ndarray:
        """(B, C, D, H, W) input tiles → (B, D−2h, H−2h, W−2h) outputs, each tile in the left–right ``view``."""
        x = view.batch(torch.from_numpy(batch).to(self.device, non_blocking=True))
        x = x.contiguous(memory_format=torch.channels_last_3d)
        dtype = synthesis_dtype(self.device, self.precision)
        out = self._forward(x, dtype)
        if dtype is not None and dtype == torch.float16 and not bool(torch.isfinite(out).all()):
            out = self._forward(x, None)
        return view.merged(out).cpu().numpy()


def _gather(arrays: Sequence[np.ndarray], ranges: Sequence[Tuple[int, int]], out: np.ndarray) -> None:
    """Fill ``out`` (C, d, h, w) with the channels cut at ``ranges``, which may run past the arrays: beyond them
    the border voxels are repeated (edge padding), exactly as a whole-volume run pads the volume."""
    shape = arrays[0].shape
    inner = tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(ranges, shape))
    pad = [(max(0, -a), max(0, b - n)) for (a, b), n in zip(ranges, shape)]
    padded = any(p != (0, 0) for p in pad)
    for c, arr in enumerate(arrays):
        block = arr[inner]
        out[c] = np.pad(block, pad, mode="edge") if padded else block


class _Progress:
    """Emits monotone progress events over all stages (an out-of-memory restart never makes them go back)."""

    def __init__(self, callback: ProgressFn, stages: int, first: int = 0) -> None:
        self.callback = callback
        self.stages = stages
        self.first = first
        self.last = -1.0

    def __call__(self, stage: int, done: int, total: int) -> None:
        if self.callback is None:
            return
        stage += self.first
        fraction = (stage + (done / total if total else 1.0)) / self.stages
        if fraction <= self.last:
            return
        self.last = fraction
        self.callback(progress_event("synthesize", done, total, stage=stage, stages=self.stages, fraction=round(fraction, 6)))


@dataclasses.dataclass
class _StageJob:
    """One stage's work: ``out`` (its output region, starting at ``origin`` in the volume and at ``offset`` in
    the ``inputs`` grid) and, with a mask, the reach (sum of later halos) within which its voxels matter."""

    runner: _StageRunner
    inputs: Sequence[np.ndarray]
    offset: Sequence[int]
    out: np.ndarray
    origin: Sequence[int]
    mask: Optional[np.ndarray]
    reach: int
    stage: int


def _needed(job: _StageJob, t: Tuple[Tuple[int, int], ...]) -> bool:
    """Whether any voxel of tile ``t`` can influence a masked output voxel (else it is skipped and left 0).

    A stage-k voxel matters only within ``reach`` of the mask; a computed tile may still read skipped (zero)
    context at its far side, but those of its voxels are themselves beyond reach, so masked outputs stay exact.
    """
    if job.mask is None:
        return True
    sl = tuple(
        slice(max(0, a + o - job.reach), min(n, b + o + job.reach)) for (a, b), o, n in zip(t, job.origin, job.mask.shape)
    )
    return bool(job.mask[sl].any())


def _run_stage(job: _StageJob, tile: int, view: LeftRight, report: _Progress, cancel: CancelFn) -> None:
    """Fill ``job.out`` tile by tile, batching equal-shaped small tiles into one forward call."""
    h = job.runner.halo
    shape = job.out.shape
    tiles = [(z, y, x) for z in _split(shape[0], tile) for y in _split(shape[1], tile) for x in _split(shape[2], tile)]
    budget = max((tile + 2 * h) ** 3, BATCH_VOXELS)
    groups: Dict[Tuple[int, ...], List[Tuple[Tuple[int, int], ...]]] = {}
    for t in tiles:
        if _needed(job, t):
            groups.setdefault(tuple(b - a for a, b in t), []).append(t)
        else:
            job.out[tuple(slice(a, b) for a, b in t)] = 0.0
    total = sum(len(m) for m in groups.values())
    done = 0
    report(job.stage, 0, total)
    for size, members in groups.items():
        per_batch = max(1, budget // int(np.prod([s + 2 * h for s in size])))
        for i in range(0, len(members), per_batch):
            stop_if_cancelled(cancel)
            chunk = members[i : i + per_batch]
            batch = np.empty((len(chunk), len(job.inputs)) + tuple(s + 2 * h for s in size), dtype=np.float32)
            for j, t in enumerate(chunk):
                _gather(job.inputs, [(a + o - h, b + o + h) for (a, b), o in zip(t, job.offset)], batch[j])
            result = job.runner(batch, view)
            for t, r in zip(chunk, result):
                job.out[tuple(slice(a, b) for a, b in t)] = r
            done += len(chunk)
            report(job.stage, done, total)
    stop_if_cancelled(cancel)  # asked during the last batch: stop before the next stage or the write


def synthesize_array(
    chain: AutoContextChain,
    source_norm: np.ndarray,
    mask: Optional[np.ndarray],
    stages: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    tile: Optional[int] = None,
    flip_tta: bool = False,
    progress: ProgressFn = None,
    cancel: CancelFn = None,
    precision: str = "auto",
    mirrored: bool = False,
) -> np.ndarray:
    """Synthesize a whole normalised volume (z, y, x) → float32 network units, 0 outside ``mask``.

    ``stages``: how many auto-context stages to run (None: all of ``chain``). ``tile``: output tile edge
    (None: :func:`default_tile`; a U-Net chain runs its whole frame in one forward unless ``tile`` is given,
    see :mod:`MedSynthLogic.unet_inference`). ``precision``: "auto" (fp32 on CPU, fp16 autocast on CUDA), "fp32", "bf16" or
    "fp16". ``flip_tta`` averages each stage with its left–right (array axis 2) mirror; ``mirrored`` gives the
    mirror image's synthesis, mirrored back, each window mirrored in place (:mod:`.left_right`). ``progress`` gets
    ``{"event": "progress", "task": "synthesize", ...}`` dicts; ``cancel`` (a callable or an Event) is checked
    between tiles and raises :class:`Cancelled`. ``mask`` None means the whole volume (raw, unmasked output —
    what auto-context training uses as the next stage's context). A chain with a prior model runs all of the
    prior's stages first (its progress counts as the first stages) and gives their synthesis to its stage 0.
    """
    src = np.asarray(source_norm)
    if src.ndim != 3:
        raise UsageError(f"synthesize_array needs a 3D (z, y, x) array, got shape {src.shape}.")
    src = np.ascontiguousarray(src, dtype=np.float32)
    if mask is None:
        mask_arr = None
        box: Optional[Box] = tuple((0, n) for n in src.shape)  # type: ignore[assignment]
    else:
        mask_arr = np.asarray(mask).astype(bool, copy=False)
        if mask_arr.shape != src.shape:
            raise GeometryError(f"The mask's shape {mask_arr.shape} differs from the source's {src.shape}.")
        box = mask_bbox(mask_arr)
    available = len(chain.stages)
    n = available if stages is None else int(stages)
    if not 1 <= n <= available:
        raise UsageError(f"The model has {available} auto-context stage(s); {stages} were asked for.")
    view = LeftRight.chosen(flip_tta, mirrored)
    dev = resolve_device(device)
    synthesis_dtype(dev, precision)  # refuses an unknown precision (or bf16 on a GPU without it) before any work
    if tile is not None and int(tile) < 1:
        raise UsageError(f"The tile size must be positive, got {tile}.")
    before = 0 if chain.prior is None else len(chain.prior.stages)
    report = _Progress(progress, before + n, first=before)
    if box is None:
        report(n - 1, 1, 1)
        return np.zeros(src.shape, dtype=np.float32)
    context = None
    if chain.prior is not None:
        prior_report = None if progress is None else _PriorProgress(progress, before, before + n)
        context = synthesize_array(chain.prior, src, mask_arr, None, device, tile, flip_tta, prior_report, cancel, precision,
                                   mirrored)
    if chain.config.generator.kind == "unet3d":
        limits = {} if tile is None else {"tile": int(tile), "max_voxels": int(tile) ** 3}

        def run(on: torch.device, arithmetic: str) -> np.ndarray:
            try:
                return synthesize_unet(chain, src, mask_arr, box, n, on, arithmetic, view, report, cancel,
                                       context=context, **limits)
            except torch.cuda.OutOfMemoryError as exc:  # its tiles cannot shrink below its field: no halving here
                torch.cuda.empty_cache()
                raise _GpuOutOfMemory(ResourceError("The GPU ran out of memory for the U-Net's forward over the brain.",
                                                    "Close other GPU programs or run on the CPU (--device cpu).",
                                                    reason="out_of_memory")) from exc
    else:
        first_tile = default_tile(dev) if tile is None else int(tile)

        def run(on: torch.device, arithmetic: str) -> np.ndarray:
            return _synthesize_on(chain, src, mask_arr, box, n, on, first_tile if on == dev else default_tile(on), view,
                                  report, cancel, arithmetic)
    try:
        return run(dev, precision)
    except _GpuOutOfMemory as exc:
        if dev.type == "cpu" or not (isinstance(device, str) and device.strip().lower() == "auto"):
            raise exc.error from exc
        # "auto" promised a result, not a GPU: say so and finish on the CPU rather than fail after the GPU tried.
        if progress is not None:
            progress(warning_event("synthesize", f"{exc.error.message} Falling back to the CPU (slower)."))
        torch.cuda.empty_cache()
        return run(torch.device("cpu"), "auto" if precision == "fp16" else precision)  # fp16 is a GPU arithmetic


class _PriorProgress:
    """A prior model's progress events as the first ``prior`` of ``total`` stages of the whole synthesis."""

    def __init__(self, callback: Callable[[Dict[str, Any]], None], prior: int, total: int) -> None:
        self.callback, self.share = callback, prior / total
        self.total = total

    def __call__(self, event: Dict[str, Any]) -> None:
        if "fraction" in event:
            event = dict(event, stages=self.total, fraction=round(event["fraction"] * self.share, 6))
        self.callback(event)


class _GpuOutOfMemory(Exception):
    """The GPU ran out of memory even at MIN_TILE; carries the ResourceError to raise if no fallback is allowed."""

    def __init__(self, error: ResourceError) -> None:
        super().__init__(str(error))
        self.error = error


def _synthesize_on(
    chain: AutoContextChain,
    src: np.ndarray,
    mask_arr: Optional[np.ndarray],
    box: Box,
    n: int,
    dev: torch.device,
    tile: int,
    view: LeftRight,
    report: _Progress,
    cancel: CancelFn,
    precision: str,
) -> np.ndarray:
    """The body of :func:`synthesize_array` on one device (so a GPU out-of-memory can be redone on the CPU)."""
    result = np.zeros(src.shape, dtype=np.float32)
    runners = [_StageRunner(chain.stages[k], dev, precision) for k in range(n)]
    # Output region of each stage: the last one is the mask's box, each earlier one grows by the later halos.
    regions: List[Box] = [box] * n
    for k in range(n - 2, -1, -1):
        regions[k] = _grow(regions[k + 1], runners[k + 1].halo, src.shape)
    in_region = _grow(regions[0], runners[0].halo, src.shape)

    prev: Optional[np.ndarray] = None
    with torch.inference_mode():
        for k, runner in enumerate(runners):
            region = regions[k]
            src_view = src[tuple(slice(a, b) for a, b in in_region)]
            if runner.in_channels == 1:
                inputs = [src_view]
            elif prev is not None:
                inputs = [src_view, prev]
            else:
                raise UsageError("Stage 0 of the chain expects 2 input channels; this is not an auto-context chain.")
            offset = [r[0] - i[0] for r, i in zip(region, in_region)]
            if k == n - 1:
                out = result[tuple(slice(a, b) for a, b in region)]
            else:
                out = np.empty(tuple(b - a for a, b in region), dtype=np.float32)
            reach = sum(r.halo for r in runners[k + 1 :])
            job = _StageJob(runner, inputs, offset, out, [a for a, _ in region], mask_arr, reach, k)
            tile = _run_stage_with_retry(job, tile, view, report, cancel)
            prev, in_region = out, region
    if mask_arr is not None:
        sl = tuple(slice(a, b) for a, b in box)
        result[sl] *= mask_arr[sl]
    return result


def _run_stage_with_retry(job: _StageJob, tile: int, view: LeftRight, report: _Progress, cancel: CancelFn) -> int:
    """Run a stage; on GPU out-of-memory halve the tile and redo the stage, down to MIN_TILE, then give up
    with :class:`_GpuOutOfMemory` (which :func:`synthesize_array` turns into a CPU run or a ResourceError).

    Returns the tile size that worked, so later stages start from it.
    """
    while True:
        try:
            _run_stage(job, tile, view, report, cancel)
            return tile
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            if tile // 2 < MIN_TILE:
                raise _GpuOutOfMemory(
                    ResourceError(
                        f"The GPU ran out of memory even with {tile}³ tiles.",
                        "Close other GPU programs or run on the CPU (--device cpu).",
                        reason="out_of_memory",  # the panel words its own advice (a device to pick, no flag)
                    )
                ) from exc
            tile //= 2
        except (MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "alloc" not in str(exc).lower():
                raise
            raise ResourceError(
                f"Not enough memory for {tile}³ tiles on {job.runner.device}.", "Pass a smaller --tile or free memory."
            ) from exc

