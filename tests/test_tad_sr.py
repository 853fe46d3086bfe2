"""TAD-SR (He et al. 2024, arXiv:2408.07476) and the shared SR parts (generative/restoration.py):
pairs, measures, the LR-conditioned denoiser, the SR teacher method, score distillation on
slightly noised outputs, the time-aware discriminator and the configs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import FlowProcess
from distillery.generative.restoration import (
    IMDN,
    SRDenoising,
    SRUNet,
    degrade,
    high_frequency_energy,
    lr_condition,
    psnr,
    sr_grid_png,
    sr_scores,
    upsample,
)
from distillery.recipes.tad_sr import (
    TADSR,
    score_distillation_direction,
    score_distillation_loss,
    tad_sr_config,
)


# -------------------------------------------------------------------------------- pairs, measures
def test_degrade_is_the_block_mean_and_nearest_upsampling_repeats():
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    lr = degrade(x, 2)
    want = torch.stack([torch.stack([x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(2, 3)) for j in range(4)], -1)
                        for i in range(4)], -2)
    assert torch.allclose(lr, want)
    up = upsample(lr.clamp(-1, 1), 8, "nearest")
    assert torch.equal(up, lr.clamp(-1, 1).repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert lr_condition(x.clamp(-1, 1), 4).shape == x.shape
    assert upsample(torch.full((1, 1, 2, 2), 5.0), 8, "bicubic").max() == 1.0  # clamped to [-1, 1]
    with pytest.raises(ConfigError, match="scale"):
        degrade(x, 3)
    with pytest.raises(ConfigError, match="upsample"):
        upsample(lr, 8, "area")


def test_psnr_formula():
    x, ref = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    x[0] += 0.1
    x[1, 0, 0, 0] = 1.0
    mse = torch.tensor([0.01, 1.0 / 16])
    assert torch.allclose(psnr(x, ref).float(), 10 * torch.log10(4.0 / mse))
    assert math.isinf(float(psnr(ref, ref)[0]))


def test_high_frequency_energy_closed_forms():
    i = torch.arange(8, dtype=torch.float64)
    checker = ((-1.0) ** (i[:, None] + i[None, :]))[None, None]
    assert torch.allclose(high_frequency_energy(checker), torch.ones(1, dtype=torch.float64))
    assert torch.allclose(high_frequency_energy(torch.full((1, 1, 8, 8), 0.7)), torch.zeros(1, dtype=torch.float64))
    slow = torch.cos(2 * math.pi * i / 8)[None, None, :, None].expand(1, 1, 8, 8)  # 1/8 cycle per pixel < 1/4
    assert float(high_frequency_energy(slow)) < 1e-20
    fast = torch.cos(2 * math.pi * 3 * i / 8)[None, None, None, :].expand(1, 1, 8, 8)  # 3/8 > 1/4: all energy
    assert math.isclose(float(high_frequency_energy(fast)), float(fast.pow(2).mean()), rel_tol=1e-9)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)  # cutoff 0: everything but the mean (Parseval)
    want = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(high_frequency_energy(x, cutoff=0.0), want)


def test_sr_scores_and_grid(tmp_path):
    hr = torch.rand(3, 1, 8, 8) * 2 - 1
    s = sr_scores(hr.repeat(2, 1, 1, 1) * 0.5, hr)
    assert math.isclose(s["psnr"], float(psnr(hr * 0.5, hr).mean()), rel_tol=1e-6)
    path = sr_grid_png({"LR": degrade(hr, 2), "SR": hr, "HR": hr}, tmp_path / "g.png", rows=2)
    assert path.is_file() and path.stat().st_size > 0


# -------------------------------------------------------------------------------- SR networks and teacher
def test_sr_unet_reads_the_condition():
    torch.manual_seed(0)
    net = SRUNet(channels=(4, 8))
    torch.nn.init.normal_(net.unet.out.weight)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    a, b = net(x, t, torch.zeros_like(x)), net(x, t, torch.ones_like(x))
    assert a.shape == x.shape and not torch.allclose(a, b)
    assert torch.equal(net(x, t, None), a)  # None: the zero (null) condition
    assert net.features(x, t, x).shape == (2, 8)
    with pytest.raises(ConfigError, match="cond"):
        net(x, t, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="data.conditional"):
        SRUNet(num_classes=10)


def test_sr_denoising_loss_formula():
    torch.manual_seed(0)
    net = SRUNet(channels=(4, 8))
    torch.nn.init.normal_(net.unet.out.weight, std=0.1)
    process = FlowProcess()
    method = SRDenoising(Denoiser(net, process, "velocity", (1, 8, 8)), scale=2, upsample="nearest")
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(5)
    loss, _ = method.loss("model", {"x": x0}, 0)
    torch.manual_seed(5)
    eps = torch.randn_like(x0)
    t = process.sample_t(4)
    x_t = (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps
    want = (net(x_t, t, lr_condition(x0, 2, "nearest")) - (eps - x0)).pow(2).mean()  # velocity target eps - x0
    assert math.isclose(float(loss.detach()), float(want.detach()), rel_tol=1e-5)
    assert method.sample(3, 2).shape == (3, 1, 8, 8)
    with pytest.raises(ConfigError, match="teacher"):
        SRDenoising(Denoiser(net, process, "velocity", (1, 8, 8)), teacher=nn.Identity())


# -------------------------------------------------------------------------------- score distillation
class _ScaledX0(nn.Module):
    """A closed-form teacher network: ``x0_hat(x_t) = a x_t`` whatever ``t`` and ``cond``."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x_t, t, cond=None):
        return self.a * x_t


def test_score_distillation_direction_closed_form():
    process = FlowProcess()
    a = 0.7
    teacher = Denoiser(_ScaledX0(a), process, "x0", (1, 4, 4))
    x_hat, ref, eps = (torch.randn(3, 1, 4, 4, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0.05, 0.1, 0.3], dtype=torch.float64)
    alpha = (1 - t)[:, None, None, None]
    # g = (x - a (alpha x + sigma eps)) - (r - a (alpha r + sigma eps)) = (1 - a alpha) (x - r)
    g = score_distillation_direction(teacher, x_hat, ref, eps, t, torch.zeros_like(x_hat))
    assert torch.allclose(g, (1 - a * alpha) * (x_hat - ref))
    sds = score_distillation_direction(teacher, x_hat, None, eps, t, torch.zeros_like(x_hat))
    assert torch.allclose(sds, x_hat - a * (alpha * x_hat + t[:, None, None, None] * eps))
    zero = score_distillation_direction(teacher, ref, ref, eps, t, torch.zeros_like(ref))
    assert torch.equal(zero, torch.zeros_like(ref))  # unbiased: no push at the reference


def test_score_distillation_loss_gradient_is_direction_over_n():
    x_hat = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    loss = score_distillation_loss(x_hat, g)
    assert math.isclose(float(loss.detach()), 0.5 * float(g.pow(2).mean()), rel_tol=1e-12)
    (grad,) = torch.autograd.grad(loss, x_hat)
    assert torch.allclose(grad, g / g.numel())


# -------------------------------------------------------------------------------- the method
def _parts(adv: float = 0.1, sd: float = 1.0, backbone: str = "teacher"):
    torch.manual_seed(0)
    process = FlowProcess()
    teacher = Denoiser(SRUNet(channels=(4, 8)), process, "velocity", (1, 8, 8))
    student = Denoiser(IMDN(channels=8, blocks=1), process, "x0", (1, 8, 8))
    torch.nn.init.normal_(student.net.out.weight, std=0.1)
    return student, teacher, TADSR(student, teacher, sd_weight=sd, adv_weight=adv, disc_backbone=backbone)


def test_players_and_losses():
    hr = torch.rand(6, 1, 8, 8) * 2 - 1
    for backbone in ("teacher", "mlp"):
        _student, teacher, m = _parts(backbone=backbone)
        assert m.players == ("discriminator", "student")
        for player in m.players:
            m.zero_grad()
            loss, logs = m.loss(player, {"x": hr}, 0)
            loss.backward()
            params = m.parameters_of(player)
            assert torch.isfinite(loss) and all(p.grad is not None for p in params)
        assert set(logs) >= {"mse", "sd", "g_loss", "loss"}
        assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen
    _, _, mse_only = _parts(adv=0.0, sd=0.0)
    assert mse_only.players == ("student",) and mse_only.discriminator is None
    loss, _ = mse_only.loss("student", {"x": hr}, 0)
    want = (mse_only.student.net(hr, None, lr_condition(hr, 2)) - hr).pow(2).mean()
    assert math.isclose(float(loss.detach()), float(want.detach()), rel_tol=1e-5)


def test_student_gradient_of_score_distillation():
    """With only the SD term, the gradient reaching the student's output is g / N (one draw)."""
    student, teacher, m = _parts(adv=0.0, sd=1.0)
    m.mse_weight = 0.0
    hr = torch.rand(4, 1, 8, 8) * 2 - 1
    captured = {}

    def hook(module, args, out):
        out.retain_grad()
        captured["out"] = out

    handle = student.net.register_forward_hook(hook)
    torch.manual_seed(3)
    loss, _ = m.loss("student", {"x": hr}, 0)
    loss.backward()
    handle.remove()
    x_hat = captured["out"]
    torch.manual_seed(3)
    torch.randn(4, 1, 8, 8)  # the prior draw of one_step_sr
    t = FlowProcess().sample_t(4, low=m.sd_t_min, high=m.sd_t_max)
    eps = torch.randn(4, 1, 8, 8)
    g = score_distillation_direction(teacher, x_hat.detach(), hr, eps, t, lr_condition(hr, 2))
    assert torch.allclose(x_hat.grad, g / g.numel(), atol=1e-7)


def test_bad_params_name_the_key():
    student, teacher, _ = _parts()
    with pytest.raises(ConfigError, match="teacher"):
        TADSR(student, None, sd_weight=1.0)
    with pytest.raises(ConfigError, match="reference"):
        TADSR(student, teacher, reference="teacher_sample")
    with pytest.raises(ConfigError, match="disc_backbone"):
        TADSR(student, teacher, disc_backbone="dino")
    with pytest.raises(ConfigError, match="adv_weight"):
        TADSR(student, teacher, adv_weight=-1.0)
    with pytest.raises(ConfigError, match="all 0"):
        TADSR(student, teacher, mse_weight=0.0, sd_weight=0.0, adv_weight=0.0)
    with pytest.raises(ConfigError, match="interval"):
        TADSR(student, teacher, sd_t_min=0.5, sd_t_max=0.2)
    with pytest.raises(ConfigError, match="scale"):
        TADSR(student, teacher, scale=16)
    with pytest.raises(ConfigError, match="eval.steps"):
        TADSR(student, teacher).sample(2, 4)
    with pytest.raises(ConfigError, match="arm"):
        tad_sr_config("gan")


def test_configs_parse():
    import yaml

    from distillery.config.bundled import CONFIG_DIR
    from distillery.generative.config import parse_generative_config

    for name in ("tad_sr_digits.yaml", "tad_sr_digits_teacher.yaml"):
        cfg = parse_generative_config(yaml.safe_load((CONFIG_DIR / name).read_text()))
        assert cfg.method.kind in ("tad_sr", "sr_denoising")
    assert tad_sr_config("mse")["method"]["params"]["sd_weight"] == 0.0
