"""The learned error map (MedSynthLogic.error_map): its features, its fit, its place in the model file and in the
uncertainty map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MedSynthLogic.error_map import EDGE_CAP, FEATURES, ErrorMap, error_features, fit_error_map
from MedSynthLogic.errors import ModelFileError, OutputError
from _models import random_chain


def small_case(seed: int = 0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((20, 24, 22), dtype=bool)
    mask[3:17, 4:20, 3:19] = True
    source = (rng.uniform(50, 150, mask.shape) * mask).astype(np.float32)
    synthesis = (rng.uniform(0, 1000, mask.shape) * mask).astype(np.float32)
    flip = (rng.uniform(0, 50, mask.shape) * mask).astype(np.float32)
    return source, synthesis, flip, mask


def test_features_are_one_row_per_brain_voxel_in_the_documented_order():
    source, synthesis, flip, mask = small_case()
    rows = error_features(synthesis, source, flip, None, mask, scale=1000.0)
    assert rows.shape == (int(mask.sum()), len(FEATURES)) and rows.dtype == np.float32
    np.testing.assert_allclose(rows[:, 0], synthesis[mask] / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(np.median(rows[:, 1]), 1.0, rtol=1e-2)  # the source over its brain median
    np.testing.assert_allclose(rows[:, 2], np.log1p(50.0 * flip[mask] / 1000.0), rtol=1e-5)
    assert np.all(rows[:, 3] == 0.0), "no stage part: zeros"
    assert rows[:, 4].min() > 0 and rows[:, 4].max() <= 1.0 and EDGE_CAP >= 1
    with_stages = error_features(synthesis, source, flip, flip * 2, mask, scale=1000.0)
    others = [0, 1, 2, 4, 5, 6]
    assert with_stages[:, 3].max() > 0 and np.array_equal(with_stages[:, others], rows[:, others])


def test_the_fit_learns_a_relation_and_is_reproducible():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, len(FEATURES))).astype(np.float32)
    error = (0.05 + 0.03 * np.abs(x[:, 0]) + 0.01 * x[:, 4] ** 2 + 0.005 * rng.normal(size=len(x))).astype(np.float32)
    fitted = fit_error_map(x[:15000], error[:15000], epochs=6, batch=256, seed=0, fitted_on={"cases": ["a"]})
    predicted = fitted.predict(x[15000:])
    assert predicted.min() >= 0 and np.corrcoef(predicted, error[15000:])[0, 1] > 0.8
    again = fit_error_map(x[:15000], error[:15000], epochs=6, batch=256, seed=0)
    np.testing.assert_array_equal(again.predict(x[15000:]), predicted)
    assert fitted.header()["fitted_on"] == {"cases": ["a"], "voxels": 15000}
    with pytest.raises(ValueError, match="features"):
        fit_error_map(x[:, :3], error)
    with pytest.raises(ValueError, match="features"):
        fit_error_map(x, error[:10])


def _fitted(seed: int = 0) -> ErrorMap:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, len(FEATURES))).astype(np.float32)
    return fit_error_map(x, np.abs(x[:, 0]).astype(np.float32) * 0.1, epochs=1, seed=seed)


def test_the_model_file_keeps_the_map_and_refuses_a_broken_one(tmp_path, tiny_model_config):
    from safetensors.torch import load_file, save_file

    from MedSynthLogic.model_file import METADATA_KEY, load_model, read_header, save_model, with_error_map

    plain = save_model(tmp_path / "plain.safetensors", random_chain(tiny_model_config), tiny_model_config,
                       training={"data": {"train_cases": ["a"]}})
    assert load_model(plain).error_map is None
    fitted = _fitted()
    withmap = with_error_map(plain, tmp_path / "with.safetensors", fitted)
    loaded = load_model(withmap)
    rows = np.random.default_rng(3).normal(size=(50, len(FEATURES))).astype(np.float32)
    np.testing.assert_array_equal(loaded.error_map.predict(rows), fitted.predict(rows))
    assert read_header(withmap)["training"] == read_header(plain)["training"]
    assert read_header(withmap)["created"] == read_header(plain)["created"] and read_header(withmap)["modified"]
    assert "modified" not in read_header(plain)
    for name, tensor in load_model(plain).chain.state_dict().items():
        assert torch.equal(loaded.chain.state_dict()[name], tensor), "the generators are unchanged"
    assert load_model(withmap, stages=1).error_map is None, "fitted for the whole chain only"
    with pytest.raises(OutputError, match="exists"):
        with_error_map(plain, withmap, fitted)
    direct = save_model(tmp_path / "direct.safetensors", random_chain(tiny_model_config), tiny_model_config,
                        error_map=fitted)
    np.testing.assert_array_equal(load_model(direct).error_map.predict(rows), fitted.predict(rows))
    tensors = load_file(str(withmap))
    tensors["error_map.mean"] = tensors["error_map.mean"] + 1.0
    from safetensors import safe_open

    with safe_open(str(withmap), framework="pt") as fh:
        metadata = fh.metadata()
    save_file(tensors, str(tmp_path / "tampered.safetensors"), metadata=metadata)
    with pytest.raises(ModelFileError, match="tampered"):
        load_model(tmp_path / "tampered.safetensors")
    assert METADATA_KEY in metadata


def test_the_uncertainty_map_is_the_predicted_error_when_the_model_has_one(tmp_path, phantom, tiny_model_config):
    from MedSynthLogic.model_file import load_model, save_model, with_error_map
    from MedSynthLogic.uncertainty import combine_parts, synthesize_with_uncertainty

    plain = save_model(tmp_path / "plain.safetensors", random_chain(tiny_model_config), tiny_model_config)
    withmap = with_error_map(plain, tmp_path / "with.safetensors", _fitted())
    without = synthesize_with_uncertainty(load_model(plain), phantom.t1ce, device="cpu", precision="fp32")
    model = load_model(withmap)
    learned = synthesize_with_uncertainty(model, phantom.t1ce, device="cpu", precision="fp32")
    np.testing.assert_array_equal(learned.synthesis.array, without.synthesis.array)
    mask = phantom.t1ce.array > model.config.normalisation.mask_threshold
    scale = float(model.config.normalisation.output_scale)
    rows = error_features(learned.synthesis.array, phantom.t1ce.array, learned.flip, learned.stages, mask, scale)
    np.testing.assert_allclose(learned.uncertainty.array[mask], model.error_map.predict(rows) * scale, rtol=1e-6)
    assert np.all(learned.uncertainty.array[~mask] == 0) and learned.uncertainty.array.min() >= 0
    np.testing.assert_allclose(without.uncertainty.array, combine_parts(without.flip, without.stages) * mask, rtol=1e-6)
    one_stage = synthesize_with_uncertainty(model, phantom.t1ce, stages=1, device="cpu", precision="fp32")
    np.testing.assert_allclose(one_stage.uncertainty.array, combine_parts(one_stage.flip, one_stage.stages) * mask,
                               rtol=1e-6)


def test_variant_sources_are_the_cases_t1_and_a_drawn_contrast_inside_the_mask(tmp_path):
    """``fit-error-map --variants``: the T1 is found by name beside the T1ce and brought onto its grid, the contrast
    variant's gamma is drawn in GAMMA_RANGE from the rng; both are 0 outside the T1ce's mask; a name not in VARIANTS
    is refused, and a case without a T1 file simply has no ``t1`` variant."""
    from MedSynthLogic.dataset_cases import Case
    from MedSynthLogic.error_map_fit import GAMMA_RANGE, variant_sources
    from MedSynthLogic.errors import UsageError
    from MedSynthLogic.volume import Volume
    from MedSynthLogic.volume_write import write_volume

    t1ce, _, _, mask = small_case(3)
    t1 = (t1ce * 0.5 + 7.0).astype(np.float32)  # anything other than the T1ce, also outside the mask
    folder = tmp_path / "c1"
    folder.mkdir()
    source = Volume(t1ce, spacing=(1.0, 1.0, 1.2))
    write_volume(source, folder / "c1_t1ce.nii.gz")
    write_volume(Volume(t1, spacing=(1.0, 1.0, 1.2)), folder / "c1_t1.nii.gz")
    case = Case("c1", folder / "c1_t1ce.nii.gz", folder / "c1_t2.nii.gz")
    out = variant_sources(case, source, mask, ["t1", "contrast"], np.random.default_rng(5))
    assert set(out) == {"t1", "contrast"} and out["t1"][1] == {"file": "c1_t1.nii.gz"}
    np.testing.assert_allclose(out["t1"][0].array, np.where(mask, t1, 0.0), rtol=1e-6)
    gamma = out["contrast"][1]["gamma"]
    assert GAMMA_RANGE[0] <= gamma <= GAMMA_RANGE[1] and gamma != 1.0
    shifted = out["contrast"][0].array
    assert np.all(shifted[~mask] == 0) and not np.allclose(shifted[mask], t1ce[mask])
    top = np.unravel_index(np.argmax(np.where(mask, t1ce, 0)), mask.shape)
    assert shifted[top] == pytest.approx(t1ce[top], rel=1e-5), "the brain's maximum is the pivot, kept"
    again = variant_sources(case, source, mask, ["contrast"], np.random.default_rng(5))
    assert again["contrast"][1]["gamma"] == gamma, "the same rng state draws the same gamma"
    (folder / "c1_t1.nii.gz").unlink()
    assert set(variant_sources(case, source, mask, ["t1"], np.random.default_rng(5))) == set()
    with pytest.raises(UsageError, match="t2"):
        variant_sources(case, source, mask, ["t2"], np.random.default_rng(5))


def test_a_map_can_also_read_the_whole_source(tmp_path, phantom, tiny_model_config):
    """``--image-features``: the rows end in the source's enhancement statistics, the same on every voxel; such a map
    round-trips through the model file, the synthesis's map is its prediction on exactly those rows, and a header
    naming features this version does not know is refused."""
    from MedSynthLogic.enhancement import enhancement_stats
    from MedSynthLogic.error_map import IMAGE_FEATURES
    from MedSynthLogic.model_file import load_model, read_header, save_model, with_error_map
    from MedSynthLogic.uncertainty import error_map_rows, synthesize_with_uncertainty

    source, synthesis, flip, mask = small_case(4)
    plain_rows = error_features(synthesis, source, flip, None, mask, scale=1000.0)
    rows = error_features(synthesis, source, flip, None, mask, scale=1000.0, image=(0.3, 1.2))
    assert rows.shape == (int(mask.sum()), len(FEATURES) + len(IMAGE_FEATURES))
    np.testing.assert_array_equal(rows[:, :len(FEATURES)], plain_rows)
    assert np.all(rows[:, -2] == np.float32(0.3)) and np.all(rows[:, -1] == np.float32(1.2))

    names = FEATURES + IMAGE_FEATURES
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, len(names))).astype(np.float32)
    fitted = fit_error_map(x, np.abs(x[:, -1]).astype(np.float32) * 0.1, epochs=1, names=names)
    assert fitted.image_features == IMAGE_FEATURES and _fitted().image_features == ()
    with pytest.raises(ValueError, match="features"):
        fit_error_map(x[:, :len(FEATURES)], np.abs(x[:, 0]), names=names)
    with pytest.raises(ValueError, match="reads one of"):
        fit_error_map(x, np.abs(x[:, 0]), names=FEATURES + ("age",) * 2)

    plain = save_model(tmp_path / "plain.safetensors", random_chain(tiny_model_config), tiny_model_config)
    withmap = with_error_map(plain, tmp_path / "with.safetensors", fitted)
    model = load_model(withmap)
    assert model.error_map.features == names and read_header(withmap)["error_map"]["image_features"] == list(IMAGE_FEATURES)
    np.testing.assert_array_equal(model.error_map.predict(x[:50]), fitted.predict(x[:50]))

    learned = synthesize_with_uncertainty(model, phantom.t1ce, device="cpu", precision="fp32")
    brain = phantom.t1ce.array > model.config.normalisation.mask_threshold
    scale = float(model.config.normalisation.output_scale)
    used = error_map_rows(names, learned.synthesis.array, phantom.t1ce.array, learned.flip, learned.stages, brain, scale)
    stats = enhancement_stats(phantom.t1ce.array, brain)
    np.testing.assert_allclose(used[0, -2:], [stats.thin_bright, stats.bright_tail], rtol=1e-6)
    np.testing.assert_allclose(learned.uncertainty.array[brain], model.error_map.predict(used) * scale, rtol=1e-6)

    header = fitted.header()
    header["features"] = list(FEATURES) + ["age"]
    with pytest.raises(ValueError, match="reads the features"):
        ErrorMap.from_tensors(fitted.tensors(), header)


def test_a_model_whose_target_is_not_percentile_normalised_gets_no_learned_map(tmp_path, tiny_model_config):
    """For a CT model (window, HU) the fit compared units that do not meet; refused before any compute."""
    import dataclasses

    from MedSynthLogic.config import IntensityConfig, NormalisationConfig
    from MedSynthLogic.error_map_fit import fit_error_map_for
    from MedSynthLogic.errors import UsageError
    from MedSynthLogic.model_file import save_model
    from _models import random_chain

    window = NormalisationConfig(target=IntensityConfig(mode="window", window_min=-1000.0, window_max=2000.0))
    cfg = dataclasses.replace(tiny_model_config, stages=1, source_name="T1", target_name="CT", normalisation=window)
    model = save_model(tmp_path / "ct.safetensors", random_chain(cfg), cfg)
    with pytest.raises(UsageError, match="percentile-normalised target"):
        fit_error_map_for(model, tmp_path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    flair = dataclasses.replace(tiny_model_config, stages=1, source_name="T1", target_name="FLAIR",
                                input=dataclasses.replace(tiny_model_config.input, sequence="T1"))
    model = save_model(tmp_path / "flair.safetensors", random_chain(flair), flair)
    with pytest.raises(UsageError, match="this model's source is T1, not a T1ce"):  # said: "no T1 beside the T1ce"
        fit_error_map_for(model, tmp_path, tmp_path / "out.safetensors", variants=("t1",))
    from MedSynthLogic.errors import MedSynthError

    odd = dataclasses.replace(tiny_model_config, stages=1, input=dataclasses.replace(tiny_model_config.input,
                                                                                      sequence="Gd-enhanced"))
    model = save_model(tmp_path / "odd.safetensors", random_chain(odd), odd)
    with pytest.raises(MedSynthError) as other:  # a name the reader does not know is no refusal (no cases here)
        fit_error_map_for(model, tmp_path / "none", tmp_path / "out.safetensors", variants=("t1",))
    assert "not a T1ce" not in str(other.value)


def test_a_map_fitted_on_validation_cases_says_so_in_the_file_and_in_the_panel(tmp_path, tiny_model_config, phantom,
                                                                              capsys):
    """fit-error-map --cases naming a validation case gave no word, and the panel said "fitted on its training cases"
    (the panel's words: test_slicer_lib)."""
    import dataclasses

    from MedSynthLogic.error_map_fit import fit_error_map_for
    from MedSynthLogic.model_file import read_header, save_model
    from MedSynthLogic.model_summary import summarize_header
    from MedSynthLogic.volume_io import write_volume
    from _models import random_chain

    cfg = dataclasses.replace(tiny_model_config, stages=1)
    model = save_model(tmp_path / "m.safetensors", random_chain(cfg), cfg,
                       training={"data": {"train_case_ids": ["c1"], "val_case_ids": ["c0"]}})
    (tmp_path / "cases" / "c0").mkdir(parents=True)
    write_volume(phantom.t1ce, tmp_path / "cases" / "c0" / "c0_t1ce.nii.gz")
    write_volume(phantom.t2, tmp_path / "cases" / "c0" / "c0_t2.nii.gz")
    said = []
    out = fit_error_map_for(model, tmp_path / "cases", tmp_path / "em.safetensors", cases=["c0"], voxels_per_case=200,
                            report=said.append)
    assert any(line.startswith("warning: 1 of the cases to fit on (c0) are the model's validation cases") for line in said)
    header = read_header(out)
    assert header["error_map"]["fitted_on"]["validation_cases"] == ["c0"]
    assert "fitted on 1 case (1 of them its validation cases)" in summarize_header(header, "em")
    from MedSynthLogic.cli import main

    capsys.readouterr()
    assert main(["fit-error-map", str(tmp_path / "cases"), str(model), str(tmp_path / "em2.safetensors"), "--cases",
                 "c0", "--voxels-per-case", "200", "--device", "cpu", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(e["event"] == "warning" and "validation cases" in e["message"] for e in events), \
        "a log line, which the panel does not show as a warning"


def test_the_fit_reads_each_case_as_evaluate_does(tmp_path, tiny_model_config, phantom):
    """It read the target as stored (a target one slice short ended in an IndexError traceback) and ignored the
    case's mask file, which evaluate, fit-lookup and a folder synthesis all use (review 53)."""
    import dataclasses

    from MedSynthLogic.error_map_fit import fit_error_map_for
    from MedSynthLogic.model_file import save_model
    from MedSynthLogic.volume_io import Volume, write_volume
    from _models import random_chain

    cfg = dataclasses.replace(tiny_model_config, stages=1)
    model = save_model(tmp_path / "m.safetensors", random_chain(cfg), cfg)
    case = tmp_path / "cases" / "c0"
    case.mkdir(parents=True)
    write_volume(phantom.t1ce, case / "c0_t1ce.nii.gz")
    t2 = phantom.t2
    write_volume(Volume(np.ascontiguousarray(t2.array[:, :, :-1]), t2.spacing, t2.origin, t2.direction),
                 case / "c0_t2.nii.gz")  # one x slice short: on another grid
    half = phantom.mask.copy()
    half[:, :, : half.shape[2] // 2] = False
    write_volume(phantom.t1ce.with_array(half.astype(np.float32)), case / "c0_mask.nii.gz")
    said = []
    fit_error_map_for(model, tmp_path / "cases", tmp_path / "em.safetensors", cases=["c0"], voxels_per_case=10**9,
                      report=said.append)
    assert any("Resampled the target" in line or "field of view" in line for line in said), said
    scored = int(half[:, :, :-1].sum())  # the mask file's voxels inside the target's field of view
    assert any(line.endswith(f"over {scored} brain voxels") for line in said), said


def test_the_fit_builds_its_features_over_the_brain_mask_as_synthesis_does(tmp_path, tiny_model_config, phantom,
                                                                          monkeypatch):
    """Where the target's field of view misses part of the brain, the fit built its feature rows over the scored voxels
    only: the distance to the mask's edge (and the source median) then described the field of view's end, not the
    brain's, unlike the rows synthesis builds over the whole mask (a review)."""
    import dataclasses

    from MedSynthLogic import error_map_fit
    from MedSynthLogic.error_map import FEATURES
    from MedSynthLogic.model_file import load_model, save_model
    from MedSynthLogic.uncertainty import error_map_rows, synthesize_with_uncertainty
    from MedSynthLogic.volume_io import Volume, write_volume
    from _models import random_chain

    cfg = dataclasses.replace(tiny_model_config, stages=1)
    model = save_model(tmp_path / "m.safetensors", random_chain(cfg), cfg)
    case = tmp_path / "cases" / "c0"
    case.mkdir(parents=True)
    write_volume(phantom.t1ce, case / "c0_t1ce.nii.gz")
    t2, cut = phantom.t2, 20  # the T2 ends 20 slices before the T1ce does (z is the array's first axis)
    write_volume(Volume(np.ascontiguousarray(t2.array[:-cut]), t2.spacing, t2.origin, t2.direction), case / "c0_t2.nii.gz")
    seen = {}
    real_fit = error_map_fit.fit_error_map

    def capture(rows, errors, **kw):
        seen["rows"] = rows
        return real_fit(rows, errors, **kw)

    monkeypatch.setattr(error_map_fit, "fit_error_map", capture)
    error_map_fit.fit_error_map_for(model, tmp_path / "cases", tmp_path / "em.safetensors", cases=["c0"],
                                    voxels_per_case=10**9, report=lambda line: None)
    brain = phantom.t1ce.array > cfg.normalisation.mask_threshold
    scored = brain.copy()
    scored[-cut:] = False
    result = synthesize_with_uncertainty(load_model(model), phantom.t1ce, mask=brain, device="cpu", precision="fp32")
    expected = error_map_rows(FEATURES, result.synthesis.array, phantom.t1ce.array, result.flip, result.stages, brain,
                              float(cfg.normalisation.output_scale))[scored[brain]]
    got = seen["rows"]
    assert got.shape == expected.shape and 0 < len(got) < int(brain.sum())
    np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], expected[np.lexsort(expected.T[::-1])], rtol=1e-5, atol=1e-6)


def test_a_feature_constant_in_the_fit_is_standardised_by_a_floor_not_by_a_millionth():
    """Rounding noise at synthesis in a feature that was constant when fitted became inputs ~1e4 spreads away."""
    from MedSynthLogic.error_map import FEATURES, SPREAD_FLOOR, fit_error_map

    rng = np.random.default_rng(0)
    features = rng.random((2000, len(FEATURES))).astype(np.float32)
    features[:, 0] = 0.0  # e.g. the flip part of a mirror-symmetric model
    fitted = fit_error_map(features, features[:, 1] * 0.1, epochs=1, names=FEATURES)
    assert fitted.std[0] == pytest.approx(SPREAD_FLOOR) and fitted.std[1] > 0.2
    noisy = features[:5].copy()
    noisy[:, 0] = 1e-3  # fp16 rounding of a synthesis
    assert np.all(np.isfinite(fitted.predict(noisy))) and np.all(np.abs((noisy - fitted.mean) / fitted.std) < 10)
