"""The paper's losses: L2 (or L1), 3D gradient-difference loss (GDL) and the adversarial BCE terms, optionally masked."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import LossConfig


def _mean(values: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Plain mean, or the mean over the voxels where ``weight`` is 1 (the brain: background is not the task)."""
    if weight is None:
        return values.mean()
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def l2_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error (inside ``mask`` when given)."""
    if mask is None:
        return F.mse_loss(pred, target)
    return _mean((pred - target) ** 2, mask)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean absolute error (inside ``mask`` when given)."""
    return _mean((pred - target).abs(), mask)


def gradient_difference_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over x, y, z of (|∇target| − |∇pred|)², with forward differences along each axis.

    This is the paper's GDL: it penalises a synthesis whose edges are weaker or stronger than the target's,
    which counters the blur an L2 loss alone gives. With ``mask``, only differences between two masked voxels count.
    """
    total = pred.new_zeros(())
    for dim in (-3, -2, -1):
        dp = torch.diff(pred, dim=dim).abs()
        dt = torch.diff(target, dim=dim).abs()
        pair = None
        if mask is not None:
            n = mask.shape[dim]
            pair = mask.narrow(dim, 0, n - 1) * mask.narrow(dim, 1, n - 1)
        total = total + _mean((dt - dp) ** 2, pair)
    return total


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE(D(real)→1) + BCE(D(fake)→0), on logits."""
    return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + F.binary_cross_entropy_with_logits(
        fake_logits, torch.zeros_like(fake_logits)
    )


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE(D(G(x))→1): the generator wants its patches called real."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def generator_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    fake_logits: torch.Tensor | None,
    weights: LossConfig,
    mask: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """λ1·adv + λ2·pixel (L2 or L1) + λ3·GDL, inside ``mask`` when given; ``fake_logits`` None drops the adversarial term."""
    pixel = l1_loss(pred, target, mask) if weights.pixel == "l1" else l2_loss(pred, target, mask)
    gdl = gradient_difference_loss(pred, target, mask)
    total = weights.lambda_l2 * pixel + weights.lambda_gdl * gdl
    parts = {weights.pixel: float(pixel.detach()), "gdl": float(gdl.detach())}
    if fake_logits is not None and weights.lambda_adv > 0:
        adv = generator_adversarial_loss(fake_logits)
        total = total + weights.lambda_adv * adv
        parts["g_adv"] = float(adv.detach())
    return total, parts
