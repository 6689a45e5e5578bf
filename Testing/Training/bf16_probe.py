"""How far one bf16-autocast training step of the paper's FCN is from the float32 one, layer by layer, on real patches.

Written to look for the cause of the NaN that CPU bf16 training once gave (MODEL_CARD.md, bundled model, stage 3).
For each of ``--batches`` batches of training patches it runs the same G and D (copies of the same weights) once in
float32 and once under bf16 autocast, exactly as ``StageTrainer`` does (G forward, D on [real; fake], G loss =
λ_adv·BCE + L2 + λ_gdl·GDL), and reports:

- the losses in both precisions;
- per parameter tensor, the relative error of the bf16 gradient against the float32 one;
- per BatchNorm layer, the smallest batch variance among its channels (a channel near zero variance is divided by
  ``sqrt(var + eps)``, which amplifies bf16 rounding) and the largest absolute activation;
- how far a second bf16 run of the same step is from the first (a correct kernel repeats itself exactly);
- whether anything was non-finite.

    python Testing/Training/bf16_probe.py runs/fcn_bf16/data/train.h5 --model Resources/Models/medsynth_t1ce_t2.safetensors
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from MedSynthLogic.config import ModelConfig  # noqa: E402
from MedSynthLogic.h5data import PatchDataset  # noqa: E402
from MedSynthLogic.losses import discriminator_loss, generator_loss  # noqa: E402
from MedSynthLogic.model_file import load_model  # noqa: E402
from MedSynthLogic.models import build_discriminator  # noqa: E402


class BatchNormWatch:
    """Forward hooks on every BatchNorm3d/1d: the smallest channel variance of its input and its largest |output|."""

    def __init__(self, module: nn.Module) -> None:
        self.stats: Dict[str, Dict[str, float]] = {}
        self.handles = []
        for name, m in module.named_modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
                self.handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            x = inp[0].detach().float()
            dims = [d for d in range(x.dim()) if d != 1]
            var = x.var(dim=dims, unbiased=False)
            self.stats[name] = {
                "min_var": float(var.min()),
                "max_abs_out": float(out.detach().float().abs().max()),
                "in_dtype": str(inp[0].dtype).replace("torch.", ""),
            }

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def one_step(gen: nn.Module, disc: nn.Module, cfg: ModelConfig, src: torch.Tensor, tgt: torch.Tensor,
             dtype: Optional[torch.dtype]) -> Dict[str, object]:
    """One G forward, D loss and G loss with backward, as StageTrainer.step does (no optimiser step)."""
    ctx = torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)
    gen.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)
    watch_g, watch_d = BatchNormWatch(gen), BatchNormWatch(disc)
    with ctx:
        fake = gen(src)
    fake32 = fake.float()
    b = tgt.shape[0]
    with ctx:
        logits = disc(torch.cat([tgt, fake32.detach()], 0)).float()
    d_loss = discriminator_loss(logits[:b], logits[b:])
    d_loss.backward()
    d_grads = {n: p.grad.detach().clone() for n, p in disc.named_parameters() if p.grad is not None}
    disc.requires_grad_(False)
    with ctx:
        fake_logits = disc(torch.cat([tgt, fake32], 0)).float()[b:]
    disc.requires_grad_(True)
    g_loss, parts = generator_loss(fake32, tgt, fake_logits, cfg.loss, None)
    g_loss.backward()
    g_grads = {n: p.grad.detach().clone() for n, p in gen.named_parameters() if p.grad is not None}
    watch_g.close()
    watch_d.close()
    return {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach()), "parts": parts, "g_grads": g_grads, "d_grads": d_grads,
            "bn_g": watch_g.stats, "bn_d": watch_d.stats, "fake_max": float(fake32.abs().max())}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a − b|| / ||b|| in float64 (a float32 norm of a gradient holding 1e20 would overflow to inf)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("patches", help="train.h5 written by `medsynth prepare` (32³/16³ patches)")
    p.add_argument("--model", required=True, help="model file whose stage-1 generator is probed (trained weights)")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, stages=1)
    cfg = loaded.config
    gen32 = loaded.chain.stages[0].train().requires_grad_(True)
    torch.manual_seed(args.seed)
    disc32 = build_discriminator(cfg).train()
    ds = PatchDataset(args.patches, in_memory=False)
    rng = np.random.default_rng(args.seed)
    worst: Dict[str, float] = {}
    repeat: Dict[str, float] = {}
    rows: List[str] = []
    nonfinite = False
    for k in range(args.batches):
        src, tgt = ds.read_batch(np.sort(rng.choice(len(ds), args.batch_size, replace=False)))
        gen16, disc16 = copy.deepcopy(gen32), copy.deepcopy(disc32)
        r32 = one_step(gen32, disc32, cfg, src, tgt, None)
        r16 = one_step(gen16, disc16, cfg, src, tgt, torch.bfloat16)
        again = one_step(gen16, disc16, cfg, src, tgt, torch.bfloat16)
        for net in ("g_grads", "d_grads"):
            for name in r16[net]:
                key = net[0].upper() + "." + name
                repeat[key] = max(repeat.get(key, 0.0), rel_err(again[net][name], r16[net][name]))
        for name in r32["g_grads"]:
            e = rel_err(r16["g_grads"][name], r32["g_grads"][name])
            worst["G." + name] = max(worst.get("G." + name, 0.0), e)
        for name in r32["d_grads"]:
            e = rel_err(r16["d_grads"][name], r32["d_grads"][name])
            worst["D." + name] = max(worst.get("D." + name, 0.0), e)
        finite = all(torch.isfinite(g).all() for g in list(r16["g_grads"].values()) + list(r16["d_grads"].values()))
        nonfinite |= not finite
        rows.append(
            f"batch {k}: D loss fp32 {r32['d_loss']:.5f} bf16 {r16['d_loss']:.5f}; G loss fp32 {r32['g_loss']:.6f} "
            f"bf16 {r16['g_loss']:.6f}; L2 fp32 {r32['parts'].get('l2', float('nan')):.6f} bf16 "
            f"{r16['parts'].get('l2', float('nan')):.6f}; |fake| max fp32 {r32['fake_max']:.3f} bf16 {r16['fake_max']:.3f}; "
            f"bf16 gradients finite: {finite}"
        )
        if k == 0:
            for net in ("bn_g", "bn_d"):
                for name, s in r16[net].items():
                    rows.append(f"  {net[-1].upper()}.{name}: input {s['in_dtype']}, smallest channel variance "
                                f"{s['min_var']:.3g} (fp32 run: {r32[net][name]['min_var']:.3g}), max |output| "
                                f"{s['max_abs_out']:.3g}")
    print(f"model {args.model}, stage 1; {args.batches} batches of {args.batch_size} patches from {args.patches}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n".join(rows))
    print("largest relative error of a bf16 gradient against float32, per parameter tensor (over all batches):")
    for name, e in sorted(worst.items(), key=lambda kv: -kv[1]):
        print(f"  {e:9.4f}  {name}")
    print("largest relative difference between two bf16 runs of the same step, where not 0:")
    for name, e in sorted(repeat.items(), key=lambda kv: -kv[1]):
        if e > 0:
            print(f"  {e:9.4g}  {name}")
    print(f"non-finite bf16 gradient seen: {nonfinite}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
