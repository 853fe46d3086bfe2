"""Step-distillation objectives of the generative engine: progressive distillation, consistency
distillation, reflow and the GAN parts, each against formulas written here, closed forms on
Gaussians and float64 gradchecks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser, MLPDenoiser
from distillery.generative.method import METHODS
from distillery.generative.objectives.consistency import (
    ConsistencyDistillation,
    boundary_coefficients,
    consistency_distance,
    consistency_function,
    consistency_grid,
)
from distillery.generative.objectives.gan import (
    TimeAwareDiscriminator,
    d_loss,
    g_loss,
    r1_penalty,
)
from distillery.generative.objectives.progressive import (
    ProgressiveDistillation,
    progressive_loss,
    progressive_target,
    teacher_two_steps,
)
from distillery.generative.objectives.reflow import (
    Reflow,
    reflow_interpolation,
    reflow_loss,
    teacher_pairs,
)
from distillery.generative.processes import EDMProcess, FlowProcess, VPProcess

D64 = torch.float64


# ------------------------------------------------------------------------------------------
# helpers: exact Gaussian teachers, per-time affine students, hand-written DDIM
# ------------------------------------------------------------------------------------------
def ab(process, t):
    a, s = process.alpha_sigma(torch.as_tensor(t, dtype=D64))
    return a, s


class GaussianX0(nn.Module):
    """E[x0 | x_t] for x0 ~ N(mu, diag(std^2)): mu + std^2 a / (a^2 std^2 + s^2) (x_t - a mu)."""

    def __init__(self, process, mu, std):
        super().__init__()
        self.process = process
        self.register_buffer("mu", torch.as_tensor(mu, dtype=D64))
        self.register_buffer("std", torch.as_tensor(std, dtype=D64))
        self.dummy = nn.Parameter(torch.zeros((), dtype=D64))

    def forward(self, x, t, cond=None):
        a, s = self.process.alpha_sigma(t.to(D64))
        a, s = a[:, None], s[:, None]
        gain = self.std**2 * a / (a**2 * self.std**2 + s**2)
        return self.mu + gain * (x - a * self.mu) + 0 * self.dummy


class TableAffine(nn.Module):
    """A diagonal affine map per time of a fixed grid: out = scale[i] * x + shift[i]."""

    def __init__(self, grid, dim):
        super().__init__()
        self.register_buffer("grid", grid.to(D64))
        self.scale = nn.Parameter(torch.zeros(len(grid), dim, dtype=D64))
        self.shift = nn.Parameter(torch.zeros(len(grid), dim, dtype=D64))

    def index(self, t):
        return (t.to(D64)[:, None] - self.grid[None]).abs().argmin(1)

    def forward(self, x, t, cond=None):
        i = self.index(t)
        return self.scale[i] * x + self.shift[i]


def my_ddim(x0_fn, process, x, t, s):
    """x_s = a_s x0 + s_s (x_t - a_t x0) / s_t, written here independently."""
    a_t, s_t = ab(process, t)
    a_s, s_s = ab(process, s)
    x0 = x0_fn(x, torch.full((x.shape[0],), float(t), dtype=D64))
    return a_s * x0 + s_s * (x - a_t * x0) / s_t


def fit_affine(inputs, targets):
    """Per-dimension least squares targets ~ a * inputs + b (closed form)."""
    xm, ym = inputs.mean(0), targets.mean(0)
    a = ((inputs - xm) * (targets - ym)).sum(0) / (inputs - xm).pow(2).sum(0)
    return a, ym - a * xm


def gaussian_teacher(process, mu=(1.5, -0.5), std=(0.7, 2.0)):
    return Denoiser(GaussianX0(process, mu, std), process, "x0", sample_shape=(2,))


def mlp(process, prediction="eps", seed=0, dtype=D64):
    torch.manual_seed(seed)
    return Denoiser(MLPDenoiser(dim=2, hidden=(16,), time_dim=8).to(dtype), process, prediction, sample_shape=(2,))


# ------------------------------------------------------------------------------------------
# progressive distillation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("process", [VPProcess("cosine"), VPProcess("linear"), FlowProcess(), EDMProcess()])
def test_progressive_target_is_where_one_ddim_step_lands(process):
    g = torch.Generator().manual_seed(1)
    z_t, z_s = torch.randn(6, 3, generator=g, dtype=D64), torch.randn(6, 3, generator=g, dtype=D64)
    t = torch.rand(6, generator=g, dtype=D64) * 0.6 + 0.3
    s = t - 0.2
    x_tilde = progressive_target(process, z_t, z_s, t, s)
    a_t, s_t = ab(process, t)
    a_s, s_s = ab(process, s)
    landed = a_s[:, None] * x_tilde + s_s[:, None] * (z_t - a_t[:, None] * x_tilde) / s_t[:, None]
    torch.testing.assert_close(landed, z_s, rtol=1e-9, atol=1e-9)


def test_progressive_loss_weights():
    x0, tgt = torch.randn(3, 4, dtype=D64), torch.randn(3, 4, dtype=D64)
    snr = torch.tensor([0.1, 1.0, 5.0], dtype=D64)
    err = ((x0 - tgt) ** 2).mean(1)
    torch.testing.assert_close(progressive_loss(x0, tgt, snr), (torch.tensor([1.0, 1.0, 5.0], dtype=D64) * err).mean())
    torch.testing.assert_close(progressive_loss(x0, tgt, snr, "snr_plus_one"), ((snr + 1) * err).mean())
    torch.testing.assert_close(progressive_loss(x0, tgt, snr, "none"), err.mean())
    # the truncated-SNR loss is max(||x - x^||^2, ||eps - eps^||^2) (Salimans & Ho 2022, eq. 9)
    process, t = VPProcess("cosine"), torch.full((3,), 0.4, dtype=D64)
    z = torch.randn(3, 4, dtype=D64)
    a, s = ab(process, t)
    eps_hat, eps_tgt = (z - a[:, None] * x0) / s[:, None], (z - a[:, None] * tgt) / s[:, None]
    per = torch.maximum(((x0 - tgt) ** 2).mean(1), ((eps_hat - eps_tgt) ** 2).mean(1))
    torch.testing.assert_close(progressive_loss(x0, tgt, process.snr(t)), per.mean())


@pytest.mark.parametrize("process", [VPProcess("cosine"), FlowProcess(t_max=0.999, t_min=0.01)])
def test_progressive_linear_gaussian_halves_the_steps_exactly(process):
    """An exact linear teacher, a linear student: the least-squares student on the closed-form
    targets samples in N DDIM steps exactly what the teacher samples in 2N."""
    n_steps, dim = 4, 2
    teacher = gaussian_teacher(process)
    grid = process.timesteps(n_steps).to(D64)
    student = Denoiser(TableAffine(grid, dim), process, "x0", sample_shape=(dim,))
    g = torch.Generator().manual_seed(0)
    for i in range(n_steps):
        z_t = 3 * torch.randn(64, dim, generator=g, dtype=D64)
        t, s = grid[i].expand(64), grid[i + 1].expand(64)
        target = progressive_target(process, z_t, teacher_two_steps(teacher, z_t, t, s), t, s)
        a, b = fit_affine(z_t, target)
        with torch.no_grad():
            student.net.scale[i], student.net.shift[i] = a, b
    method = ProgressiveDistillation(student, teacher, student_steps=n_steps, init_from_teacher=False)
    # the student's N-step DDIM sample against the teacher's 2N-step DDIM written here
    x_student = method.sample(32, n_steps, generator=torch.Generator().manual_seed(5))
    x = process.prior((32, dim), generator=torch.Generator().manual_seed(5), dtype=D64)
    fine = process.timesteps(2 * n_steps).to(D64)
    for k in range(2 * n_steps):
        x = my_ddim(lambda y, tt: teacher.net(y, tt), process, x, fine[k], fine[k + 1])
    # (to 1e-6, not 1e-12: the samplers' time grids are float32 values, the midpoints float64)
    torch.testing.assert_close(x_student, x, rtol=0, atol=1e-6)
    loss, logs = method.loss("student", {"x": torch.randn(128, dim, dtype=D64)}, 0)
    assert float(loss.detach()) < 1e-16 and logs["student_steps"] == n_steps


def test_progressive_rounds_halve_steps_and_keep_the_teacher_in_checkpoints():
    process = FlowProcess(t_max=0.999)
    teacher = mlp(process, "eps")
    student = mlp(process, "eps", seed=1)
    method = ProgressiveDistillation(student, teacher, student_steps=4, rounds=3, steps_per_round=2)
    assert torch.equal(student.net.body[0].weight, teacher.net.body[0].weight)  # init from teacher
    assert method.frozen_prefixes() == ("teacher.",) and method.student_steps == 4
    opt = torch.optim.SGD(method.parameters_of("student"), lr=0.1)
    for step in range(2):
        loss, _ = method.loss("student", {"x": torch.randn(8, 2, dtype=D64)}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(step)
    assert method.student_steps == 2 and int(method.round_index) == 1
    assert method.teacher is not student and method.frozen_prefixes() == ()
    for p_t, p_s in zip(method.teacher.parameters(), student.parameters()):
        assert torch.equal(p_t, p_s) and not p_t.requires_grad
    state = method.trainable_state()
    assert any(k.startswith("teacher.") for k in state)
    fresh = ProgressiveDistillation(mlp(process, "eps", seed=2), mlp(process, "eps", seed=3), student_steps=4, rounds=3,
                                    steps_per_round=2)
    fresh.load_state_dict(state)
    assert fresh.student_steps == 2
    torch.testing.assert_close(fresh.teacher.net.body[0].weight, student.net.body[0].weight)
    for step in range(2, 8):
        method.after_step(step)
    assert method.student_steps == 1 and int(method.round_index) == 2  # the last round stays
    assert METHODS.get("progressive") is ProgressiveDistillation


def test_progressive_refuses_bad_parameters():
    process = FlowProcess()
    with pytest.raises(ConfigError, match="student_steps=6"):
        ProgressiveDistillation(mlp(process), mlp(process), student_steps=6, rounds=3)
    with pytest.raises(ConfigError, match="weighting"):
        ProgressiveDistillation(mlp(process), mlp(process), weighting="snr")
    with pytest.raises(ConfigError, match="one noising process"):
        ProgressiveDistillation(mlp(VPProcess()), mlp(process))
    with pytest.raises(ConfigError, match="rounds"):
        ProgressiveDistillation(mlp(process), mlp(process), rounds=0)


# ------------------------------------------------------------------------------------------
# consistency distillation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["song", "lcm"])
def test_boundary_coefficients_formulas(form):
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0], dtype=D64)
    c_skip, c_out = boundary_coefficients(sigma, 0.002, 0.5, form)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0
    for k, sg in enumerate(sigma.tolist()):
        u = sg - 0.002
        assert math.isclose(float(c_skip[k]), 0.25 / (u * u + 0.25), rel_tol=1e-12)
        expected = 0.5 * u / math.sqrt(sg * sg + 0.25) if form == "song" else u / math.sqrt(u * u + 0.25)
        assert math.isclose(float(c_out[k]), expected, rel_tol=1e-12, abs_tol=1e-300)


@pytest.mark.parametrize("process", [VPProcess("cosine"), EDMProcess(), FlowProcess()])
@pytest.mark.parametrize("dtype", [torch.float32, D64])
def test_consistency_boundary_condition_is_exact(process, dtype):
    # (an eps-predicting network has no x0 at alpha = 0, the flow process's t = 1)
    student = mlp(process, "velocity" if isinstance(process, FlowProcess) else "eps", dtype=dtype)
    x = torch.randn(5, 2, dtype=dtype)
    for form in ("song", "lcm"):
        t_min = consistency_grid(process, 7, dtype)[0]
        assert torch.equal(consistency_function(student, x, t_min.expand(5), form=form), x)
    f1 = consistency_function(student, x, torch.full((5,), process.t_max, dtype=dtype))
    assert torch.isfinite(f1).all() and not torch.equal(f1, x)


class ChainNet(nn.Module):
    """A student whose consistency function at grid time t_n is the teacher's DDIM chain from
    t_n to t_1 (written here): the exact consistency map of the discretised teacher ODE."""

    def __init__(self, teacher, grid, sigma_data, form):
        super().__init__()
        self.teacher, self.form, self.sigma_data = teacher, form, sigma_data
        self.register_buffer("grid", grid)

    def chain(self, x, n):
        for k in range(n, 0, -1):
            x = my_ddim(lambda y, tt: self.teacher.predict(y, tt, None, "x0"), self.teacher.process, x, self.grid[k], self.grid[k - 1])
        return x

    def forward(self, x, t, cond=None):
        process = self.teacher.process
        idx = (t[:, None] - self.grid[None]).abs().argmin(1)
        out = torch.zeros_like(x)
        for n in idx.unique().tolist():
            rows = idx == n
            if n == 0:
                continue  # at the boundary c_out = 0: F does not matter
            a, s = ab(process, self.grid[n])
            c_skip, c_out = boundary_coefficients(s / a, float(ab(process, self.grid[0])[1] / ab(process, self.grid[0])[0]),
                                                  self.sigma_data, self.form)
            out[rows] = (self.chain(x[rows], n) - c_skip * x[rows]) / c_out
        return out


@pytest.mark.parametrize("form", ["song", "lcm"])
def test_consistency_loss_is_zero_for_the_exact_consistency_map(form):
    process = VPProcess("cosine")
    teacher = mlp(process, "eps", seed=4)
    n_scales = 5
    grid = consistency_grid(process, n_scales, D64)
    student = Denoiser(ChainNet(copy.deepcopy(teacher), grid, 0.5, form), process, "x0", sample_shape=(2,))
    method = ConsistencyDistillation(student, teacher, num_scales=n_scales, solver="ddim", coefficients=form,
                                     init_from_teacher=False)
    loss, _ = method.loss("student", {"x": torch.randn(64, 2, dtype=D64)}, 0)
    assert float(loss.detach()) < 1e-20
    # one-step consistency sampling = the teacher's (N - 1)-step DDIM from t_max
    x1 = method.sample(16, 1, generator=torch.Generator().manual_seed(3))
    x = process.prior((16, 2), generator=torch.Generator().manual_seed(3), dtype=D64)
    torch.testing.assert_close(x1, student.net.chain(x, n_scales - 1), rtol=1e-9, atol=1e-9)


def test_consistency_loss_formula_and_gradient_path():
    process = FlowProcess()
    teacher, student = mlp(process, "velocity", seed=0), mlp(process, "velocity", seed=1)
    method = ConsistencyDistillation(student, teacher, num_scales=4, solver="euler", distance="pseudo_huber", init_from_teacher=False)
    x = torch.randn(16, 2, dtype=D64)
    torch.manual_seed(7)
    loss, _ = method.loss("student", {"x": x}, 0)
    # the same draws, the loss written here
    torch.manual_seed(7)
    grid = torch.linspace(0.0, 1.0, 4, dtype=D64)
    n = torch.randint(0, 3, (16,))
    eps = torch.randn_like(x)
    t1, t0 = grid[n + 1], grid[n]
    x1 = (1 - t1)[:, None] * x + t1[:, None] * eps
    x_hat = x1 + (t0 - t1)[:, None] * teacher.net(x1, t1)
    f_s = consistency_function(student, x1, t1, sigma_data=0.5, form="lcm")
    f_t = consistency_function(method.target, x_hat, t0, sigma_data=0.5, form="lcm")
    c = 0.00054 * math.sqrt(2)
    expected = (torch.sqrt(((f_s - f_t) ** 2).sum(1) + c * c) - c).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    assert student.net.body[0].weight.grad is not None
    assert all(p.grad is None for p in method.target.parameters())
    a, b = torch.randn(4, 3, dtype=D64), torch.randn(4, 3, dtype=D64)
    torch.testing.assert_close(consistency_distance(a, b, "l2"), ((a - b) ** 2).mean(1))


def test_consistency_ema_moves_target_toward_student():
    process = FlowProcess()
    method = ConsistencyDistillation(mlp(process), mlp(process, seed=1), num_scales=3, ema_decay=0.9)
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target.parameters()]
    method.after_step(0)
    for b, p_t, p_s in zip(before, method.target.parameters(), method.student.parameters()):
        torch.testing.assert_close(p_t, 0.9 * b + 0.1 * p_s)
        assert not p_t.requires_grad
    assert "target.net.body.0.weight" in method.trainable_state()
    assert METHODS.get("consistency") is ConsistencyDistillation


def test_consistency_refuses_bad_parameters():
    process = FlowProcess()
    for kwargs, match in [({"num_scales": 1}, "num_scales"), ({"ema_decay": 1.5}, "ema_decay"),
                          ({"ema_decay": -0.1}, "ema_decay"), ({"distance": "l1"}, "distance"),
                          ({"solver": "rk4"}, "solver"), ({"coefficients": "edm"}, "coefficients"),
                          ({"guidance": 2.0}, "class-conditional")]:
        with pytest.raises(ConfigError, match=match):
            ConsistencyDistillation(mlp(process), mlp(process), **kwargs)


# ------------------------------------------------------------------------------------------
# reflow
# ------------------------------------------------------------------------------------------
def test_reflow_straight_line_target():
    x, eps = torch.randn(8, 2, dtype=D64), torch.randn(8, 2, dtype=D64)
    t = torch.rand(8, dtype=D64)
    x_t, v = reflow_interpolation(FlowProcess(), x, eps, t)
    torch.testing.assert_close(x_t, (1 - t)[:, None] * x + t[:, None] * eps)
    torch.testing.assert_close(v, eps - x)
    # a shifted flow: the target is d x_t / dt (central difference)
    shifted, h = FlowProcess(shift=3.0), 1e-6
    t = t * 0.9 + 0.05
    _, v = reflow_interpolation(shifted, x, eps, t)
    fd = (reflow_interpolation(shifted, x, eps, t + h)[0] - reflow_interpolation(shifted, x, eps, t - h)[0]) / (2 * h)
    torch.testing.assert_close(v, fd, rtol=1e-6, atol=1e-6)
    v_hat = torch.randn(8, 2, dtype=D64)
    torch.testing.assert_close(reflow_loss(v_hat, v), ((v_hat - v) ** 2).sum() / 16)


class AffineVelocity(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(dim, dtype=D64))
        self.b = nn.Parameter(torch.zeros(dim, dtype=D64))

    def forward(self, x, t, cond=None):
        return self.a * x + self.b


def test_reflow_linear_teacher_one_euler_step_reaches_the_teacher_sample():
    process = FlowProcess()
    mu, std = torch.tensor([1.5, -0.5], dtype=D64), torch.tensor([0.7, 2.0], dtype=D64)
    teacher = gaussian_teacher(process, mu, std)
    student = Denoiser(AffineVelocity(2), process, "velocity", sample_shape=(2,))
    method = Reflow(student, teacher, pairs=256, pair_steps=24, solver="heun", distill=True)
    # the teacher's ODE map of a Gaussian is the monotone map eps -> mu + std eps (up to Heun's error)
    torch.testing.assert_close(method.pool_x, mu + std * method.pool_eps, rtol=0, atol=2e-2)
    # the optimal student at t = 1 on the coupling (least squares) ...
    x_1, target = reflow_interpolation(process, method.pool_x, method.pool_eps, torch.ones(256, dtype=D64))
    a, b = fit_affine(x_1, target)
    with torch.no_grad():
        student.net.a.copy_(a)
        student.net.b.copy_(b)
    loss, _ = method.loss("student", {"x": torch.zeros(64, 2)}, 0)
    assert float(loss.detach()) < 1e-20
    # ... maps noise to the teacher's sample in one Euler step
    x_student = method.sample(32, 1, generator=torch.Generator().manual_seed(9))
    eps = torch.randn((32, 2), generator=torch.Generator().manual_seed(9), dtype=D64)
    torch.testing.assert_close(x_student, teacher_pairs(teacher, eps, steps=24), rtol=0, atol=1e-10)
    assert METHODS.get("reflow") is Reflow


def test_reflow_pool_refresh_and_bad_parameters():
    process = FlowProcess()
    method = Reflow(mlp(process, "velocity"), mlp(process, "velocity", seed=1), pairs=8, pair_steps=2, refresh_every=2)
    first = method.pool_eps.clone()
    method.after_step(0)
    assert torch.equal(method.pool_eps, first)
    method.after_step(1)
    assert not torch.equal(method.pool_eps, first)
    loss, _ = method.loss("student", {"x": torch.zeros(4, 2)}, 0)
    loss.backward()
    for kwargs, match in [({"pairs": 0}, "pairs"), ({"solver": "rk4"}, "solver"), ({"refresh_every": 0}, "refresh_every")]:
        with pytest.raises(ConfigError, match=match):
            Reflow(mlp(process), mlp(process), **kwargs)


# ------------------------------------------------------------------------------------------
# GAN parts
# ------------------------------------------------------------------------------------------
def test_gan_losses_against_formulas():
    real, fake = torch.randn(7, dtype=D64), torch.randn(5, dtype=D64)
    sp = lambda z: torch.log1p(torch.exp(z))
    torch.testing.assert_close(d_loss(real, fake), sp(-real).mean() + sp(fake).mean())
    torch.testing.assert_close(g_loss(fake), sp(-fake).mean())
    # -log sigmoid form
    torch.testing.assert_close(d_loss(real, fake), -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean())
    # hinge margins: confident logits beyond the margins cost nothing
    assert float(d_loss(torch.tensor([2.0, 1.0]), torch.tensor([-3.0, -1.0]), "hinge")) == 0.0
    torch.testing.assert_close(d_loss(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, -0.5]), "hinge"), torch.tensor(0.5))
    torch.testing.assert_close(g_loss(torch.tensor([1.0, -3.0]), "hinge"), torch.tensor(1.0))
    with pytest.raises(ConfigError, match="kind"):
        d_loss(real, fake, "wasserstein")
    with pytest.raises(ConfigError, match="kind"):
        g_loss(fake, "lsgan")


def test_gan_losses_gradcheck():
    real = torch.tensor([0.3, -1.2, 2.5], dtype=D64, requires_grad=True)
    fake = torch.tensor([-0.4, 1.7, 0.2], dtype=D64, requires_grad=True)
    for kind in ("nonsaturating", "hinge"):  # hinge inputs away from the kinks at +-1
        assert torch.autograd.gradcheck(lambda r, f, k=kind: d_loss(r, f, k), (real, fake))
        assert torch.autograd.gradcheck(lambda f, k=kind: g_loss(f, k), (fake,))


def test_r1_penalty_of_a_linear_discriminator():
    w = torch.tensor([0.5, -2.0, 1.5], dtype=D64, requires_grad=True)
    x = torch.randn(4, 3, dtype=D64, requires_grad=True)
    penalty = r1_penalty(x @ w + 1.0, x)
    torch.testing.assert_close(penalty, (w.detach() ** 2).sum())
    (grad_w,) = torch.autograd.grad(penalty, w)
    torch.testing.assert_close(grad_w, 2 * w.detach())  # create_graph: the penalty trains D
    # a quadratic D(x) = x^T W x: grad = (W + W^T) x, penalty = mean ||(W + W^T) x||^2
    W = torch.randn(3, 3, dtype=D64, requires_grad=True)
    xq = torch.randn(5, 3, dtype=D64)

    def pen(W):
        xr = xq.clone().requires_grad_(True)
        return r1_penalty(torch.einsum("bi,ij,bj->b", xr, W, xr), xr)

    torch.testing.assert_close(pen(W), ((xq @ (W + W.T).T) ** 2).sum(1).mean())
    assert torch.autograd.gradcheck(pen, (W,))
    with pytest.raises(ConfigError, match="require grad"):
        r1_penalty(xq @ w, xq)


def test_time_aware_discriminator():
    process = FlowProcess()
    torch.manual_seed(0)
    disc = TimeAwareDiscriminator(None, 16, sample_dim=2, hidden=(16,), time_dim=8, num_classes=3, process=process).double()
    x = torch.randn(6, 2, dtype=D64)
    t = torch.full((6,), 0.3, dtype=D64)
    logits = disc(x, t)
    assert logits.shape == (6,)
    assert not torch.allclose(logits, disc(x, torch.full((6,), 0.8, dtype=D64)))  # time-aware
    assert not torch.allclose(disc(x, t, torch.zeros(6, dtype=torch.long)), disc(x, t, torch.ones(6, dtype=torch.long)))
    eps = torch.randn_like(x)
    torch.testing.assert_close(disc.noised(x, t, eps), disc(0.7 * x + 0.3 * eps, t))
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: disc(z, t), (xr,))
    r1 = r1_penalty(disc(xr, t), xr)
    r1.backward()
    assert disc.out.weight.grad is not None

    class ConvFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)

        def forward(self, x_t, t):
            return self.conv(x_t) * (1 + t[:, None, None, None])

    image_disc = TimeAwareDiscriminator(ConvFeatures(), 8, time_dim=8)
    assert image_disc(torch.randn(3, 1, 8, 8), torch.rand(3)).shape == (3,)
    with pytest.raises(ConfigError, match="sample_dim"):
        TimeAwareDiscriminator(None, 8)
    with pytest.raises(ConfigError, match="feature_dim"):
        TimeAwareDiscriminator(None, 0, sample_dim=2)
    with pytest.raises(ConfigError, match="process"):
        TimeAwareDiscriminator(None, 8, sample_dim=2).noised(x.float(), t.float())


def test_gan_method_players_train_their_own_parameters():
    process = FlowProcess()
    teacher, student = mlp(process, "velocity"), mlp(process, "velocity", seed=1)
    method = METHODS.get("gan")(student=student, teacher=teacher, kind="hinge", r1_gamma=1.0, feature_dim=8, hidden=(8,), time_dim=8)
    assert method.players == ("discriminator", "student") and "teacher." in method.frozen_prefixes()
    assert torch.equal(student.net.body[0].weight, teacher.net.body[0].weight)
    batch = {"x": torch.randn(16, 2, dtype=D64)}
    d, logs = method.loss("discriminator", batch, 0)
    d.backward()
    assert "r1" in logs and all(p.grad is None for p in student.parameters())
    assert all(p.grad is not None for p in method.parameters_of("discriminator"))
    method.zero_grad()
    g, _ = method.loss("student", batch, 0)
    g.backward()
    assert all(p.grad is not None for p in student.net.body.parameters())
    one = method.sample(4, 1, generator=torch.Generator().manual_seed(0))
    x_T = process.prior((4, 2), generator=torch.Generator().manual_seed(0), dtype=D64)
    torch.testing.assert_close(one, x_T - student.net(x_T, torch.ones(4, dtype=D64)))  # x0 = x_1 - v at t = 1
    assert method.sample(4, 2).shape == (4, 2)
    with pytest.raises(ConfigError, match="kind"):
        METHODS.get("gan")(student=student, kind="wgan")
    with pytest.raises(ConfigError, match="r1_gamma"):
        METHODS.get("gan")(student=student, r1_gamma=-1.0)
