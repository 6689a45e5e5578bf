"""Model files moved onto another normalisation, prior or later stages (``MedSynthLogic.training.rebase``): the
weights travel unchanged, the configuration is the new one, and ``--init-model`` then accepts the file."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from MedSynthLogic.config import IntensityConfig, NormalisationConfig
from MedSynthLogic.errors import UsageError
from MedSynthLogic.model_file import load_model, read_header, save_model
from MedSynthLogic.models import build_generators
from MedSynthLogic.training import extended_model_file, rebased_refiner_file, renormalised_model_file
from MedSynthLogic.training.prior import open_prior_model, with_prior
from MedSynthLogic.training.state import open_init_model

from _models import random_chain
from test_prior_model import refining_unet, small_fcn
from test_unet import randomise

MEDIAN = IntensityConfig(mode="median", median_value=0.5, clip_max=2.0)


def median_fcn(stages: int = 2):
    cfg = small_fcn(stages)
    return dataclasses.replace(cfg, normalisation=dataclasses.replace(cfg.normalisation, source=MEDIAN))


def test_renormalised_file_keeps_every_tensor_and_names_the_new_source(tmp_path):
    src = save_model(tmp_path / "fcn.safetensors", random_chain(small_fcn(), seed=1), small_fcn())
    out = renormalised_model_file(src, tmp_path / "median.safetensors", MEDIAN)
    before, after = load_file(str(src)), load_file(str(out))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    loaded = load_model(out)
    assert loaded.config.normalisation.source == MEDIAN
    assert loaded.config.normalisation.target == NormalisationConfig().target
    assert read_header(out)["training"]["rebased"][0]["op"] == "source normalisation"
    with pytest.raises(Exception, match="exists"):
        renormalised_model_file(src, out, MEDIAN)
    assert open_init_model(out, median_fcn()).config == median_fcn()


def test_a_refiner_is_not_renormalised_alone(tmp_path):
    cfg = refining_unet()
    src = save_model(tmp_path / "r.safetensors", build_generators(cfg), cfg)
    with pytest.raises(UsageError, match="rebased_refiner_file"):
        renormalised_model_file(src, tmp_path / "x.safetensors", MEDIAN)


def test_a_rebased_refiner_keeps_its_stage_and_takes_the_new_priors_weights_and_normalisation(tmp_path):
    cfg = refining_unet()
    chain = build_generators(cfg)
    randomise(chain.stages, scale=0.1)
    refiner = save_model(tmp_path / "r.safetensors", chain, cfg,
                         training={"prior_model": {"file": "old.safetensors", "train_cases": ["c0", "c1"]}})
    prior = save_model(tmp_path / "p.safetensors", random_chain(median_fcn(), seed=5), median_fcn(),
                       training={"data": {"train_case_ids": ["c2", "c3"]}})
    out = rebased_refiner_file(refiner, prior, tmp_path / "rebased.safetensors")
    record = read_header(out)["training"]  # it kept the old prior's record, whose cases evaluate then read (a review)
    assert record["prior_model"]["file"] == "p.safetensors" and record["prior_model"]["train_cases"] == ["c2", "c3"]
    assert record["prior_model"]["tensors_sha256"] == read_header(prior)["tensors_sha256"]
    assert record["rebased"][-1]["replaced_prior_model"]["file"] == "old.safetensors"
    old, new, p = load_file(str(refiner)), load_file(str(out)), load_file(str(prior))
    stage = [k for k in old if k.startswith("stage0.")]
    assert stage and all(torch.equal(old[k], new[k]) for k in stage)
    assert all(torch.equal(p[k], new["prior." + k]) for k in p)
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("prior."))
    train_cfg = with_prior(dataclasses.replace(cfg, prior=None, normalisation=median_fcn().normalisation),
                           open_prior_model(prior))
    assert open_init_model(out, train_cfg).config.prior == median_fcn()


def test_rebasing_refuses_a_model_without_a_prior_and_a_prior_with_one(tmp_path):
    plain = save_model(tmp_path / "p.safetensors", random_chain(small_fcn()), small_fcn())
    cfg = refining_unet()
    refiner = save_model(tmp_path / "r.safetensors", build_generators(cfg), cfg)
    with pytest.raises(UsageError, match="no prior model"):
        rebased_refiner_file(plain, plain, tmp_path / "x.safetensors")
    with pytest.raises(UsageError, match="prior of its own"):
        rebased_refiner_file(refiner, refiner, tmp_path / "y.safetensors")


def test_an_extended_file_holds_the_models_stages_then_the_donors(tmp_path):
    from MedSynthLogic.model_summary import all_training_cases

    head = save_model(tmp_path / "h.safetensors", random_chain(small_fcn(1), seed=1), small_fcn(1),
                      training={"data": {"train_case_ids": ["c0"]}})
    donor = save_model(tmp_path / "d.safetensors", random_chain(small_fcn(3), seed=2), small_fcn(3),
                       training={"data": {"train_case_ids": ["c1"]}})
    out = extended_model_file(head, donor, tmp_path / "e.safetensors")
    assert all_training_cases(read_header(out)) == ["c0", "c1"], "the donor's stages learned from its cases"
    from MedSynthLogic.model_summary import unrecorded_training_cases

    counted = save_model(tmp_path / "n.safetensors", random_chain(small_fcn(3), seed=2), small_fcn(3),
                         training={"data": {"train_cases": 9}})
    unnamed = read_header(extended_model_file(head, counted, tmp_path / "e2.safetensors"))
    assert unrecorded_training_cases(unnamed) == ["n.safetensors"], "unknown cases must not read as none"
    h, d, e = load_file(str(head)), load_file(str(donor)), load_file(str(out))
    assert e.keys() == d.keys()
    assert all(torch.equal(e[k], h[k]) for k in h)
    assert all(torch.equal(e[k], d[k]) for k in d if not k.startswith("stage0."))
    assert load_model(out).stages == 3
    with pytest.raises(UsageError, match="nothing to add"):
        extended_model_file(donor, head, tmp_path / "x.safetensors")
    other = save_model(tmp_path / "m.safetensors", random_chain(median_fcn(3)), median_fcn(3))
    with pytest.raises(UsageError, match="more than their stage count"):
        extended_model_file(head, other, tmp_path / "y.safetensors")


def test_the_rebase_script_writes_what_its_functions_do(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "Testing" / "Training" / "rebase_model.py"
    spec = importlib.util.spec_from_file_location("rebase_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = save_model(tmp_path / "fcn.safetensors", random_chain(small_fcn(), seed=1), small_fcn())
    args = ["normalise", str(src), str(tmp_path / "m.safetensors"), "--source", '{"mode": "median", "clip_max": 2.0}']
    assert module.main(args) == 0
    assert load_model(tmp_path / "m.safetensors").config.normalisation.source == MEDIAN
    assert "wrote" in capsys.readouterr().out
    # prior-cases: a refiner's record given its prior's cases from the prior's own file, weights unchanged
    from MedSynthLogic.model_summary import all_training_cases, unrecorded_training_cases

    fcn = random_chain(small_fcn(), seed=3)
    prior = save_model(tmp_path / "p.safetensors", fcn, small_fcn(), training={"data": {"train_case_ids": ["c1"]}})
    chain = build_generators(refining_unet())
    chain.prior.load_state_dict(fcn.state_dict())
    refiner = save_model(tmp_path / "r.safetensors", chain, refining_unet(),
                         training={"data": {"train_case_ids": ["c0"]}, "prior_model": {"file": "p.safetensors"}})
    assert unrecorded_training_cases(read_header(refiner)) == ["its prior model"]
    assert module.main(["prior-cases", str(refiner), str(prior), str(tmp_path / "rc.safetensors")]) == 0
    header = read_header(tmp_path / "rc.safetensors")
    assert all_training_cases(header) == ["c0", "c1"] and unrecorded_training_cases(header) == []
    assert header["tensors_sha256"] == read_header(refiner)["tensors_sha256"]
    assert header["created"] == read_header(refiner)["created"] and header["modified"]  # info: the generators' date
    other = save_model(tmp_path / "o.safetensors", random_chain(small_fcn(), seed=4), small_fcn(),
                       training={"data": {"train_case_ids": ["c2"]}})
    with pytest.raises(UsageError, match="is not the prior model"):
        module.main(["prior-cases", str(refiner), str(other), str(tmp_path / "x.safetensors")])
