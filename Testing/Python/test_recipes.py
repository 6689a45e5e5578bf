"""The training recipes the panel starts from: the U-Net's is the one measured in Testing/Training/UNET_RECIPE.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from MedSynthLogic.config import ModelConfig, TrainConfig, from_dict, load_json_config
from MedSynthLogic.errors import UsageError
from MedSynthLogic.recipes import RECIPE_KINDS, recipe

TRAINING = Path(__file__).resolve().parents[1] / "Training"


def test_unet3d_recipe_is_the_committed_run_configs():
    model = load_json_config(TRAINING / "unet8_model_config.json", ModelConfig)
    train = load_json_config(TRAINING / "unet6_train_config.json", TrainConfig, {"stages": model.stages})
    r = recipe("unet3d")
    assert (r.model, r.train, r.patches_per_case) == (model, train, 1)


def test_unet3d_refiner_recipe_is_run_ps_configs_on_the_bundled_fcn():
    from MedSynthLogic.bundled_models import PAPER_FCN_NAME, models_dir
    from MedSynthLogic.model_file import read_header

    model = load_json_config(TRAINING / "unet_prior_model_config.json", ModelConfig)
    train = load_json_config(TRAINING / "unet_prior_train_config.json", TrainConfig, {"stages": model.stages})
    r = recipe("unet3d_refiner")
    assert (r.model, r.train, r.patches_per_case, r.prior_model) == (model, train, 1, PAPER_FCN_NAME)
    fcn = from_dict(ModelConfig, read_header(models_dir() / PAPER_FCN_NAME)["model_config"])
    assert fcn.generator.kind == "nie2018" and fcn.normalisation == r.model.normalisation, "a prior's normalisation"


def test_nie2018_recipe_is_the_papers_defaults():
    r = recipe("nie2018")
    assert r.model == ModelConfig() and r.train == TrainConfig() and r.model.generator.kind == "nie2018"


@pytest.mark.parametrize("kind", RECIPE_KINDS)
def test_each_recipe_trains_its_own_kind_with_agreeing_stage_counts(kind):
    r = recipe(kind)
    assert r.model.generator.kind == kind.split("_")[0] and r.model.stages == r.train.stages
    assert (r.prior_model is not None) == (kind == "unet3d_refiner")


def test_unknown_kind_is_refused_with_the_choices():
    with pytest.raises(UsageError, match="nie2018, unet3d"):
        recipe("resnet")
