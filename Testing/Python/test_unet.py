"""The unet3d generator kind: shapes, receptive field, tiled = whole, model files, and its training (crops,
masked losses, EMA, cosine schedule) on phantoms: the validation loss falls, resume equals uninterrupted,
bf16 steps stay finite, and an auto-context stage trains on top of the first."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from MedSynthLogic.config import DiscriminatorConfig, GeneratorConfig, ModelConfig, TrainConfig
from MedSynthLogic.errors import UsageError
from MedSynthLogic.models import UNet3D, build_discriminator, build_generator, build_generators

from test_training import make_phantom_data


def small_unet(stages: int = 1, crop: int = 32, **generator) -> ModelConfig:
    """A 3-level U-Net of a few channels: the real code paths at test speed."""
    gen = dict(kind="unet3d", unet_channels=(4, 8, 8), residual=False)
    gen.update(generator)
    return ModelConfig(
        generator=GeneratorConfig(**gen),
        discriminator=DiscriminatorConfig(patch_channels=(4, 8)),
        stages=stages,
        source_patch=crop,
    )


def randomise(chain: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Non-zero weights everywhere (a new residual block is the identity, which would hide tiling errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in chain.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_unet_keeps_the_crop_size_and_needs_its_downsampling_multiple():
    cfg = small_unet(stages=2)
    net = build_generator(cfg.stage_generator(1))
    assert isinstance(net, UNet3D)
    assert net(torch.zeros(2, 2, 16, 24, 32)).shape == (2, 1, 16, 24, 32)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 2, 18, 16, 16))
    with pytest.raises(UsageError, match="multiple of 4"):
        dataclasses.replace(cfg, source_patch=30)
    with pytest.raises(UsageError, match="Unknown generator kind"):
        GeneratorConfig(kind="resnet")
    with pytest.raises(UsageError, match="Unknown unet_upsample"):
        GeneratorConfig(kind="unet3d", unet_upsample="nearest")
    logits = build_discriminator(cfg)(torch.zeros(2, 1, 32, 32, 32))
    assert logits.shape == (2, 1, 8, 8, 8)


@pytest.mark.parametrize("upsample", ["transpose", "trilinear"])
def test_default_unet_sees_more_than_100_voxels_and_the_formula_bounds_the_real_field(upsample):
    assert GeneratorConfig(kind="unet3d").receptive_field >= 100
    assert GeneratorConfig().receptive_field == 17
    cfg = GeneratorConfig(kind="unet3d", unet_channels=(2, 2, 2, 2), residual=False, unet_upsample=upsample)
    net = build_generator(cfg).eval()  # training-mode instance norm would couple every voxel of the crop
    randomise(net)
    x = torch.zeros(1, 1, 128, 128, 128, requires_grad=True)
    net(x)[0, 0, 64, 64, 64].backward()
    hit = (x.grad[0, 0].abs() > 0).nonzero()
    reach = int(max((hit - 64).abs().max(), 0))
    assert reach < 64, "the input is too small to show the field"
    assert reach <= cfg.receptive_field // 2 <= cfg.tile_halo
    assert reach >= cfg.receptive_field // 4, "the field formula is far larger than the network's real reach"


@pytest.mark.parametrize("upsample, grid", [("transpose", True), ("trilinear", False)])
def test_only_transposed_upsampling_leaves_a_grid_on_a_uniform_input(upsample, grid):
    """Away from the borders a uniform input gives uniform features; a transposed 2³ convolution then writes its 8
    kernel weights as a period-2 grid, which interpolation cannot (the texture in the run-5 figures)."""
    net = build_generator(GeneratorConfig(kind="unet3d", unet_channels=(2, 2), residual=False, unet_upsample=upsample))
    randomise(net, seed=6)
    net.eval()
    with torch.no_grad():
        out = net(torch.ones(1, 1, 48, 48, 48))[0, 0, 16:32, 16:32, 16:32]
    assert out.abs().mean() > 1e-3, "weights should give a non-trivial output"
    assert (out.std() > 1e-3 * out.abs().mean()) == grid


def test_unet_runs_its_cpu_convolutions_channels_last_with_the_same_result(monkeypatch):
    """Every 3³ convolution past the stem gets channels-last activations (the fast oneDNN layout); NCDHW gives the same output."""
    from MedSynthLogic import models

    chain = build_generators(small_unet())
    randomise(chain)
    gen = chain.stages[0].train()
    seen = []
    for m in gen.modules():
        if isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3) and m is not gen.stem:
            m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last_3d)))
    x = torch.rand(1, 1, 32, 32, 32)
    fast = gen(x)
    assert seen and all(seen)
    monkeypatch.setattr(models, "CPU_LAYOUT", torch.contiguous_format)
    seen.clear()
    plain = gen(x)
    assert not any(seen)
    assert torch.allclose(fast, plain, atol=1e-5)
    assert {type(m).__name__ for m in gen.modules() if isinstance(m, torch.nn.InstanceNorm3d)} == {"InstanceNorm3dKeepingLayout"}


def test_unet_gradients_are_the_same_channels_last_and_ncdhw(monkeypatch):
    """The backward pass too: copying PyTorch's instance-norm output back to channels-last once gave input gradients
    off by more than 100 % (every U-Net trained from commit efe84af until the fix), while the forward agreed."""
    from MedSynthLogic import models

    chain = build_generators(small_unet())
    randomise(chain)
    gen = chain.stages[0].train()
    g = torch.Generator().manual_seed(0)
    x, target = torch.rand(1, 1, 32, 32, 32, generator=g), torch.rand(1, 1, 32, 32, 32, generator=g)

    def gradients(layout: torch.memory_format) -> dict:
        monkeypatch.setattr(models, "CPU_LAYOUT", layout)
        net = copy.deepcopy(gen)
        xi = x.clone().requires_grad_(True)
        ((net(xi) - target) ** 2).mean().backward()
        grads = {n: p.grad for n, p in net.named_parameters() if not n.endswith("conv1.bias")}  # 0 by maths: a norm follows
        grads["input"] = xi.grad
        return grads

    fast, plain = gradients(torch.channels_last_3d), gradients(torch.contiguous_format)
    for name, g in plain.items():
        # Relative to the whole gradient, not per voxel: rounding that flips a leaky ReLU whose input is ~1e-7 from 0
        # changes a few voxels' gradients by the slope (seen in 3 of 20 random inputs: 0.1 % of the norm); the bug was 60 %.
        assert float((fast[name] - g).norm()) <= 1e-2 * float(g.norm()) + 1e-12, name


@pytest.mark.parametrize("batch", [1, 2])  # one sample takes the batch-norm path, more the general one
def test_training_instance_norm_matches_pytorchs_with_channels_last_gradients(batch):
    from MedSynthLogic.models import InstanceNorm3dKeepingLayout

    torch.manual_seed(0)
    ref = torch.nn.InstanceNorm3d(16, affine=True, track_running_stats=True)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    ours = InstanceNorm3dKeepingLayout(16, affine=True, track_running_stats=True)
    ours.load_state_dict(ref.state_dict())
    x, g = torch.randn(batch, 16, 12, 12, 12) * 3 + 1, torch.randn(batch, 16, 12, 12, 12)
    x_ref, x_cl = x.clone().requires_grad_(True), x.contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    ref(x_ref).backward(g)
    out = ours(x_cl)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    out.backward(g.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(x_cl.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(ref, name).grad, rtol=1e-4, atol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), rtol=1e-5, atol=1e-6)


def test_training_instance_norm_in_bf16_channels_last_has_float64s_gradients():
    """Under CPU bf16 autocast, in the U-Net's layout: the input gradient within 1 % of a float64 reference."""
    from MedSynthLogic.models import InstanceNorm3dKeepingLayout

    g = torch.Generator().manual_seed(1)
    norm = InstanceNorm3dKeepingLayout(8, affine=True, track_running_stats=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.5, 0.5, generator=g)
    x, dy = torch.randn(1, 8, 16, 16, 16, generator=g) * 2 + 1, torch.randn(1, 8, 16, 16, 16, generator=g)
    x64 = x.double().requires_grad_(True)
    torch.nn.functional.instance_norm(x64, None, None, norm.weight.double(), norm.bias.double(), eps=norm.eps).backward(dy.double())
    x_cl = x.bfloat16().contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x_cl)
    out.backward(dy.bfloat16().contiguous(memory_format=torch.channels_last_3d))
    error = (x_cl.grad.double() - x64.grad).norm() / x64.grad.norm()
    assert out.is_contiguous(memory_format=torch.channels_last_3d) and error < 0.01, float(error)


def test_eval_instance_norm_is_pytorchs_running_statistics_map_and_keeps_the_layout():
    """The eval fast path (one affine pass) computes what ``nn.InstanceNorm3d`` computes from its running statistics."""
    from MedSynthLogic.models import InstanceNorm3dKeepingLayout

    ours = InstanceNorm3dKeepingLayout(6, affine=True, track_running_stats=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(6, generator=g))
        ours.bias.copy_(torch.randn(6, generator=g))
        ours.running_mean.copy_(torch.randn(6, generator=g))
        ours.running_var.copy_(torch.rand(6, generator=g) + 0.1)
    reference = torch.nn.InstanceNorm3d(6, affine=True, track_running_stats=True)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 8, 10, 12, generator=g).contiguous(memory_format=torch.channels_last_3d)
    fast, slow = ours.eval()(x), reference.eval()(x)
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert not torch.allclose(ours.train()(x), fast, atol=1e-2), "training mode must still use each sample's statistics"


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_inference_mode_forward_works_in_place_with_the_same_output(norm):
    """Without autograd the U-Net activates and adds in place; its output is the recorded forward's, its input untouched."""
    net = build_generator(small_unet(norm=norm).generator)
    randomise(net, seed=4)
    net.eval()
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    kept = x.clone()
    with torch.enable_grad():
        recorded = net(x.requires_grad_(False))
    with torch.inference_mode():
        in_place = net(x)
    assert torch.equal(x, kept), "the forward changed its input"
    assert torch.allclose(in_place, recorded.detach(), atol=1e-6)
    assert recorded.abs().max() > 0.01, "weights should give a non-trivial output"


@pytest.mark.parametrize("upsample", ["transpose", "trilinear"])
def test_tiled_synthesis_equals_one_whole_frame_forward(phantom, upsample):
    from MedSynthLogic.inference import synthesize_array

    # a 10-voxel halo (12 with interpolation): each 16³ tile's window is a part of the frame
    cfg = small_unet(stages=2, unet_channels=(4, 8), unet_upsample=upsample)
    chain = build_generators(cfg)
    randomise(chain, scale=0.1)
    src = phantom.t1ce.array / np.percentile(phantom.t1ce.array[phantom.mask], 99.5)
    whole = synthesize_array(chain, src, phantom.mask, device="cpu")
    events = []
    tiled = synthesize_array(chain, src, phantom.mask, device="cpu", tile=16, progress=events.append)
    assert 0.01 < np.abs(whole).max() < 10, "weights should give outputs of the scale of network units"
    assert np.abs(tiled - whole).max() <= 1e-4
    assert max(e["total"] for e in events) > 1, "the tiled run did not tile"
    assert np.all(whole[~phantom.mask] == 0)


def test_tiles_whose_windows_are_the_whole_frame_run_as_one_forward(phantom):
    """The bundled refiner's halo is 128 voxels: on a brain-sized frame every window was the whole frame, so
    --tile 64 ran the whole forward 36 times (33× the work) for no memory saved (review 52)."""
    from MedSynthLogic.inference import synthesize_array

    from MedSynthLogic.inference import mask_bbox
    from MedSynthLogic.unet_inference import frame_of, tiles_of

    cfg = small_unet(unet_channels=(4, 8, 8, 8))  # a halo of 56: the first 32³ tile's window spans the frame
    m, halo = cfg.generator.size_multiple, cfg.generator.tile_halo
    frame = frame_of(mask_bbox(phantom.mask), phantom.mask.shape, m)
    assert all(tiles_of(b - a, 32, m)[0][1] + halo >= b - a and len(tiles_of(b - a, 32, m)) > 1 for a, b in frame)
    chain = build_generators(cfg)
    randomise(chain, scale=0.1)
    src = phantom.t1ce.array / np.percentile(phantom.t1ce.array[phantom.mask], 99.5)
    events = []
    tiled = synthesize_array(chain, src, phantom.mask, device="cpu", tile=32, progress=events.append)
    assert max(e["total"] for e in events) == 1
    np.testing.assert_array_equal(tiled, synthesize_array(chain, src, phantom.mask, device="cpu"))


def test_a_cancel_during_the_last_stages_one_forward_stops_before_any_result(phantom):
    """A U-Net stage runs its whole frame in one forward: a SIGTERM during it must not let the synthesis finish
    (and the CLI write its file) once the forward returns."""
    from MedSynthLogic.errors import Cancelled
    from MedSynthLogic.inference import synthesize_array

    chain = build_generators(small_unet(stages=2, unet_channels=(4, 8)))
    src = phantom.t1ce.array / np.percentile(phantom.t1ce.array[phantom.mask], 99.5)
    events = []
    asked = lambda: any(e["stage"] == 0 and e["done"] == 1 for e in events)  # noqa: E731 - once stage 0 is done
    with pytest.raises(Cancelled):
        synthesize_array(chain, src, phantom.mask, device="cpu", progress=events.append, cancel=asked)
    assert events[-1]["stage"] == 0, "the last stage's forward ran, but no result came out of it"
    events.clear()  # in tiles: asked once the last tile of the last stage has run
    asked = lambda: any(e["stage"] == 1 and e["done"] == e["total"] for e in events)  # noqa: E731
    with pytest.raises(Cancelled):
        synthesize_array(chain, src, phantom.mask, device="cpu", tile=16, progress=events.append, cancel=asked)


@pytest.mark.parametrize("upsample", ["transpose", "trilinear"])
def test_unet_model_file_round_trip_keeps_kind_and_weights(tmp_path, upsample):
    from MedSynthLogic.model_file import load_model, read_header, save_model

    cfg = small_unet(stages=2, unet_upsample=upsample)
    chain = build_generators(cfg)
    randomise(chain)
    path = save_model(tmp_path / "u.safetensors", chain, cfg)
    assert read_header(path)["model_config"]["generator"]["kind"] == "unet3d"
    from MedSynthLogic.model_summary import summarize_header

    summary = summarize_header(read_header(path), "u")
    assert "residual 3D U-Net, 3 levels (channels 4-8-8), instance norm" in summary
    assert ("trilinear upsampling" in summary) == (upsample == "trilinear")
    loaded = load_model(path)
    assert loaded.config == cfg
    x = torch.rand(1, 2, 16, 16, 16)
    assert torch.equal(loaded.chain.stages[1](x), chain.eval().stages[1](x))


@pytest.fixture(scope="module")
def unet_data(tmp_path_factory):
    return make_phantom_data(tmp_path_factory.mktemp("unet_phantom"), small_unet(), patches_per_case=1, shape=(40, 48, 40))


def train_cfg(**kw) -> TrainConfig:
    base = dict(iterations=6, batch_size=2, val_every=0, checkpoint_every=0, log_every=1, val_volumes=1, precision="fp32",
                lr_g=3e-3, lr_d=1e-3, optimizer="adamw", weight_decay=1e-4, lr_schedule="cosine", lr_warmup=2,
                grad_clip=1.0, ema_decay=0.5, warmup_iterations=3)
    base.update(kw)
    return TrainConfig(**base)


def test_unet_batches_take_the_runs_intensity_augmentation(unet_data):
    """The run's TrainConfig reaches the crops: same crops and targets, a changed source channel."""
    from pathlib import Path

    from MedSynthLogic.batch_sources import batch_source
    from MedSynthLogic.distributed import DistContext

    train_h5 = Path(unet_data) / "train.h5"
    plain, changed = (batch_source(train_h5, None, None, None, small_unet(), train_cfg(**aug), 0, 0, DistContext())
                      for aug in ({}, {"aug_gamma_sd": 0.3, "aug_field_sd": 0.1}))
    (src0, tgt0, m0), (src1, tgt1, m1) = plain.batch(4), changed.batch(4)
    assert torch.equal(tgt0, tgt1) and torch.equal(m0, m1)
    assert not torch.allclose(src0, src1) and torch.equal(src0 == 0, src1 == 0)


def test_unet_batches_take_the_runs_spatial_augmentation(unet_data):
    """The run's rotation and zoom reach the crops: same shapes, a 0/1 mask, other voxels; off by default."""
    from pathlib import Path

    from MedSynthLogic.batch_sources import batch_source
    from MedSynthLogic.distributed import DistContext

    train_h5 = Path(unet_data) / "train.h5"
    plain, turned = (batch_source(train_h5, None, None, None, small_unet(), train_cfg(**aug), 0, 0, DistContext())
                     for aug in ({}, {"aug_rotate_deg": 15.0, "aug_zoom_sd": 0.1}))
    assert plain.crops.spatial is None and turned.crops.spatial is not None
    (src0, tgt0, m0), (src1, tgt1, m1) = plain.batch(4), turned.batch(4)
    assert src0.shape == src1.shape and tgt0.shape == tgt1.shape and m0.shape == m1.shape
    assert not torch.allclose(tgt0, tgt1) and set(torch.unique(m1).tolist()) <= {0.0, 1.0}


def test_unet_training_lowers_the_validation_loss(tmp_path, unet_data):
    from MedSynthLogic.model_file import read_header
    from MedSynthLogic.training import train

    events = []
    out = train(unet_data, tmp_path / "u.safetensors", small_unet(), train_cfg(iterations=60, val_every=20, ema_decay=0.0),
                device="cpu", callback=events.append)
    vals = [e["val_loss"] for e in events if e["event"] == "validation"]
    assert len(vals) == 3 and vals[0] > vals[1] > vals[2] and vals[-1] < 0.8 * vals[0]
    assert any("d" in e["losses"] for e in events if e["event"] == "iteration"), "the adversarial term never ran"
    assert read_header(out)["training"]["generator_kind"] == "unet3d"


def test_unet_resume_equals_uninterrupted(tmp_path, unet_data):
    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.training import train

    cfg = small_unet()
    straight = train(unet_data, tmp_path / "a.safetensors", cfg, train_cfg(), device="cpu", run_dir=tmp_path / "ra")
    stop = __import__("threading").Event()

    def stop_at_3(event):
        if event["event"] == "iteration" and event["iteration"] == 3:
            stop.set()

    from MedSynthLogic.errors import Cancelled

    with pytest.raises(Cancelled):
        train(unet_data, tmp_path / "b.safetensors", cfg, train_cfg(), device="cpu", run_dir=tmp_path / "rb",
              callback=stop_at_3, stop_event=stop)
    from MedSynthLogic import checkpoint as ckpt
    from MedSynthLogic.training import export_checkpoint

    stopped = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "rb"))
    candidate = load_model(export_checkpoint(ckpt.latest_checkpoint(tmp_path / "rb"), tmp_path / "c.safetensors", stages=1))
    assert candidate.header["training"]["exported_ema"]
    ema = {k[len("module."):]: v for k, v in stopped["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(candidate.chain.stages[0].state_dict()[k], ema[k]) for k in ema)
    resumed = train(unet_data, tmp_path / "b.safetensors", cfg, train_cfg(), device="cpu", run_dir=tmp_path / "rb", resume=True)
    a, b = load_model(straight).chain.state_dict(), load_model(resumed).chain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("upsample", ["transpose", "trilinear"])
def test_unet_bf16_step_is_finite_and_keeps_losses_in_float32(upsample):
    from MedSynthLogic.distributed import DistContext
    from MedSynthLogic.stage_trainer import StageTrainer

    cfg = small_unet(unet_upsample=upsample)
    torch.manual_seed(0)
    gen, disc = build_generator(cfg.stage_generator(0)), build_discriminator(cfg)
    trainer = StageTrainer(gen, disc, cfg, train_cfg(precision="bf16", warmup_iterations=0), DistContext())
    src, tgt = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    mask = (torch.rand(1, 1, 32, 32, 32) > 0.3).float()
    for i in range(3):
        losses = trainer.step(src, tgt, mask, i)
        assert {"g", "d", "l2", "gdl", "g_adv"} <= set(losses) and all(np.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p).all() for p in gen.parameters())


def test_a_checkpoint_without_fp16_loads_where_the_precision_resolves_to_fp16():
    """A CPU or bf16 run saves an empty GradScaler state; resumed on a GPU where --precision auto means fp16, the
    enabled scaler refused it ("the source state dict is empty") and the resume crashed (a review)."""
    from MedSynthLogic.distributed import DistContext
    from MedSynthLogic.stage_trainer import StageTrainer

    cfg = small_unet()
    trainer = StageTrainer(build_generator(cfg.stage_generator(0)), build_discriminator(cfg), cfg,
                           train_cfg(precision="bf16"), DistContext())
    state = trainer.state_dict()
    assert state["scaler"] == {}
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=True)  # as an fp16 run's
    trainer.load_state_dict(state)
    assert trainer.scaler.is_enabled()


def test_cuda_rng_states_are_restored_for_the_gpus_present(monkeypatch):
    """A checkpoint holds one CUDA RNG state per GPU its process saw; a cluster job resumed with fewer GPUs (allowed,
    with a warning) failed on the missing devices (a review)."""
    from MedSynthLogic.training import state as training_state

    restored = []
    saved = training_state.rng_state()
    saved["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend((int(s[0]), i) for i, s in enumerate(states)))
    training_state.set_rng_state(saved)
    assert restored == [(0, 0)]


def test_a_unet_may_go_on_with_other_crops_from_its_model_file(tmp_path, unet_data):
    """A U-Net's source_patch is its training crop, not its geometry: --init-model accepts a run with larger crops."""
    from MedSynthLogic.errors import ModelFileError
    from MedSynthLogic.training import train
    from MedSynthLogic.training.state import open_init_model

    out = train(unet_data, tmp_path / "u.safetensors", small_unet(), train_cfg(iterations=1), device="cpu")
    assert open_init_model(out, small_unet(crop=48)).config.source_patch == 32
    with pytest.raises(ModelFileError, match="differs from this training's model config in generator"):
        open_init_model(out, small_unet(crop=48, unet_channels=(4, 8, 16)))


def test_unet_auto_context_stage_trains_on_the_first(tmp_path, unet_data):
    from MedSynthLogic.inference import synthesize_array
    from MedSynthLogic.model_file import load_model
    from MedSynthLogic.training import train

    events = []
    out = train(unet_data, tmp_path / "u2.safetensors", small_unet(stages=2), train_cfg(iterations=4), device="cpu",
                callback=events.append)
    model = load_model(out)
    assert model.stages == 2 and model.chain.stages[1].config.in_channels == 2
    context = [e for e in events if e["event"] == "progress" and e.get("task") == "context"]
    assert context and context[-1]["fraction"] == 1.0 and context[-1]["done"] == context[-1]["total"] > 0
    src = np.random.default_rng(0).random((32, 40, 32)).astype(np.float32)
    mask = np.zeros(src.shape, bool)
    mask[4:28, 6:34, 4:28] = True
    assert np.isfinite(synthesize_array(model.chain, src, mask, device="cpu")).all()


def test_a_unet_synthesis_out_of_gpu_memory_falls_back_to_the_cpu_under_auto(monkeypatch, phantom):
    """The U-Net path (the bundled default's refiner) had none of the FCN's GPU safeguards: an out-of-memory reached
    the user as a raw torch error, also under --device auto, and auto with fp16 failed in its CPU fallback. The
    "GPU" is a meta-device stand-in whose forwards raise torch.cuda.OutOfMemoryError (no GPU here)."""
    from MedSynthLogic import tiled_synthesis, unet_inference
    from MedSynthLogic.errors import ResourceError
    from MedSynthLogic.inference import synthesize_array

    chain = build_generators(small_unet())
    randomise(chain, scale=0.1)
    src = phantom.t1ce.array / np.percentile(phantom.t1ce.array[phantom.mask], 99.5)
    reference = synthesize_array(chain, src, phantom.mask, device="cpu")
    monkeypatch.setattr(tiled_synthesis, "resolve_device", lambda d: torch.device("cpu" if d == "cpu" else "meta"))
    original = unet_inference._Runner.__call__

    def oom_on_gpu(self, x):
        if self.device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, x)

    monkeypatch.setattr(unet_inference._Runner, "__call__", oom_on_gpu)
    events = []
    out = synthesize_array(chain, src, phantom.mask, device="auto", precision="fp16", progress=events.append)
    np.testing.assert_array_equal(out, reference)
    assert [e["message"] for e in events if e["event"] == "warning"][0].endswith("Falling back to the CPU (slower).")
    with pytest.raises(ResourceError, match="out of memory") as refused:
        synthesize_array(chain, src, phantom.mask, device="cuda")
    assert refused.value.exit_code == 8 and refused.value.reason == "out_of_memory"  # the panel's own advice


def test_a_unet_forward_that_overflows_in_fp16_is_redone_in_float32(monkeypatch):
    """The FCN redid a non-finite fp16 tile in float32; the U-Net wrote its inf into the synthesis."""
    from MedSynthLogic import unet_inference
    from MedSynthLogic.left_right import LeftRight

    class OverflowsInAutocast(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x[:, :1], float("inf") if torch.is_autocast_enabled("cpu") else 2.0)

    monkeypatch.setattr(unet_inference, "inference_copy", lambda gen: gen)
    monkeypatch.setattr(unet_inference, "synthesis_dtype", lambda device, precision: torch.float16)
    runner = unet_inference._Runner(OverflowsInAutocast(), torch.device("cpu"), "fp16", LeftRight.chosen(False, False))
    assert np.all(runner(np.ones((1, 8, 8, 8), np.float32)) == 2.0)


def test_crops_of_data_prepared_without_flips_are_never_flipped(tmp_path):
    """prepare's flip_axis None (no flipped copy) was recorded as axis 2 in the patch file, so the U-Net's crops were
    flipped half the time anyway (review 54); now the patch file's flipped_copy turns the crops' flips off too."""
    from MedSynthLogic.batch_sources import batch_source
    from MedSynthLogic.distributed import DistContext

    sources = {}
    for flip in (2, None):
        data = make_phantom_data(tmp_path / f"p{flip}", small_unet(), patches_per_case=1, flip_axis=flip)
        sources[flip] = batch_source(data / "train.h5", None, None, None, small_unet(), train_cfg(), 0, 0, DistContext())
    assert sources[None].crops.flip_axis is None and sources[2].crops.flip_axis == 2
    flipped = 0
    for it in range(6):
        plain, maybe = sources[None].batch(it)[0], sources[2].batch(it)[0]
        for a, b in zip(plain, maybe):
            same = torch.equal(a, b)
            assert same or torch.equal(a, torch.flip(b, dims=[3]))
            flipped += not same
    assert flipped > 0


def test_a_brain_cut_by_the_field_of_view_sees_zeros_beyond_it_as_in_training(phantom):
    """Training crops pass the volume's edges with zeros; synthesis repeated the border slice there instead, so a
    brain cut by the field of view (10 of the 14 BraTS T1ce) met an input the network never trained on (review 54).
    The same brain with zeros stored beyond the cut must now give the same synthesis."""
    from MedSynthLogic.inference import synthesize_array

    chain = build_generators(small_unet())
    randomise(chain, scale=0.1)
    src = phantom.t1ce.array / np.percentile(phantom.t1ce.array[phantom.mask], 99.5)
    cut, mask = np.ascontiguousarray(src[10:] * phantom.mask[10:]), np.ascontiguousarray(phantom.mask[10:])
    assert mask[0].any(), "the brain must reach the volume's first slice"
    padded = np.pad(cut, ((32, 0), (0, 0), (0, 0)))
    padded_mask = np.pad(mask, ((32, 0), (0, 0), (0, 0)))
    np.testing.assert_allclose(synthesize_array(chain, cut, mask, device="cpu"),
                               synthesize_array(chain, padded, padded_mask, device="cpu")[32:], atol=1e-5)


def test_unet_data_may_be_shorter_than_the_crop(tmp_path):
    """A U-Net trains on crops that pass a short volume's edges with zeros, so `prepare` takes a volume shorter than
    the crop along an axis (a thin slab): its patches are filled alike, their corners on the volume's own grid. The
    paper's FCN still refuses a volume smaller than its patch."""
    import h5py

    from MedSynthLogic.errors import DataError
    from MedSynthLogic.training import train

    data = make_phantom_data(tmp_path / "slab", small_unet(crop=32), patches_per_case=2, shape=(20, 40, 36))
    with h5py.File(data / "train.h5", "r") as f:
        corners, source = f["corner"][...], f["source"][...]
        stored = f["volumes/c0/source"].shape
    assert stored == (20, 40, 36) and source.shape[-3:] == (32, 32, 32)
    assert (corners[:, 0] == -6).all() and (corners[:, 1:] >= 0).all()  # 12 zero slices, 6 before the volume
    assert not source[:, 0, :6].any() and not source[:, 0, 26:].any() and source[:, 0, 6:26].any()
    import json

    case = json.loads((data / "manifest.json").read_text())["cases"]["c0"]
    assert case["padded_shape"] == [20, 40, 36]  # the stored volume's, not the filled patches' grid
    assert any("too small to synthesize" in n and "`medsynth synthesize` and `evaluate` refuse it" in n
               for n in case["notes"])  # 20 slices: trained on, never applicable (MIN_EDGE 32)
    model = train(data, tmp_path / "u.safetensors", small_unet(crop=32), train_cfg(iterations=2), device="cpu")
    assert model.exists()
    with pytest.raises(DataError, match="smaller than a 32³ patch"):
        make_phantom_data(tmp_path / "fcn", ModelConfig(source_patch=32), patches_per_case=2, shape=(8, 40, 36))


def test_a_unet_run_warns_of_workers_it_does_not_use(unet_data):
    """The U-Net's crops are cut in the training process: num_workers was ignored without a word (a review)."""
    from MedSynthLogic.training import plan_training

    assert not any("num_workers" in w for w in plan_training(unet_data, small_unet(), train_cfg()).warnings)
    warned = plan_training(unet_data, small_unet(), train_cfg(num_workers=2)).warnings
    assert any(w.startswith("num_workers 2 is not used by a unet3d run") for w in warned)
