"""RT-DETRv4 GAM (#23): the update rule, the measured gradient share, the config path."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from distillery import Distiller, FrozenTeacher, GradientGuidedModulation, Term
from distillery.config import parse_config
from distillery.engine.build import build_distiller, build_terms
from distillery.errors import ConfigError
from distillery.objectives import CrossEntropy, FeatureCosine
from distillery.recipes.gam import calibrate_rho, injection_terms
from distillery.weighting.gam import gam_update, gradient_share


@pytest.mark.parametrize(
    "weight, share, expected",
    [
        (1.0, 0.05, 0.12 * 0.95 / (0.05 * 0.88)),   # below the band: odds ratio toward its far edge 0.12
        (1.0, 0.50, 0.10 * 0.50 / (0.50 * 0.90)),   # above: toward 0.10
        (1.0, 0.90, 0.1),                           # ratio 0.0152 floored at 0.1
        (1.0, 1e-4, 10.0),                          # ratio 1110 clamped at x10
        (2.0, 0.11, 2.0),                           # inside [0.10, 0.12]: kept
        (2.0, 0.10, 2.0),                           # on the edge: kept
        (1e-7, 0.05, 1e-7),                         # a zero weight stays (released code)
    ],
)
def test_gam_update_matches_the_released_rule_by_hand(weight, share, expected):
    assert gam_update(weight, share, rho=0.11, delta=0.01) == pytest.approx(expected, rel=1e-12)


def test_a_zero_share_resets_to_the_default_or_keeps():
    assert gam_update(3.0, 0.0, 0.11, 0.01, default=20.0) == 20.0
    assert gam_update(3.0, 0.0, 0.11, 0.01) == 3.0


def test_gradient_share_is_the_l1_mass_ratio():
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([[3.0], [-4.0]])
    assert gradient_share([a], [a, b, None]) == pytest.approx(3.0 / 10.0)
    assert gradient_share([a], [None]) == 0.0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.deep = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.deep(torch.tanh(self.body(x)))))


def _setup(every=2):
    torch.manual_seed(0)
    student, teacher = Tiny(), Tiny()
    gam = GradientGuidedModulation("ce", "inject", "deep", rho=0.5, delta=0.01, initial=1.0, every=every)
    d = Distiller(student, FrozenTeacher(teacher), [
        Term("ce", CrossEntropy()),
        Term("inject", FeatureCosine(dim=1), adapter="linear", inputs={"student": "student.deep", "teacher": "teacher.deep"}),
    ], balancer=gam)
    batches = [{"x": torch.randn(8, 4), "y": torch.randint(0, 3, (8,))} for _ in range(3)]
    d.prepare(batches[0])
    return d, gam, batches


def test_hooks_measure_the_share_of_the_applied_gradient():
    d, gam, batches = _setup(every=2)
    shares = []
    for step in range(2):
        losses = d.step(batches[step])
        losses["loss"].backward()
        params = d.trainable_parameters()
        inside = [p.grad for p in d.student.deep.parameters()]
        shares.append(gradient_share(inside, [p.grad for p in params]))  # from .grad, written out
        d.zero_grad(set_to_none=True)
        d.update()
    weights = d.step(batches[2])  # step 2: closes step 1 and modulates once (every=2)
    assert gam.history[0][0] == 2
    assert gam.history[0][1] == pytest.approx(sum(shares) / 2, rel=1e-6)
    expected = gam_update(1.0, sum(shares) / 2, 0.5, 0.01)
    assert gam.weight == pytest.approx(expected, rel=1e-6)
    assert d.last_weights["inject"] == pytest.approx(expected, rel=1e-6)
    assert "inject" in weights


def test_state_dict_round_trip_and_validation():
    d, gam, batches = _setup()
    d.step(batches[0])["loss"].backward()
    d.update()
    state = gam.state_dict()
    other = GradientGuidedModulation("ce", "inject", "deep", rho=0.5, delta=0.01)
    other.load_state_dict(state)
    assert other.state_dict() == state
    with pytest.raises(ConfigError, match="must differ"):
        GradientGuidedModulation("ce", "ce", "deep")
    with pytest.raises(ConfigError, match="rho"):
        GradientGuidedModulation("ce", "kd", "deep", rho=0.05, delta=0.1)


def test_config_builds_gam_and_refuses_two_balancers():
    raw = {
        "data": {"dataset": "digits"},
        "student": {"name": "cnn2d", "params": {"channels": [4, 8]}},
        "teacher": {"kind": "frozen", "model": {"name": "cnn2d", "checkpoint": "x.safetensors"}},
        "objectives": [{"kind": "ce"}, {"kind": "cosine", "name": "inject", "adapter": "conv1x1",
                                         "inputs": {"student": "student.blocks.1", "teacher": "teacher.blocks.1"}}],
        "weighting": {"gam": {"task": "ce", "term": "inject", "params": "blocks.1", "rho": 0.3, "delta": 0.02, "every": 5}},
    }
    cfg = parse_config(raw)
    student, teacher = Tiny(), Tiny()
    terms = [Term("ce", CrossEntropy()), Term("inject", FeatureCosine(dim=1), inputs={"student": "student.deep", "teacher": "teacher.deep"})]
    cfg.weighting.gam.params = "deep"
    d = build_distiller(cfg, student, FrozenTeacher(teacher), terms)
    assert isinstance(d.balancer, GradientGuidedModulation)
    assert (d.balancer.rho, d.balancer.delta, d.balancer.every) == (0.3, 0.02, 5)
    assert len(build_terms(cfg.objectives)) == 2
    raw["weighting"]["gradnorm"] = {"task": "ce", "ratios": {"inject": 0.5}}
    with pytest.raises(ConfigError, match="choose one of weighting.gradnorm and weighting.gam"):
        parse_config(raw)


def test_calibrate_rho_is_the_midpoint_of_the_single_term_shares():
    torch.manual_seed(1)
    student, teacher = Tiny(), Tiny()
    d = Distiller(student, FrozenTeacher(teacher), injection_terms("deep", "deep", adapter="linear"))
    batch = {"x": torch.randn(8, 4), "y": torch.randint(0, 3, (8,))}
    d.prepare(batch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = calibrate_rho(d, batch, params="deep")
    assert (len(caught) == 1) == (got["p1"] <= got["p0"])  # warns exactly when GAM cannot steer
    values = d._forward_terms(batch)
    d._pending.clear()
    params = d.trainable_parameters()
    for name, key in (("ce", "p0"), ("inject", "p1")):
        d.zero_grad(set_to_none=True)
        values[name].backward(retain_graph=True)
        by_hand = sum(float(p.grad.abs().sum()) for p in student.deep.parameters() if p.grad is not None) / sum(
            float(p.grad.abs().sum()) for p in params if p.grad is not None)
        assert got[key] == pytest.approx(by_hand, rel=1e-5)
    assert got["rho"] == pytest.approx((got["p0"] + got["p1"]) / 2)


def test_term_values_is_a_forward_without_side_effects():
    """``Distiller.term_values`` (what calibrate_rho reads) gives each term's value with its graph
    and leaves the step counter and the queued state updates as they were."""
    torch.manual_seed(2)
    student, teacher = Tiny(), Tiny()
    d = Distiller(student, FrozenTeacher(teacher), injection_terms("deep", "deep", adapter="linear"))
    batch = {"x": torch.randn(8, 4), "y": torch.randint(0, 3, (8,))}
    d.prepare(batch)
    values = d.term_values(batch)
    assert set(values) == {"ce", "inject"} and all(v.requires_grad for v in values.values())
    assert int(d.global_step) == 0 and d._pending == []
    losses = d.step(batch)
    torch.testing.assert_close(losses["ce"], values["ce"].detach())
    torch.testing.assert_close(losses["inject"], values["inject"].detach())
    assert len(d._pending) == 1  # the training step queues its updates; term_values did not


def test_gam_config_is_what_the_reproduction_trains():
    from distillery.recipes.gam import gam_config

    cfg = gam_config("blocks.1", "blocks.1", rho=0.3, delta=0.03, every=22)
    raw = {"data": {"dataset": "digits"}, "student": {"name": "cnn2d"},
           "teacher": {"kind": "frozen", "model": {"name": "cnn2d", "checkpoint": "x.safetensors"}}, **cfg}
    parsed = parse_config(raw)
    assert [(t.name or t.kind, t.weight, t.adapter) for t in parsed.objectives] == [("ce", 1.0, None), ("inject", 1.0, "conv1x1")]
    g = parsed.weighting.gam
    assert (g.task, g.term, g.params, g.rho, g.delta, g.initial, g.every) == ("ce", "inject", "blocks.1", 0.3, 0.03, 1.0, 22)
