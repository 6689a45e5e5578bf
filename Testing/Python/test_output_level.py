"""The output level: a model file's fitted brightness, applied to every synthesis with the stages it was fitted with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from _models import random_chain
from MedSynthLogic.config import ModelConfig, NormalisationConfig, IntensityConfig, OutputLevel
from MedSynthLogic.errors import UsageError
from MedSynthLogic.model_file import load_model, read_header, save_model
from MedSynthLogic.normalisation import apply_output_level
from MedSynthLogic.output_level import fit_output_level, write_model_with_level
from MedSynthLogic.volume_synthesis import synthesize_volume

SHAPE = (40, 44, 40)


def test_a_synthesis_is_scaled_to_the_level_inside_the_mask_only():
    rng = np.random.default_rng(0)
    synth = rng.uniform(0.1, 0.9, size=(20, 20, 20)).astype(np.float32)
    mask = np.zeros(synth.shape, dtype=bool)
    mask[4:16, 4:16, 4:16] = True
    synth[~mask] = 0.0
    out = apply_output_level(synth, mask, OutputLevel(value=0.6, stages=2), stages=2)
    assert np.percentile(out[mask], 99.5) == pytest.approx(0.6, rel=1e-5)
    assert np.all(out[~mask] == 0)
    ratio = out[mask] / synth[mask]
    assert np.allclose(ratio, ratio[0], rtol=1e-5), "one gain for the whole synthesis, not a remapping"


def test_the_level_is_left_out_when_off_fitted_for_other_stages_or_nothing_to_scale():
    synth = np.full((8, 8, 8), 0.4, dtype=np.float32)
    mask = np.ones(synth.shape, dtype=bool)
    assert np.array_equal(apply_output_level(synth, mask, OutputLevel(), stages=1), synth)
    assert np.array_equal(apply_output_level(synth, mask, OutputLevel(value=0.8, stages=3), stages=2), synth)
    zeros = np.zeros_like(synth)
    assert np.array_equal(apply_output_level(zeros, mask, OutputLevel(value=0.8, stages=1), stages=1), zeros)


def test_bad_levels_are_refused():
    with pytest.raises(UsageError, match="positive value"):
        OutputLevel(value=-0.1, stages=1)
    with pytest.raises(UsageError, match="stage count"):
        OutputLevel(value=0.5, stages=0)
    ct = NormalisationConfig(target=IntensityConfig(mode="window"))
    with pytest.raises(UsageError, match="window"):
        ModelConfig(normalisation=ct, output_level=OutputLevel(value=0.5, stages=1))


@pytest.fixture()
def cases_dir(tmp_path):
    """Three phantom cases with BraTS naming, as a model's "training cases"."""
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    for seed in range(3):
        p = make_phantom(shape=SHAPE, seed=seed)
        folder = tmp_path / "cases" / f"case{seed}"
        folder.mkdir(parents=True)
        write_volume(p.t1ce, folder / f"case{seed}_t1ce.nii.gz")
        write_volume(p.t2, folder / f"case{seed}_t2.nii.gz")
    return tmp_path / "cases"


@pytest.fixture()
def model_file(tmp_path, tiny_model_config):
    path = tmp_path / "plain.safetensors"
    save_model(path, random_chain(tiny_model_config), tiny_model_config,
               metrics={"evaluation": {"summary": {"psnr": {"mean": 12.0, "std": 0.0, "n": 1}}, "cases": ["x"]}})
    return path


def _tail(volume, loaded) -> float:
    from MedSynthLogic.normalisation import brain_mask

    mask = brain_mask(volume.array)
    return float(np.percentile(volume.array[mask], 99.5)) / loaded.config.normalisation.output_scale


def test_fit_write_and_synthesize_with_the_level(cases_dir, model_file, tmp_path):
    from MedSynthLogic.dataset_prep import find_cases
    from MedSynthLogic.volume_io import read_volume

    cases = find_cases(cases_dir)
    plain = load_model(model_file)
    fit = fit_output_level(plain, cases, device="cpu", precision="fp32")
    sources = [read_volume(c.source) for c in cases]
    tails = [_tail(synthesize_volume(plain, s, device="cpu", precision="fp32"), plain) for s in sources]
    assert list(fit["per_case"]) == ["case0", "case1", "case2"]
    assert np.allclose(list(fit["per_case"].values()), tails, rtol=1e-5)
    assert fit["value"] == pytest.approx(float(np.median(tails))) and fit["stages"] == 2

    levelled_path = write_model_with_level(model_file, tmp_path / "levelled.safetensors", fit, command="test")
    header = read_header(levelled_path)
    assert header["metrics"]["evaluation_without_level"]["summary"]["psnr"]["mean"] == 12.0
    assert "evaluation" not in header["metrics"], "the old evaluation measured the file without the level"
    assert header["training"]["output_level_fit"]["per_case"] == fit["per_case"]
    levelled = load_model(levelled_path)
    assert levelled.config.output_level == OutputLevel(value=fit["value"], stages=2, percentile=99.5)

    for source in sources:
        full = synthesize_volume(levelled, source, device="cpu", precision="fp32")
        assert _tail(full, levelled) == pytest.approx(fit["value"], rel=1e-4)
        one_stage = synthesize_volume(levelled, source, stages=1, device="cpu", precision="fp32")
        assert np.array_equal(one_stage.array, synthesize_volume(plain, source, stages=1, device="cpu", precision="fp32").array)

    refit = fit_output_level(levelled, cases, device="cpu", precision="fp32")
    assert refit["per_case"] == pytest.approx(fit["per_case"], rel=1e-6), "a fit sees the synthesis without any old level"


def test_a_level_fitted_with_other_stages_is_refused_and_fewer_loaded_stages_skip_it(cases_dir, model_file, tmp_path):
    from MedSynthLogic.dataset_prep import find_cases

    one = load_model(model_file, stages=1)
    fit = fit_output_level(one, find_cases(cases_dir)[:1], device="cpu", precision="fp32")
    with pytest.raises(UsageError, match="1 stage"):
        write_model_with_level(model_file, tmp_path / "x.safetensors", fit)
    assert not (tmp_path / "x.safetensors").exists()


def test_training_may_start_from_a_levelled_file(cases_dir, model_file, tmp_path, tiny_model_config):
    """--init-model compares the architecture and normalisation; the level belongs to the file's inference only."""
    from MedSynthLogic.dataset_prep import find_cases
    from MedSynthLogic.training.state import open_init_model

    fit = fit_output_level(load_model(model_file), find_cases(cases_dir)[:1], device="cpu", precision="fp32")
    levelled = write_model_with_level(model_file, tmp_path / "levelled.safetensors", fit)
    assert open_init_model(levelled, dataclasses.replace(tiny_model_config, stages=3)).stages == 2


def test_an_old_header_without_the_level_loads_with_it_off(model_file):
    assert "output_level" in read_header(model_file)["model_config"]
    old = Path(__file__).resolve().parents[2] / "docs" / "evaluation" / "models" / "run1_stage0_l2.safetensors"
    assert "output_level" not in read_header(old)["model_config"], "a file written before the level existed"
    assert load_model(old).config.output_level == OutputLevel()
