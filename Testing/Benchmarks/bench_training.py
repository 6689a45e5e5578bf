"""Training throughput with the DEFAULT (paper) architecture: iterations/s and patches/s of one full GAN step.

One step = G forward, D update on [real, fake], G update with adversarial + L2 + GDL, exactly the trainer's
``_step``. Random patches are used so the figure is the model's cost, not the disk's.

    python Testing/Benchmarks/bench_training.py                 # CPU, batch 32
    python Testing/Benchmarks/bench_training.py --device cuda   # GPU with the trainer's mixed precision
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from MedSynthLogic.config import ModelConfig  # noqa: E402
from MedSynthLogic.devices import PRECISIONS, resolve_device  # noqa: E402
from MedSynthLogic.models import Generator, build_discriminator, count_parameters  # noqa: E402
from MedSynthLogic.training import _amp_settings, _step  # noqa: E402
from _machine import cpu_model  # noqa: E402


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = cpu_model()
    load = ", load average %.1f (other jobs share this machine)" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}{load}"


def bench(device: torch.device, batch: int, stage: int, iterations: int, warmup: int, precision: str) -> dict:
    cfg = ModelConfig()
    torch.manual_seed(0)
    gen = Generator(cfg.stage_generator(stage)).to(device).train()
    disc = build_discriminator(cfg).to(device).train()
    opt_g = torch.optim.Adam(gen.parameters(), lr=5e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.999))
    use_amp, dtype = _amp_settings(device, precision)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    src = torch.rand(batch, gen.config.in_channels, cfg.source_patch, cfg.source_patch, cfg.source_patch, device=device)
    tgt = torch.rand(batch, 1, cfg.target_patch, cfg.target_patch, cfg.target_patch, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        _step(gen, disc, opt_g, opt_d, scaler, src, tgt, cfg, True, use_amp, dtype, device)
    sync()
    t0 = time.perf_counter()
    for _ in range(iterations):
        _step(gen, disc, opt_g, opt_d, scaler, src, tgt, cfg, True, use_amp, dtype, device)
    sync()
    dt = time.perf_counter() - t0
    return {
        "stage": stage,
        "batch": batch,
        "precision": str(dtype).replace("torch.", "") if use_amp else "float32",
        "it_per_s": iterations / dt,
        "patches_per_s": iterations * batch / dt,
        "s_per_it": dt / iterations,
        "g_params": count_parameters(gen),
        "d_params": count_parameters(disc),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--stages", default="0,1", help="stages to time (0: 1-channel input, 1: 2-channel auto-context input)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--out", default=None, help="also write the report to this file")
    args = p.parse_args()
    device = resolve_device(args.device)
    lines = ["MedSynth training benchmark (default ModelConfig: 32³→16³ patches, paper architecture)", f"machine: {machine(device)}"]
    for stage in [int(s) for s in args.stages.split(",")]:
        r = bench(device, args.batch, stage, args.iterations, args.warmup, args.precision)
        lines.append(
            f"stage {r['stage']} ({'1' if stage == 0 else '2'}-ch input) batch {r['batch']} {r['precision']}: "
            f"{r['it_per_s']:.3f} it/s, {r['patches_per_s']:.1f} patches/s, {r['s_per_it']:.2f} s/it "
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
