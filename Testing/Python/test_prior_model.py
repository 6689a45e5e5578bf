"""A U-Net on top of a frozen prior model (auto-context across generator kinds): config, file, inference, training."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig, NormalisationConfig, from_dict, to_dict
from MedSynthLogic.errors import Cancelled, ModelFileError, UsageError
from MedSynthLogic.models import build_generators, scale_refinement, start_as_context

from _models import random_chain
from test_unet import train_cfg, randomise, small_unet


def small_fcn(stages: int = 2) -> ModelConfig:
    """The paper's FCN at a few channels (its 17-voxel view intact): the prior of these tests."""
    return ModelConfig(
        generator=GeneratorConfig(filters=(4, 4, 4, 8, 8, 8, 4, 4, 1)),
        discriminator=DiscriminatorConfig(channels=(4, 8, 8), last_conv=8, fully_connected=(16, 8)),
        stages=stages,
    )


def refining_unet(stages: int = 1, **generator) -> ModelConfig:
    """small_unet adding a correction to the synthesis of a small FCN prior."""
    base = small_unet(stages=stages, residual=True, **generator)
    return dataclasses.replace(base, generator=dataclasses.replace(base.generator, residual_from="context"), prior=small_fcn())


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory):
    from MedSynthLogic.model_file import save_model

    cfg = small_fcn()
    return save_model(tmp_path_factory.mktemp("prior") / "fcn.safetensors", random_chain(cfg, seed=3), cfg)


@pytest.fixture(scope="module")
def case():
    from MedSynthLogic.phantom import make_phantom

    p = make_phantom(shape=(40, 48, 40), seed=1)
    return p.t1ce.array / np.percentile(p.t1ce.array[p.mask], 99.5), p.mask


def test_config_round_trips_with_its_prior_and_old_configs_have_none():
    cfg = refining_unet()
    assert from_dict(ModelConfig, to_dict(cfg)) == cfg
    assert cfg.stage_generator(0).in_channels == 2 and small_unet().stage_generator(0).in_channels == 1
    old = to_dict(small_unet())
    del old["prior"]
    assert from_dict(ModelConfig, old).prior is None


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(prior=dataclasses.replace(small_fcn(), normalisation=NormalisationConfig(output_scale=1.0))), "normalises"),
        (dict(prior=dataclasses.replace(small_fcn(), target_name="CT")), "maps T1ce→CT"),
        (dict(prior=dataclasses.replace(small_unet(), prior=small_fcn(), generator=dataclasses.replace(
            small_unet().generator, residual_from="source"))), "cannot itself have a prior"),
        (dict(generator=GeneratorConfig(residual_from="context")), "unet3d generator only"),
    ],
)
def test_config_refuses_what_cannot_refine_a_prior(change, words):
    with pytest.raises(UsageError, match=words):
        dataclasses.replace(refining_unet(), **change)


def test_a_zero_started_stage_synthesizes_exactly_what_its_prior_does(case):
    from MedSynthLogic.inference import synthesize_array

    src, mask = case
    cfg = refining_unet()
    chain = build_generators(cfg)
    randomise(chain.stages, scale=0.1)
    chain.prior.load_state_dict(random_chain(small_fcn(), seed=3).state_dict())
    start_as_context(chain.stages[0])
    events = []
    ours = synthesize_array(chain, src, mask, device="cpu", progress=events.append)
    prior = synthesize_array(chain.prior, src, mask, device="cpu")
    assert np.abs(prior).max() > 0.01
    np.testing.assert_allclose(ours, prior, atol=1e-6)
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {e["stages"] for e in events if e["event"] == "progress"} == {3}, "2 prior stages + 1 of its own"


def test_a_halved_refinement_synthesizes_the_mean_of_the_prior_and_the_refiner(case):
    from MedSynthLogic.inference import synthesize_array

    src, mask = case
    chain = build_generators(refining_unet())
    randomise(chain.stages, scale=0.1)
    chain.prior.load_state_dict(random_chain(small_fcn(), seed=3).state_dict())
    chain.eval()
    refiner = synthesize_array(chain, src, mask, device="cpu")
    prior = synthesize_array(chain.prior, src, mask, device="cpu")
    assert np.abs(refiner - prior).max() > 0.01, "the refiner must change its prior for the test to mean anything"
    scale_refinement(chain.stages[0], 0.5)
    np.testing.assert_allclose(synthesize_array(chain, src, mask, device="cpu"), 0.5 * (prior + refiner), atol=1e-5)


def test_a_blended_model_file_says_so_and_differs_only_in_the_refiners_output_layer(tmp_path):
    from safetensors.torch import load_file

    from MedSynthLogic.model_file import read_header, save_model
    from MedSynthLogic.model_summary import summarize_header
    from MedSynthLogic.training import blend_model_file

    cfg = refining_unet()
    chain = build_generators(cfg)
    randomise(chain, scale=0.1)
    src = save_model(tmp_path / "r.safetensors", chain, cfg, training={"iterations_per_stage": 7}, metrics={"psnr": 20.0})
    out = blend_model_file(src, tmp_path / "b.safetensors")
    with pytest.raises(Exception, match="exists"):
        blend_model_file(src, out)
    before, after = load_file(str(src)), load_file(str(out))
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["stage0.head.bias", "stage0.head.weight"]
    torch.testing.assert_close(after["stage0.head.weight"], 0.5 * before["stage0.head.weight"])
    header = read_header(out)
    assert header["training"]["iterations_per_stage"] == 7 and header["training"]["blend_with_prior"]["weight"] == 0.5
    assert "psnr" not in header["metrics"], "the unblended model's metrics do not describe the blend"
    assert "correction scaled by 0.5" in summarize_header(header, "b")
    with pytest.raises(UsageError, match="prior"):
        blend_model_file(save_model(tmp_path / "u.safetensors", build_generators(small_unet()), small_unet()), tmp_path / "x.safetensors")
    # a blend of the blend scales the correction twice, and says so (it recorded the last weight alone: a review)
    twice = read_header(blend_model_file(out, tmp_path / "bb.safetensors", weight=0.5))
    torch.testing.assert_close(load_file(str(tmp_path / "bb.safetensors"))["stage0.head.weight"],
                               0.25 * before["stage0.head.weight"])
    assert twice["training"]["blend_with_prior"]["weight"] == 0.25
    assert twice["training"]["blend_with_prior"]["from"] == "r.safetensors"
    assert "correction scaled by 0.25" in summarize_header(twice, "bb")
    with pytest.raises(Exception, match="one of the inputs"):  # --overwrite never replaces what it is made from
        blend_model_file(out, out, overwrite=True)


def test_an_averaged_model_file_holds_the_mean_of_its_sources_weights_and_the_prior_unchanged(tmp_path):
    from safetensors.torch import load_file

    from MedSynthLogic.model_file import read_header, save_model
    from MedSynthLogic.model_summary import summarize_header
    from MedSynthLogic.training import average_model_files

    cfg = refining_unet()
    prior = random_chain(small_fcn(), seed=3).state_dict()
    files = []
    for seed in (1, 2):
        chain = build_generators(cfg)
        randomise(chain.stages, seed=seed, scale=0.1)
        chain.prior.load_state_dict(prior)
        files.append(save_model(tmp_path / f"r{seed}.safetensors", chain, cfg, training={"iterations_per_stage": 7},
                                metrics={"psnr": 20.0}))
    out = average_model_files(files, tmp_path / "soup.safetensors")
    with pytest.raises(Exception, match="exists"):
        average_model_files(files, out)
    a, b, soup = (load_file(str(f)) for f in (*files, out))
    own = [k for k in soup if k.startswith("stage0.")]
    assert any(not torch.equal(a[k], b[k]) for k in own), "the sources must differ for the test to mean anything"
    for k in own:
        torch.testing.assert_close(soup[k], (a[k] + b[k]) / 2)
    assert all(torch.equal(soup[k], a[k]) for k in soup if k.startswith("prior."))
    header = read_header(out)
    assert header["training"]["weight_average_of"]["from"] == ["r1.safetensors", "r2.safetensors"]
    assert "psnr" not in header["metrics"], "the sources' metrics do not describe their average"
    assert "weights averaged over 2 model files" in summarize_header(header, "soup")
    with pytest.raises(Exception, match="one of the inputs"):
        average_model_files(files, files[0], overwrite=True)


def test_an_average_of_runs_on_other_splits_counts_every_sources_training_cases(tmp_path):
    """The first file's record alone was kept: a case the second file trained on was called held out (a review)."""
    from MedSynthLogic.model_file import read_header, save_model
    from MedSynthLogic.model_summary import all_training_cases
    from MedSynthLogic.training import average_model_files

    cfg = small_fcn()
    splits = {1: (["c0", "c1", "c2"], ["c3"]), 2: (["c1", "c2", "c3"], ["c0"])}
    files = [save_model(tmp_path / f"f{seed}.safetensors", random_chain(cfg, seed=seed), cfg,
                        training={"data": {"train_case_ids": train, "val_case_ids": val}})
             for seed, (train, val) in splits.items()]
    header = read_header(average_model_files(files, tmp_path / "soup.safetensors"))
    assert all_training_cases(header) == ["c0", "c1", "c2", "c3"]
    assert header["training"]["data"]["val_case_ids"] == [], "c3 was the second file's training case"
    from MedSynthLogic.model_summary import unrecorded_training_cases

    unlisted = save_model(tmp_path / "u.safetensors", random_chain(cfg, seed=5), cfg, training={"data": {}})
    mixed = read_header(average_model_files([files[0], unlisted], tmp_path / "s2.safetensors"))
    assert all_training_cases(mixed) == ["c0", "c1", "c2"] and unrecorded_training_cases(mixed) == ["u.safetensors"]


def test_averaging_refuses_one_file_other_architectures_and_different_priors(tmp_path):
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.training import average_model_files

    cfg = refining_unet()
    a = save_model(tmp_path / "a.safetensors", random_chain(cfg, seed=1), cfg)
    with pytest.raises(UsageError, match="at least two"):
        average_model_files([a], tmp_path / "x.safetensors")
    other_prior = save_model(tmp_path / "b.safetensors", random_chain(cfg, seed=2), cfg)
    with pytest.raises(UsageError, match="different prior"):
        average_model_files([a, other_prior], tmp_path / "x.safetensors")
    plain = save_model(tmp_path / "u.safetensors", build_generators(small_unet()), small_unet())
    with pytest.raises(UsageError, match="different architectures"):
        average_model_files([a, plain], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_the_blend_and_average_scripts_write_what_their_functions_do(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from safetensors.torch import load_file

    from MedSynthLogic.model_file import save_model

    def script(name):
        path = Path(__file__).resolve().parents[2] / "Testing" / "Training" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main

    cfg = refining_unet()
    chain = build_generators(cfg)
    randomise(chain.stages, scale=0.1)
    src = save_model(tmp_path / "r.safetensors", chain, cfg)
    assert script("blend_with_prior")([str(src), str(tmp_path / "b.safetensors"), "--weight", "0.25"]) == 0
    torch.testing.assert_close(load_file(str(tmp_path / "b.safetensors"))["stage0.head.bias"],
                               0.25 * load_file(str(src))["stage0.head.bias"])
    args = [str(src), str(tmp_path / "b.safetensors"), "--out", str(tmp_path / "s.safetensors")]
    assert script("average_models")(args) == 0
    torch.testing.assert_close(load_file(str(tmp_path / "s.safetensors"))["stage0.head.bias"],
                               0.625 * load_file(str(src))["stage0.head.bias"])
    assert "the mean of the weights" in capsys.readouterr().out


@pytest.mark.parametrize("gen_config, weight, words", [
    (GeneratorConfig(), 0.5, "residual_from 'context'"),
    (refining_unet().generator, 1.5, r"in \[0, 1\]"),
])
def test_scale_refinement_refuses_a_generator_without_context_or_a_weight_out_of_range(gen_config, weight, words):
    from MedSynthLogic.models import build_generator

    with pytest.raises(UsageError, match=words):
        scale_refinement(build_generator(gen_config), weight)


def test_tiles_equal_a_whole_frame_with_a_prior(case):
    from MedSynthLogic.inference import synthesize_array

    src, mask = case
    chain = build_generators(refining_unet(stages=2, unet_channels=(4, 8)))
    randomise(chain.stages, scale=0.1)
    chain.prior.load_state_dict(random_chain(small_fcn(), seed=3).state_dict())
    chain.eval()
    whole = synthesize_array(chain, src, mask, device="cpu")
    tiled = synthesize_array(chain, src, mask, device="cpu", tile=16)
    assert np.abs(whole).max() > 0.01
    assert np.abs(tiled - whole).max() <= 1e-4


def test_the_model_file_carries_the_prior_and_refuses_one_without_it(tmp_path, case):
    from safetensors.torch import load_file, save_file

    from MedSynthLogic.inference import synthesize_array
    from MedSynthLogic.model_file import load_model, read_header, save_model
    from MedSynthLogic.model_summary import summarize_header

    src, mask = case
    cfg = refining_unet()
    chain = build_generators(cfg)
    randomise(chain, scale=0.1)
    chain.eval()
    path = save_model(tmp_path / "r.safetensors", chain, cfg)
    loaded = load_model(path)
    assert loaded.config == cfg
    np.testing.assert_array_equal(synthesize_array(loaded.chain, src, mask, device="cpu"),
                                  synthesize_array(chain, src, mask, device="cpu"))
    assert "on top of a frozen prior model (3D FCN" in summarize_header(read_header(path), "r")
    tensors = load_file(str(path))
    assert any(name.startswith("prior.stage1.") for name in tensors)
    from MedSynthLogic.model_file import METADATA_KEY
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    cut = {k: v for k, v in tensors.items() if not k.startswith("prior.stage1.")}
    save_file(cut, str(tmp_path / "cut.safetensors"), metadata={METADATA_KEY: metadata[METADATA_KEY]})
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "cut.safetensors")


@pytest.fixture(scope="module")
def unet_data(tmp_path_factory):
    from test_training import make_phantom_data

    return make_phantom_data(tmp_path_factory.mktemp("prior_phantom"), small_unet(), patches_per_case=1, shape=(40, 48, 40))


def test_training_on_a_prior_keeps_it_frozen_in_the_file_and_resumes_exactly(tmp_path, unet_data, prior_file):
    from MedSynthLogic import checkpoint as ckpt
    from MedSynthLogic.model_file import load_model, save_model
    from MedSynthLogic.training import export_checkpoint, train

    events = []
    kw = dict(device="cpu", prior_model=prior_file)
    straight = train(unet_data, tmp_path / "a.safetensors", refining_unet(), train_cfg(), run_dir=tmp_path / "ra",
                     callback=events.append, **kw)
    context = [e for e in events if e["event"] == "progress" and e.get("task") == "context"]
    assert context and context[-1]["stage"] == 0 and context[-1]["done"] == context[-1]["total"] > 0
    model, prior = load_model(straight), load_model(prior_file)
    assert model.header["training"]["prior_model"]["tensors_sha256"] == prior.header["tensors_sha256"]
    mine, theirs = model.chain.prior.state_dict(), prior.chain.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k].float()) for k in mine)

    stop = threading.Event()

    def stop_at_3(event):
        if event["event"] == "iteration" and event["iteration"] == 3:
            stop.set()

    with pytest.raises(Cancelled):
        train(unet_data, tmp_path / "b.safetensors", refining_unet(), train_cfg(), run_dir=tmp_path / "rb",
              callback=stop_at_3, stop_event=stop, **kw)
    candidate = load_model(export_checkpoint(ckpt.latest_checkpoint(tmp_path / "rb"), tmp_path / "c.safetensors", stages=1))
    assert candidate.config.prior == prior.config
    # the export says what it sits on, as the finished file does (it lost the prior's record: a review, session 43)
    assert candidate.header["training"]["prior_model"] == model.header["training"]["prior_model"]
    with pytest.raises(Exception, match="one of the inputs"):  # the checkpoint is the run's only resume state
        export_checkpoint(ckpt.latest_checkpoint(tmp_path / "rb"), ckpt.latest_checkpoint(tmp_path / "rb"), stages=1,
                          overwrite=True)
    other = save_model(tmp_path / "other.safetensors", random_chain(small_fcn(), seed=4), small_fcn())
    with pytest.raises(UsageError, match="differs from the prior this run started with"):
        train(unet_data, tmp_path / "b.safetensors", refining_unet(), train_cfg(), run_dir=tmp_path / "rb",
              resume=True, device="cpu", prior_model=other)
    resumed = train(unet_data, tmp_path / "b.safetensors", refining_unet(), train_cfg(), run_dir=tmp_path / "rb",
                    resume=True, **kw)
    a, b = load_model(straight).chain.state_dict(), load_model(resumed).chain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)



def test_contexts_for_other_contrasts_are_the_priors_synthesis_of_that_contrast_and_reach_training(tmp_path, unet_data, prior_file):
    """aug_context_gammas: one more prior synthesis per gamma, of the source changed as the augmentation changes it;
    the run trains on them (other weights than the same run without them) and reports building each."""
    from MedSynthLogic.h5data import load_volumes
    from MedSynthLogic.intensity_augment import change_contrast
    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.patches import pad_volume
    from MedSynthLogic.training import build_context, train
    from MedSynthLogic.training.context import unpad, whole_volume

    refiner = load_model(prior_file)
    chain = build_generators(refining_unet())
    chain.prior = refiner.chain
    h5 = unet_data / "train.h5"
    plain, darker = (build_context(chain, h5, 0, torch.device("cpu"), gamma=g, pivot=0.6) for g in (1.0, 1.25))
    vol = next(iter(load_volumes(h5).items()))
    cid, vol = vol
    pad = vol["pad"]
    source, mask = unpad(vol["source"], pad), unpad(vol["mask"], pad)
    want = whole_volume(refiner.chain, change_contrast(source, 1.25, 0.6), mask, len(refiner.chain.stages), torch.device("cpu"))
    np.testing.assert_array_equal(darker[cid], pad_volume(want, pad, mode="edge"))
    assert not np.array_equal(darker[cid], plain[cid])

    runs = {}
    for name, extra in (("plain", {}), ("contrasts", {"aug_context_gammas": (0.8, 1.25)})):
        events = []
        cfg = train_cfg(aug_gamma_sd=0.3, **extra)
        runs[name] = load_model(train(unet_data, tmp_path / f"{name}.safetensors", refining_unet(), cfg,
                                      run_dir=tmp_path / f"run_{name}", callback=events.append, device="cpu",
                                      prior_model=prior_file)).chain.stages[0].state_dict()
        built = {e["split"] for e in events if e["event"] == "progress" and e.get("task") == "context"
                 and e["done"] == e["total"] > 0}
        # no "val": the U-Net validates on whole volumes, so its validation patches need no context
        assert built == ({"train"} | ({"train, gamma 0.8", "train, gamma 1.25"} if extra else set())), built
    assert any(not torch.equal(runs["plain"][k], runs["contrasts"][k]) for k in runs["plain"])


def test_a_config_file_refining_a_prior_needs_the_prior_model_option(tmp_path, prior_file):
    import json

    from MedSynthLogic.options import build_torchrun_parser
    from MedSynthLogic.training.command import configs_from_args

    config = to_dict(refining_unet())
    del config["prior"]
    (tmp_path / "m.json").write_text(json.dumps(config))
    argv = ["--data", "d", "--out", "o.safetensors", "--model-config", str(tmp_path / "m.json")]
    alone, _ = configs_from_args(build_torchrun_parser("t").parse_args(argv))  # what `medsynth prepare` reads
    with pytest.raises(UsageError, match="needs a prior model"):
        build_generators(alone)
    model_cfg, _ = configs_from_args(build_torchrun_parser("t").parse_args(argv + ["--prior-model", str(prior_file)]))
    assert model_cfg == refining_unet()


def test_training_starts_the_refining_stage_as_the_prior(tmp_path, unet_data, prior_file, case):
    """With a generator that cannot move (learning rate 0), the trained model is exactly its prior; its validation
    during training (which runs the prior too) gives the same figures at every point."""
    from MedSynthLogic.inference import synthesize_array
    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.training import train

    events = []
    out = train(unet_data, tmp_path / "s.safetensors", refining_unet(),
                train_cfg(iterations=2, lr_g=0.0, weight_decay=0.0, val_every=1), device="cpu", prior_model=prior_file,
                callback=events.append)
    psnr = [e["psnr"] for e in events if e["event"] == "validation"]
    assert len(psnr) == 2 and psnr[0] == psnr[1]
    src, mask = case
    np.testing.assert_allclose(synthesize_array(load_model(out).chain, src, mask, device="cpu"),
                               synthesize_array(load_model(prior_file).chain, src, mask, device="cpu"), atol=1e-6)


def test_the_uncertainty_map_of_a_one_stage_model_compares_it_with_its_prior(tmp_path):
    from MedSynthLogic.model_file import load_model, save_model
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.uncertainty import synthesize_with_uncertainty

    cfg = refining_unet()
    chain = build_generators(cfg)
    chain.prior.load_state_dict(random_chain(small_fcn(), seed=3).state_dict())
    start_as_context(chain.stages[0])
    still = load_model(save_model(tmp_path / "still.safetensors", chain.eval(), cfg))
    randomise(chain.stages, scale=0.1)
    moving = load_model(save_model(tmp_path / "moving.safetensors", chain.eval(), cfg))
    phantom = make_phantom(shape=(40, 48, 40), seed=1)
    parts = [synthesize_with_uncertainty(m, phantom.t1ce, device="cpu", precision="fp32").stages for m in (still, moving)]
    assert parts[0] is not None and float(np.abs(parts[0]).max()) < 1e-3 * 1000, "a stage that starts as its prior moves nothing"
    assert float(parts[1][phantom.mask].mean()) > 1.0


def test_contexts_for_other_contrasts_are_refused_for_the_papers_fcn_before_any_is_built():
    """The refusal comes before minutes of context building: with no data plan at all it is still the refusal."""
    from MedSynthLogic.training.context import contrast_contexts

    chain = build_generators(small_fcn(2))
    with pytest.raises(UsageError, match="nie2018"):
        contrast_contexts(chain, None, 1, 2, torch.device("cpu"), (0.8,), 0.5, None, lambda *a, **k: None)
    assert contrast_contexts(chain, None, 1, 2, torch.device("cpu"), (), 0.5, None, lambda *a, **k: None) is None


def test_too_many_stages_for_a_refiner_names_the_frozen_stages_before_it():
    """The default model's progress counts 4 stages (its frozen FCN's 3, then its own), but --stages counts its own:
    --stages 2 used to be refused with "has 1 auto-context stage(s)" and nothing about the other 3."""
    from MedSynthLogic.model_file import bundled_model_path, load_model, read_config

    if read_config(bundled_model_path()).prior is None:
        pytest.skip("the bundled model refines no prior model")
    with pytest.raises(UsageError, match=r"has 1 auto-context stage\(s\) of its own, after the 3 stage\(s\) of the "
                                         r"frozen model it refines.*counts all 4\); 2 were asked for"):
        load_model(bundled_model_path(), stages=2)
