"""The model summary names the loss terms a model was trained with, not the full method regardless of weights."""

import pytest
import torch

from MedSynthLogic.model_summary import summarize_header


def header(adversarial: bool, **loss: float) -> dict:
    return {"model_config": {"loss": {"pixel": "l2", **loss}},
            "training": {"iterations_per_stage": 10, "train_config": {"adversarial": adversarial}}}


@pytest.mark.parametrize("adversarial, loss, expected", [
    (True, dict(lambda_adv=0.05, lambda_l2=1.0, lambda_gdl=1.0), "adversarial (GAN) + L2 + GDL"),
    (False, dict(lambda_adv=0.05, lambda_l2=1.0, lambda_gdl=0.3), "L2 + GDL only, no adversarial term"),
    (False, dict(lambda_adv=0.0, lambda_l2=1.0, lambda_gdl=0.0), "L2 only, no adversarial term"),
    (True, dict(lambda_adv=0.0, lambda_l2=1.0, lambda_gdl=1.0), "L2 + GDL only, no adversarial term"),
    (True, dict(lambda_adv=0.05, lambda_l2=1.0, lambda_gdl=0.0, pixel="l1"), "adversarial (GAN) + L1"),
])
def test_training_line_names_the_weighted_terms(adversarial, loss, expected):
    line = next(row for row in summarize_header(header(adversarial, **loss), "m").splitlines() if "training  " in row)
    assert line.split("; ")[1] == expected


def test_a_header_without_a_loss_section_reads_as_the_defaults():
    bare = {"training": {"iterations_per_stage": 10, "train_config": {"adversarial": True}}}
    assert "adversarial (GAN) + L2 + GDL" in summarize_header(bare, "m")


def test_created_line_keeps_the_generators_date_and_says_when_the_header_changed():
    """A re-sealed file (an error map fitted, its prior's cases recorded) showed the re-seal's date as its creation."""
    line = next(row for row in summarize_header({"created": "2026-12-06T06:14:46+00:00", "medsynth_version": "0.1.0",
                                                 "modified": "2026-12-07T12:50:56+00:00"}, "m").splitlines()
                if "created" in row)
    assert line.split("  ")[-1] == "2026-12-06 06:14:46 (medsynth 0.1.0); header or error map changed 2026-12-07 12:50:56"


@pytest.mark.parametrize("source, expected", [
    ({"mode": "percentile", "percentile": 99.5}, "T1ce / its 99.5th percentile in the brain;"),
    ({"mode": "median", "median_value": 0.5}, "T1ce / its median in the brain x 0.5;"),
    ({}, "T1ce normalisation not stated;"),
])
def test_mapping_line_says_how_the_source_is_normalised(source, expected):
    cfg = {"source_name": "T1ce", "target_name": "T2",
           "normalisation": {"source": source, "target": {"mode": "percentile"}, "output_scale": 1000}}
    line = next(row for row in summarize_header({"model_config": cfg}, "m").splitlines() if "mapping" in row)
    assert expected in line and "1000 = the target's 99.5th percentile" in line


@pytest.mark.parametrize("target, scale, expected", [
    ({"mode": "percentile", "percentile": 99.5}, 1000, "output x1000: 1000 = the target's 99.5th percentile"),
    ({"mode": "percentile", "percentile": 99.0}, 1000, "output x1000: 1000 = the target's 99th percentile"),
    ({"mode": "median", "median_value": 0.25}, 1000, "output x1000: 250 = the target's median in the brain"),
    ({"mode": "window"}, 1000, "output in the window's unit"),
    ({}, 1000, "output unit not stated"),
])
def test_mapping_line_reads_the_output_unit_from_the_target_normalisation(target, scale, expected):
    cfg = {"source_name": "T1ce", "target_name": "T2",
           "normalisation": {"source": {"mode": "percentile"}, "target": target, "output_scale": scale}}
    line = next(row for row in summarize_header({"model_config": cfg}, "m").splitlines() if "mapping" in row)
    assert expected in line


def test_data_architecture_and_uncertainty_lines_say_what_the_file_holds():
    """The U-Net's patch count means nothing (it trains on crops), the residual is the long-term one, and a
    one-stage model without a prior has no stage disagreement to offer."""
    data = {"train_cases": 2, "val_cases": 1, "train_patches": 4, "source": "<case>_t1.nii.gz",
            "target": "<case>_flair.nii.gz", "patches_per_case": 1}
    unet = {"model_config": {"stages": 1, "generator": {"kind": "unet3d", "unet_channels": [4, 8], "residual": False}},
            "stages": 1, "training": {"data": data}}
    text = summarize_header(unet, "m")
    assert "training patches" not in text and "files <case>_t1.nii.gz -> <case>_flair.nii.gz" in text
    assert "per case" not in text, "the default U-Net's header said '1 patches per case'"
    assert "no long-term residual" in text and "disagreement of flipped passes (no learned error map)" in text
    fcn = {"model_config": {"stages": 2, "generator": {"kind": "nie2018", "filters": [4, 1]}}, "stages": 2,
           "training": {"data": data}}
    text = summarize_header(fcn, "m")
    assert "4 training patches" in text and "long-term residual (adds its source)" in text and "1 patch per case" in text
    assert "and of the last stage against the synthesis before it" in text


def test_a_run_shorter_than_its_warm_up_is_not_called_adversarial():
    """The panel's U-Net recipe warms up for 1000 iterations: a 2-iteration run never used the adversarial term."""
    short = header(True, lambda_adv=0.05, lambda_l2=1.0, lambda_gdl=0.3)
    short["training"]["train_config"].update(iterations=2, warmup_iterations=1000)
    line = next(row for row in summarize_header(short, "m").splitlines() if "training  " in row)
    assert "L2 + GDL only, no adversarial term (its adversarial term waits for 1000 warm-up iterations; 2 ran)" in line
    short["training"]["train_config"].update(iterations=3000)
    assert "adversarial (GAN) + L2 + GDL" in summarize_header(short, "m")


def test_an_export_of_a_stage_in_training_says_so():
    """`info` on a model exported at iteration 9 of a 30-iteration stage showed a finished schedule."""
    mid = header(False, lambda_adv=0.0, lambda_l2=1.0, lambda_gdl=0.0)
    mid["training"]["train_config"].update(iterations=30)
    mid["training"].update(checkpoint_stage=0, checkpoint_iteration=9, checkpoint_stage_done=False)
    line = next(row for row in summarize_header(mid, "m").splitlines() if "training  " in row)
    assert "exported mid-stage: stage 1 at iteration 9 of 30" in line
    mid["training"]["checkpoint_stage_done"] = True
    assert "mid-stage" not in summarize_header(mid, "m")


def test_an_export_of_the_finished_stages_of_a_run_in_stage_2_does_not_call_itself_mid_stage():
    """`medsynth export` of a checkpoint at iteration 2 of stage 2 without --stages writes stage 1 only; `info` said
    "exported mid-stage: stage 2 at iteration 2 of 4" of a file that holds no stage 2."""
    finished = header(False, lambda_adv=0.0, lambda_l2=1.0, lambda_gdl=0.0)
    finished["training"]["train_config"].update(iterations=4)
    finished["training"].update(checkpoint_stage=1, checkpoint_iteration=2, checkpoint_stage_done=False)
    finished["stages"] = 1
    line = next(row for row in summarize_header(finished, "m").splitlines() if "training  " in row)
    assert "mid-stage" not in line and "exported while stage 2 at iteration 2 of 4, which this file leaves out" in line
    finished["stages"] = 2  # --stages 2: stage 2's weights at iteration 2 are in the file
    assert "exported mid-stage: stage 2 at iteration 2 of 4" in summarize_header(finished, "m")


def test_stages_taken_from_an_init_model_are_not_called_trained_here():
    """--init-model one.safetensors --start-stage 1: `info` said "2 iterations per stage x 2 stages"."""
    grown = header(False, lambda_adv=0.0, lambda_l2=1.0, lambda_gdl=0.0)
    grown["training"].update(iterations_per_stage=2, stages_trained=1, stages_from_file=1, resumed_from="one.safetensors")
    line = next(row for row in summarize_header(grown, "m").splitlines() if "training  " in row)
    assert "2 iterations per stage x 1 stage; stage 1 taken from one.safetensors" in line
    grown["training"].update(resumed_from="run/ckpt_s01_it000000003.pt", stages_from_path="one.safetensors")  # resumed
    assert "stage 1 taken from one.safetensors" in summarize_header(grown, "m")


def test_the_bundled_default_names_every_case_its_synthesis_learned_from():
    """The default refines the bundled FCN; its prior record lacked the FCN's training cases until session 43, when
    evaluate came to call such a file's cases unknown rather than held out (Testing/Training/rebase_model.py prior-cases)."""
    from MedSynthLogic.bundled_models import DEFAULT_NAME, models_dir
    from MedSynthLogic.model_file import read_header
    from MedSynthLogic.model_summary import all_training_cases, listed_training_cases

    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.models import PRIOR_PREFIX, generators_state, sub_state

    default = read_header(models_dir() / DEFAULT_NAME)
    fcn = read_header(models_dir() / "medsynth_t1ce_t2_nie2018.safetensors")
    held = sub_state(generators_state(load_model(models_dir() / DEFAULT_NAME).chain), PRIOR_PREFIX)
    shipped = generators_state(load_model(models_dir() / "medsynth_t1ce_t2_nie2018.safetensors").chain)
    assert held.keys() == shipped.keys() and all(torch.equal(held[k], shipped[k]) for k in held), "its prior is the FCN"
    assert all_training_cases(default) == sorted(set(listed_training_cases(default)) | set(listed_training_cases(fcn)))
    assert len(all_training_cases(default)) == 11


def test_a_refiner_that_does_not_name_its_priors_cases_is_known_in_part():
    from MedSynthLogic.model_summary import all_training_cases, unrecorded_training_cases

    header = {"model_config": {"prior": {"stages": 3}}, "training": {"data": {"train_case_ids": ["b", "a"]},
                                                                    "prior_model": {"file": "fcn.safetensors"}}}
    assert all_training_cases(header) == ["a", "b"] and unrecorded_training_cases(header) == ["its prior model"]
    header["training"]["prior_model"]["train_cases"] = ["c"]
    assert all_training_cases(header) == ["a", "b", "c"] and unrecorded_training_cases(header) == []
