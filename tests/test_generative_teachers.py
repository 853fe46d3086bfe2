"""The analytic Gaussian-mixture teacher against an independent log-density (torch.distributions)."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.processes import EDMProcess, FlowProcess, VPProcess
from distillery.generative.samplers import sample
from distillery.generative.teachers import (
    AnalyticMixtureScore,
    Mixture,
    analytic_teacher,
)

F64 = torch.float64
D = torch.distributions

PROCESSES = [VPProcess("linear"), VPProcess("cosine"), EDMProcess(), FlowProcess(), FlowProcess(shift=3.0)]
TIMES = [0.0, 1e-5, 1e-3, 0.05, 0.3, 0.7, 0.999]


def uneven_mixture() -> Mixture:
    return Mixture(torch.tensor([[0.0, 0.0], [2.0, -1.0], [-1.5, 2.5]], dtype=F64),
                   torch.tensor([0.05, 0.4, 0.2], dtype=F64), torch.tensor([0.2, 0.5, 0.3], dtype=F64))


def noised_log_prob(mixture: Mixture, process, x: torch.Tensor, t: float, mode: int | None = None) -> torch.Tensor:
    """``log p_t(x)`` of the noised mixture, built with torch.distributions (independent of the module)."""
    a, s = process.alpha_sigma(torch.tensor(t, dtype=F64))
    means, stds, w = mixture.means.double(), mixture.stds.double(), mixture.weights.double()
    scale = (a**2 * stds**2 + s**2).sqrt()
    if mode is not None:
        means, scale, w = means[mode:mode + 1], scale[mode:mode + 1], torch.ones(1, dtype=F64)
    comp = D.Independent(D.Normal(a * means, scale[:, None].expand_as(means)), 1)
    return D.MixtureSameFamily(D.Categorical(probs=w), comp).log_prob(x)


def autograd_score(mixture, process, x, t, mode=None):
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(noised_log_prob(mixture, process, x, t, mode).sum(), x)
    return grad


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_score_matches_autograd_of_the_noised_log_density(process):
    mixture = uneven_mixture()
    net = AnalyticMixtureScore(mixture, process)
    g = torch.Generator().manual_seed(0)
    for t in TIMES:
        a, s = process.alpha_sigma(torch.tensor(t, dtype=F64))
        x0, _ = mixture.sample(32, g)
        x = a * x0 + s * torch.randn(32, 2, generator=g, dtype=F64)
        x = torch.cat([x, 3.0 * torch.randn(8, 2, generator=g, dtype=F64)])  # between the modes too
        tt = torch.full((40,), t, dtype=F64)
        ref = autograd_score(mixture, process, x, t)
        torch.testing.assert_close(net.score(x, tt), ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
        torch.testing.assert_close(net(x, tt), -s * ref, rtol=1e-9, atol=1e-9 * float((s * ref).abs().max()) + 1e-12)
        x0_hat, eps_hat = net.posterior(x, tt)
        torch.testing.assert_close(a * x0_hat + s * eps_hat, x)  # x_t = alpha x0_hat + sigma eps_hat
        # Tweedie: E[x0 | x_t] = (x_t + sigma^2 score) / alpha, where alpha is not tiny
        if float(a) > 0.1:
            torch.testing.assert_close(x0_hat, (x + s**2 * ref) / a)
        # one mode per sample: the score of that component alone
        for k in range(3):
            cond = torch.full((40,), k)
            torch.testing.assert_close(net.score(x, tt, cond), autograd_score(mixture, process, x, t, k), rtol=1e-9, atol=1e-9)


def test_one_component_is_the_gaussian_formula():
    process = VPProcess("linear")
    mu, sd = torch.tensor([[0.7, -1.2]], dtype=F64), 0.3
    net = AnalyticMixtureScore(Mixture(mu, torch.tensor([sd]), torch.ones(1)), process)
    x = torch.randn(16, 2, dtype=F64)
    for t in (1e-3, 0.2, 0.9):
        a, s = process.alpha_sigma(torch.tensor(t, dtype=F64))
        v = a**2 * sd**2 + s**2
        x0, eps = net.posterior(x, torch.full((16,), t, dtype=F64))
        torch.testing.assert_close(eps, s * (x - a * mu) / v)
        torch.testing.assert_close(x0, mu + a * sd**2 / v * (x - a * mu))


def test_far_points_and_small_times_stay_finite_and_exact():
    mixture = Mixture.grid(5, spacing=1.0, std=0.05)
    mixture = Mixture(mixture.means.double(), mixture.stds.double(), mixture.weights.double())
    for process in (VPProcess("linear"), FlowProcess()):
        net = AnalyticMixtureScore(mixture, process)
        x = torch.tensor([[1e3, -1e3], [2.0, 2.0 + 1e-4], [-7.0, 0.3], [0.5, 0.5]], dtype=F64)
        for t in (0.0 if isinstance(process, FlowProcess) else 1e-3, 1e-4, 0.5):
            tt = torch.full((4,), t, dtype=F64)
            score = net.score(x, tt)
            assert torch.isfinite(score).all()
            a, s = process.alpha_sigma(torch.tensor(t, dtype=F64))
            # far from every mode: the nearest (in the noised metric, all variances equal) dominates
            nearest = mixture.means[torch.cdist(x[:1], a * mixture.means).argmin()]
            torch.testing.assert_close(score[0], -(x[0] - a * nearest) / (a**2 * 0.05**2 + s**2))
            torch.testing.assert_close(score, autograd_score(mixture, process, x, t), rtol=1e-8, atol=1e-8)


def test_analytic_teacher_denoiser():
    mixture = Mixture.grid(5)
    flow = FlowProcess()
    teacher = analytic_teacher(mixture, flow)
    assert teacher.prediction == "eps" and teacher.sample_shape == (2,) and teacher.num_classes == 25
    assert sum(p.numel() for p in teacher.parameters()) == 0
    x = torch.randn(6, 2)
    # alpha = 0 at t = 1: x0_hat is the mixture mean, the velocity eps - x0 is finite
    x0 = teacher.predict(x, torch.ones(6), None, "x0")
    torch.testing.assert_close(x0, (mixture.weights[:, None] * mixture.means).sum(0).expand(6, 2))
    torch.testing.assert_close(teacher.predict(x, torch.ones(6), None, "velocity"), x - x0)
    # elsewhere predict() agrees with converting the eps output
    vp = VPProcess("cosine")
    t = torch.full((6,), 0.4)
    teacher = analytic_teacher(mixture, vp)
    for target in ("x0", "v", "velocity", "score"):
        torch.testing.assert_close(teacher.predict(x, t, None, target), vp.convert(teacher(x, t), x, t, "eps", target),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="mode indices"):
        teacher(x, t, torch.full((6,), 25))


@pytest.mark.parametrize("process", [VPProcess("linear"), EDMProcess(), FlowProcess()], ids=repr)
def test_teacher_samples_cover_every_mode(process):
    mixture = Mixture.grid(5, spacing=1.0, std=0.05)
    teacher = analytic_teacher(mixture, process)
    g = torch.Generator().manual_seed(1)
    x = sample(teacher, process.prior((1000, 2), generator=g), steps=25, solver="heun")
    dist, mode = torch.cdist(x, mixture.means).min(1)
    assert torch.bincount(mode, minlength=25).min() >= 15
    assert float(dist.median()) < 0.1
    # class-conditional: every sample on its own mode
    y = torch.arange(50) % 25
    xc = sample(teacher, process.prior((50, 2), generator=g), steps=25, solver="heun", cond=y)
    assert torch.equal(torch.cdist(xc, mixture.means).argmin(1), y)


def test_mixture_constructors_sampling_and_log_prob():
    grid = Mixture.grid(5, spacing=2.0, std=0.1)
    assert grid.num_modes == 25 and grid.dim == 2
    assert sorted(set(grid.means[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    ring = Mixture.ring(8, radius=3.0, std=0.02)
    torch.testing.assert_close(ring.means.norm(dim=1), torch.full((8,), 3.0))
    torch.testing.assert_close(ring.means[2], torch.tensor([0.0, 3.0]), atol=1e-6, rtol=0)
    x, mode = ring.sample(4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and mode.shape == (4000,)
    assert torch.bincount(mode, minlength=8).min() > 400
    assert float((x - ring.means[mode]).std()) == pytest.approx(0.02, rel=0.05)
    m = uneven_mixture()
    pts = torch.randn(10, 2, dtype=F64)
    ref = D.MixtureSameFamily(D.Categorical(probs=m.weights),
                              D.Independent(D.Normal(m.means, m.stds[:, None].expand(3, 2)), 1)).log_prob(pts)
    torch.testing.assert_close(m.log_prob(pts), ref)
    assert math.isfinite(float(m.log_prob(torch.tensor([[1e4, 1e4]], dtype=F64))))
    with pytest.raises(ConfigError, match="stds must be positive"):
        Mixture(torch.zeros(2, 2), torch.tensor([0.1, 0.0]), torch.ones(2))
    with pytest.raises(ConfigError, match=r"shape \(K, D\)"):
        Mixture(torch.zeros(2), torch.ones(2), torch.ones(2))
    with pytest.raises(ConfigError, match="weights"):
        Mixture(torch.zeros(2, 2), torch.ones(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ConfigError, match="n must be a positive integer"):
        Mixture.grid(0)
