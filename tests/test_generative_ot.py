"""OT terms of the generative engine (distillery.generative.objectives.ot), checked against closed
forms and against formulas written here independently of POT.

Closed form used throughout: for 1-D Gaussians, W_2^2(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 +
(s1 - s2)^2. "Large samples" are either i.i.d. draws (tolerance from the O(1/sqrt(n)) error) or
stratified quantile samples m + s Phi^-1((i + 1/2) / n), whose empirical W_2 is within O(log n / n)
of the closed form.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from distillery.errors import ConfigError, ShapeError
from distillery.generative.objectives.ot import (
    random_directions,
    sinkhorn_loss,
    sliced_wasserstein_loss,
)

M1, S1, M2, S2 = 0.0, 1.0, 2.0, 1.5
W2_CLOSED = math.sqrt((M1 - M2) ** 2 + (S1 - S2) ** 2)


def quantile_samples(m: float, s: float, n: int) -> torch.Tensor:
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.as_tensor(m + s * norm.ppf(q.numpy()), dtype=torch.float64).reshape(n, 1)


def sliced_w2_by_hand(x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Equal-size sets: project, sort, mean squared gap per direction, mean over directions, sqrt."""
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    return ((px - py) ** 2).mean(dim=0).mean().sqrt()


def entropic_ot_by_hand(x: torch.Tensor, y: torch.Tensor, eps: float, iters: int = 1500) -> torch.Tensor:
    """Log-domain Sinkhorn written out (float64): OT_eps = <P, C> + eps KL(P | a b^T)."""
    cost = torch.cdist(x, y) ** 2
    n, m = cost.shape
    log_a = torch.full((n,), -math.log(n), dtype=cost.dtype)
    log_b = torch.full((m,), -math.log(m), dtype=cost.dtype)
    f = torch.zeros(n, dtype=cost.dtype)
    g = torch.zeros(m, dtype=cost.dtype)
    for _ in range(iters):
        f = -eps * torch.logsumexp(log_b[None, :] + (g[None, :] - cost) / eps, dim=1)
        g = -eps * torch.logsumexp(log_a[:, None] + (f[:, None] - cost) / eps, dim=0)
    log_p = log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - cost) / eps
    plan = log_p.exp()
    kl = (plan * (log_p - log_a[:, None] - log_b[None, :])).sum()
    return (plan * cost).sum() + eps * kl


# ---------------------------------------------------------------------------- sliced Wasserstein
def test_sliced_wasserstein_matches_closed_form_w2_of_1d_gaussians():
    # stratified samples: tight tolerance (1e-2 absolute on W2 = 1.118)
    x, y = quantile_samples(M1, S1, 4000), quantile_samples(M2, S2, 4000)
    assert float(sliced_wasserstein_loss(x, y, projections=4, seed=0)) == pytest.approx(W2_CLOSED, abs=1e-2)
    # i.i.d. draws of 20000: within 3% of the closed form
    gen = torch.Generator().manual_seed(1)
    xr = M1 + S1 * torch.randn(20000, 1, generator=gen, dtype=torch.float64)
    yr = M2 + S2 * torch.randn(20000, 1, generator=gen, dtype=torch.float64)
    assert float(sliced_wasserstein_loss(xr, yr, seed=0)) == pytest.approx(W2_CLOSED, rel=0.03)


def test_sliced_wasserstein_matches_formula_written_here():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(300, 3, generator=gen, dtype=torch.float64) * 2 + 1
    got = sliced_wasserstein_loss(x, y, projections=32, seed=5)
    theta = random_directions(3, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(theta.norm(dim=0), torch.ones(32, dtype=torch.float64))
    assert float(got) == pytest.approx(float(sliced_w2_by_hand(x, y, theta)), rel=1e-10)
    p_power = sliced_wasserstein_loss(x, y, projections=32, seed=5, root=False)
    assert float(p_power) == pytest.approx(float(got) ** 2, rel=1e-10)


def test_sliced_wasserstein_flattens_images_and_leaves_global_rng_alone():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 1, 4, 4, generator=gen)
    state = torch.get_rng_state()
    a = sliced_wasserstein_loss(x, x + 1, seed=0)
    assert torch.equal(state, torch.get_rng_state())
    b = sliced_wasserstein_loss(x.reshape(16, -1), x.reshape(16, -1) + 1, seed=0)
    assert a.dtype == torch.float32 and float(a) == pytest.approx(float(b))
    assert float(sliced_wasserstein_loss(x, x, seed=0)) == pytest.approx(0.0, abs=1e-6)


def test_sliced_wasserstein_gradient_moves_x_toward_y():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(256, 2, generator=gen, requires_grad=True)
    y = torch.randn(256, 2, generator=gen) + torch.tensor([3.0, -1.0])
    loss = sliced_wasserstein_loss(x, y, seed=0)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        x_new = x - 50.0 * x.grad  # per-sample gradients are O(1/B)
    assert float(sliced_wasserstein_loss(x_new, y, seed=0)) < float(loss.detach()) - 0.1


def test_sliced_wasserstein_gradcheck_float64():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 2, generator=gen, dtype=torch.float64) + 1.0
    assert torch.autograd.gradcheck(lambda a: sliced_wasserstein_loss(a, y, projections=8, seed=0), (x,))
    assert torch.autograd.gradcheck(lambda a: sliced_wasserstein_loss(a, y, projections=8, seed=0, root=False), (x,))


# ------------------------------------------------------------------------------------ Sinkhorn
def test_sinkhorn_divergence_matches_closed_form_w2_squared_of_1d_gaussians():
    # stratified samples (n = 400): the debiased divergence at reg 0.05 is within 3% of W2^2
    x, y = quantile_samples(M1, S1, 400), quantile_samples(M2, S2, 400)
    got = float(sinkhorn_loss(x, y))
    assert got == pytest.approx(W2_CLOSED**2, rel=0.03)
    # the blur shrinks the value toward W2^2 from the debiased side; plain OT_eps is larger
    assert float(sinkhorn_loss(x, y, debiased=False)) > got


def test_sinkhorn_matches_sinkhorn_written_here():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(15, 2, generator=gen, dtype=torch.float64) + 0.5
    eps = 1.0
    tight = {"max_iter": 20000, "tol": 1e-10}
    plain = sinkhorn_loss(x, y, reg=eps, relative=False, debiased=False, **tight)
    assert float(plain) == pytest.approx(float(entropic_ot_by_hand(x, y, eps)), rel=1e-6)
    deb = sinkhorn_loss(x, y, reg=eps, relative=False, **tight)
    by_hand = entropic_ot_by_hand(x, y, eps) - 0.5 * (entropic_ot_by_hand(x, x, eps) + entropic_ot_by_hand(y, y, eps))
    assert float(deb) == pytest.approx(float(by_hand), rel=1e-6)
    # relative blur: eps = reg * mean squared distance
    mean_cost = float((torch.cdist(x, y) ** 2).mean())
    rel = sinkhorn_loss(x, y, reg=eps / mean_cost, **tight)
    assert float(rel) == pytest.approx(float(deb), rel=1e-8)


def test_sinkhorn_divergence_is_zero_on_identical_sets():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert float(sinkhorn_loss(x, x.clone())) == pytest.approx(0.0, abs=1e-8)


def test_sinkhorn_gradient_moves_x_toward_y():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(128, 2, generator=gen, requires_grad=True)
    y = torch.randn(128, 2, generator=gen) + torch.tensor([2.0, 2.0])
    loss = sinkhorn_loss(x, y)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        x_new = x - 20.0 * x.grad
    assert float(sinkhorn_loss(x_new, y)) < float(loss.detach()) - 0.5


def test_sinkhorn_gradcheck_float64():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(5, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 2, generator=gen, dtype=torch.float64) + 0.7

    def fn(a, debiased=True, reg=2.0):
        return sinkhorn_loss(a, y, reg=reg, relative=False, debiased=debiased, max_iter=5000, tol=1e-12)

    # envelope gradient: exact at convergence, so a converged float64 solve passes gradcheck
    # (reg 2 against mean squared distances ~3: the self-terms converge in a few hundred steps)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradcheck(lambda a: fn(a, debiased=False, reg=0.5), (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_refused_with_clear_messages():
    x = torch.zeros(4, 2)
    with pytest.raises(ShapeError, match="same size"):
        sliced_wasserstein_loss(x, torch.zeros(4, 3))
    with pytest.raises(ShapeError, match="same size"):
        sinkhorn_loss(x, torch.zeros(4, 3))
    with pytest.raises(ConfigError, match="reg"):
        sinkhorn_loss(x, x, reg=0.0)
    with pytest.raises(ConfigError, match="p must be"):
        sliced_wasserstein_loss(x, x, p=0.5)
    with pytest.raises(ConfigError, match="projections"):
        sliced_wasserstein_loss(x, x, projections=0)
    with pytest.raises(ConfigError, match="not both"):
        sliced_wasserstein_loss(x, x, seed=0, generator=torch.Generator())
