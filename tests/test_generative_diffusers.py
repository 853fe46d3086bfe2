"""diffusers interop: models as denoisers, schedulers as processes, save_pretrained both ways.

Tiny configs (block_out_channels (16, 32), norm_num_groups 8, 8x8 samples); nothing is
downloaded. The discrete VP process is also tested here against diffusers' own tables."""

from __future__ import annotations

import json
import math

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser, MLPDenoiser, build_denoiser_net
from distillery.generative.processes import (
    PROCESSES,
    DiscreteVPProcess,
    EDMProcess,
    FlowProcess,
    build_process,
)

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")

from distillery.generative import diffusers_models as dm
from distillery.generative.samplers import sample

UNET = {"block_out_channels": [16, 32], "norm_num_groups": 8, "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}
DIT = {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 1, "patch_size": 2, "norm_num_groups": 8}


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights off diffusers' zero-initialised layers, so outputs depend on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))


# -- the discrete VP process ----------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_vp_matches_diffusers_table(schedule):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, beta_start=1e-4, beta_end=0.02)
    proc = dm.process_from_scheduler(sched)
    assert isinstance(proc, DiscreteVPProcess) and proc.describe()["beta_schedule"] == schedule
    k = torch.arange(1, 1001, dtype=torch.float64)
    a, s = proc.alpha_sigma(k / 1000)
    torch.testing.assert_close(a**2, sched.alphas_cumprod.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a))
    assert float(proc.alpha_sigma(torch.tensor(0.0))[0]) == 1.0  # t = 0: clean data


def test_discrete_vp_interpolation_derivative_and_bad_table():
    table = [0.9, 0.5, 0.1]
    proc = build_process({"kind": "vp_discrete", "alphas_cumprod": table})
    assert "vp_discrete" in PROCESSES
    t = torch.tensor([0.5 / 3, 1.5 / 3, 2.5 / 3], dtype=torch.float64)
    a, _ = proc.alpha_sigma(t)
    want = [math.exp(0.5 * 0.5 * (0 + math.log(0.9))), math.exp(0.5 * 0.5 * (math.log(0.9) + math.log(0.5))),
            math.exp(0.5 * 0.5 * (math.log(0.5) + math.log(0.1)))]
    torch.testing.assert_close(a, torch.tensor(want, dtype=torch.float64))
    # alpha' by forward-mode autodiff equals the slope of the piecewise-linear log alpha_bar
    da, _ = proc.d_alpha_sigma(t)
    slope = torch.tensor([math.log(0.9), math.log(0.5 / 0.9), math.log(0.1 / 0.5)], dtype=torch.float64) * 3
    torch.testing.assert_close(da, a * 0.5 * slope)
    with pytest.raises(ConfigError, match="alphas_cumprod"):
        DiscreteVPProcess(alphas_cumprod=[0.5, 0.9])
    with pytest.raises(ConfigError, match="beta_schedule"):
        DiscreteVPProcess(beta_schedule="sigmoid")


def test_scheduler_conversions():
    ddim = diffusers.DDIMScheduler(prediction_type="v_prediction", trained_betas=[0.01] * 50)
    proc = dm.process_from_scheduler(ddim)
    assert "alphas_cumprod" in proc.describe() and proc.num_train_timesteps == 50
    assert dm.prediction_from_scheduler(ddim) == "v"
    assert dm.prediction_from_scheduler(diffusers.DDPMScheduler()) == "eps"
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    proc = dm.process_from_scheduler(flow)
    assert isinstance(proc, FlowProcess) and proc.shift == 3.0
    assert dm.prediction_from_scheduler(flow) == "velocity"
    with pytest.raises(ConfigError, match="EulerDiscreteScheduler"):
        dm.process_from_scheduler(object.__new__(type("EulerDiscreteScheduler", (), {"config": None})))


# -- models as denoisers --------------------------------------------------------------------
def test_build_unet2d_and_dit_from_config():
    torch.manual_seed(0)
    net = build_denoiser_net({"name": "diffusers_unet2d", "params": UNET}, (1, 8, 8), num_classes=3)
    assert net.model.config.num_class_embeds == 4 and net.null_class == 3
    _perturb(net)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7])
    out = net(x, t, torch.tensor([0, 1]))
    assert out.shape == x.shape
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.full((2,), 3)))
    # the timestep the model sees: N t - 1 (DDPM's step k = N t, diffusers' index k - 1)
    torch.testing.assert_close(out, net.model(x, 1000 * t - 1, class_labels=torch.tensor([0, 1])).sample)
    dit = build_denoiser_net({"name": "diffusers_dit", "params": dict(DIT, timestep_offset=0)}, (2, 8, 8), num_classes=3)
    assert dit.null_class == 3 and dit.training
    _perturb(dit)
    x, y = torch.randn(64, 2, 8, 8), torch.zeros(64, dtype=torch.long)
    assert dit(x, torch.rand(64), None).shape == x.shape
    t = torch.full((64,), 0.5)  # no hidden label dropout in train mode: labels always reach the model
    torch.testing.assert_close(dit(x, t, y), dit(x, t, y))


def test_mismatched_sample_size_and_bad_keys_refused():
    with pytest.raises(ConfigError, match=r"sample_size is 16x16 but the data's images are 8x8"):
        build_denoiser_net({"name": "diffusers_unet2d", "params": dict(UNET, sample_size=16)}, (1, 8, 8))
    with pytest.raises(ConfigError, match=r"sample_size is 4x4 but the data's images are 8x8"):
        build_denoiser_net({"name": "diffusers_dit", "params": dict(DIT, sample_size=4)}, (1, 8, 8))
    with pytest.raises(ConfigError, match="unknown UNet2DModel config key.*block_channels"):
        build_denoiser_net({"name": "diffusers_unet2d", "params": {"block_channels": [8]}}, (1, 8, 8))
    with pytest.raises(ConfigError, match="no config.json"):
        build_denoiser_net({"name": "diffusers_unet2d", "params": {"from_pretrained": "/nonexistent"}}, (1, 8, 8))


# -- save_pretrained / load back -------------------------------------------------------------
def _unet_denoiser(prediction: str = "eps") -> Denoiser:
    torch.manual_seed(0)
    net = build_denoiser_net({"name": "diffusers_unet2d", "params": UNET}, (1, 8, 8))
    _perturb(net)
    proc = dm.process_from_scheduler(diffusers.DDPMScheduler(num_train_timesteps=1000))
    return Denoiser(net, proc, prediction, sample_shape=(1, 8, 8))


def _diffusers_loop(model, scheduler, x, steps, cond=None):
    scheduler.set_timesteps(steps)
    for ts in scheduler.timesteps:
        out = model(x, ts, class_labels=cond).sample
        x = scheduler.step(out, ts, x).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_save_pretrained_ddim_samples_as_distillery(tmp_path, prediction):
    den = _unet_denoiser(prediction)
    dm.save_pretrained(den, tmp_path, steps=4)
    meta = json.loads((tmp_path / "distillery.json").read_text())
    assert meta["steps"] == 4 and meta["prediction"] == prediction
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "unet")
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "scheduler")
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = sample(den, x_T, steps=4, solver="ddim")
        theirs = _diffusers_loop(unet, scheduler, x_T, 4)
    assert [int(v) for v in scheduler.timesteps] == [999, 749, 499, 249]
    assert float((ours - x_T).abs().max()) > 0.1  # the samples moved: the comparison is not vacuous
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    if prediction == "eps":  # the same through diffusers' DDIMPipeline (which clamps to [0, 1])
        pipe = diffusers.DDIMPipeline.from_pretrained(tmp_path)
        with torch.no_grad():
            img = pipe(batch_size=3, generator=torch.Generator().manual_seed(1), num_inference_steps=4,
                       output_type="pt", return_dict=False)[0]
        torch.testing.assert_close(img.reshape(ours.shape), (ours / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)
    back = dm.load_pretrained(tmp_path)  # and back into distillery
    with torch.no_grad():
        torch.testing.assert_close(sample(back, x_T, steps=4, solver="ddim"), ours)
    net = build_denoiser_net({"name": "diffusers_unet2d", "params": {"from_pretrained": str(tmp_path)}}, (1, 8, 8))
    t = torch.full((3,), 0.4)
    torch.testing.assert_close(net(x_T, t, None), den.net(x_T, t, None))


def test_save_pretrained_continuous_vp_and_flow(tmp_path):
    den = _unet_denoiser()
    den = Denoiser(den.net, build_process({"kind": "vp", "schedule": "cosine"}), "eps", sample_shape=(1, 8, 8))
    dm.save_pretrained(den, tmp_path / "vp", steps=2)
    scheduler = diffusers.DDIMScheduler.from_pretrained(tmp_path / "vp" / "scheduler")
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(_diffusers_loop(den.net.model, scheduler, x_T, 2),
                                   sample(den, x_T, steps=2, solver="ddim"), rtol=1e-4, atol=1e-4)
    # flow matching with a class-conditional DiT, Euler steps on the same grid
    torch.manual_seed(0)
    dit = build_denoiser_net({"name": "diffusers_dit", "params": dict(DIT, timestep_offset=0)}, (1, 8, 8), num_classes=2)
    _perturb(dit)
    fden = Denoiser(dit, FlowProcess(), "velocity", sample_shape=(1, 8, 8), num_classes=2)
    dm.save_pretrained(fden, tmp_path / "flow", steps=3)
    model = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "flow" / "transformer")
    sched = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "flow" / "scheduler")
    y = torch.tensor([0, 1])
    with torch.no_grad():
        ours = sample(fden, x_T, steps=3, solver="euler", cond=y)
        sched.set_timesteps(sigmas=[1.0, 2 / 3, 1 / 3])
        x = x_T
        for ts in sched.timesteps:
            x = sched.step(model(x, ts.expand(2), class_labels=y).sample, ts, x).prev_sample
    torch.testing.assert_close(x, ours, rtol=1e-5, atol=1e-5)


def test_save_pretrained_refusals(tmp_path):
    mlp = Denoiser(MLPDenoiser(dim=2), FlowProcess(), "velocity")
    with pytest.raises(ConfigError, match="diffusers model"):
        dm.save_pretrained(mlp, tmp_path, steps=2)
    den = _unet_denoiser()
    with pytest.raises(ConfigError, match="EDMProcess"):
        dm.save_pretrained(Denoiser(den.net, EDMProcess(), "eps"), tmp_path, steps=2)
    with pytest.raises(ConfigError, match="timestep_offset"):
        dm.save_pretrained(Denoiser(den.net, FlowProcess(), "velocity"), tmp_path, steps=2)
    with pytest.raises(ConfigError, match="positive integer"):
        dm.save_pretrained(den, tmp_path, steps=0)
