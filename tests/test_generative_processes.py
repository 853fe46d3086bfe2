"""Noising processes: the (alpha, sigma) forms, their derivatives, and the parameterisation
conversions in every direction (checked against formulas written here)."""

from __future__ import annotations

import math

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.processes import (
    PARAMETERISATIONS,
    EDMProcess,
    FlowProcess,
    VPProcess,
    build_process,
)

PROCESSES = {
    "vp_linear": VPProcess("linear"),
    "vp_cosine": VPProcess("cosine"),
    "edm": EDMProcess(),
    "flow": FlowProcess(),
    "flow_shift3": FlowProcess(shift=3.0),
}


def _written_out(name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) written independently of the module."""
    if name == "vp_linear":
        lab = -(0.1 * t + 0.5 * 19.9 * t**2)
        return torch.exp(lab / 2), torch.sqrt(1 - torch.exp(lab))
    if name == "vp_cosine":
        f = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
        return f.sqrt(), (1 - f).sqrt()
    if name == "edm":
        sig = (0.002 ** (1 / 7) + t * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
        return torch.ones_like(t), sig
    k = 3.0 if name == "flow_shift3" else 1.0
    s = k * t / (1 + (k - 1) * t)
    return 1 - s, s


@pytest.mark.parametrize("name", PROCESSES)
def test_alpha_sigma_match_written_forms(name):
    t = torch.linspace(0.01, 0.95, 17, dtype=torch.float64)
    a, s = PROCESSES[name].alpha_sigma(t)
    ra, rs = _written_out(name, t)
    torch.testing.assert_close(a, ra, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s, rs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", PROCESSES)
def test_derivatives_match_finite_differences(name):
    p = PROCESSES[name]
    t = torch.linspace(0.05, 0.9, 11, dtype=torch.float64)
    h = 1e-6
    a1, s1 = p.alpha_sigma(t + h)
    a0, s0 = p.alpha_sigma(t - h)
    da, ds = p.d_alpha_sigma(t)
    torch.testing.assert_close(da, (a1 - a0) / (2 * h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ds, (s1 - s0) / (2 * h), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("source", PARAMETERISATIONS)
@pytest.mark.parametrize("target", PARAMETERISATIONS + ("score",))
def test_conversions_both_ways(name, source, target):
    p = PROCESSES[name]
    g = torch.Generator().manual_seed(0)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.8 + 0.1
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    a, s = (v[:, None] for v in p.alpha_sigma(t))
    da, ds = (v[:, None] for v in p.d_alpha_sigma(t))
    x_t = a * x0 + s * eps
    truth = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "velocity": da * x0 + ds * eps, "score": -eps / s}
    got = p.convert(truth[source], x_t, t, source, target)
    torch.testing.assert_close(got, truth[target], rtol=1e-9, atol=1e-9)
    if target != "score":  # and back
        torch.testing.assert_close(p.convert(got, x_t, t, target, source), truth[source], rtol=1e-9, atol=1e-9)


def test_flow_velocity_is_eps_minus_x0():
    p = FlowProcess()
    x0, eps, t = torch.randn(4, 2), torch.randn(4, 2), torch.rand(4)
    torch.testing.assert_close(p.convert(eps, p.add_noise(x0, eps, t), t, "eps", "velocity"), eps - x0, rtol=1e-5, atol=1e-5)


def test_vp_is_variance_preserving_and_prior_is_noise():
    for p in (VPProcess("linear"), VPProcess("cosine")):
        t = torch.linspace(0, 1, 50, dtype=torch.float64)
        a, s = p.alpha_sigma(t)
        torch.testing.assert_close(a**2 + s**2, torch.ones_like(t))
    e = EDMProcess()
    assert e.prior((10000, 1), generator=torch.Generator().manual_seed(0)).std().item() == pytest.approx(80.0, rel=0.05)


def test_edm_time_and_sigma_are_inverse():
    e = EDMProcess()
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    torch.testing.assert_close(e.t_of_sigma(e.sigma(t)), t)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ConfigError, match="positive integer"):
        FlowProcess().timesteps(0)
    with pytest.raises(ConfigError, match=r"inside \[0, 1\]"):
        FlowProcess().timesteps(4, start=1.5)
    with pytest.raises(ConfigError, match=r"inside \[0, 1\]"):
        FlowProcess().sample_t(3, low=-0.1)
    with pytest.raises(ConfigError, match="schedule"):
        VPProcess("quadratic")
    with pytest.raises(ConfigError, match="Unknown prediction"):
        FlowProcess().convert(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1) * 0.5, "noise", "x0")
    with pytest.raises(ConfigError, match="shift"):
        build_process({"kind": "flow", "shift": -1.0})
