"""The recipe a training run starts from, one per generator kind: the configs the panel fills in when a kind is
chosen, so a user who picks the U-Net does not start it with the paper's batch of 32 patches.

``nie2018``: the paper's recipe, i.e. the config defaults. ``unet3d``: this project's CPU recipe for the U-Net as
measured in Testing/Training/UNET_RECIPE.md: the model config of run 8 and the train config of run 6 (AdamW, cosine,
EMA, the adversarial term after a warm start, intensity and spatial augmentation); a test keeps it equal to those
committed files. Run 8 upsamples trilinearly, which removed run 6's period-2 grid texture at 0.57 dB less validation
PSNR after one 3000-iteration stage (17.25 against 17.82): a picture without a grid is chosen over those tenths.
``unet3d_refiner``: one U-Net stage that refines the synthesis of the bundled paper's FCN (frozen, ``--prior-model``),
as run P of UNET_RECIPE.md (unet_prior_model_config + unet_prior_train_config); it starts as exactly the FCN and
keeps the FCN's normalisation, which a prior requires.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .bundled_models import PAPER_FCN_NAME
from .config import (
    DiscriminatorConfig, GeneratorConfig, IntensityConfig, LossConfig, ModelConfig, NormalisationConfig, TrainConfig,
)
from .errors import UsageError

RECIPE_KINDS = ("nie2018", "unet3d", "unet3d_refiner")


@dataclass(frozen=True)
class Recipe:
    """The configs a run of one generator kind starts from, and how many patches ``prepare`` should cut per case
    (the U-Net cuts its crops on the fly from the stored volumes, so it needs one); ``prior_model`` names the bundled
    model file whose synthesis a refiner's first stage refines (None: the recipe trains from the source alone)."""

    model: ModelConfig
    train: TrainConfig
    patches_per_case: int
    prior_model: Optional[str] = None


def _unet3d() -> Recipe:
    model = ModelConfig(
        generator=GeneratorConfig(kind="unet3d", unet_channels=(16, 32, 64, 128, 128), unet_blocks=1, norm="instance",
                                  residual=False, unet_upsample="trilinear"),
        discriminator=DiscriminatorConfig(patch_channels=(16, 32, 64)),
        normalisation=NormalisationConfig(
            source=IntensityConfig(mode="median", median_value=0.5, clip_min=0.0, clip_max=3.0),
            target=IntensityConfig(mode="percentile", percentile=99.5, clip_min=0.0, clip_max=1.0)),
        loss=LossConfig(lambda_adv=0.01, lambda_l2=1.0, lambda_gdl=0.2, pixel="l2"),
        stages=2,
        source_patch=96,
    )
    train = TrainConfig(
        stages=2, iterations=3000, batch_size=1, lr_g=3e-4, lr_d=1e-4, betas=(0.9, 0.999), optimizer="adamw",
        weight_decay=1e-4, lr_schedule="cosine", lr_warmup=100, grad_clip=1.0, ema_decay=0.99, adversarial=True,
        warmup_iterations=1000, val_every=250, checkpoint_every=50, log_every=10, val_volumes=3, seed=0,
        num_workers=0, aug_gamma_sd=0.1, aug_field_sd=0.1, aug_scale_sd=0.1, aug_rotate_deg=15.0, aug_zoom_sd=0.1,
    )
    return Recipe(model, train, patches_per_case=1)


def _unet3d_refiner() -> Recipe:
    unet = _unet3d()
    model = dataclasses.replace(
        unet.model, generator=dataclasses.replace(unet.model.generator, residual=True, residual_from="context"),
        normalisation=NormalisationConfig(), stages=1)
    train = dataclasses.replace(unet.train, stages=1, val_every=1000)
    return Recipe(model, train, patches_per_case=1, prior_model=PAPER_FCN_NAME)


def recipe(kind: str) -> Recipe:
    """The recipe of a generator kind (one of :data:`RECIPE_KINDS`)."""
    if kind == "nie2018":
        return Recipe(ModelConfig(), TrainConfig(), patches_per_case=1000)
    if kind == "unet3d":
        return _unet3d()
    if kind == "unet3d_refiner":
        return _unet3d_refiner()
    raise UsageError(f"No training recipe for generator kind {kind!r}; use one of {', '.join(RECIPE_KINDS)}.")
