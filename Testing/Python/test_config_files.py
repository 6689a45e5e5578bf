"""Config files as a researcher writes them by hand: what would train wrongly without a word, or end in a traceback
after the data was read, is refused at once with the setting named (a config review, session 43)."""

from __future__ import annotations

import argparse
import json

import pytest

from MedSynthLogic.config import ModelConfig, TrainConfig, load_json_config
from MedSynthLogic.errors import UsageError


def _file(tmp_path, text: str, name: str = "c.json"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("settings, said", [
    ({"lr_decay_gamma": -1, "lr_decay_every": 1}, "lr_decay_gamma"),
    ({"lr_g": -0.001}, "learning rates"),
    ({"betas": [1.5, 0.9]}, "betas"),
    ({"weight_decay": -1, "optimizer": "adamw"}, "weight_decay"),
    ({"weight_decay": 0.05}, "acts with optimizer 'adamw' only"),
    ({"lr_warmup": 10}, "acts with lr_schedule 'cosine' only"),
    ({"lr_schedule": "cosine", "lr_decay_every": 100}, "acts with lr_schedule 'step' only"),
    ({"val_volumes": -1}, "val_volumes"),
    ({"grad_clip": -1}, "grad_clip"),
    ({"iterations": 0}, "iterations"),
])
def test_train_settings_that_would_train_wrongly_are_refused(tmp_path, settings, said):
    with pytest.raises(UsageError, match=said):
        load_json_config(_file(tmp_path, json.dumps(settings)), TrainConfig)


@pytest.mark.parametrize("settings, said", [
    ({"loss": {"lambda_l2": -1}}, "loss weights"),
    ({"loss": {"lambda_adv": 0, "lambda_l2": 0, "lambda_gdl": 0}}, "loss weights"),
    ({"normalisation": {"output_scale": 0}}, "output_scale must be positive"),
    ({"normalisation": {"source": {"clip_min": 2, "clip_max": 1}}}, "clip_min"),
    ({"generator": {"dilations": [1, 2, 2, 0, 2, 2, 2, 2, 1]}}, "dilations"),
    ({"generator": {"filters": [4, 0, 4, 8, 8, 8, 4, 4, 1]}}, "filters"),
    ({"discriminator": {"channels": [0]}}, "discriminator"),
    ({"source_name": ""}, "source_name and target_name"),
])
def test_model_settings_that_would_train_or_write_nothing_useful_are_refused(tmp_path, settings, said):
    with pytest.raises(UsageError, match=said):
        load_json_config(_file(tmp_path, json.dumps(settings)), ModelConfig)


def test_what_json_allows_but_no_setting_means_is_refused_and_a_bom_is_read(tmp_path):
    with pytest.raises(UsageError, match="writes iterations more than once"):
        load_json_config(_file(tmp_path, '{"iterations": 2, "iterations": 5000}'), TrainConfig)
    with pytest.raises(UsageError, match="holds NaN"):
        load_json_config(_file(tmp_path, '{"normalisation": {"source": {"clip_max": NaN}}}'), ModelConfig)
    with pytest.raises(UsageError, match="must be a finite number"):
        load_json_config(_file(tmp_path, '{"lr_g": 1e400}'), TrainConfig)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"iterations": 7}')
    assert load_json_config(bom, TrainConfig).iterations == 7
    utf16 = tmp_path / "utf16.json"
    utf16.write_text('{"iterations": 7}', encoding="utf-16")
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        load_json_config(utf16, TrainConfig)
    with pytest.raises(UsageError, match="is a folder"):
        load_json_config(tmp_path, TrainConfig)


def test_errors_name_the_file_the_section_and_a_likely_spelling(tmp_path):
    path = _file(tmp_path, '{"itertions": 5}')
    with pytest.raises(UsageError, match="Unknown TrainConfig setting") as info:
        load_json_config(path, TrainConfig)
    assert str(info.value).startswith(str(path)) and "Did you mean itertions → iterations?" in str(info.value)
    with pytest.raises(UsageError, match="In 'generator': GeneratorConfig must be a JSON object"):
        load_json_config(_file(tmp_path, '{"generator": "unet3d"}'), ModelConfig)
    with pytest.raises(UsageError, match="in quotes") as info:
        load_json_config(_file(tmp_path, '{"precision": {"a": 1}}'), TrainConfig)
    assert "without quotes" not in str(info.value)


def test_a_train_configs_stages_that_the_model_config_would_replace_is_refused(tmp_path):
    """The train file's stages was overridden by the model's without a word (1 written, 2 trained)."""
    from MedSynthLogic.training.command import configs_from_args

    model = _file(tmp_path, '{"stages": 2}', "model.json")
    args = argparse.Namespace(model_config=str(model), train_config=str(_file(tmp_path, '{"stages": 1}', "train.json")),
                              prior_model=None)
    with pytest.raises(UsageError, match="sets stages 1, the model config 2"):
        configs_from_args(args)
    args.train_config = str(_file(tmp_path, '{"stages": 2, "iterations": 3}', "same.json"))
    model_cfg, train_cfg = configs_from_args(args)
    assert model_cfg.stages == train_cfg.stages == 2 and train_cfg.iterations == 3
