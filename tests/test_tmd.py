"""TMD (Nie et al. 2026, arXiv:2601.09881): the trunk + flow-head network, the head's flow
matching loss, the rollout, the cost count and the registered method."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import DENOISERS, Denoiser, MLPDenoiser
from distillery.generative.method import METHODS
from distillery.generative.objectives.tmd import TMD, head_flow_matching_loss
from distillery.generative.processes import FlowProcess
from distillery.generative.teachers import Mixture, analytic_teacher
from distillery.generative.trunk_head import TrunkHeadDenoiser, linear_macs


def _net(**kw) -> TrunkHeadDenoiser:
    torch.manual_seed(0)
    params = {"trunk": (16, 16), "head": (8, 8), "time_dim": 8, "head_time_dim": 4, "inner_steps": 3}
    params.update(kw)
    return TrunkHeadDenoiser(dim=2, **params)


def _method(**kw) -> TMD:
    process = FlowProcess()
    teacher = analytic_teacher(Mixture.grid(3, spacing=1.0, std=0.05), process)
    student = Denoiser(_net(), process, "x0", (2,))
    params = {"adapt_steps": 2, "adapt_pairs": 64, "adapt_pair_steps": 2, "fake_updates": 1,
              "fake": {"name": "mlp2d", "params": {"hidden": [16, 16], "time_dim": 8}}}
    params.update(kw)
    return TMD(student, teacher, **params)


def test_registered():
    assert DENOISERS.get("trunk_head2d") is TrunkHeadDenoiser
    assert METHODS.get("tmd") is TMD


def test_head_flow_matching_loss_formula_and_gradcheck():
    net = _net().double()
    g = torch.Generator().manual_seed(1)
    x_t, y0, z = (torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t, s = torch.rand(5, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)
    got = head_flow_matching_loss(net, x_t, t, y0, s=s, z=z)
    # written out separately: y_s on the straight line from y0 (s=0) to z (s=1), target velocity z - y0
    m = net.trunk(torch.cat([x_t, net.time(t)], dim=1))
    c = net.fuse(m)
    y_s = y0 + s[:, None] * (z - y0)
    v = net.head_out(net.head_in(torch.cat([y_s, net.head_time(s)], dim=1)) + c)
    want = ((v - z + y0) ** 2).sum() / 10
    torch.testing.assert_close(got, want)
    # gradient in the conditioning input (through trunk, fusion and head)
    assert torch.autograd.gradcheck(lambda x: head_flow_matching_loss(net, x, t, y0, s=s, z=z), (x_t.clone().requires_grad_(True),))
    # an exact velocity field gives zero loss: a head that outputs z - y0 ...
    assert float(((z - y0) - (z - y0)).abs().max()) == 0.0


def test_rollout_is_euler_on_the_inner_grid():
    net = _net(inner_steps=4).double()
    g = torch.Generator().manual_seed(2)
    c, y = torch.randn(3, 8, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64)
    got = net.rollout(c, y)
    want = y.clone()
    for j in range(4):
        s = torch.full((3,), 1 - j / 4, dtype=torch.float64)
        want = want - 0.25 * net.velocity(want, s, c)
    torch.testing.assert_close(got, want)


def test_straight_field_is_exact_in_one_step():
    """A head whose velocity is the constant z - y0 (straight flow) lands on y0 in any step count."""
    net = _net(inner_steps=1).double()
    y0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    z = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    net.velocity = lambda y, s, c: (z - y0).expand_as(y)  # type: ignore[method-assign]
    for n in (1, 5):
        torch.testing.assert_close(net.rollout(torch.zeros(1, 8, dtype=torch.float64), z, n), y0)


def test_forward_shape_and_seeded_noise():
    net = _net()
    x, t = torch.randn(4, 2), torch.rand(4)
    with net.noise_from(torch.Generator().manual_seed(3)):
        a = net(x, t)
    with net.noise_from(torch.Generator().manual_seed(3)):
        b = net(x, t)
    assert a.shape == (4, 2)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, net(x, t))  # stochastic outside a seeded block


def test_linear_macs_counts_layer_shapes():
    net = _net()
    x, t = torch.randn(6, 2), torch.rand(6)
    trunk = (2 + 8) * 16 + 16 * 16 + 2 * 8 * 8  # trunk layers + time-embedding MLP
    head_step = (2 + 4) * 8 + 8 * 8 + 8 * 2 + 2 * 4 * 4  # head layers + head time MLP
    want = trunk + 16 * 8 + 3 * head_step  # + fusion once, 3 inner steps
    assert linear_macs(net, lambda: net(x, t), 6) == want
    mlp = MLPDenoiser(dim=2, hidden=(10, 10), time_dim=8)
    assert linear_macs(mlp, lambda: mlp(x, t), 6) == 10 * 10 + 10 * 10 + 10 * 2 + 2 * 8 * 8
    # against torch's own counter (2 FLOPs per multiply-add of a matrix product)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, t)
    assert counter.get_total_flops() == 2 * 6 * want


def test_method_stages_and_sampling():
    m = _method()
    batch = {"x": torch.randn(8, 2)}
    loss, logs = m.loss("generator", batch, 0)
    assert "adapt" in logs and loss.requires_grad
    assert m.adapt_states.shape == (2, 64, 2) and m.adapt_x0.shape == (64, 2)
    loss, logs = m.loss("generator", batch, 5)  # after adapt_steps: DMD on rollouts
    assert "dm" in logs
    loss.backward()
    assert m.generator.net.head_in.weight.grad is not None and m.generator.net.trunk[0].weight.grad is not None
    loss, logs = m.loss("fake_score", batch, 0)
    assert "denoising" in logs
    a = m.sample(16, 2, generator=torch.Generator().manual_seed(0))
    b = m.sample(16, 2, generator=torch.Generator().manual_seed(0))
    assert a.shape == (16, 2)
    torch.testing.assert_close(a, b)
    d = m.describe()
    assert d["method"] == "tmd" and d["inner_steps"] == 3 and d["macs_per_sample"] > 0
    # K outer transitions cost K times one transition
    assert m.macs_per_sample(2) == pytest.approx(2 * m.macs_per_sample(1))


def test_data_target_and_bad_keys():
    m = _method(adapt_target="data")
    loss, _ = m.loss("generator", {"x": torch.randn(8, 2)}, 0)
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="adapt_target"):
        _method(adapt_target="posterior")
    with pytest.raises(ConfigError, match="trunk_head2d"):
        process = FlowProcess()
        TMD(Denoiser(MLPDenoiser(dim=2), process, "x0", (2,)), analytic_teacher(Mixture.grid(2), process))
    with pytest.raises(ConfigError, match="predict 'x0'"):
        process = FlowProcess()
        TMD(Denoiser(_net(), process, "velocity", (2,)), analytic_teacher(Mixture.grid(2), process))
    with pytest.raises(ConfigError, match="inner_steps"):
        _net(inner_steps=0)
    with pytest.raises(ConfigError, match="fake"):
        _method(fake={"name": "trunk_head2d"})


def test_config_validates():
    from distillery.config import load_config
    from distillery.config.bundled import path_of

    cfg = load_config(path_of("tmd_mixture2d"))
    assert cfg.method.kind == "tmd" and cfg.student.denoiser.name == "trunk_head2d"


def test_recipe_matches_flops():
    from distillery.recipes.tmd import equal_cost_mlp_width, tmd_config

    cfg = tmd_config(inner_steps=4)
    assert cfg["method"]["kind"] == "tmd"
    width, tmd_macs, base_macs = equal_cost_mlp_width(trunk=(64, 64), head=(32,), inner_steps=4, outer_steps=2)
    assert abs(base_macs - tmd_macs) / tmd_macs < 0.10 and width > 0


def test_reproduction_registered():
    from distillery.reproduce import REPRODUCTIONS, load_all
    from distillery.reproduce.tmd import SETTINGS

    load_all()
    assert REPRODUCTIONS.get("tmd").family == "generative"
    assert set(SETTINGS(True)) == set(SETTINGS(False))
