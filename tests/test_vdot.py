"""VDOT (distillery.generative.objectives.vdot, recipes.vdot, reproduce.vdot): the OT direction
against a Sinkhorn plan written here, finite differences of the entropic OT value, closed forms
(a shifted set, permutation invariance), the generator's combined gradient, the reduction to
DMD, config validation and the registrations."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser, MLPDenoiser
from distillery.generative.method import METHODS
from distillery.generative.objectives.dmd import DMD
from distillery.generative.objectives.vdot import VDOT, ot_generator_grad
from distillery.generative.processes import FlowProcess
from distillery.generative.teachers import Mixture, analytic_teacher

# -- a Sinkhorn written for the tests ----------------------------------------------------------


def sinkhorn_plan(x: torch.Tensor, y: torch.Tensor, eps: float, iters: int = 800) -> torch.Tensor:
    """The entropic OT plan between uniform point sets (log-domain, float64)."""
    x, y = x.double(), y.double()
    c = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    n, m = c.shape
    f, g = torch.zeros(n, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    for _ in range(iters):
        f = -eps * torch.logsumexp((g[None, :] - c) / eps, dim=1) - eps * math.log(n)
        g = -eps * torch.logsumexp((f[:, None] - c) / eps, dim=0) - eps * math.log(m)
    return torch.exp((f[:, None] + g[None, :] - c) / eps)


def points(n: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 2, generator=g, dtype=torch.float64) * scale + shift)


# -- the OT direction ----------------------------------------------------------------------------


def test_ot_grad_equals_plan_barycentric_formula():
    x, y = points(12, 0), points(9, 1, shift=0.7, scale=0.5)
    eps = 0.3
    u, value = ot_generator_grad(y, x, reg=eps, relative=False, normalize=False, max_iter=5000, tol=1e-13)
    p = sinkhorn_plan(x, y, eps)
    expect = 2 * (p.sum(1, keepdim=True) * x - p @ y)  # sum_j P_ij 2 (x_i - y_j)
    torch.testing.assert_close(u, expect, atol=1e-8, rtol=1e-6)
    c = ((x[:, None] - y[None]) ** 2).sum(-1)
    assert float(value) >= float((p * c).sum()) - 1e-9  # <P, C> + eps KL(P | ab) >= <P, C>


def test_ot_grad_matches_finite_differences_of_the_value():
    from distillery.generative.objectives.ot import sinkhorn_loss

    x, y = points(6, 2), points(7, 3, shift=-0.4)
    for debiased in (False, True):
        u, _ = ot_generator_grad(y, x, reg=0.5, relative=False, debiased=debiased, normalize=False,
                                 max_iter=5000, tol=1e-14)

        def value(z: torch.Tensor, debiased: bool = debiased) -> float:
            return float(sinkhorn_loss(z, y, reg=0.5, relative=False, debiased=debiased, max_iter=5000, tol=1e-14))

        h = 1e-5
        fd = torch.zeros_like(x)
        for i in range(x.shape[0]):
            for d in range(2):
                e = torch.zeros_like(x)
                e[i, d] = h
                fd[i, d] = (value(x + e) - value(x - e)) / (2 * h)
        torch.testing.assert_close(u, fd, atol=1e-6, rtol=1e-5)


def test_shifted_set_gives_the_shift_direction_and_unit_norm():
    # well-separated points, a small common shift: the plan is the identity, u_b = -2 d / B,
    # and the unit direction of every sample is -d / |d|
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0], [-3.0, 1.5]], dtype=torch.float64)
    d = torch.tensor([0.3, -0.4], dtype=torch.float64)
    raw, _ = ot_generator_grad(x + d, x, reg=1e-3, relative=False, normalize=False, max_iter=5000, tol=1e-12)
    torch.testing.assert_close(raw, (-2 * d / 5).expand_as(x), atol=1e-6, rtol=1e-6)
    unit, _ = ot_generator_grad(x + d, x, reg=1e-3, relative=False, max_iter=5000, tol=1e-12)
    torch.testing.assert_close(unit, (-d / d.norm()).expand_as(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(5, dtype=torch.float64))


def test_ot_pairs_through_the_plan_not_by_index():
    # DMD's direction pairs sample b with target b; OT's is the same for any order of the target set
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]], dtype=torch.float64)
    y = x + torch.tensor([0.2, 0.1], dtype=torch.float64)
    perm = torch.tensor([2, 0, 3, 1])
    a, _ = ot_generator_grad(y, x, reg=1e-3, relative=False, max_iter=5000, tol=1e-12)
    b, _ = ot_generator_grad(y[perm], x, reg=1e-3, relative=False, max_iter=5000, tol=1e-12)
    torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)
    assert not torch.allclose(x - y, x - y[perm])


def test_hard_inputs_far_apart_and_coincident_sets():
    x = points(16, 4)
    far, value = ot_generator_grad(x + 1e3, x)  # sets that do not overlap at all: finite, toward the target
    assert torch.isfinite(far).all() and math.isfinite(float(value))
    torch.testing.assert_close(far, torch.full_like(x, -1 / math.sqrt(2)), atol=1e-2, rtol=0)  # up to spread / 1e3
    _, same = ot_generator_grad(x, x, debiased=True, max_iter=2000, tol=1e-12)
    assert abs(float(same)) < 1e-6
    # stop-grad: inputs that require grad come back detached and untouched
    xr, yr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    u, v = ot_generator_grad(yr, xr)
    assert not u.requires_grad and not v.requires_grad and xr.grad is None


# -- the method ---------------------------------------------------------------------------------


def _method(**kw) -> VDOT:
    torch.manual_seed(0)
    process = FlowProcess()
    teacher = analytic_teacher(Mixture.ring(4, radius=1.0, std=0.1), process)
    student = Denoiser(MLPDenoiser(hidden=(16,)), process, "x0", (2,))
    return VDOT(student, teacher, fake_init="student", **kw)


def test_registered_and_a_dmd():
    assert METHODS.get("vdot") is VDOT and issubclass(VDOT, DMD)
    assert _method().describe()["method"] == "vdot"


def test_generator_gradient_is_weighted_sum_of_kl_and_ot_directions(monkeypatch):
    m = _method(kl_weight=0.3, ot_weight=0.7, ot_step=0.2)
    x = torch.randn(8, 2, requires_grad=True)
    g_kl, u = torch.randn(8, 2), torch.randn(8, 2)
    monkeypatch.setattr(m, "generate", lambda n, cond, device, real=None: (x, torch.zeros(n)))
    monkeypatch.setattr(m, "kl_grad", lambda x_gen, cond, step: g_kl)
    monkeypatch.setattr(m, "ot_grad", lambda x_gen, cond, real, step: (u, torch.tensor(1.0)))
    loss, logs = m.loss("generator", {"x": torch.zeros(8, 2)}, 0)
    loss.backward()
    torch.testing.assert_close(x.grad, (0.3 * g_kl + 0.7 * 0.2 * u) / x.numel())
    assert set(logs) >= {"dm", "ot", "ot_cost"}


def test_kl_only_vdot_is_dmd():
    kw = {"generator_steps": 2, "fake_updates": 1}
    v = _method(kl_weight=1.0, ot_weight=0.0, **kw)
    torch.manual_seed(0)
    d = DMD(v.generator, v.teacher, fake_init=v.fake, **kw)
    batch = {"x": torch.randn(32, 2)}
    grads = []
    for method in (v, d):
        method.zero_grad()
        torch.manual_seed(5)
        loss, _ = method.loss("generator", batch, 0)
        loss.backward()
        grads.append([p.grad.clone() for p in method.generator.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_ot_pairs_scores_and_samples():
    m = _method(ot_pair="samples")
    x_gen, real = torch.randn(10, 2), torch.randn(10, 2) + 1
    u, _ = m.ot_grad(x_gen, None, real, 0)
    expect, _ = ot_generator_grad(real, x_gen)
    torch.testing.assert_close(u, expect)
    with pytest.raises(ConfigError, match="batch\\['x'\\]"):
        m.ot_grad(x_gen, None, None, 0)
    s = _method()  # scores: fake vs real x0 predictions of noised samples, unit rows
    u, cost = s.ot_grad(x_gen, None, None, 0)
    assert u.shape == x_gen.shape and torch.isfinite(cost)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(10))


@pytest.mark.parametrize("kw, key", [({"ot_pair": "data"}, "ot_pair"), ({"kl_weight": 0, "ot_weight": 0}, "both 0"),
                                     ({"ot_reg": 0.0}, "ot_reg"), ({"ot_iters": 0}, "ot_iters"),
                                     ({"ot_weight": -1.0}, "ot_weight")])
def test_bad_params_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        _method(**kw)


def test_one_training_step_of_both_players():
    m = _method(gan_weight=0.01)
    batch = {"x": torch.randn(16, 2)}
    for player in m.players:
        m.zero_grad()
        loss, logs = m.loss(player, batch, 0)
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None for p in m.parameters_of(player))
    assert "gan" in logs


# -- config, recipe, reproduction -------------------------------------------------------------


def test_bundled_config_and_fragments_validate():
    import yaml

    from distillery.config.bundled import CONFIG_DIR
    from distillery.generative.build import build_method
    from distillery.generative.config import parse_generative_config
    from distillery.recipes.vdot import kl_dmd_config, mixture2d_sections, vdot_config
    from distillery.reproduce._common import compose

    cfg = parse_generative_config(yaml.safe_load((CONFIG_DIR / "vdot_mixture2d.yaml").read_text()))
    assert cfg.method.kind == "vdot" and cfg.method.params["ot_pair"] == "scores"
    train = {"train": {"steps": 1}}
    for method in (vdot_config(generator_steps=4, fake_init="student"), kl_dmd_config(fake_init="student")):
        raw = compose(mixture2d_sections(layout="ring", modes=8, std=0.1), method, train)
        parse_generative_config(raw)
    bad = compose(mixture2d_sections(), vdot_config(ot_pair="nope", fake_init="student"), train)
    process = FlowProcess()
    teacher = analytic_teacher(Mixture.ring(4, radius=1.0, std=0.1), process)
    student = Denoiser(MLPDenoiser(hidden=(8,)), process, "x0", (2,))
    with pytest.raises(ConfigError, match="method.params: vdot: ot_pair"):
        build_method(parse_generative_config(bad), student, teacher)


def test_recipe_and_reproduction_registered():
    from distillery.generative.config import parse_generative_config
    from distillery.recipes import vdot as recipe
    from distillery.registry import RECIPES
    from distillery.reproduce import REPRODUCTIONS
    from distillery.reproduce import vdot as rep

    assert "vdot" in RECIPES and recipe.VDOT is VDOT
    r = REPRODUCTIONS.get("vdot")
    assert r.family == "generative" and r.default_seeds >= 3
    quick = rep.arms(rep.SETTINGS(True), True)
    assert set(quick) == {"dmd_k1", "vdot_k1", "dmd_k4", "vdot_k4"}
    for name, raw in quick.items():
        cfg = parse_generative_config({"seed": 0, **raw})
        assert cfg.method.params["generator_steps"] == int(name[-1])
    assert "vdot_gan_k4" in rep.arms(rep.SETTINGS(False), False)
