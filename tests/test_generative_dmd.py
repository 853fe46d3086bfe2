"""DMD / DMD2 (distillery.generative.objectives.dmd): the generator gradient against the closed-form
gradient of KL between noised 1-D Gaussians, the surrogate loss, the fake-score loss, the two
time-scale schedule, t_range, the non-finite guard, sampling, and a short 2-D smoke run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distillery.errors import ConfigError, NonFiniteLossError
from distillery.generative.denoisers import Denoiser, MLPDenoiser
from distillery.generative.method import METHODS
from distillery.generative.objectives.dmd import (
    DMD,
    dmd_generator_grad,
    dmd_generator_loss,
    fake_score_loss,
)
from distillery.generative.processes import FlowProcess, VPProcess

# -- closed forms written for the tests ------------------------------------------------------------


def gaussian_x0(x_t, a, sig, m, v0):
    """E[x0 | x_t] when x0 ~ N(m, v0) and x_t = a x0 + sig eps (1-D, elementwise)."""
    return m + a * v0 / (a**2 * v0 + sig**2) * (x_t - a * m)


def kl_grad(mu, s, m_r, s_r, a, sig):
    """d/d(mu, s) of KL(N(a mu, a^2 s^2 + sig^2) || N(a m_r, a^2 s_r^2 + sig^2))."""
    v1 = a**2 * s**2 + sig**2
    v2 = a**2 * s_r**2 + sig**2
    # KL = 0.5 (v1 / v2 + (a mu - a m_r)^2 / v2 - 1 + log(v2 / v1))
    d_mu = a**2 * (mu - m_r) / v2
    d_s = 0.5 * (1 / v2 - 1 / v1) * 2 * a**2 * s
    return d_mu, d_s


def kl_value(mu, s, m_r, s_r, a, sig):
    v1 = a**2 * s**2 + sig**2
    v2 = a**2 * s_r**2 + sig**2
    return 0.5 * (v1 / v2 + a**2 * (mu - m_r) ** 2 / v2 - 1 + math.log(v2 / v1))


# -- pure functions -------------------------------------------------------------------------------


def test_generator_grad_formula_and_stop_grad():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, 4, generator=g, requires_grad=True)
    real = torch.randn(5, 3, 4, generator=g, requires_grad=True)
    fake = torch.randn(5, 3, 4, generator=g, requires_grad=True)
    out = dmd_generator_grad(x0, real, fake)
    w = torch.stack([(x0[i] - real[i]).abs().sum() / 12 for i in range(5)]).detach()
    expect = (fake - real).detach() / w[:, None, None]
    torch.testing.assert_close(out, expect)
    assert not out.requires_grad
    torch.testing.assert_close(dmd_generator_grad(x0, real, fake, normalize=False), (fake - real).detach())
    # a sample whose teacher prediction equals it: the floor keeps the result finite
    same = dmd_generator_grad(real[:1], real[:1], fake[:1])
    assert torch.isfinite(same).all()


def test_generator_loss_gradient_is_grad():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(4, 6, dtype=torch.float64)
    (g_sum,) = torch.autograd.grad(dmd_generator_loss(x, grad, "sum"), x)
    assert torch.equal(g_sum, grad)
    (g_mean,) = torch.autograd.grad(dmd_generator_loss(x, grad), x)
    torch.testing.assert_close(g_mean, grad / x.numel(), rtol=0, atol=1e-15)
    assert float(dmd_generator_loss(x, grad, "sum").detach()) == pytest.approx(0.5 * float((grad**2).sum()))
    with pytest.raises(ConfigError, match="reduction"):
        dmd_generator_loss(x, grad, "max")


class Linear1(nn.Module):
    """A linear network of (x_t, t) for shape-(B, D) data, for the fake-score loss tests."""

    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim + 1, dim).double()

    def forward(self, x, t, cond=None):
        return self.lin(torch.cat([x, t[:, None]], dim=1))


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity"])
@pytest.mark.parametrize("weighting", ["none", "snr", "min_snr"])
def test_fake_score_loss_formula(kind, weighting):
    torch.manual_seed(1)
    process = VPProcess(schedule="linear") if kind in ("eps", "v") else FlowProcess()
    fake = Denoiser(Linear1(3), process, kind)
    x_gen = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(8, 3, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 8, dtype=torch.float64)
    loss = fake_score_loss(fake, x_gen, t, eps, weighting=weighting)

    if isinstance(process, VPProcess):  # alpha = exp(-0.5 (0.1 t + 9.95 t^2)), sigma = sqrt(1 - alpha^2)
        a = torch.exp(-0.5 * (0.1 * t + 0.5 * 19.9 * t**2))
        s = torch.sqrt(1 - a**2)
        da = a * -0.5 * (0.1 + 19.9 * t)
        ds = -a * da / s
    else:  # x_t = (1 - t) x0 + t eps
        a, s, da, ds = 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
    x0 = x_gen.detach()
    x_t = a[:, None] * x0 + s[:, None] * eps
    target = {"eps": eps, "x0": x0, "v": a[:, None] * eps - s[:, None] * x0,
              "velocity": da[:, None] * x0 + ds[:, None] * eps}[kind]
    per = ((fake.net(x_t, t) - target) ** 2).mean(1)
    snr = a**2 / s**2
    w = {"none": torch.ones_like(t), "snr": snr, "min_snr": snr.clamp(max=5.0)}[weighting]
    torch.testing.assert_close(loss, (w * per).mean(), rtol=1e-10, atol=1e-12)
    loss.backward()
    assert x_gen.grad is None  # stop-grad on the generator's samples
    assert fake.net.lin.weight.grad is not None


# -- the exact test: DMD gradient on 1-D Gaussians vs the closed-form KL gradient ------------------


@pytest.mark.parametrize("process", [VPProcess(schedule="linear"), VPProcess(schedule="cosine"), FlowProcess(shift=3.0)],
                         ids=["vp-linear", "vp-cosine", "flow-shift3"])
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_dmd_gradient_equals_kl_gradient_exactly(process, t):
    """E_z,eps[(fake_x0 - real_x0) dx/d(mu, s)] = sigma^2 / alpha^2 * grad KL_t(mu, s), with
    x = mu + s z, exact score denoisers of both noised Gaussians, and the expectation over
    (z, eps) by Gauss-Hermite quadrature (exact: the integrand is a polynomial of degree 2).
    Tolerance 1e-10 (float64)."""
    m_r, s_r = 1.5, 0.7
    mu = torch.tensor(-0.4, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    a_t, sig_t = (float(c) for c in process.alpha_sigma(torch.tensor(t, dtype=torch.float64)))

    nodes, weights = np.polynomial.hermite_e.hermegauss(8)  # weight exp(-x^2/2)
    nodes = torch.tensor(nodes)
    weights = torch.tensor(weights) / math.sqrt(2 * math.pi)
    z, e = torch.meshgrid(nodes, nodes, indexing="ij")
    w2 = (weights[:, None] * weights[None, :]).reshape(-1, 1)
    z, e = z.reshape(-1, 1), e.reshape(-1, 1)

    x = mu + s * z  # (N, 1) generator samples
    x_t = a_t * x.detach() + sig_t * e
    real = gaussian_x0(x_t, a_t, sig_t, m_r, s_r**2)
    fake = gaussian_x0(x_t, a_t, sig_t, mu.detach(), s.detach() ** 2)
    grad = dmd_generator_grad(x, real, fake, normalize=False)
    loss = dmd_generator_loss(x, w2 * grad, reduction="sum")  # sum_i w_i grad_i dx_i/dtheta
    g_mu, g_s = torch.autograd.grad(loss, (mu, s))

    mu_, s_ = float(mu.detach()), float(s.detach())
    k_mu, k_s = kl_grad(mu_, s_, m_r, s_r, a_t, sig_t)
    scale = sig_t**2 / a_t**2
    assert float(g_mu) == pytest.approx(scale * k_mu, rel=1e-10, abs=1e-12)
    assert float(g_s) == pytest.approx(scale * k_s, rel=1e-10, abs=1e-12)
    # the closed-form gradient itself, against a finite difference of the KL
    h = 1e-6
    fd = (kl_value(mu_ + h, s_, m_r, s_r, a_t, sig_t) - kl_value(mu_ - h, s_, m_r, s_r, a_t, sig_t)) / (2 * h)
    assert fd == pytest.approx(k_mu, rel=1e-6)


class GaussianGen(nn.Module):
    """A one-step generator of N(mu, s^2): the x0 prediction at t = 1 of the flow process (where
    x_t = eps) is mu + s x_t."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor([mu], dtype=torch.float64))
        self.s = nn.Parameter(torch.tensor([s], dtype=torch.float64))

    def forward(self, x, t, cond=None):
        return self.mu + self.s * x


class GaussianScore(nn.Module):
    """The exact x0 prediction for data N(m, v0) under ``process``, with (m, v0) as parameters."""

    def __init__(self, process, m, v0):
        super().__init__()
        self.process = process
        self.m = nn.Parameter(torch.tensor(float(m), dtype=torch.float64))
        self.v0 = nn.Parameter(torch.tensor(float(v0), dtype=torch.float64))

    def forward(self, x, t, cond=None):
        a, sig = self.process.alpha_sigma(t)
        return gaussian_x0(x, a[:, None], sig[:, None], self.m, self.v0)


def test_dmd_method_gradient_matches_kl_gradient_monte_carlo():
    """The registered method end to end: its generator loss with exact real/fake scores, at one
    time (t_range = (t, t)), gives the KL gradient times sigma^2 / alpha^2 (the mean over the
    batch of the per-sample gradients). Monte Carlo with 100k samples; tolerance 5 standard errors."""
    torch.manual_seed(0)
    process = FlowProcess()
    mu, s, m_r, s_r, t = -0.4, 1.3, 1.5, 0.7, 0.4
    gen = Denoiser(GaussianGen(mu, s), process, "x0", sample_shape=(1,))
    teacher = Denoiser(GaussianScore(process, m_r, s_r**2), process, "x0", sample_shape=(1,))
    fake = Denoiser(GaussianScore(process, mu, s**2), process, "x0", sample_shape=(1,))
    method = METHODS.get("dmd")(student=gen, teacher=teacher, fake_init=fake, t_range=(t, t), normalize=False)
    n = 100_000
    loss, logs = method.loss("generator", {"x": torch.zeros(n, 1, dtype=torch.float64)}, step=0)
    loss.backward()
    a, sig = 1 - t, t
    k_mu, k_s = kl_grad(mu, s, m_r, s_r, a, sig)
    scale = sig**2 / a**2
    # per-sample terms have standard deviation below 3 here (|d|, |d z| with d linear in (z, eps))
    tol = 5 * 3.0 / math.sqrt(n)
    assert float(gen.net.mu.grad) == pytest.approx(scale * k_mu, abs=tol)
    assert float(gen.net.s.grad) == pytest.approx(scale * k_s, abs=tol)
    assert teacher.net.m.grad is None and fake.net.m.grad is None  # only the generator is trained here
    assert set(logs) >= {"dm", "grad_norm"}


# -- the method: players, schedule, times, guard, sampling ----------------------------------------


class Recorder(nn.Module):
    """Wraps a network and records every t it is called with."""

    def __init__(self, net):
        super().__init__()
        self.inner = net
        self.seen: list[torch.Tensor] = []

    def forward(self, x, t, cond=None):
        self.seen.append(t.detach().clone())
        return self.inner(x, t, cond)


def small_dmd(**params):
    torch.manual_seed(0)
    process = FlowProcess()
    gen = Denoiser(Recorder(MLPDenoiser(dim=2, hidden=(16,))), process, "x0", sample_shape=(2,))
    teacher = Denoiser(Recorder(MLPDenoiser(dim=2, hidden=(16,))), process, "velocity", sample_shape=(2,))
    return METHODS.get("dmd")(student=gen, teacher=teacher, **params)


def test_players_and_two_time_scales():
    method = small_dmd(fake_updates=3)
    assert method.players == ("fake_score", "generator")
    assert method.updates("fake_score") == 3 and method.updates("generator") == 1
    assert METHODS.get("dmd") is DMD
    assert small_dmd().updates("fake_score") == 5 and small_dmd(variant="dmd").updates("fake_score") == 1
    # the teacher is frozen, fake and generator are trained, and their parameter sets are disjoint
    fake_ids = {id(p) for p in method.parameters_of("fake_score")}
    gen_ids = {id(p) for p in method.parameters_of("generator")}
    assert fake_ids and gen_ids and not fake_ids & gen_ids
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert all(not k.startswith("teacher.") for k in method.trainable_state())
    # a loop as the trainer runs it: each player `updates(player)` times per step, in order
    opts = {p: torch.optim.SGD(method.parameters_of(p), lr=1e-3) for p in method.players}
    calls = []
    for step in range(2):
        for player, _, times in method.named_players():
            for _ in range(times):
                opts[player].zero_grad()
                loss, _ = method.loss(player, {"x": torch.zeros(4, 2)}, step)
                loss.backward()
                opts[player].step()
                calls.append(player)
    assert calls == (["fake_score"] * 3 + ["generator"]) * 2
    assert method.describe()["nfe_per_sample"] == 1


def test_t_range_respected_and_generator_times():
    method = small_dmd(t_range=(0.3, 0.6), fake_t_range=(0.2, 0.4), generator_steps=4)
    teacher_rec, fake_rec, gen_rec = method.teacher.net, method.fake.net, method.generator.net
    for rec in (teacher_rec, fake_rec, gen_rec):
        rec.seen.clear()
    batch = {"x": torch.zeros(64, 2)}
    method.loss("fake_score", batch, 0)
    fake_t = torch.cat(fake_rec.seen)
    assert fake_t.min() >= 0.2 and fake_t.max() <= 0.4
    fake_rec.seen.clear()
    method.loss("generator", batch, 0)
    for t in (torch.cat(teacher_rec.seen), torch.cat(fake_rec.seen)):
        assert t.min() >= 0.3 and t.max() <= 0.6
    gen_t = torch.cat(gen_rec.seen)
    grid = torch.tensor([1.0, 0.75, 0.5, 0.25])
    assert torch.isclose(gen_t[:, None], grid[None]).any(1).all()  # only the generator's own times
    assert torch.isclose(gen_t, torch.tensor(0.25)).any()  # backward simulation reached the last step
    assert method.describe()["nfe_per_sample"] == 4


class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x, t, cond=None):
        return x * self.w * float("nan")


def test_nan_fake_score_raises_clear_error():
    process = FlowProcess()
    torch.manual_seed(0)
    gen = Denoiser(MLPDenoiser(dim=2, hidden=(8,)), process, "x0", sample_shape=(2,))
    teacher = Denoiser(MLPDenoiser(dim=2, hidden=(8,)), process, "velocity", sample_shape=(2,))
    fake = Denoiser(NaNNet(), process, "velocity", sample_shape=(2,))
    method = DMD(gen, teacher, fake_init=fake)
    with pytest.raises(NonFiniteLossError, match="fake_score.*step 7"):
        method.loss("fake_score", {"x": torch.zeros(4, 2)}, 7)
    with pytest.raises(NonFiniteLossError, match="fake_score"):
        method.loss("generator", {"x": torch.zeros(4, 2)}, 7)


def test_bad_config_messages():
    with pytest.raises(ConfigError, match="generator_steps"):
        small_dmd(generator_steps=0)
    with pytest.raises(ConfigError, match="t_range"):
        small_dmd(t_range=(0.5, 1.5))
    with pytest.raises(ConfigError, match="t_range"):
        small_dmd(t_range=(0.7, 0.2))
    with pytest.raises(ConfigError, match="fake_init"):
        small_dmd(fake_init="nobody")
    with pytest.raises(ConfigError, match="fake_updates"):
        small_dmd(fake_updates=0)
    with pytest.raises(ConfigError, match="features"):
        small_dmd(gan_weight=0.1)
    with pytest.raises(ConfigError, match="regression_weight"):
        small_dmd(pairs=16)
    process = FlowProcess()
    eps_gen = Denoiser(MLPDenoiser(dim=2, hidden=(8,)), process, "eps", sample_shape=(2,))
    teacher = Denoiser(MLPDenoiser(dim=2, hidden=(8,)), process, "velocity", sample_shape=(2,))
    with pytest.raises(ConfigError, match="eps"):
        DMD(eps_gen, teacher)
    method = small_dmd()
    with pytest.raises(ConfigError, match="steps"):
        method.sample(4, 0)


def test_sample_any_steps_and_reproducible():
    method = small_dmd(generator_steps=2)
    for steps in (1, 2, 3):
        a = method.sample(5, steps, generator=torch.Generator().manual_seed(3))
        b = method.sample(5, steps, generator=torch.Generator().manual_seed(3))
        assert a.shape == (5, 2) and torch.equal(a, b)
    # one step: the generator's x0 prediction at t_max of its prior draw
    g = torch.Generator().manual_seed(4)
    x_T = method.generator.process.prior((5, 2), generator=torch.Generator().manual_seed(4))
    expect = method.generator.predict(x_T, torch.ones(5), None, "x0").detach()
    torch.testing.assert_close(method.sample(5, 1, generator=g), expect)


# -- DMD2's GAN head and DMD's regression ----------------------------------------------------------


class FeatMLP(MLPDenoiser):
    """An MLP denoiser exposing ``features`` (its last hidden layer)."""

    def features(self, x, t, cond=None):
        h = torch.cat([x, self.time(t)], dim=-1)
        return self.body[:-1](h)


def test_gan_head_trains_with_fake_and_feeds_generator():
    pytest.importorskip("distillery.generative.objectives.gan")
    torch.manual_seed(0)
    process = FlowProcess()
    gen = Denoiser(MLPDenoiser(dim=2, hidden=(16,)), process, "x0", sample_shape=(2,))
    teacher = Denoiser(FeatMLP(dim=2, hidden=(16, 16)), process, "velocity", sample_shape=(2,))
    method = DMD(gen, teacher, gan_weight=0.5, r1_weight=0.1)
    assert {id(p) for p in method.gan_head.parameters()} <= {id(p) for p in method.parameters_of("fake_score")}
    batch = {"x": torch.randn(16, 2)}
    loss, logs = method.loss("fake_score", batch, 0)
    loss.backward()
    assert {"denoising", "gan_d", "r1"} <= set(logs) and torch.isfinite(loss)
    assert all(p.grad is not None for p in method.gan_head.parameters())
    method.zero_grad(set_to_none=True)
    loss, logs = method.loss("generator", batch, 0)
    loss.backward()
    assert "gan" in logs
    assert all(p.grad is None for p in method.fake.parameters())  # the GAN term trains only the generator
    assert all(p.grad is None for p in method.gan_head.parameters())
    assert all(p.requires_grad for p in method.fake.parameters())  # flags restored
    assert any(p.grad is not None for p in method.generator.parameters())


def test_regression_on_teacher_ode_pairs():
    pytest.importorskip("distillery.generative.samplers")
    method = small_dmd(regression_weight=0.25, pairs=32, pair_steps=4)
    assert method.pairs_noise.shape == (32, 2) and method.pairs_x0.shape == (32, 2)
    assert "pairs_noise" not in method.trainable_state()
    _, logs = method.loss("generator", {"x": torch.zeros(8, 2)}, 0)
    assert logs["regression"] >= 0


# -- smoke: DMD moves a one-step generator toward an analytic 2-D mixture --------------------------


def sliced_w1(a, b, n_proj=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_proj, a.shape[1], generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa, pb = (a @ dirs.T).sort(0).values, (b @ dirs.T).sort(0).values
    return float((pa - pb).abs().mean())


def test_smoke_dmd_moves_generator_toward_mixture():
    teachers = pytest.importorskip("distillery.generative.teachers")
    torch.manual_seed(0)
    process = FlowProcess()
    mixture = teachers.Mixture(means=torch.tensor([[2.0, 1.0], [-1.0, 2.0]]), stds=torch.tensor([0.3, 0.3]),
                               weights=torch.tensor([0.5, 0.5]))
    teacher = teachers.analytic_teacher(mixture, process)
    gen = Denoiser(MLPDenoiser(dim=2, hidden=(64, 64)), process, "x0", sample_shape=(2,))
    teacher.num_classes = None  # an unconditional teacher here (the whole mixture)
    method = DMD(gen, teacher, fake_init="student", fake_updates=2, t_range=(0.05, 0.95))
    data, _ = mixture.sample(2000, generator=torch.Generator().manual_seed(1))
    before = sliced_w1(method.sample(2000, 1, generator=torch.Generator().manual_seed(2)), data)
    opts = {"fake_score": torch.optim.Adam(method.parameters_of("fake_score"), lr=2e-3),
            "generator": torch.optim.Adam(method.parameters_of("generator"), lr=2e-3)}
    batch = {"x": torch.zeros(128, 2)}
    for step in range(200):
        for player, _, times in method.named_players():
            for _ in range(times):
                opts[player].zero_grad(set_to_none=True)
                loss, _ = method.loss(player, batch, step)
                loss.backward()
                opts[player].step()
    after = sliced_w1(method.sample(2000, 1, generator=torch.Generator().manual_seed(2)), data)
    print(f"sliced W1 to the data: {before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, (before, after)


class ClassX0(nn.Module):
    """An x0 'denoiser' that predicts the class index (cond) everywhere, 0 without a class."""

    def forward(self, x, t, cond=None):
        return torch.zeros_like(x) if cond is None else cond.to(x.dtype)[:, None].expand_as(x)


def test_real_score_classifier_free_guidance():
    process = FlowProcess()
    gen = Denoiser(MLPDenoiser(dim=2, hidden=(8,), num_classes=3), process, "x0", sample_shape=(2,), num_classes=3)
    teacher = Denoiser(ClassX0(), process, "x0", sample_shape=(2,), num_classes=3)
    method = DMD(gen, teacher, fake_init="student", guidance=2.5)
    cond = torch.tensor([0, 1, 2])
    real, _ = method.real_fake_x0(torch.zeros(3, 2), torch.full((3,), 0.5), cond)
    torch.testing.assert_close(real, 2.5 * cond.float()[:, None].expand(3, 2))  # u + 2.5 (c - u), u = 0
    assert method.describe()["teacher_nfe_per_generator_update"] == 2
    _, logs = method.loss("generator", {"x": torch.zeros(3, 2), "y": cond}, 0)
    assert math.isfinite(logs["dm"])


def test_multistep_without_backward_simulation_uses_noised_data():
    method = small_dmd(generator_steps=2, backward_simulation=False)
    method.generator.net.seen.clear()
    x_gen, t_in = method.generate(16, None, torch.device("cpu"), real=torch.randn(16, 2))
    assert x_gen.shape == (16, 2) and len(method.generator.net.seen) == 1  # one call: no rollout
    assert torch.isclose(t_in[:, None], torch.tensor([[1.0, 0.5]])).any(1).all()
    with pytest.raises(ConfigError, match="backward_simulation"):
        method.generate(4, None, torch.device("cpu"))
