"""Phased DMD (Fan et al. 2025, arXiv:2510.27684): score matching within subintervals against the
paper's formulas (written out here), its unbiasedness on Gaussian data (closed-form posterior
mean), and the phased method's schedule, routing, gradients and config."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.objectives.dmd import prediction_target
from distillery.generative.objectives.subinterval import (
    conditional_alpha_sigma,
    renoise,
    subinterval_score_loss,
    subinterval_targets,
    subinterval_weight,
)
from distillery.generative.processes import FlowProcess, VPProcess

PROCESSES = [FlowProcess(), FlowProcess(shift=3.0), VPProcess("cosine"), VPProcess("linear")]


def _st(n: int, dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = 0.05 + 0.6 * torch.rand(n, generator=g, dtype=dtype)
    t = s + (0.95 - s) * torch.rand(n, generator=g, dtype=dtype).clamp_min(0.05)
    return s, t


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: repr(p))
def test_conditional_transition_composes(process):
    s, t = _st(64)
    a_s, s_s = process.alpha_sigma(s)
    a_t, s_t = process.alpha_sigma(t)
    a_ts, s_ts = conditional_alpha_sigma(process, s, t)
    assert torch.allclose(a_ts * a_s, a_t, atol=1e-12)
    assert torch.allclose(a_ts**2 * s_s**2 + s_ts**2, s_t**2, atol=1e-12)


@pytest.mark.parametrize("process", PROCESSES, ids=lambda p: repr(p))
def test_x0_target_is_the_papers(process):
    s, t = _st(32)
    g = torch.Generator().manual_seed(1)
    x_s, eps = torch.randn(32, 3, generator=g, dtype=torch.float64), torch.randn(32, 3, generator=g, dtype=torch.float64)
    x_t, target = subinterval_targets(process, "x0", x_s, eps, s, t)
    a_s, s_s = (v[:, None] for v in process.alpha_sigma(s))
    a_t, s_t = (v[:, None] for v in process.alpha_sigma(t))
    a_ts = a_t / a_s
    s_ts = torch.sqrt(s_t**2 - a_ts**2 * s_s**2)
    # paper, x-prediction: mu* = x_s / alpha_s - alpha_t sigma_s^2 / (alpha_s^2 sigma_{t|s}) eps
    paper = x_s / a_s - a_t * s_s**2 / (a_s**2 * s_ts) * eps
    assert torch.allclose(x_t, a_ts * x_s + s_ts * eps, atol=1e-12)
    assert torch.allclose(target, paper, atol=1e-9)
    # eps space: sigma_t / sigma_{t|s} eps
    _, eps_target = subinterval_targets(process, "eps", x_s, eps, s, t)
    assert torch.allclose(eps_target, s_t / s_ts * eps, atol=1e-9)


def test_velocity_target_is_the_papers_flow_form():
    process = FlowProcess()
    s, t = _st(32)
    g = torch.Generator().manual_seed(2)
    x_s, eps = torch.randn(32, 2, generator=g, dtype=torch.float64), torch.randn(32, 2, generator=g, dtype=torch.float64)
    _, target = subinterval_targets(process, "velocity", x_s, eps, s, t)
    a_s, s_s, a_t, s_t = (1 - s)[:, None], s[:, None], (1 - t)[:, None], t[:, None]
    s_ts = torch.sqrt(s_t**2 - (a_t / a_s) ** 2 * s_s**2)
    # paper, flow prediction: (alpha_s^2 sigma_t + alpha_t sigma_s^2) / (alpha_s^2 sigma_{t|s}) eps - x_s / alpha_s
    paper = (a_s**2 * s_t + a_t * s_s**2) / (a_s**2 * s_ts) * eps - x_s / a_s
    assert torch.allclose(target, paper, atol=1e-9)


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity"])
@pytest.mark.parametrize("process", [FlowProcess(), VPProcess("cosine", t_min=0.0)], ids=lambda p: repr(p))
def test_at_s_zero_it_is_ordinary_denoising(kind, process):
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(16, 2, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 16, dtype=torch.float64)
    s = torch.zeros(16, dtype=torch.float64)
    x_t, target = subinterval_targets(process, kind, x0, eps, s, t)
    assert torch.allclose(x_t, process.add_noise(x0, eps, t), atol=1e-9)
    assert torch.allclose(target, prediction_target(process, kind, x0, eps, t), atol=1e-7)


@pytest.mark.parametrize("process", [FlowProcess(), VPProcess("linear")], ids=lambda p: repr(p))
def test_subinterval_target_is_unbiased_on_gaussian_data(process):
    """The population regression of the x0 target on x_t is E[x0 | x_t] of the data noised to t,
    which for x0 ~ N(m, v) is m + alpha_t v (x_t - alpha_t m) / (alpha_t^2 v + sigma_t^2)."""
    n, m, v = 400_000, 0.7, 0.3
    g = torch.Generator().manual_seed(4)
    x0 = m + math.sqrt(v) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    s = torch.full((n,), 0.4, dtype=torch.float64)
    t = torch.full((n,), 0.7, dtype=torch.float64)
    x_s = process.add_noise(x0, torch.randn(n, 1, generator=g, dtype=torch.float64), s)
    x_t, target = subinterval_targets(process, "x0", x_s, torch.randn(n, 1, generator=g, dtype=torch.float64), s, t)
    design = torch.cat([torch.ones_like(x_t), x_t], dim=1)
    coef = torch.linalg.lstsq(design, target).solution.flatten()
    a_t, s_t = (float(u) for u in process.alpha_sigma(torch.tensor(0.7, dtype=torch.float64)))
    slope = a_t * v / (a_t**2 * v + s_t**2)
    intercept = m - slope * a_t * m
    assert abs(float(coef[1]) - slope) < 0.02
    assert abs(float(coef[0]) - intercept) < 0.02
    # the naive target that treats x_s as clean data is biased here
    naive = torch.linalg.lstsq(design, x_s).solution.flatten()
    assert abs(float(naive[1]) - slope) > 0.05


def test_weight_is_the_clamped_inverse_variance():
    process = FlowProcess()
    s = torch.tensor([0.5, 0.5, 0.2, 0.0], dtype=torch.float64)
    t = torch.tensor([0.51, 0.9, 0.8, 0.6], dtype=torch.float64)
    _, s_ts = conditional_alpha_sigma(process, s, t)
    expected = torch.clamp(1.0 / s_ts**2, 0.0, 10.0) * s_ts**2
    assert torch.allclose(subinterval_weight(process, s, t, 10.0), expected)
    assert torch.allclose(expected, torch.minimum(torch.ones_like(s_ts), 10 * s_ts**2))
    assert torch.equal(subinterval_weight(process, s, t, None), torch.ones_like(t))


def test_targets_gradcheck():
    process = VPProcess("cosine")
    s, t = _st(4)
    x_s = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: subinterval_targets(process, "v", a, b, s, t)[1], (x_s, eps))


def test_kl_gradient_in_x_s_is_the_scaled_x0_difference():
    """d/dx_s [log p_f,t(x_t) - log p_r,t(x_t)] = alpha_{t|s} alpha_t / sigma_t^2 (fake_x0 - real_x0)
    for Gaussian p_f, p_r (x0 predictions by Tweedie) — the direction PhasedDMD descends."""
    process = FlowProcess()
    s, t = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.6], dtype=torch.float64)
    a_t, s_t = process.alpha_sigma(t)
    (mf, vf), (mr, vr) = (0.5, 0.2), (-0.3, 0.6)
    x_s = torch.tensor([[0.4]], dtype=torch.float64, requires_grad=True)
    x_t = renoise(process, x_s, torch.tensor([[0.1]], dtype=torch.float64), s, t)

    def logp(x, m, v):
        var = a_t**2 * v + s_t**2
        return -0.5 * (x - a_t * m) ** 2 / var

    (logp(x_t, mf, vf) - logp(x_t, mr, vr)).sum().backward()

    def x0(x, m, v):
        return m + a_t * v * (x - a_t * m) / (a_t**2 * v + s_t**2)

    a_ts, _ = conditional_alpha_sigma(process, s, t)
    expected = a_ts * a_t / s_t**2 * (x0(x_t, mf, vf) - x0(x_t, mr, vr))
    assert torch.allclose(x_s.grad, expected.detach(), atol=1e-10)


# -- the method ----------------------------------------------------------------------------------
def _build(**params):
    from distillery.generative.denoisers import Denoiser, build_denoiser_net
    from distillery.generative.teachers import Mixture, analytic_teacher
    from distillery.recipes.phased_dmd import PhasedDMD

    torch.manual_seed(0)
    process = FlowProcess()
    teacher = analytic_teacher(Mixture.grid(3, spacing=2.0, std=0.1), process)
    net = build_denoiser_net({"name": "mlp2d", "params": {"hidden": [16, 16]}}, (2,), None)
    student = Denoiser(net, process, "x0", (2,), None)
    return PhasedDMD(student, teacher, **params)


def test_registered_and_schedule():
    from distillery.generative.config import load_methods
    from distillery.generative.method import METHODS

    load_methods()
    assert METHODS.get("phased_dmd").__name__ == "PhasedDMD"
    m = _build(generator_steps=4, phases=2, phase_steps=[3, 5])
    assert torch.allclose(m.boundaries, torch.tensor([1.0, 0.5, 0.0]))
    assert [m.phase_at(i) for i in range(10)] == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert [m.expert_of_time(t) for t in (1.0, 0.75, 0.51, 0.5, 0.25)] == [0, 0, 0, 1, 1]
    m4 = _build(generator_steps=4, phases=4, phase_steps=2)
    assert torch.allclose(m4.boundaries, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert [m4.expert_of_time(t) for t in (1.0, 0.75, 0.5, 0.25)] == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [{"phases": 3}, {"interval": "nested"}, {"phase_steps": [1, 2, 3]},
                                 {"expert_init": "teacher"}, {"subinterval_clamp": -1.0}])
def test_bad_params_are_refused(bad):
    with pytest.raises(ConfigError):
        _build(**{"generator_steps": 4, "phases": 2, **bad})


def test_gradients_reach_only_the_active_expert_and_experts_hand_over():
    m = _build(generator_steps=4, phases=2, phase_steps=2, fake_updates=1)
    batch = {"x": torch.randn(32, 2)}
    for step, active in ((0, 0), (2, 1)):
        m.zero_grad(set_to_none=True)
        loss, logs = m.loss("generator", batch, step)
        loss.backward()
        assert logs["phase"] == active
        for k in range(2):
            got = [p.grad is not None for p in m.expert(k).parameters()]
            assert all(got) if k == active else not any(got)
        assert all(p.grad is None for p in m.fake.parameters())
        m.zero_grad(set_to_none=True)
        floss, _ = m.loss("fake_score", batch, step)
        floss.backward()
        assert torch.isfinite(floss) and all(p.grad is not None for p in m.fake.parameters())
        assert all(p.grad is None for k in range(2) for p in m.expert(k).parameters())
    # entering phase 1 after step 1: expert 1 copies expert 0
    with torch.no_grad():
        for p in m.expert(0).parameters():
            p.add_(1.0)
    m.after_step(0)
    assert not torch.equal(next(m.expert(0).parameters()), next(m.expert(1).parameters()))
    m.after_step(1)
    assert all(torch.equal(a, b) for a, b in zip(m.expert(0).parameters(), m.expert(1).parameters(), strict=True))


def test_phase_samples_and_sampling_route_by_time():
    m = _build(generator_steps=4, phases=2, phase_steps=2)
    with torch.no_grad():
        x_s, s, x0_hat = m.generate_phase(0, 8, None, torch.device("cpu"))
    assert x_s.shape == (8, 2) and torch.allclose(s, torch.full((8,), 0.5))
    with torch.no_grad():
        x_s1, s1, x0_1 = m.generate_phase(1, 8, None, torch.device("cpu"))
    assert torch.allclose(s1, torch.zeros(8)) and torch.allclose(x_s1, x0_1)  # the last phase ends on clean data
    calls = []
    for k in range(2):
        m.expert(k).register_forward_hook(lambda mod, args, out, k=k: calls.append((k, float(args[1][0]))))
    out = m.sample(5, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 2)
    assert calls == [(0, 1.0), (0, 0.75), (1, 0.5), (1, 0.25)]
    assert set(m.exported()) == {"expert0", "expert1"}


def test_bundled_config_validates():
    from pathlib import Path

    import yaml

    from distillery.config import parse_config
    from distillery.generative.run import validate_generative

    path = Path(__file__).resolve().parents[1] / "src/distillery/configs/phased_dmd_mixture2d.yaml"
    cfg = parse_config(yaml.safe_load(path.read_text()), str(path))
    report = "\n".join(validate_generative(cfg, name="phased_dmd_mixture2d").lines())
    assert "phased_dmd" in report and "received gradients" in report


def test_score_loss_is_the_weighted_mse_in_the_fake_networks_space():
    from distillery.generative.denoisers import Denoiser, build_denoiser_net

    torch.manual_seed(0)
    process = FlowProcess()
    fake = Denoiser(build_denoiser_net({"name": "mlp2d", "params": {"hidden": [8]}}, (2,), None), process, "velocity", (2,), None)
    s, t = _st(16, dtype=torch.float32)
    x_s, eps = torch.randn(16, 2), torch.randn(16, 2)
    loss = subinterval_score_loss(fake, x_s, s, t, eps, clamp=10.0)
    a_s, s_s, a_t, s_t = (1 - s)[:, None], s[:, None], (1 - t)[:, None], t[:, None]
    s_ts = torch.sqrt(s_t**2 - (a_t / a_s) ** 2 * s_s**2)
    x_t = a_t / a_s * x_s + s_ts * eps
    target = (a_s**2 * s_t + a_t * s_s**2) / (a_s**2 * s_ts) * eps - x_s / a_s
    w = torch.clamp(1 / s_ts**2, max=10.0) * s_ts**2
    expected = (w * ((fake(x_t, t) - target) ** 2).mean(dim=1, keepdim=True)).mean()
    assert torch.allclose(loss, expected, rtol=1e-4, atol=1e-6)
