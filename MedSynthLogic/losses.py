"""The paper's losses: L2, 3D gradient-difference loss (GDL) and the adversarial BCE terms."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from .config import LossConfig


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    return F.mse_loss(pred, target)


def gradient_difference_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over x, y, z of (|∇target| − |∇pred|)², with forward differences along each axis.

    This is the paper's GDL: it penalises a synthesis whose edges are weaker or stronger than the target's,
    which counters the blur an L2 loss alone gives.
    """
    total = pred.new_zeros(())
    for dim in (-3, -2, -1):
        dp = torch.diff(pred, dim=dim).abs()
        dt = torch.diff(target, dim=dim).abs()
        total = total + ((dt - dp) ** 2).mean()
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
    pred: torch.Tensor, target: torch.Tensor, fake_logits: torch.Tensor | None, weights: LossConfig
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """λ1·adv + λ2·L2 + λ3·GDL; ``fake_logits`` None (no discriminator) drops the adversarial term."""
    l2 = l2_loss(pred, target)
    gdl = gradient_difference_loss(pred, target)
    total = weights.lambda_l2 * l2 + weights.lambda_gdl * gdl
    parts = {"l2": float(l2.detach()), "gdl": float(gdl.detach())}
    if fake_logits is not None and weights.lambda_adv > 0:
        adv = generator_adversarial_loss(fake_logits)
        total = total + weights.lambda_adv * adv
        parts["g_adv"] = float(adv.detach())
    return total, parts
