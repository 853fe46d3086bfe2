"""Samplers of the generative engine against closed forms (Gaussian data, point masses).

For Gaussian data ``x0 ~ N(mu, s^2 I)`` and ``x_t = alpha_t x0 + sigma_t eps`` the marginal is
``N(alpha_t mu, v_t I)`` with ``v_t = alpha_t^2 s^2 + sigma_t^2``, and the exact denoiser is
``x0_hat(x, t) = mu + alpha_t s^2 / v_t (x - alpha_t mu)``. The probability-flow velocity built
from it is affine in ``x`` with an isotropic linear part, so the ODE's flow map is ``x -> m_s +
c (x - m_t)`` for a scalar ``c > 0``; it carries ``N(m_t, v_t I)`` onto ``N(m_s, v_s I)``, hence
``c = sqrt(v_s / v_t)``: the standardized coordinate ``(x_t - alpha_t mu) / sqrt(v_t)`` is
conserved. ``test_closed_form_solves_the_ode`` checks that by differentiating it in ``t``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import EDMProcess, FlowProcess, VPProcess
from distillery.generative.samplers import (
    SOLVERS,
    Guided,
    nfe,
    ode_pairs,
    sample,
    solve,
)

F64 = torch.float64
MU = torch.tensor([1.5, -0.5], dtype=F64)
SD = 0.3

# (process, t_start) - the cosine schedule floors alpha at 1e-4 right next to t = 1, a kink
# in alpha(t) that costs any second-order method its order on the first step; start below it.
PROCESSES = {
    "vp_linear": (VPProcess("linear"), 1.0),
    "vp_cosine": (VPProcess("cosine"), 0.99),
    "edm": (EDMProcess(), 1.0),
    "flow": (FlowProcess(), 1.0),
    "flow_shift3": (FlowProcess(shift=3.0), 1.0),
}


class GaussianX0(nn.Module):
    """The exact ``x0`` prediction of ``N(mu, s^2 I)`` data (``s = 0``: a point mass at ``mu``)."""

    def __init__(self, process, mu=MU, sd=SD) -> None:
        super().__init__()
        self.process, self.mu, self.sd = process, mu, sd
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        if self.sd == 0:
            return self.mu.to(x).expand_as(x).clone()
        a, sg = (c[:, None] for c in self.process.alpha_sigma(t))
        return self.mu + a * self.sd**2 / (a**2 * self.sd**2 + sg**2) * (x - a * self.mu)


def closed_form(process, x, t, s, mu=MU, sd=SD):
    """The probability-flow ODE map from time ``t`` to time ``s`` for ``N(mu, sd^2 I)`` data."""
    a_t, s_t = process.alpha_sigma(torch.as_tensor(t, dtype=F64))
    a_s, s_s = process.alpha_sigma(torch.as_tensor(s, dtype=F64))
    v_t, v_s = a_t**2 * sd**2 + s_t**2, a_s**2 * sd**2 + s_s**2
    return a_s * mu + (v_s / v_t).sqrt() * (x - a_t * mu)


def gaussian(process, sd=SD):
    return Denoiser(GaussianX0(process, sd=sd), process, "x0", sample_shape=(2,))


def start_points(process, t, n=64, seed=0):
    a, s = process.alpha_sigma(torch.tensor(t, dtype=F64))
    g = torch.Generator().manual_seed(seed)
    x0 = MU + SD * torch.randn(n, 2, generator=g, dtype=F64)
    return a * x0 + s * torch.randn(n, 2, generator=g, dtype=F64)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_closed_form_solves_the_ode(name):
    """d/dt of the closed-form path equals the velocity of the exact denoiser (independent of the samplers)."""
    process, _ = PROCESSES[name]
    den = gaussian(process)
    x_ref = start_points(process, 0.6, n=8)
    for t in (0.05, 0.3, 0.6, 0.9):
        tt = torch.tensor(t, dtype=F64)
        path = lambda u: closed_form(process, x_ref, 0.6, u)
        x, dx = torch.func.jvp(path, (tt,), (torch.ones_like(tt),))
        v = den.predict(x, tt, None, "velocity")
        torch.testing.assert_close(v, dx, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("solver,order", [("euler", 2.0), ("ddim", 2.0), ("heun", 4.0)])
def test_solvers_converge_to_the_closed_form_at_their_order(name, solver, order):
    process, t0 = PROCESSES[name]
    den = gaussian(process)
    x = start_points(process, t0)
    ref = closed_form(process, x, t0, process.t_min)
    errs = [float((solve(den, x, t0, process.t_min, steps=n, solver=solver) - ref).abs().max()) for n in (32, 64)]
    ratio = errs[0] / errs[1]
    assert order * 0.85 < ratio < order * 1.15, (errs, ratio)
    assert errs[1] < (2e-2 if solver == "heun" else 0.3)  # data scale ~2


@pytest.mark.parametrize("name", list(PROCESSES))
def test_ddim_is_exact_in_one_step_for_a_point_mass(name):
    process, t0 = PROCESSES[name]
    den = gaussian(process, sd=0.0)
    x = start_points(process, t0)
    for t, s in ((t0, process.t_min), (0.8, 0.3), (0.5, 0.5)):
        out = solve(den, x, t, s, steps=1, solver="ddim")
        a_t, s_t = process.alpha_sigma(torch.as_tensor(t, dtype=F64))
        a_s, s_s = process.alpha_sigma(torch.as_tensor(s, dtype=F64))
        # x_t = a_t mu + s_t eps exactly, so x_s = a_s mu + s_s eps
        torch.testing.assert_close(out, a_s * MU + s_s / s_t * (x - a_t * MU), rtol=1e-10, atol=1e-10)


def test_ddim_equals_euler_for_the_unshifted_flow_and_euler_in_sigma_for_edm():
    flow = FlowProcess()
    den = gaussian(flow)
    x = start_points(flow, 1.0)
    torch.testing.assert_close(sample(den, x, steps=5, solver="ddim"), sample(den, x, steps=5, solver="euler"))
    edm = EDMProcess()
    den = gaussian(edm)
    x = start_points(edm, 0.7)
    s_t, s_s = edm.sigma(torch.tensor(0.7, dtype=F64)), edm.sigma(torch.tensor(0.2, dtype=F64))
    eps = den.predict(x, torch.tensor(0.7, dtype=F64), None, "eps")
    torch.testing.assert_close(solve(den, x, 0.7, 0.2, solver="ddim"), x + (s_s - s_t) * eps)


def test_heun_is_edm_algorithm_1_in_sigma_for_the_edm_process():
    """Karras et al. 2022, Algorithm 1 (S_churn = 0): d = (x - D(x; sigma)) / sigma = eps_hat,
    Euler step in sigma, then the trapezoid in sigma."""
    edm = EDMProcess()
    den = gaussian(edm)
    x = start_points(edm, 0.8)
    t, s = torch.tensor(0.8, dtype=F64), torch.tensor(0.5, dtype=F64)
    sig_t, sig_s = edm.sigma(t), edm.sigma(s)
    d = (x - den.predict(x, t, None, "x0")) / sig_t
    x_pred = x + (sig_s - sig_t) * d
    d2 = (x_pred - den.predict(x_pred, s, None, "x0")) / sig_s
    torch.testing.assert_close(solve(den, x, 0.8, 0.5, solver="heun"), x + (sig_s - sig_t) * 0.5 * (d + d2))


@pytest.mark.parametrize("name", ["vp_linear", "edm", "flow_shift3"])
def test_sub_intervals_inversion_and_per_sample_times(name):
    process, _ = PROCESSES[name]
    den = gaussian(process)
    x = start_points(process, 0.7)
    out = solve(den, x, 0.7, 0.2, steps=32, solver="heun")
    torch.testing.assert_close(out, closed_form(process, x, 0.7, 0.2), rtol=1e-3, atol=2e-2)
    # integrating back up (inversion) returns to the start
    back = solve(den, out, 0.2, 0.7, steps=32, solver="heun")
    torch.testing.assert_close(back, x, rtol=5e-3, atol=2e-2)  # EDM: |x| ~ 40 at t = 0.7
    # sample() on a sub-interval is solve() on the same grid (float32 times)
    torch.testing.assert_close(sample(den, x, steps=8, solver="heun", t_start=0.7, t_end=0.2),
                               solve(den, x, 0.7, 0.2, steps=8, solver="heun"), rtol=0, atol=1e-5)
    # one interval per sample equals solving each sample alone
    t = torch.tensor([0.9, 0.5, 0.7, 0.3], dtype=F64)
    s = torch.tensor([0.1, 0.5, 0.6, 0.0], dtype=F64)
    xb = start_points(process, 0.5, n=4)
    batched = solve(den, xb, t, s, steps=3, solver="heun")
    for i in range(4):
        one = solve(den, xb[i:i + 1], float(t[i]), float(s[i]), steps=3, solver="heun")
        torch.testing.assert_close(batched[i:i + 1], one)


def test_heun_skips_the_correction_only_where_a_step_ends_at_sigma_zero():
    flow = FlowProcess()
    den = gaussian(flow)
    x = start_points(flow, 0.5, n=3)
    s = torch.tensor([0.0, 0.2, 0.0], dtype=F64)
    out = solve(den, x, 0.5, s, steps=1, solver="heun")
    euler = solve(den, x, 0.5, s, steps=1, solver="euler")
    torch.testing.assert_close(out[[0, 2]], euler[[0, 2]])
    assert not torch.allclose(out[1], euler[1])
    torch.testing.assert_close(out[1:2], solve(den, x[1:2], 0.5, 0.2, steps=1, solver="heun"))


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("solver", SOLVERS)
def test_nfe_counts_network_calls(name, solver):
    process, _ = PROCESSES[name]
    den = gaussian(process)
    x = start_points(process, 1.0, n=4)
    _, sigma_end = process.alpha_sigma(torch.tensor(process.t_min))
    for steps in (1, 3):
        den.net.calls = 0
        sample(den, x, steps=steps, solver=solver)
        assert den.net.calls == nfe(solver, steps, t_end_sigma_zero=bool(sigma_end == 0))
    assert nfe("heun", 4) == 7 and nfe("heun", 4, t_end_sigma_zero=False) == 8 and nfe("ddim", 4) == 4


class TwoClass(nn.Module):
    """An eps network that answers differently with labels, without (null class) and per class."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        if cond is None:
            return 0.5 * x
        return x * (1.0 + cond.to(x)[:, None]) + t[:, None]


def test_guidance_scales_one_and_zero_and_the_formula():
    process = VPProcess("linear")
    den = Denoiser(TwoClass(), process, "eps", sample_shape=(2,), num_classes=2)
    x = torch.randn(5, 2, dtype=F64)
    t = torch.full((5,), 0.4, dtype=F64)
    y = torch.tensor([0, 1, 1, 0, 1])
    cond, uncond = den(x, t, y), den(x, t, None)
    torch.testing.assert_close(Guided(den, 1.0)(x, t, y), cond)
    torch.testing.assert_close(Guided(den, 0.0)(x, t, y), uncond)
    torch.testing.assert_close(Guided(den, 3.0)(x, t, y), uncond + 3.0 * (cond - uncond))
    for target in ("x0", "velocity", "v", "score"):
        g = Guided(den, 2.5).predict(x, t, y, target)
        expected = process.convert(uncond + 2.5 * (cond - uncond), x, t, "eps", target)
        torch.testing.assert_close(g, expected)
    g = Guided(den, 2.0)
    assert g.process is process and g.prediction == "eps" and g.sample_shape == (2,) and g.num_classes == 2
    # through the samplers: guidance=1 is the conditional sampler; two calls per evaluation otherwise
    xT = process.prior((5, 2), dtype=F64)
    torch.testing.assert_close(sample(den, xT, steps=3, cond=y, guidance=1.0), sample(den, xT, steps=3, cond=y))
    den.net.calls = 0
    sample(den, xT, steps=3, solver="heun", cond=y, guidance=2.0)
    assert den.net.calls == 2 * nfe("heun", 3, t_end_sigma_zero=False)
    with pytest.raises(ConfigError, match="needs class labels"):
        sample(den, xT, steps=2, guidance=2.0)
    with pytest.raises(ConfigError, match="finite number"):
        Guided(den, float("nan"))


def test_ode_pairs():
    process = FlowProcess()
    den = gaussian(process)
    xT = start_points(process, 1.0, n=6)
    pairs = ode_pairs(den, xT, steps=4, solver="heun")
    assert pairs["trajectory"].shape == (5, 6, 2) and pairs["times"].shape == (5,)
    end, path = sample(den, xT, steps=4, solver="heun", trajectory=True)
    torch.testing.assert_close(pairs["trajectory"], torch.stack(path), rtol=0, atol=1e-6)
    torch.testing.assert_close(pairs["x_0"], end, rtol=0, atol=1e-6)
    assert torch.equal(pairs["x_T"], xT) and torch.equal(pairs["trajectory"][0], xT)
    # recorded times with several solver steps per interval
    fine = ode_pairs(den, xT, steps=16, solver="heun", times=[1.0, 0.5, 0.0])
    torch.testing.assert_close(fine["trajectory"][1], solve(den, xT, 1.0, 0.5, steps=16, solver="heun"))
    torch.testing.assert_close(fine["x_0"], closed_form(process, xT, 1.0, 0.0), rtol=0, atol=5e-3)
    w = torch.zeros(1, requires_grad=True)
    assert not ode_pairs(den, xT + w, steps=2)["x_0"].requires_grad  # targets carry no graph
    with pytest.raises(ConfigError, match="strictly decreasing"):
        ode_pairs(den, xT, steps=2, times=[0.2, 0.5])


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, x, t, cond=None):
        return self.w * x * (1 + t[:, None])


def test_gradients_flow_through_every_solver():
    process = VPProcess("cosine")
    den = Denoiser(Linear(), process, "eps", sample_shape=(2,))
    x = torch.randn(3, 2, dtype=F64, requires_grad=True)
    for solver in SOLVERS:
        assert torch.autograd.gradcheck(lambda z, solver=solver: solve(den, z, 0.9, 0.1, steps=2, solver=solver), (x,))
        den.zero_grad()
        sample(den, x, steps=2, solver=solver).sum().backward()
        assert den.net.w.grad is not None and torch.isfinite(den.net.w.grad)


def test_bad_input():
    process = FlowProcess()
    den = gaussian(process)
    x = start_points(process, 1.0, n=2)
    for steps in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="positive integer"):
            sample(den, x, steps=steps)
        with pytest.raises(ConfigError, match="positive integer"):
            solve(den, x, 0.5, 0.1, steps=steps)
        with pytest.raises(ConfigError, match="positive integer"):
            nfe("euler", steps)
    with pytest.raises(ConfigError, match=r"inside \[0, 1\]"):
        sample(den, x, steps=2, t_start=1.5)
    with pytest.raises(ConfigError, match=r"inside \[0, 1\]"):
        solve(den, x, 0.5, -0.1)
    with pytest.raises(ConfigError, match="low <= high"):
        sample(den, x, steps=2, t_start=0.2, t_end=0.6)
    with pytest.raises(ConfigError, match="Unknown solver 'rk4'"):
        sample(den, x, steps=2, solver="rk4")
    with pytest.raises(ConfigError, match=r"\(2,\) tensor"):
        solve(den, x, torch.tensor([0.5, 0.4, 0.3]), 0.1)
