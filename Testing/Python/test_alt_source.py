"""Crops from an alternate source (TrainConfig.alt_source_data / alt_source_p): another real contrast of the same
cases (BraTS: the T1) takes a crop's source and context with a probability, from a random stream of its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from MedSynthLogic.config import TrainConfig
from MedSynthLogic.crops import ALT_SOURCE_STREAM, CropBatches
from MedSynthLogic.errors import DataError, UsageError
from MedSynthLogic.intensity_augment import IntensityAugment

from test_intensity_augment import crop_test_volumes
from test_prior_model import prior_file, refining_unet  # noqa: F401  (a module fixture, used by name)
from test_unet import train_cfg


def _volumes(alt: bool = True) -> dict:
    """The crop tests' volumes, told apart by their ratio to the source: context 0.7×, alternate source 3×, its
    context 5×."""
    return {cid: dataclasses.replace(v, alt_source=v.source * 3 if alt else None, alt_context=v.source * 5 if alt else None)
            for cid, v in crop_test_volumes(context=True).items()}


def _ratio(crop: np.ndarray) -> float:
    inside = crop[0] > 0
    return float(np.median(crop[1][inside] / crop[0][inside]))


def test_a_crop_takes_the_alternate_source_with_its_probability_from_a_stream_of_its_own():
    plain = CropBatches(_volumes(alt=False), 16, 4, seed=5, stage=1)
    mixed = CropBatches(_volumes(), 16, 4, seed=5, stage=1, alt_p=0.5)
    chosen = []
    for it in range(8):
        (s0, t0, m0), (s1, t1, m1) = ([t.numpy() for t in b.batch(it)] for b in (plain, mixed))
        assert s1.shape == s0.shape, "the alternate source replaces the source and context, it adds no channel"
        assert np.array_equal(t0, t1) and np.array_equal(m0, m1), "the crops do not move"
        draws = np.random.default_rng([5, 1, it, 0, ALT_SOURCE_STREAM])
        for k, crop in enumerate(s1):
            alt = draws.random() < 0.5
            chosen.append(alt)
            if alt:
                assert np.allclose(crop[0], s0[k][0] * 3, rtol=1e-5) and _ratio(crop) == pytest.approx(5 / 3, rel=1e-4)
            else:
                assert np.array_equal(crop, s0[k])
    assert 8 < sum(chosen) < 24, "about half of 32 crops"
    again = [t.numpy() for t in mixed.batch(3)]
    assert np.array_equal(again[0], [t.numpy() for t in mixed.batch(3)][0]), "a batch is a pure function of its iteration"
    off = CropBatches(_volumes(), 16, 4, seed=5, stage=1, alt_p=0.0)
    assert np.array_equal(off.batch(2)[0].numpy(), plain.batch(2)[0].numpy())


def test_the_intensity_augmentation_changes_whichever_source_the_crop_took():
    augment = IntensityAugment(0.3)
    mixed = CropBatches(_volumes(), 16, 4, seed=5, stage=1, alt_p=0.5, augment=augment)
    unchanged = CropBatches(_volumes(), 16, 4, seed=5, stage=1, alt_p=0.5)
    src, ref = mixed.batch(0)[0].numpy(), unchanged.batch(0)[0].numpy()
    assert np.array_equal(src[:, 1], ref[:, 1]) and not np.allclose(src[:, 0], ref[:, 0])


def test_crops_from_an_alternate_source_need_it_for_every_volume_with_its_context():
    volumes = _volumes()
    volumes["b"] = dataclasses.replace(volumes["b"], alt_source=None, alt_context=None)
    with pytest.raises(DataError, match="alternate source"):
        CropBatches(volumes, 16, 2, seed=0, stage=1, alt_p=0.5)
    no_context = {k: dataclasses.replace(v, alt_context=None) for k, v in _volumes().items()}
    with pytest.raises(DataError, match="its context"):
        CropBatches(no_context, 16, 2, seed=0, stage=1, alt_p=0.5)


@pytest.mark.parametrize("bad", [
    {"alt_source_p": 0.25},
    {"alt_source_data": "alt"},
    {"alt_source_p": 1.0, "alt_source_data": "alt"},
    {"alt_source_p": -0.1, "alt_source_data": "alt"},
])
def test_the_probability_and_the_folder_come_together(bad):
    with pytest.raises(UsageError, match="alt_source_p"):
        TrainConfig(**bad)


def test_not_with_contexts_for_other_contrasts():
    with pytest.raises(UsageError, match="cannot be combined"):
        TrainConfig(alt_source_p=0.25, alt_source_data="alt", aug_gamma_sd=0.2, aug_context_gammas=(0.8,))


def _prepared(root: Path, cfg, gamma: float, val_case: str = "c1") -> Path:
    """Two small phantom cases prepared with their T1ce, or with it changed by ``gamma`` as a second contrast."""
    from MedSynthLogic.dataset_prep import Case, prepare_dataset
    from MedSynthLogic.phantom import make_phantom
    from MedSynthLogic.volume_io import write_volume

    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for s in range(2):
        p = make_phantom(shape=(40, 48, 40), seed=s)
        scale = float(np.percentile(p.t1ce.array[p.mask], 99.5))
        write_volume(p.t1ce.with_array((p.t1ce.array / scale) ** gamma * scale), root / f"c{s}_src.nii.gz")
        write_volume(p.t2, root / f"c{s}_t2.nii.gz")
        cases.append(Case(f"c{s}", root / f"c{s}_src.nii.gz", root / f"c{s}_t2.nii.gz"))
    prepare_dataset(cases, root / "data", cfg, patches_per_case=1, val_cases=[val_case], seed=0)
    return root / "data"


def test_a_refiner_trains_on_the_alternate_source_and_its_priors_context(tmp_path, prior_file):  # noqa: F811
    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.training import train

    data = _prepared(tmp_path / "main", refining_unet(), 1.0)
    alt = _prepared(tmp_path / "alt", refining_unet(), 1.6)
    runs = {}
    for name, extra in (("plain", {}), ("alt", {"alt_source_p": 0.5, "alt_source_data": str(alt)})):
        events = []
        out = train(data, tmp_path / f"{name}.safetensors", refining_unet(), train_cfg(iterations=3, **extra),
                    run_dir=tmp_path / f"run_{name}", callback=events.append, device="cpu", prior_model=prior_file)
        runs[name] = load_model(out).chain.stages[0].state_dict()
        built = {e["split"] for e in events if e["event"] == "progress" and e.get("task") == "context"
                 and e["done"] == e["total"] > 0}
        # no "val": the U-Net validates on whole volumes, so its validation patches need no context
        assert built == ({"train"} | ({"train, alternate source"} if extra else set())), built
    assert any(not torch.equal(runs["plain"][k], runs["alt"][k]) for k in runs["plain"])

    other_split = _prepared(tmp_path / "other", refining_unet(), 1.6, val_case="c0")
    with pytest.raises(DataError, match="holds the cases"):
        train(data, tmp_path / "x.safetensors", refining_unet(), train_cfg(alt_source_p=0.5, alt_source_data=str(other_split)),
              run_dir=tmp_path / "rx", device="cpu", prior_model=prior_file)
    with pytest.raises(DataError, match="missing"):
        train(data, tmp_path / "y.safetensors", refining_unet(), train_cfg(alt_source_p=0.5, alt_source_data=str(tmp_path)),
              run_dir=tmp_path / "ry", device="cpu", prior_model=prior_file)


def test_the_papers_fcn_refuses_it(tmp_path):
    from MedSynthLogic.config import ModelConfig
    from MedSynthLogic.training.plan import check_augmentation_applies

    with pytest.raises(UsageError, match="U-Net's crops only"):
        check_augmentation_applies(ModelConfig(), TrainConfig(alt_source_p=0.5, alt_source_data=str(tmp_path)))
