"""One auto-context stage's adversarial training step, for any generator kind (pix2pix's model class).

:class:`StageTrainer` owns G, D, both optimisers, mixed precision, the learning-rate schedule, the optional
EMA of G and the loss weights, so the training loop only feeds it batches and saves its state. Every
iteration: D is updated with BCE(real→1, fake→0) on the detached synthesis, then G with
λ_adv·BCE(D(G(x))→1) + λ_pixel·(L2 or L1) + λ_gdl·GDL, all inside the brain mask when the batch carries one.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import nn

from . import distributed as dist_utils
from .config import ModelConfig, TrainConfig
from .errors import UsageError
from .losses import discriminator_loss, generator_loss


def learning_rate(base: float, iteration: int, cfg: TrainConfig) -> float:
    """The learning rate at ``iteration`` (0-based): a pure function, so a resumed run follows the same schedule.

    ``step``: ×``lr_decay_gamma`` every ``lr_decay_every`` iterations (0 = constant). ``cosine``: linear warm-up
    over ``lr_warmup`` iterations, then half a cosine down to 0 at ``cfg.iterations``.
    """
    if cfg.lr_schedule == "cosine":
        if iteration < cfg.lr_warmup:
            return base * (iteration + 1) / cfg.lr_warmup
        span = max(1, cfg.iterations - cfg.lr_warmup)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (iteration - cfg.lr_warmup) / span)))
    if cfg.lr_decay_every > 0:
        return base * cfg.lr_decay_gamma ** (iteration // cfg.lr_decay_every)
    return base


def _optimizer(params: Any, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=tuple(cfg.betas))


def amp_settings(device: torch.device, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of a TrainConfig ``precision`` (None: float32).

    ``auto``: bf16 on GPUs that support it (no loss scaling needed), else fp16 with a GradScaler; float32 on the
    CPU. ``bf16`` on the CPU runs G's convolutions in bfloat16 while losses and D stay float32:
    fast on CPUs with AVX-512 BF16 or AMX, emulated and slow on others. fp16 needs a GPU (its GradScaler is CUDA's).
    """
    from .devices import autocast_dtype

    if precision == "fp16" and device.type != "cuda":
        raise UsageError("fp16 training needs a CUDA GPU.", "Use --precision bf16 or fp32 on the CPU.")
    cuda_auto = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    return autocast_dtype(device, precision, cuda_auto=cuda_auto)


class StageTrainer:
    """G and D of one stage with their optimisers; :meth:`step` is one D update then one G update.

    ``gen``/``disc`` are the plain modules (DDP wrappers are made here). With ``ema_decay`` an
    exponential moving average of G's weights is kept (:attr:`ema`); :meth:`eval_generator` returns it, and
    :meth:`finish` copies it into G so the exported stage is the average.
    """

    def __init__(self, gen: nn.Module, disc: nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig, ctx: dist_utils.DistContext) -> None:
        self.gen, self.disc = gen, disc
        self.model_cfg, self.cfg, self.ctx = model_cfg, train_cfg, ctx
        self.device = ctx.device
        self.amp_dtype = amp_settings(self.device, train_cfg.precision)
        self.opt_g = _optimizer(gen.parameters(), train_cfg.lr_g, train_cfg)
        self.opt_d = _optimizer(disc.parameters(), train_cfg.lr_d, train_cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema: Optional[torch.optim.swa_utils.AveragedModel] = None
        if train_cfg.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(gen, multi_avg_fn=get_ema_multi_avg_fn(train_cfg.ema_decay), use_buffers=True)
        self.gen_w = dist_utils.wrap_ddp(gen, ctx)
        self.disc_w = dist_utils.wrap_ddp(disc, ctx)

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)

    def _set_lr(self, iteration: int) -> None:
        for opt, base in ((self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"] = learning_rate(base, iteration, self.cfg)

    def _discriminate(self, disc: nn.Module, tgt: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """D's logits for [real; fake] in one batch (one forward, same BatchNorm statistics for both halves).

        D always runs in float32, outside autocast: it is a few per cent of a step's work, and in bf16 the paper's
        D gave weight gradients up to 35 % away from float32 ones (``Testing/Training/bf16_probe.py``), besides the
        oneDNN bug ``models.BF16SafeConv3d`` avoids. The U-Net's patch D judges the brain only (both images masked).
        """
        return disc(torch.cat([tgt, fake.to(tgt.dtype)], 0).float()).float()

    def step(self, src: torch.Tensor, tgt: torch.Tensor, mask: Optional[torch.Tensor], iteration: int) -> Dict[str, float]:
        """One D update then one G update at ``iteration``; returns the losses as floats.

        In the G update D's parameters are frozen and the unwrapped D is used, so no D gradients are computed
        or synchronised.
        """
        self._set_lr(iteration)
        b = tgt.shape[0]
        with self._autocast():
            fake = self.gen_w(src)
        fake32 = fake.float()
        if mask is not None:
            tgt = tgt * mask
        d_fake = fake32 * mask if mask is not None else fake32
        parts: Dict[str, float] = {}
        fake_logits = None
        if self.cfg.adversarial and iteration >= self.cfg.warmup_iterations:
            logits = self._discriminate(self.disc_w, tgt, d_fake.detach())
            d_loss = discriminator_loss(logits[:b], logits[b:])
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(d_loss).backward()
            self.scaler.step(self.opt_d)
            parts["d"] = float(d_loss.detach())
            self.disc.requires_grad_(False)
            try:
                fake_logits = self._discriminate(self.disc, tgt, d_fake)[b:]
            finally:
                self.disc.requires_grad_(True)
        g_loss, g_parts = generator_loss(fake32, tgt, fake_logits, self.model_cfg.loss, mask)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(g_loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.opt_g)
            torch.nn.utils.clip_grad_norm_(self.gen.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.opt_g)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.gen)
            dist_utils.broadcast_buffers(self.ema, self.ctx)  # each rank averaged its own running statistics
        parts["g"] = float(g_loss.detach())
        parts.update(g_parts)
        return parts

    @property
    def lr_g(self) -> float:
        return float(self.opt_g.param_groups[0]["lr"])

    def eval_generator(self) -> nn.Module:
        """The weights to validate and export: the EMA when kept, else G itself."""
        return self.ema.module if self.ema is not None else self.gen

    def finish(self) -> None:
        """At the stage's end, make G the EMA (what the model file stores)."""
        if self.ema is not None:
            self.gen.load_state_dict(self.ema.module.state_dict())

    def state_dict(self) -> Dict[str, Any]:
        """Everything but G's weights (the checkpoint stores those with the other stages')."""
        state: Dict[str, Any] = {
            "discriminator": {k: v.detach().cpu() for k, v in self.disc.state_dict().items()},
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.ema is not None:
            state["ema"] = {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.disc.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state["scaler"]:  # empty from a run without fp16 (CPU, bf16): --precision auto may resolve otherwise here
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema.module.load_state_dict(self.gen.state_dict())
