"""metrics: hand-computed PSNR/MAE, SSIM properties, the normalisation protocol, tumour metrics, reports; devices."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from MedSynthLogic import devices
from MedSynthLogic.errors import DataError, GeometryError, ResourceError, UsageError
from MedSynthLogic.metrics import (
    evaluate_case,
    evaluate_folder,
    evaluate_pairs,
    mae,
    normalise_for_metrics,
    psnr,
    psnr_after_gain_offset,
    ssim3d,
    write_report,
)
from MedSynthLogic.volume_io import Volume, write_volume


def test_gain_offset_psnr_forgives_only_a_global_brightness_mismatch() -> None:
    rng = np.random.default_rng(1)
    target = rng.uniform(0.1, 0.9, (8, 8, 8))
    mask = np.ones(target.shape, bool)
    mask[0] = False
    darker = 0.5 * target + 0.1  # right structure, wrong brightness and contrast
    assert psnr(darker, target, mask) < 20
    assert psnr_after_gain_offset(darker, target, mask) > 250  # exact up to float rounding
    noisy = target + rng.normal(0, 0.05, target.shape)
    by_hand = 10 * math.log10(1 / np.mean((np.clip(np.polyval(np.polyfit(noisy[mask], target[mask], 1), noisy[mask]), 0, 1) - target[mask]) ** 2))
    assert psnr_after_gain_offset(noisy, target, mask) == pytest.approx(by_hand, rel=1e-9)
    assert psnr_after_gain_offset(noisy, target, mask) >= psnr(noisy, target, mask) - 1e-9
    result = evaluate_case(darker * 1000, target * 1000, mask, pred_scale=1000 * np.percentile(target[mask], 99.5))
    assert result["psnr_calibrated"] > result["psnr"] + 10


def test_psnr_and_mae_by_hand() -> None:
    target = np.zeros((2, 2, 2))
    pred = target.copy()
    pred[0, 0, 0] = 0.5  # one error of 0.5 among 8 voxels: MSE 1/32, MAE 1/16
    assert mae(pred, target) == pytest.approx(1 / 16)
    assert psnr(pred, target) == pytest.approx(10 * math.log10(32))
    assert psnr(pred, target, data_range=2.0) == pytest.approx(10 * math.log10(4 * 32))
    mask = np.zeros_like(target, bool)
    mask[0, 0] = True  # two voxels, one wrong: MSE 1/8
    assert psnr(pred, target, mask) == pytest.approx(10 * math.log10(8))
    assert mae(pred, target, mask) == pytest.approx(0.25)


def test_identical_images() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((12, 13, 14))
    assert psnr(a, a) == math.inf
    assert ssim3d(a, a) == pytest.approx(1.0)
    assert mae(a, a) == 0.0


def test_ssim_drops_with_noise_and_matches_uncropped_skimage() -> None:
    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*(np.linspace(0, 3, n) for n in (20, 22, 24)), indexing="ij")
    clean = (np.sin(z) * np.cos(y) * 0.4 + 0.5) * (x + 1) / 4
    mask = np.zeros(clean.shape, bool)
    mask[4:15, 5:17, 3:20] = True
    scores = [ssim3d(np.clip(clean + s * rng.standard_normal(clean.shape), 0, 1), clean, mask) for s in (0.0, 0.02, 0.1)]
    assert scores[0] == pytest.approx(1.0) and scores[0] > scores[1] > scores[2]
    noisy = clean + 0.05 * rng.standard_normal(clean.shape)
    _, full = structural_similarity(noisy, clean, data_range=1.0, full=True, win_size=7)
    assert ssim3d(noisy, clean, mask) == pytest.approx(full[mask].mean(), abs=1e-12)


def test_protocol_makes_metrics_independent_of_output_unit(phantom) -> None:
    t2, mask = phantom.t2.array, phantom.mask
    a = evaluate_case(t2 * 0.25, t2, mask)  # same image in another unit scores as identical
    assert a["psnr"] == math.inf and a["ssim"] == pytest.approx(1.0) and a["mae"] == 0
    b = evaluate_case(t2 * 0.001, t2, mask)  # only float rounding differs
    assert b["psnr"] > 100 and b["ssim"] == pytest.approx(1.0)
    n = normalise_for_metrics(t2, mask)
    assert n.min() >= 0 and n.max() == 1.0
    assert np.mean(n[mask] >= 1.0) == pytest.approx(0.005, abs=0.002)
    assert not normalise_for_metrics(np.zeros_like(t2), mask).any()


def test_evaluate_case_tumour_metrics_only_with_seg(phantom) -> None:
    t2, mask, seg = phantom.t2.array, phantom.mask, phantom.labels
    pred = t2 + np.where(seg > 0, 300.0, 0.0).astype(np.float32) * mask  # errors only in the tumour
    brain_only = evaluate_case(pred, t2, mask)
    assert set(brain_only) == {"psnr", "ssim", "mae", "psnr_calibrated", "brain_voxels"}
    with_seg = evaluate_case(pred, t2, mask, seg)
    assert {"psnr_tumour", "ssim_tumour", "mae_tumour"} <= set(with_seg)
    assert with_seg["tumour_voxels"] == int(((seg > 0) & mask).sum())
    assert with_seg["psnr_tumour"] < with_seg["psnr"] and with_seg["ssim_tumour"] < with_seg["ssim"]
    no_tumour = evaluate_case(pred, t2, mask, np.zeros_like(seg))
    assert "psnr_tumour" not in no_tumour and no_tumour["tumour_voxels"] == 0
    default_mask = evaluate_case(t2, t2)  # mask defaults to reference > 0
    assert default_mask["brain_voxels"] == int(mask.sum())


def test_evaluate_case_refusals() -> None:
    with pytest.raises(GeometryError):
        evaluate_case(np.ones((4, 5, 6)), np.ones((4, 5, 7)))
    with pytest.raises(GeometryError):
        evaluate_case(np.ones((4, 5, 6)), np.ones((4, 5, 6)), np.ones((4, 5, 5)))
    with pytest.raises(Exception, match="empty"):
        evaluate_case(np.ones((4, 5, 6)), np.zeros((4, 5, 6)))


def test_evaluate_pairs_and_report(tmp_path, phantom) -> None:
    t2, mask, seg = phantom.t2, phantom.mask, phantom.labels
    rng = np.random.default_rng(0)
    pairs = [
        (f"case{i}", t2.with_array(t2.array + rng.normal(0, 20 * (i + 1), t2.shape).astype(np.float32) * mask), t2, mask, seg)
        for i in range(3)
    ]
    pairs.append(("perfect", t2, t2, mask, None))
    results = evaluate_pairs(pairs)
    assert [c["case"] for c in results["cases"]] == ["case0", "case1", "case2", "perfect"]
    psnrs = [c["psnr"] for c in results["cases"]]
    assert psnrs[0] > psnrs[1] > psnrs[2] and psnrs[3] == math.inf
    s = results["summary"]
    assert s["psnr"]["n"] == 3 and s["psnr"]["mean"] == pytest.approx(np.mean(psnrs[:3]))
    assert s["ssim"]["n"] == 4 and s["ssim"]["std"] == pytest.approx(np.std([c["ssim"] for c in results["cases"]]))
    assert s["psnr_tumour"]["n"] == 3

    write_report(results, tmp_path / "r.json", tmp_path / "r.md")
    data = json.loads((tmp_path / "r.json").read_text())  # strict JSON: inf became null
    assert data["cases"][3]["psnr"] is None and data["cases"][0]["psnr"] == pytest.approx(psnrs[0])
    md = (tmp_path / "r.md").read_text()
    assert "| case | psnr | ssim | mae | psnr_tumour | ssim_tumour | mae_tumour | psnr_calibrated |" in md
    assert "| perfect | ∞ |" in md and "**mean ± std**" in md and md.count("\n| case |") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]

    shifted = Volume(t2.array, spacing=t2.spacing, origin=(5.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="Case bad.*origin differs"):
        evaluate_pairs([("bad", shifted, t2, mask, None)])
    with pytest.raises(DataError):
        evaluate_pairs([])


def test_evaluate_folder(tmp_path, phantom) -> None:
    for d in ("pred", "ref", "mask"):
        (tmp_path / d).mkdir()
    for name in ("a", "b"):
        write_volume(phantom.t2, tmp_path / "ref" / f"{name}.nii.gz")
        write_volume(phantom.t2.with_array(phantom.t2.array * 2), tmp_path / "pred" / f"{name}.nii.gz")
        write_volume(phantom.t2.with_array(phantom.mask), tmp_path / "mask" / f"{name}.nii.gz")
    results = evaluate_folder(tmp_path / "pred", tmp_path / "ref", mask_dir=tmp_path / "mask")
    assert [c["case"] for c in results["cases"]] == ["a", "b"]
    assert all(c["psnr"] == math.inf for c in results["cases"])
    (tmp_path / "ref" / "b.nii.gz").unlink()
    with pytest.raises(DataError, match="b.nii.gz is missing"):
        evaluate_folder(tmp_path / "pred", tmp_path / "ref")


def test_evaluate_folder_reads_a_mask_in_another_voxel_order_in_its_own_place(tmp_path, phantom) -> None:
    """A mask stored with x mirrored (direction −1, origin moved) was applied to the mirrored voxels (a review)."""
    from MedSynthLogic.volume_io import Volume

    for d in ("pred", "ref", "mask", "mirrored"):
        (tmp_path / d).mkdir()
    t2 = phantom.t2
    noisy = t2.array + np.random.default_rng(0).normal(0, 30, t2.shape).astype(np.float32) * (t2.array > 0)
    one_side = phantom.mask.copy()
    one_side[:, :, : t2.shape[2] // 2] = False  # one side of the brain only
    write_volume(t2, tmp_path / "ref" / "a.nii.gz")
    write_volume(t2.with_array(noisy * (1 + np.linspace(0, 1, t2.shape[2], dtype=np.float32))), tmp_path / "pred" / "a.nii.gz")
    write_volume(t2.with_array(one_side.astype(np.float32)), tmp_path / "mask" / "a.nii.gz")
    d = np.array(t2.direction).reshape(3, 3)
    origin = np.array(t2.origin) + d[:, 0] * t2.spacing[0] * (t2.shape[2] - 1)  # x: the array's last axis
    flipped = d.copy()
    flipped[:, 0] *= -1
    write_volume(Volume(np.ascontiguousarray(one_side[:, :, ::-1]).astype(np.float32), t2.spacing, tuple(origin),
                        tuple(flipped.ravel())), tmp_path / "mirrored" / "a.nii.gz")
    same = evaluate_folder(tmp_path / "pred", tmp_path / "ref", mask_dir=tmp_path / "mask")["cases"][0]
    mirrored = evaluate_folder(tmp_path / "pred", tmp_path / "ref", mask_dir=tmp_path / "mirrored")["cases"][0]
    assert mirrored["brain_voxels"] == same["brain_voxels"]
    assert mirrored["psnr"] == pytest.approx(same["psnr"], abs=1e-6) and mirrored["ssim"] == pytest.approx(same["ssim"], abs=1e-6)


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device(" CPU ") == torch.device("cpu")
    meta = torch.device("meta")
    assert devices.resolve_device(meta) is meta  # already resolved: returned as it is
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert devices.resolve_device() == torch.device("cpu")
    with pytest.raises(ResourceError, match="CUDA GPU was requested") as info:
        devices.resolve_device("cuda")
    assert "--device cpu" in str(info.value) and info.value.exit_code == 8
    with pytest.raises(UsageError, match="Unknown device 'tpu'"):
        devices.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ResourceError, match="cuda:2"):
        devices.resolve_device("cuda:2")


def test_pred_scale_penalises_flat_contrast_that_own_percentile_hides() -> None:
    """A prediction at half the reference's contrast looks perfect after its own-percentile rescale, but not in its unit."""
    from MedSynthLogic.metrics import evaluate_case

    rng = np.random.default_rng(0)
    target = rng.uniform(100, 1000, size=(20, 20, 20)).astype(np.float32)
    mask = np.ones_like(target, dtype=bool)
    scale = float(np.percentile(target, 99.5))
    exact = target / scale * 1000.0
    flat = 0.5 * exact
    assert evaluate_case(exact, target, mask, pred_scale=1000.0)["psnr"] > 40
    assert evaluate_case(flat, target, mask)["psnr"] > 40
    assert evaluate_case(flat, target, mask, pred_scale=1000.0)["psnr"] < 15


def test_a_target_in_hounsfield_units_is_scored_in_its_window_not_by_its_own_percentile():
    """Divided by their own 99.5th percentiles, a CT prediction three times too bright scored 150 dB and SSIM 1."""
    from MedSynthLogic.metrics import evaluate_case, evaluate_pairs

    rng = np.random.default_rng(0)
    target = np.full((20, 20, 20), -1000.0, np.float32)
    target[4:16, 4:16, 4:16] = rng.uniform(10, 45, (12, 12, 12))
    target[4:16, 4:6, 4:16] = 1000.0  # bone
    mask = target > -500
    window = (-1000.0, 2000.0)
    assert evaluate_case(target * 3, target, mask, window=window)["psnr"] < 20
    assert evaluate_case(target, target, mask, window=window)["psnr"] == float("inf")
    off = evaluate_case(target + 30.0, target, mask, window=window)
    assert off["mae_target_unit"] == pytest.approx(30.0, rel=1e-3)
    report = evaluate_pairs([("c", target + 30.0, target, mask, None)], window=window)
    assert "window -1000 to 2000" in report["protocol"] and report["summary"]["mae_target_unit"]["mean"] == pytest.approx(30.0, rel=1e-3)


@pytest.mark.parametrize("window", [None, (-1000.0, 1500.0)])
def test_what_lies_outside_the_mask_never_changes_a_score(phantom, window) -> None:
    """A CT's skull outside an MR brain mask dropped SSIM from 0.21 to −0.03 with PSNR unchanged: the prediction was
    masked, the reference was not, and SSIM's windows at the mask's edge read the skull."""
    from scipy import ndimage

    brain = phantom.t1ce.array > 0
    skull = ndimage.binary_dilation(brain, iterations=3) & ~brain
    if window is None:
        target = phantom.t2.array
        pred, scale = target * 0.9 * 1000.0 / np.percentile(target[brain], 99.5), 1000.0
    else:
        target = np.where(brain, 40.0 + 20.0 * phantom.t2.array / phantom.t2.array.max(), -1000.0).astype(np.float32)
        pred, scale = np.where(brain, 35.0 + 10.0 * phantom.t1ce.array / phantom.t1ce.array.max(), -1000.0), None
    with_skull = np.where(skull, 1500.0 if window else target.max(), target).astype(np.float32)
    plain = evaluate_case(pred, target, brain, pred_scale=scale, window=window)
    skulled = evaluate_case(pred, with_skull, brain, pred_scale=scale, window=window)
    assert skulled["ssim"] == pytest.approx(plain["ssim"], abs=1e-9) and skulled["psnr"] == plain["psnr"]


def test_a_mean_over_no_finite_value_reads_as_a_dash_as_the_json_says_null():
    """Every case infinite (a perfect prediction): metrics.md printed "nan ± nan" where metrics.json holds null."""
    from MedSynthLogic.metrics import markdown_table

    table = markdown_table({"cases": [{"case": "a", "psnr": float("inf"), "ssim": 1.0}],
                            "summary": {"psnr": {"mean": float("nan"), "std": float("nan"), "n": 0},
                                        "ssim": {"mean": 1.0, "std": 0.0, "n": 1}}})
    assert "| **mean ± std** | – ± – | 1.0000 ± 0.0000 |" in table and "nan" not in table
