"""#10 Self-E (Yu et al. 2025, arXiv:2512.22374): the self-evaluation direction and surrogate
(against formulas written here, float64), the model's loss replayed by hand with the same random
draws, the fixed point (fake = real gives flow matching alone), the players' separation, the
unconditional fake (classifier score), Euler sampling, registration and the shipped config."""

from __future__ import annotations

import copy

import pytest
import torch

from distillery.cli import main
from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser, MLPDenoiser
from distillery.generative.method import METHODS
from distillery.generative.processes import build_process
from distillery.recipes.self_e import SelfE, flow_matching_config, self_e_config, self_evaluation_direction, self_evaluation_loss


def _net(num_classes: int | None = None, seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    net = MLPDenoiser(dim=2, hidden=[16, 16], time_dim=8, num_classes=num_classes).double()
    return Denoiser(net, build_process({"kind": "flow"}), "velocity", (2,), num_classes)


def test_direction_is_the_normalised_score_difference():
    g = torch.Generator().manual_seed(1)
    x, real, fake = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    want = torch.stack([(fake[b] - real[b]) / (x[b] - real[b]).abs().mean() for b in range(5)])
    assert torch.allclose(self_evaluation_direction(x, real, fake), want)
    assert torch.allclose(self_evaluation_direction(x, real, fake, normalize=False), fake - real)
    assert torch.equal(self_evaluation_direction(x, real, real), torch.zeros_like(x))  # fake = real: no signal


def test_surrogate_gradient_is_the_direction_over_numel():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    real, fake = torch.randn(4, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    loss = self_evaluation_loss(x, real, fake)
    (grad,) = torch.autograd.grad(loss, x)
    w = (x.detach() - real).abs().mean(1, keepdim=True)
    assert torch.allclose(grad, (fake - real) / w / x.numel())
    assert torch.allclose(loss, 0.5 * (((fake - real) / w) ** 2).mean())


def test_model_loss_replayed_by_hand():
    """The model's loss equals FM + lambda * surrogate computed here from the same draws: FM with
    ``t ~ U(0, 1)``, jumps from ``(1-t) x0 + t eps`` (or pure noise), landing ``x0_hat = x_t - t v``,
    re-noised to ``r``, the self-teacher ``x_r - r v(x_r, r)`` and the fake head's likewise."""
    model = _net()
    method = SelfE(model, self_eval_weight=0.7, prior_fraction=0.5, t_range=(0.1, 0.9)).double()
    torch.nn.init.normal_(method.fake.net.body[-1].weight, std=0.5)  # a fake head unlike the model
    x0 = torch.randn(6, 2, dtype=torch.float64)
    torch.manual_seed(5)
    loss, logs = method.loss("model", {"x": x0}, step=0)
    torch.manual_seed(5)
    n = 6
    eps, t = torch.randn_like(x0), torch.rand(n, dtype=torch.float64)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    fm = ((model(x_t, t) - (eps - x0)) ** 2).mean()
    tj = torch.rand(n, dtype=torch.float64)
    tj = torch.where(torch.rand(n) < 0.5, torch.ones_like(tj), tj)
    xj = (1 - tj[:, None]) * x0 + tj[:, None] * torch.randn_like(x0)
    x_hat = xj - tj[:, None] * model(xj, tj)
    r = 0.1 + 0.8 * torch.rand(n, dtype=torch.float64)
    x_r = (1 - r[:, None]) * x_hat.detach() + r[:, None] * torch.randn_like(x0)
    with torch.no_grad():
        real = x_r - r[:, None] * model(x_r, r)
        fake = x_r - r[:, None] * method.fake(x_r, r)
    w = (x_hat.detach() - real).abs().mean(1, keepdim=True)
    g = (fake - real) / w
    surrogate = 0.5 * ((x_hat - x_hat.detach() + g) ** 2).mean()
    want = fm + 0.7 * surrogate
    assert torch.allclose(loss, want)
    assert logs["flow_matching"] == pytest.approx(float(fm.detach()))
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(want, params), strict=True):
        assert torch.allclose(a, b)


def test_fake_equal_to_the_model_leaves_flow_matching_alone():
    """A fake head identical to the model scores its samples like the self-teacher: the
    self-evaluation gradient is exactly zero, the update is flow matching's."""
    model = _net()
    method = SelfE(model, self_eval_weight=3.0).double()
    plain = SelfE(copy.deepcopy(model), self_eval_weight=0.0).double()
    x0 = torch.randn(8, 2, dtype=torch.float64)
    torch.manual_seed(0)
    loss, _ = method.loss("model", {"x": x0}, 0)
    torch.manual_seed(0)
    ref, _ = plain.loss("model", {"x": x0}, 0)
    for a, b in zip(torch.autograd.grad(loss, list(method.model.parameters())),
                    torch.autograd.grad(ref, list(plain.model.parameters())), strict=True):
        assert torch.allclose(a, b)
    assert plain.players == ("model",) and plain.fake is None


def test_players_train_only_their_own_parameters_and_start_is_respected():
    method = SelfE(_net(), self_eval_weight=1.0, self_eval_start=10).double()
    assert method.players == ("fake_score", "model")
    x0 = torch.randn(8, 2, dtype=torch.float64)
    loss, logs = method.loss("model", {"x": x0}, 3)
    assert "self_eval" not in logs                                            # before self_eval_start
    loss, logs = method.loss("model", {"x": x0}, 10)
    loss.backward()
    assert "self_eval" in logs and all(p.grad is None for p in method.fake.parameters())
    method.zero_grad(set_to_none=True)
    fl, _ = method.loss("fake_score", {"x": x0}, 10)
    fl.backward()
    assert all(p.grad is None for p in method.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.fake.parameters())


def test_unconditional_fake_is_the_models_classifier_score():
    model = _net(num_classes=3)
    method = SelfE(model, fake="uncond", label_dropout=0.2).double()
    assert method.players == ("model",)
    x_r, r, y = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    real, fake = method.scores(x_r, r, y)
    assert torch.allclose(real, model.predict(x_r, r, y, "x0"))
    assert torch.allclose(fake, model.predict(x_r, r, torch.full((5,), 3), "x0"))
    with pytest.raises(ConfigError, match="label_dropout > 0"):
        SelfE(_net(num_classes=3), fake="uncond")
    with pytest.raises(ConfigError, match="class-conditional"):
        SelfE(_net(), fake="uncond", label_dropout=0.1)


def test_bad_params_are_named():
    for kw, match in (({"self_eval_weight": -1.0}, "self_eval_weight"), ({"fake": "ema"}, "fake must be"),
                      ({"prior_fraction": 1.5}, "prior_fraction"), ({"fake_updates": 0}, "fake_updates"),
                      ({"t_range": (0.5, 0.2)}, "t_range")):
        with pytest.raises(ConfigError, match=match):
            SelfE(_net(), **kw)
    with pytest.raises(ConfigError, match="no teacher"):
        SelfE(_net(), _net())


def test_one_euler_step_is_the_x0_prediction_from_noise():
    model = _net()
    method = SelfE(model, self_eval_weight=0.0).double()
    x = method.sample(7, 1, generator=torch.Generator().manual_seed(3))
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        want = z - model(z, torch.ones(7, dtype=torch.float64))
    assert torch.allclose(x.double(), want, atol=1e-6)
    assert method.sample(4, 8).shape == (4, 2)
    with pytest.raises(ConfigError, match="steps"):
        method.sample(4, 0)


def test_registered_fragments_and_shipped_config_validate(capsys):
    assert METHODS.get("self_e") is SelfE
    assert self_e_config(fake_updates=2)["method"] == {"kind": "self_e", "params": {
        "self_eval_weight": 1.0, "self_eval_start": 0, "fake": "head", "fake_updates": 2, "prior_fraction": 0.5}}
    assert flow_matching_config()["method"]["params"]["self_eval_weight"] == 0.0
    assert main(["validate", "self_e_mixture2d"]) == 0
    out = capsys.readouterr().out
    assert "player fake_score" in out and "player model" in out
