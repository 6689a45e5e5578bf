"""Training throughput of one full GAN step, for either generator kind: iterations/s, samples/s, voxels/s, FLOP/s.

One step = G forward, D update on [real, fake], G update with adversarial + pixel + GDL, exactly
``StageTrainer.step``. Random inputs are used so the figure is the model's cost, not the disk's. G's FLOP/s
(forward + backward ≈ 3 × forward) is set against the machine's measured 3D-convolution peak in the same precision
(``--peak``: one large 3³ convolution timed alone), so the figure says how close to the hardware the step runs.

    python Testing/Benchmarks/bench_training.py                                   # paper FCN, CPU, batch 32
    python Testing/Benchmarks/bench_training.py --kind unet3d --batch 1 --crop 96  # the U-Net on 96³ crops
    python Testing/Benchmarks/bench_training.py --device cuda                      # GPU with mixed precision
    python Testing/Benchmarks/bench_training.py --kind unet3d --batch 1 --layout ncdhw  # the U-Net's old CPU layout
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from MedSynthLogic import models  # noqa: E402
from MedSynthLogic.config import GeneratorConfig, ModelConfig, TrainConfig  # noqa: E402
from MedSynthLogic.devices import PRECISIONS, resolve_device  # noqa: E402
from MedSynthLogic.distributed import DistContext  # noqa: E402
from MedSynthLogic.models import build_discriminator, build_generator, conv_flops_per_voxel, count_parameters  # noqa: E402
from MedSynthLogic.stage_trainer import StageTrainer, amp_settings  # noqa: E402
from _machine import cpu_model  # noqa: E402


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = cpu_model()
    load = ", load average %.1f (other jobs share this machine)" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}{load}"


def model_config(kind: str, crop: int) -> ModelConfig:
    if kind == "unet3d":
        return ModelConfig(generator=GeneratorConfig(kind="unet3d", residual=False), source_patch=crop)
    return ModelConfig()


def conv_peak_flops(device: torch.device, channels: int = 32, size: int = 48, repeats: int = 3, dtype: Optional[torch.dtype] = None) -> float:
    """FLOP/s of one 3³ convolution (channels→channels on size³), best of ``repeats``: the machine's conv peak.

    ``dtype`` bfloat16/float16 times it under autocast, as the training step runs, so a bf16 step is set against the
    bf16 peak (on CPUs with AVX-512 BF16 it is several times the float32 one).
    """
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1).to(device)
    x = torch.rand(1, channels, size, size, size, device=device)
    best = float("inf")
    ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        conv(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            conv(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * channels * channels * 27 * size**3 / best


def bench(device: torch.device, kind: str, crop: int, batch: int, stage: int, iterations: int, warmup: int, precision: str) -> dict:
    cfg = model_config(kind, crop)
    torch.manual_seed(0)
    gen = build_generator(cfg.stage_generator(stage)).to(device).train()
    disc = build_discriminator(cfg).to(device).train()
    train_cfg = TrainConfig(precision=precision, lr_g=5e-4, lr_d=1e-4)
    trainer = StageTrainer(gen, disc, cfg, train_cfg, DistContext(device=device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    s, t = cfg.source_patch, cfg.target_patch
    src = torch.rand(batch, gen.config.in_channels, s, s, s, device=device)
    tgt = torch.rand(batch, 1, t, t, t, device=device)
    mask = torch.ones_like(tgt) if kind == "unet3d" else None

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(warmup):
        trainer.step(src, tgt, mask, i)
    sync()
    t0 = time.perf_counter()
    for i in range(iterations):
        trainer.step(src, tgt, mask, warmup + i)
    sync()
    dt = time.perf_counter() - t0
    voxels = iterations * batch * t**3
    return {
        "stage": stage,
        "batch": batch,
        "sample": f"{s}³→{t}³",
        "precision": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype is not None else "float32",
        "it_per_s": iterations / dt,
        "samples_per_s": iterations * batch / dt,
        "voxels_per_s": voxels / dt,
        "g_flops_per_s": 3.0 * conv_flops_per_voxel(gen.config) * voxels / dt,
        "s_per_it": dt / iterations,
        "g_params": count_parameters(gen),
        "d_params": count_parameters(disc),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--kind", default="nie2018", choices=("nie2018", "unet3d"))
    p.add_argument("--crop", type=int, default=96, help="unet3d crop edge")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--stages", default="0,1", help="stages to time (0: 1-channel input, 1: 2-channel auto-context input)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--peak", action="store_true", help="also time the machine's 3D-convolution peak in the step's precision")
    p.add_argument("--layout", default="channels_last", choices=("channels_last", "ncdhw"),
                   help="the U-Net's activation layout on the CPU (models.CPU_LAYOUT)")
    p.add_argument("--out", default=None, help="also write the report to this file")
    args = p.parse_args()
    models.CPU_LAYOUT = torch.channels_last_3d if args.layout == "channels_last" else torch.contiguous_format
    device = resolve_device(args.device)
    lines = [f"MedSynth training benchmark ({args.kind}, U-Net CPU layout {args.layout})", f"machine: {machine(device)}"]
    peak_dtype = amp_settings(device, args.precision)
    peak = conv_peak_flops(device, dtype=peak_dtype) if args.peak else None
    if peak:
        name = str(peak_dtype).replace("torch.", "") if peak_dtype is not None else "float32"
        lines.append(f"{name} 3D-conv peak (32→32 ch, 3³, 48³): {peak / 1e9:.1f} GFLOP/s")
    for stage in [int(s) for s in args.stages.split(",")]:
        r = bench(device, args.kind, args.crop, args.batch, stage, args.iterations, args.warmup, args.precision)
        share = f", {100 * r['g_flops_per_s'] / peak:.0f}% of the conv peak" if peak else ""
        lines.append(
            f"stage {r['stage']} ({'1' if stage == 0 else '2'}-ch input) {r['sample']} batch {r['batch']} {r['precision']}: "
            f"{r['it_per_s']:.3f} it/s, {r['samples_per_s']:.2f} samples/s, {r['voxels_per_s'] / 1e3:.1f} k output voxels/s, "
            f"G {r['g_flops_per_s'] / 1e9:.1f} GFLOP/s{share}, {r['s_per_it']:.2f} s/it "
            f"(G {r['g_params']:,} params, D {r['d_params']:,} params)"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text if not args.out else f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
