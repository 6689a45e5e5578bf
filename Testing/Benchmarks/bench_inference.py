"""Benchmark whole-volume inference (a script, not a test).

Measures, on a 240×240×155 volume with the default 3-stage ModelConfig (random but fixed weights, eval mode):
  (a) MedSynth's tiled inference (MedSynthLogic.inference.synthesize_array), wall and CPU time, voxels/s;
  (b) a reference-style loop as the public reference code does it — one 32³ patch at a time, stride 8, 16³
      outputs accumulated and overlaps averaged, stage after stage over the same region — timed over a fixed
      sample of patches and EXTRAPOLATED to the full patch count (running it fully takes hours on a CPU);
  (c) the machine's dense Conv3d throughput (GFLOP/s) and the fraction of it our inference reaches;
  (d) the same volume with the default unet3d generator (``--unet-stages`` auto-context stages, random fixed
      weights): one forward per stage over the brain's frame.

    python Testing/Benchmarks/bench_inference.py                     # CPU, prints a report
    python Testing/Benchmarks/bench_inference.py --tiles 64,96,128   # tile-size sweep
    python Testing/Benchmarks/bench_inference.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from MedSynthLogic import inference, tiled_synthesis  # noqa: E402
from MedSynthLogic.config import GeneratorConfig, ModelConfig, load_json_config  # noqa: E402
from MedSynthLogic.devices import arithmetic_name, resolve_device  # noqa: E402
from MedSynthLogic.left_right import LeftRight  # noqa: E402
from MedSynthLogic.models import build_generators, conv_flops_per_voxel  # noqa: E402
from MedSynthLogic.normalisation import brain_mask, normalise_source  # noqa: E402
from _machine import cpu_model, ram_gib, simd_flags  # noqa: E402

BRATS = Path(os.environ.get("MEDSYNTH_BRATS", REPO.parent / "shared" / "data" / "brats18"))
SHAPE = (155, 240, 240)


def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    info: Dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if simd_flags():
        info["cpu_simd"] = simd_flags()
    if ram_gib() is not None:
        info["ram_gib"] = ram_gib()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_source() -> Tuple[np.ndarray, str]:
    """A real BraTS T1ce when available, else the phantom padded/resized to 240×240×155."""
    cases = sorted(BRATS.glob("*/*_t1ce.nii*")) if BRATS.is_dir() else []
    if cases:
        from MedSynthLogic.volume_io import read_volume

        vol = read_volume(cases[0])
        return vol.array, f"BraTS {cases[0].name} {vol.shape}"
    from MedSynthLogic.phantom import make_phantom

    ph = make_phantom(shape=(120, 180, 160), seed=0)
    out = np.zeros(SHAPE, np.float32)
    a = ph.t1ce.array
    off = [(s - n) // 2 for s, n in zip(SHAPE, a.shape)]
    out[off[0] : off[0] + a.shape[0], off[1] : off[1] + a.shape[1], off[2] : off[2] + a.shape[2]] = a
    return out, f"phantom {a.shape} padded to {SHAPE}"


def stage_regions(mask: np.ndarray, halos: List[int]) -> List[Tuple[Tuple[int, int], ...]]:
    """The output region of each stage, as synthesize_array computes it (box grown by the later halos)."""
    box = inference.mask_bbox(mask)
    regions = [box] * len(halos)
    for k in range(len(halos) - 2, -1, -1):
        regions[k] = tiled_synthesis._grow(regions[k + 1], halos[k + 1], mask.shape)
    return regions


class FlopCounter:
    """Counts what the tiles really compute by wrapping the stage runner: executed FLOPs layer by layer (the halo
    each tile recomputes included) and useful FLOPs (one generator evaluation per computed output voxel)."""

    def __init__(self) -> None:
        self.executed = 0.0
        self.useful = 0.0
        self.tiles = 0
        self._orig = tiled_synthesis._StageRunner.__call__

    def __enter__(self) -> "FlopCounter":
        counter, orig = self, self._orig

        def counted(runner, batch, view):
            n = batch.shape[0] * view.forwards
            size = list(batch.shape[2:])
            cin = batch.shape[1]
            for layer in runner.body:
                layer = getattr(layer, "conv", layer)  # inference runs FusedConv3d(conv) layers
                if isinstance(layer, nn.Conv3d):
                    k, d = layer.kernel_size[0], layer.dilation[0]
                    size = [s - d * (k - 1) for s in size]
                    counter.executed += n * 2.0 * cin * layer.out_channels * k**3 * float(np.prod(size))
                    cin = layer.out_channels
            counter.useful += n * conv_flops_per_voxel(runner.config) * float(np.prod(size))
            counter.tiles += batch.shape[0]
            return orig(runner, batch, view)

        tiled_synthesis._StageRunner.__call__ = counted
        return self

    def __exit__(self, *exc: Any) -> None:
        tiled_synthesis._StageRunner.__call__ = self._orig


def conv_peak(device: torch.device, seconds: float = 3.0) -> float:
    """GFLOP/s of a large dense 64→64 3³ Conv3d (the generator's dominant layer type), best of several runs."""
    conv = nn.Conv3d(64, 64, 3, bias=False).to(device).eval()
    n = 56 if device.type == "cpu" else 128
    x = torch.randn(1, 64, n, n, n, device=device)
    dtype = torch.float16 if device.type == "cuda" else None
    conv = conv.to(memory_format=torch.channels_last_3d)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    flops = 2.0 * 64 * 64 * 27 * (n - 2) ** 3
    best = float("inf")
    end = time.perf_counter() + seconds
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        conv(x)
        while time.perf_counter() < end or best == float("inf"):
            _sync(device)
            t = time.perf_counter()
            conv(x)
            _sync(device)
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(chain, src, mask, device, tile, precision) -> Dict[str, float]:
    """Our 3-stage tiled inference: wall and CPU seconds (one warm-up on a small crop first) and FLOP counts."""
    inference.synthesize_array(chain, src[60:100, 100:140, 100:140], None, stages=len(chain.stages), device=device, tile=tile, precision=precision)
    _sync(device)
    with FlopCounter() as flops:
        wall, cpu = time.perf_counter(), time.process_time()
        out = inference.synthesize_array(chain, src, mask, stages=len(chain.stages), device=device, tile=tile, precision=precision)
        _sync(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "tiles": flops.tiles, "useful_flops": flops.useful,
            "executed_flops": flops.executed, "checksum": float(np.abs(out).sum())}


def reference_style(chain, src, mask, device, sample: int, seed: int = 0) -> Dict[str, Any]:
    """The reference code's loop, timed over ``sample`` patches per stage and extrapolated.

    Per stage: pad the volume by the halo (edge), slide a 32³ window with stride 8 over the mask's box, run the
    generator on each patch alone (batch 1, eval, no_grad), add its 16³ output into a sum volume and a count
    volume; the stage output is sum / count. Stage k > 0 gets [source, previous output] as input.
    """
    cfg = chain.config
    src_p, out_p, stride = cfg.source_patch, cfg.target_patch, 8
    h = cfg.generator.halo
    box = inference.mask_bbox(mask)
    starts = [list(range(a, max(a, b - out_p) + 1, stride)) for a, b in box]
    for axis, (a, b) in enumerate(box):
        if starts[axis][-1] + out_p < b:
            starts[axis].append(b - out_p)
    per_stage = int(np.prod([len(s) for s in starts]))
    rng = np.random.default_rng(seed)
    positions = np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, 3)
    chosen = positions[rng.choice(len(positions), size=min(sample, len(positions)), replace=False)]
    padded_src = np.pad(src, h, mode="edge")
    prev = np.pad(src, h, mode="edge")
    times = []
    with torch.no_grad():
        for k, gen in enumerate(chain.stages):
            acc = np.zeros(src.shape, np.float32)
            cnt = np.zeros(src.shape, np.float32)
            chans = [padded_src] if k == 0 else [padded_src, prev]
            gen(torch.zeros((1, len(chans), src_p, src_p, src_p), device=device))
            _sync(device)
            t = time.perf_counter()
            for z, y, x in chosen:
                patch = np.stack([c[z : z + src_p, y : y + src_p, x : x + src_p] for c in chans])[None]
                pred = gen(torch.from_numpy(np.ascontiguousarray(patch)).to(device))[0, 0].cpu().numpy()
                acc[z : z + out_p, y : y + out_p, x : x + out_p] += pred
                cnt[z : z + out_p, y : y + out_p, x : x + out_p] += 1
            _sync(device)
            times.append((time.perf_counter() - t) / len(chosen))
            prev = np.pad(np.divide(acc, cnt, out=np.zeros_like(acc), where=cnt > 0), h, mode="edge")
    total_patches = per_stage * len(chain.stages)
    seconds = sum(t * per_stage for t in times)
    return {
        "patches_per_stage": per_stage,
        "patches_total": total_patches,
        "patches_timed": len(chosen) * len(chain.stages),
        "seconds_per_patch": [round(t, 5) for t in times],
        "extrapolated_s": seconds,
    }


def computed_voxels(mask: np.ndarray, halos: List[int], tile: int) -> List[float]:
    """Output voxels each stage computes for ``tile`` (tiles beyond the mask's reach are skipped), no network run."""
    regions = stage_regions(mask, halos)
    voxels = []
    for k, region in enumerate(regions):
        reach = sum(halos[k + 1 :])
        total = 0.0
        for z in tiled_synthesis._split(region[0][1] - region[0][0], tile):
            for y in tiled_synthesis._split(region[1][1] - region[1][0], tile):
                for x in tiled_synthesis._split(region[2][1] - region[2][0], tile):
                    t = (z, y, x)
                    sl = tuple(slice(max(0, a + r[0] - reach), min(n, b + r[0] + reach)) for (a, b), r, n in zip(t, region, mask.shape))
                    if mask[sl].any():
                        total += float(np.prod([b - a for a, b in t]))
        voxels.append(total)
    return voxels


def tile_sweep(chain, mask: np.ndarray, device: torch.device, tiles: List[int], repeats: int = 3) -> List[Dict[str, Any]]:
    """Predict each tile size's whole-volume time from the best of ``repeats`` single-tile forwards (robust to
    other jobs on a shared machine: the minimum is the uncontended time) × the voxels that size computes."""
    halos = [g.halo for g in chain.stages]
    out = []
    with torch.inference_mode():
        for tile in tiles:
            per_voxel = []
            for k in (0, 1):
                runner = tiled_synthesis._StageRunner(chain.stages[k], device, "auto")
                n = tile + 2 * runner.halo
                batch = np.random.default_rng(0).random((1, runner.in_channels, n, n, n), dtype=np.float32)
                runner(batch, LeftRight.PLAIN)
                best = float("inf")
                for _ in range(repeats):
                    _sync(device)
                    t = time.perf_counter()
                    runner(batch, LeftRight.PLAIN)
                    _sync(device)
                    best = min(best, time.perf_counter() - t)
                per_voxel.append(best / tile**3)
            vox = computed_voxels(mask, halos, tile)
            predicted = vox[0] * per_voxel[0] + sum(v * per_voxel[1] for v in vox[1:])
            out.append({"tile": tile, "us_per_voxel": [round(1e6 * p, 3) for p in per_voxel],
                        "computed_mvox": [round(v / 1e6, 3) for v in vox], "predicted_s": predicted})
            print(f"    tile {tile}: best-of-{repeats} forward {out[-1]['us_per_voxel']} µs/output voxel (1ch, 2ch); "
                  f"computes {out[-1]['computed_mvox']} Mvox per stage → predicted {predicted:.1f} s", flush=True)
    return out


def unet_row(src: np.ndarray, mask: np.ndarray, device: torch.device, stages: int, precision: str,
             generator: GeneratorConfig | None = None) -> Dict[str, Any]:
    """Wall time of a unet3d chain (default: the default unet3d generator; random fixed weights) over the same volume."""
    generator = generator or GeneratorConfig(kind="unet3d", residual=False)
    cfg = ModelConfig(generator=generator, stages=stages, source_patch=96)
    torch.manual_seed(0)
    chain = build_generators(cfg).eval().to(device)
    _sync(device)
    t = time.perf_counter()
    inference.synthesize_array(chain, src, mask, device=device, precision=precision)
    _sync(device)
    wall = time.perf_counter() - t
    return {"stages": stages, "precision": precision, "wall_s": wall, "kflop_per_voxel": conv_flops_per_voxel(cfg.generator) / 1e3,
            "receptive_field": cfg.generator.receptive_field, "channels": list(cfg.generator.unet_channels)}


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiles", default=None, help="comma-separated output tile edges to compare (default: the default tile)")
    ap.add_argument("--sweep", default=None, help="comma-separated tile sizes to compare by best-of-3 tile timing")
    ap.add_argument("--repeats", type=int, default=1, help="full runs per tile; the best is reported")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--compare-precision", action="store_true",
                    help="also time reduced precision (bf16 on CPU, fp16 on CUDA) and report its error vs fp32")
    ap.add_argument("--ref-patches", type=int, default=40, help="patches per stage timed for the reference-style loop")
    ap.add_argument("--unet-stages", type=int, default=2, help="stages of the unet3d row (d); 0 skips it")
    ap.add_argument("--unet-config", default=None,
                    help="model config JSON whose unet3d generator row (d) times (default: the default unet3d generator)")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    info = machine()
    info["loadavg_start"] = os.getloadavg()
    raw, what = load_source()
    cfg = ModelConfig()
    torch.manual_seed(0)
    chain = build_generators(cfg).eval().to(device)
    mask = brain_mask(raw, cfg.normalisation.mask_threshold)
    src = normalise_source(raw, mask, cfg.normalisation)
    src = src[0] if isinstance(src, tuple) else src
    halos = [g.halo for g in chain.stages]
    regions = stage_regions(mask, halos)
    box = regions[-1]
    box_vox = float(np.prod([b - a for a, b in box]))
    vol_vox = float(np.prod(src.shape))
    print(f"MedSynth inference benchmark — {what}, device {device}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"model: default ModelConfig, {cfg.stages} stages, halo {halos[0]}, random fixed weights (seed 0), eval mode")
    print(f"mask box {[b - a for a, b in box]} = {box_vox / 1e6:.2f} Mvox; per-stage regions (box grown by later halos): "
          + ", ".join(f"{np.prod([b - a for a, b in r]) / 1e6:.2f}" for r in regions) + " Mvox")

    peak = conv_peak(device)

    sweep = None
    if args.sweep:
        print("tile sweep (prediction from single-tile timings; robust to other jobs sharing the CPU):")
        sweep = tile_sweep(chain, mask, device, [int(t) for t in args.sweep.split(",")])
    tiles = [int(t) for t in args.tiles.split(",")] if args.tiles else [inference.default_tile(device)]
    runs = []
    for tile in tiles:
        peak_now = conv_peak(device, seconds=1.5)
        peak = max(peak, peak_now)
        r = min((ours(chain, src, mask, device, tile, args.precision) for _ in range(max(1, args.repeats))), key=lambda r: r["wall_s"])
        useful, executed = r["useful_flops"], r["executed_flops"]
        r.update(
            tile=tile,
            precision=args.precision,
            vox_per_s=vol_vox / r["wall_s"],
            box_vox_stages_per_s=box_vox * cfg.stages / r["wall_s"],
            useful_gflops=useful / r["wall_s"] / 1e9,
            executed_gflops=executed / r["wall_s"] / 1e9,
            conv_peak_adjacent_gflops=peak_now,
        )
        runs.append(r)
        print(
            f"(a) ours, tile {tile}, {args.precision} = {arithmetic_name(device, args.precision)}: {r['wall_s']:.1f} s wall ({r['cpu_s']:.1f} s CPU) for {cfg.stages} stages, {r['tiles']} tiles "
            f"= {r['vox_per_s'] / 1e6:.2f} Mvox/s of the {vol_vox / 1e6:.2f} Mvox volume "
            f"({r['box_vox_stages_per_s'] / 1e6:.2f} M box-voxel-stages/s); "
            f"{r['useful_gflops']:.1f} GFLOP/s useful, {r['executed_gflops']:.1f} executed incl. tile halos "
            f"(dense conv measured just before: {peak_now:.1f} GFLOP/s)",
            flush=True,
        )
    best = min(runs, key=lambda r: r["wall_s"])
    print(f"(c) dense Conv3d 64→64 3³ throughput, best measured during the run: {peak:.1f} GFLOP/s"
          + (" (fp16)" if device.type == "cuda" else " (fp32, channels-last)")
          + f"; ours reaches {100 * best['useful_gflops'] / peak:.0f}% of it counting useful FLOPs, "
          f"{100 * best['executed_gflops'] / peak:.0f}% counting executed FLOPs")

    low = None
    if args.compare_precision:
        low_name = "fp16" if device.type == "cuda" else "bf16"
        fp32_out = inference.synthesize_array(chain, src, mask, device=device, tile=best["tile"], precision="fp32")
        _sync(device)
        t = time.perf_counter()
        low_out = inference.synthesize_array(chain, src, mask, device=device, tile=best["tile"], precision=low_name)
        _sync(device)
        low_s = time.perf_counter() - t
        err = np.abs(low_out - fp32_out)[mask]
        low = {"precision": low_name, "wall_s": low_s, "max_abs_err": float(err.max()), "mean_abs_err": float(err.mean()),
               "range": float(np.abs(fp32_out[mask]).max())}
        print(f"    {low_name} autocast, tile {best['tile']}: {low_s:.1f} s; error vs fp32 inside the mask: max "
              f"{low['max_abs_err']:.4f}, mean {low['mean_abs_err']:.5f} network units (output range {low['range']:.2f})")

    ref = reference_style(chain, src, mask, device, args.ref_patches)
    ratio = ref["extrapolated_s"] / best["wall_s"]
    print(
        f"(b) reference-style loop (32³ patches one at a time, stride 8, 16³ outputs averaged): EXTRAPOLATED from "
        f"{ref['patches_timed']} timed patches ({args.ref_patches} per stage; s/patch per stage {ref['seconds_per_patch']}) "
        f"to {ref['patches_total']} patches ({ref['patches_per_stage']} per stage over the same box): "
        f"{ref['extrapolated_s']:.0f} s ≈ {ref['extrapolated_s'] / 3600:.2f} h"
    )
    print(f"    ratio reference-style / ours (tile {best['tile']}): {ratio:.0f}×")
    unet = None
    if args.unet_stages > 0:
        generator = load_json_config(args.unet_config, ModelConfig).generator if args.unet_config else None
        unet = unet_row(src, mask, device, args.unet_stages, args.precision, generator)
        print(f"(d) unet3d {unet['channels']}, {unet['stages']} stages, {args.precision} = {arithmetic_name(device, args.precision)} (receptive field {unet['receptive_field']}, "
              f"{unet['kflop_per_voxel']:.0f} kFLOP per voxel per stage): {unet['wall_s']:.1f} s wall "
              f"(paper FCN, {cfg.stages} stages: {best['wall_s']:.1f} s; reference-style loop: {ref['extrapolated_s']:.0f} s)", flush=True)
    info["loadavg_end"] = os.getloadavg()
    print(f"load average at start {info['loadavg_start']}, at end {info['loadavg_end']} (other jobs share this machine)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"source": what, "machine": info, "conv_peak_gflops": peak, "tile_sweep": sweep, "ours": runs, "reduced_precision": low,
                        "reference_style": ref, "ratio": ratio, "unet3d": unet}, indent=2),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
