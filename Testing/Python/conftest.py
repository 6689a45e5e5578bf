"""Shared fixtures: the generated phantom, tiny configurations, and the real BraTS folder when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BRATS = Path(os.environ.get("MEDSYNTH_BRATS", REPO.parent / "shared" / "data" / "brats18"))


@pytest.fixture(autouse=True)
def float32_auto_precision(monkeypatch):
    """``auto`` synthesis is float32 in every test, whatever this CPU: exact comparisons then mean the same on every
    machine. Tests of the bf16 rule patch ``cpu_has_native_bf16`` themselves; explicit ``bf16`` is unaffected."""
    from MedSynthLogic import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def brats_dir() -> Path:
    if not BRATS.is_dir():
        pytest.skip(f"real BraTS cases not found at {BRATS} (set MEDSYNTH_BRATS or provide ../shared/data/brats18)")
    return BRATS


@pytest.fixture(scope="session")
def phantom():
    from MedSynthLogic.phantom import make_phantom

    return make_phantom(shape=(48, 56, 48), seed=0)


@pytest.fixture()
def tiny_model_config():
    """A generator small enough for CPU tests but with the paper's structure (valid, dilated, 9 layers)."""
    from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig

    gen = GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 4, 1))
    disc = DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8))
    return ModelConfig(generator=gen, discriminator=disc, stages=2)
