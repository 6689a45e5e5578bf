"""Model helpers shared by the test files (imported as a plain module, like ``_reliability``)."""

from __future__ import annotations

import torch

from MedSynthLogic.config import ModelConfig
from MedSynthLogic.models import AutoContextChain, build_generators


def random_chain(cfg: ModelConfig, seed: int = 0) -> AutoContextChain:
    """Random weights with non-trivial BatchNorm statistics, in eval mode, so BN handling is really exercised."""
    torch.manual_seed(seed)
    chain = build_generators(cfg)
    for module in chain.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return chain.eval()
