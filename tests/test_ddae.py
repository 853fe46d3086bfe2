"""#1 DDAE++ (Xiang et al. 2025, arXiv:2505.10999): the self-conditioned U-Net against its
equations written here, its extra multiply-accumulates in closed form, the views, the
contrastive self-distillation loss against InfoNCE written here (and gradcheck), the EMA
teacher's update, bad params, the probe and the shipped config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillery.errors import ConfigError
from distillery.generative.denoisers import DENOISERS, Denoiser
from distillery.generative.method import METHODS, BatchDraws
from distillery.generative.networks import UNet
from distillery.generative.objectives.denoising import Denoising
from distillery.generative.processes import build_process
from distillery.generative.self_conditioning import (
    SelfConditionedUNet,
    forward_macs,
    pooled_features,
)
from distillery.recipes.ddae import (
    DDAE,
    ddae_config,
    linear_probe,
    probe_features,
    random_shift,
    sc_unet,
    self_conditioning_overhead,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FLOW = {"kind": "flow"}


def _sc_net(seed: int = 0, sc: bool = True, **kw) -> SelfConditionedUNet:
    torch.manual_seed(seed)
    net = SelfConditionedUNet(1, 8, (4, 8), self_condition=sc, **kw)
    with torch.no_grad():  # non-zero output and self-conditioning layers, so every path matters
        net.out.weight.normal_(0, 0.2)
        if net.sc is not None:
            net.sc[2].weight.normal_(0, 0.5)
            net.sc[2].bias.normal_(0, 0.5)
    return net


def _denoiser(net: nn.Module) -> Denoiser:
    return Denoiser(net, build_process(FLOW), "velocity", (1, 8, 8))


def test_registrations():
    assert DENOISERS.get("sc_unet") is SelfConditionedUNet
    assert METHODS.get("ddae") is DDAE


def test_without_the_path_it_is_the_engine_unet_with_the_same_initial_weights():
    torch.manual_seed(3)
    plain = UNet(1, 8, (4, 8))
    torch.manual_seed(3)
    off = SelfConditionedUNet(1, 8, (4, 8), self_condition=False)
    torch.manual_seed(3)
    on = SelfConditionedUNet(1, 8, (4, 8), self_condition=True)
    ref = plain.state_dict()
    for net in (off, on):  # the path is created last: everything else starts identical
        sd = net.state_dict()
        assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert off.sc is None and set(on.state_dict()) - set(ref) == {f"sc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    with torch.no_grad():
        plain.out.weight.normal_(0, 0.2)
    off.load_state_dict(plain.state_dict())
    on.load_state_dict(plain.state_dict(), strict=False)  # the path's last layer is still zero
    x, t = torch.randn(5, 1, 8, 8), torch.rand(5)
    assert torch.allclose(off(x, t), plain(x, t), atol=0, rtol=0)
    assert torch.allclose(on(x, t), plain(x, t), atol=1e-6)


def test_the_decoder_reads_emb_plus_mlp_of_the_pooled_bottleneck():
    net = _sc_net(1)
    x, t = torch.randn(6, 1, 8, 8), torch.rand(6)
    seen: dict[str, torch.Tensor] = {}
    net.mid[-1].register_forward_hook(lambda m, a, out: seen.__setitem__("mid", out))
    net.up0[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("dec_emb", a[1]))
    net.down0[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("enc_emb", a[1]))
    out, z = net.forward_features(x, t)
    # the equations of the module docstring, written out here
    z_hand = seen["mid"].mean(dim=(2, 3))
    w1, b1, w2, b2 = net.sc[0].weight, net.sc[0].bias, net.sc[2].weight, net.sc[2].bias
    s = F.silu(z_hand @ w1.T + b1) @ w2.T + b2
    assert torch.allclose(z, z_hand)
    assert torch.allclose(seen["dec_emb"], seen["enc_emb"] + s, atol=1e-6)
    assert torch.allclose(out, net(x, t))
    assert torch.allclose(net.features(x, t), z, atol=1e-6)
    assert out.shape == x.shape and z.shape == (6, 8)


def test_sc_detach_stops_the_decoders_gradient_into_the_encoder_through_the_path():
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4)
    grads = {}
    for detach in (False, True):
        net = _sc_net(2, sc_detach=detach)
        with torch.no_grad():  # cut the direct path to the decoder: only the self-conditioning path is left
            net.upsample.weight.zero_()
            net.upsample.bias.zero_()
        net(x, t).sum().backward()
        grads[detach] = net.mid[0].conv2.weight.grad.abs().sum()
    assert grads[False] > 0 and grads[True] == 0


def test_forward_macs_closed_forms():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.lin = nn.Linear(5, 7)

        def forward(self, x, t, cond=None):
            self.lin(torch.zeros(x.shape[0], 5))
            return self.conv(x)

    # conv: H * W * Cout * Cin * k * k; linear: in * out
    assert forward_macs(Toy(), (2, 4, 4), batch=3) == 4 * 4 * 3 * 2 * 9 + 5 * 7
    for channels, hidden in (((4, 8), None), ((16, 32), 20)):
        plain = SelfConditionedUNet(1, 8, channels, self_condition=False)
        sc = SelfConditionedUNet(1, 8, channels, sc_hidden=hidden)
        e = sc.time.dim
        h = hidden or e
        assert forward_macs(sc, (1, 8, 8)) - forward_macs(plain, (1, 8, 8)) == channels[1] * h + h * e
    over = self_conditioning_overhead((16, 32))
    assert over["macs_self_conditioned"] - over["macs_plain"] == 32 * 32 + 32 * 32
    assert 0 < over["extra_fraction"] < 0.01


def test_random_shift_against_a_loop():
    x = torch.randn(5, 2, 6, 7)
    dy, dx = torch.tensor([-2, -1, 0, 1, 2]), torch.tensor([2, 0, -1, 1, -2])
    out = random_shift(x, dy, dx, 2)
    want = torch.empty_like(x)
    for b in range(5):
        for i in range(6):
            for j in range(7):
                want[b, :, i, j] = x[b, :, min(max(i - int(dy[b]), 0), 5), min(max(j - int(dx[b]), 0), 6)]
    assert torch.equal(out, want)
    assert random_shift(x, dy, dx, 0) is x


def _method(sd_weight: float = 0.5, **kw) -> DDAE:
    return DDAE(_denoiser(_sc_net(4)), sd_weight=sd_weight, sd_dim=6, sd_hidden=10, **kw)


def _infonce(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    """-1/B sum_i log(exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau)), q and k L2-normalised."""
    q = q / q.norm(dim=1, keepdim=True)
    k = k / k.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(q.shape[0]):
        logits = [float(q[i] @ k[j]) / tau for j in range(k.shape[0])]
        m = max(logits)
        log_z = m + torch.tensor([v - m for v in logits], dtype=torch.float64).exp().sum().log()
        total += float(log_z) - logits[i]
    return torch.tensor(total / q.shape[0])


def test_the_self_distillation_loss_is_infonce_of_student_view_a_against_ema_view_b():
    m = _method(sd_temperature=0.3, sd_t_max=0.4, sd_shift=1)
    with torch.no_grad():  # a teacher different from the student
        for p in list(m.ema.parameters()) + list(m.ema_projector.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    x0 = torch.rand(7, 1, 8, 8) * 2 - 1
    loss = m.self_distillation_loss(x0, BatchDraws(11))
    # the same views, drawn again in the documented order: shifts (dy, dx), times, noise; view a then b
    g = BatchDraws(11)
    views = []
    for _ in range(2):
        dy, dx = g.randint(-1, 2, 7), g.randint(-1, 2, 7)
        t = g.times(m.process, 7, high=0.4)
        eps = g.randn_like(x0)
        assert (t <= 0.4).all() and dy.abs().max() <= 1
        xs = random_shift(x0, dy, dx, 1)
        views.append(((1 - t)[:, None, None, None] * xs + t[:, None, None, None] * eps, t))  # flow: x_t = (1-t) x0 + t eps
    with torch.no_grad():
        q = m.projector(m.model.net.features(*views[0]))
        k = m.ema_projector(m.ema.net.features(*views[1]))
    assert torch.allclose(loss.detach(), _infonce(q, k, 0.3).float(), atol=1e-5)


def test_infonce_gradcheck_through_the_projector_in_float64():
    m = _method().double()
    k = torch.randn(5, 6, dtype=torch.float64)
    z = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    from distillery.objectives.contrastive import infonce_loss

    assert torch.autograd.gradcheck(lambda z: infonce_loss(m.projector(z), k, temperature=0.2), (z,))


def test_loss_terms_gradients_and_the_ema_teacher():
    m = _method(ema_decay=0.9)
    batch = {"x": torch.rand(8, 1, 8, 8) * 2 - 1}
    loss, figs = m.loss("model", batch, step=3)
    assert set(figs) == {"loss", "denoise", "sd"}
    assert abs(figs["loss"] - (figs["denoise"] + 0.5 * figs["sd"])) < 1e-5
    ids = {id(p) for p in m.parameters_of("model")}
    assert all(id(p) in ids for p in m.projector.parameters()) and all(id(p) in ids for p in m.model.parameters())
    assert not any(id(p) in ids for p in list(m.ema.parameters()) + list(m.ema_projector.parameters()))
    loss.backward()
    assert all(p.grad is not None for p in m.projector.parameters())
    assert all(p.grad is None for p in m.ema_projector.parameters())
    old = [p.detach().clone() for p in m.ema_projector.parameters()]
    with torch.no_grad():
        for p in m.projector.parameters():
            p.add_(1.0)
    m.after_step(3)
    for o, e, s in zip(old, m.ema_projector.parameters(), m.projector.parameters(), strict=True):
        assert torch.allclose(e, 0.9 * o + 0.1 * s)  # theta_ema <- m theta_ema + (1 - m) theta


def test_sd_weight_zero_is_plain_denoising():
    net = _sc_net(5)
    a = DDAE(_denoiser(net), sd_weight=0.0, ema_decay=0.99)
    b = Denoising(_denoiser(net), ema_decay=0.99)
    assert a.projector is None and a.parameters_of("model") == [p for p in a.model.parameters()]
    batch = {"x": torch.rand(8, 1, 8, 8) * 2 - 1}
    (la, fa), (lb, fb) = a.loss("model", batch, 2), b.loss("model", batch, 2)
    assert torch.equal(la, lb) and fa == fb
    d = a.describe()
    assert d["self_condition"] is True and d["sc_parameters"] == (8 * 8 + 8) + (8 * 8 + 8) and d["macs"] > 0


@pytest.mark.parametrize(("params", "key"), [
    ({"sd_weight": -1.0}, "sd_weight"),
    ({"sd_temperature": 0.0}, "sd_temperature"),
    ({"sd_t_max": 1.5}, "sd_t_max"),
    ({"sd_t_max": 0.0}, "sd_t_max"),
    ({"sd_dim": 0}, "sd_dim"),
    ({"sd_shift": -1}, "sd_shift"),
    ({"sd_weight": 0.1, "ema_decay": None}, "ema_decay"),
])
def test_bad_params_name_the_key(params, key):
    with pytest.raises(ConfigError, match=key):
        DDAE(_denoiser(_sc_net()), **params)


def test_bad_network_params_and_a_teacher_are_refused():
    with pytest.raises(ConfigError, match="teacher"):
        DDAE(_denoiser(_sc_net()), teacher=_denoiser(_sc_net()))
    with pytest.raises(ConfigError, match="sc_hidden"):
        SelfConditionedUNet(1, 8, (4, 8), sc_hidden=0)
    with pytest.raises(ConfigError, match="self_condition"):
        SelfConditionedUNet(1, 8, (4, 8), self_condition="yes")
    with pytest.raises(ConfigError, match="features"):
        pooled_features(nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1))


def test_probe_features_and_linear_probe():
    from distillery.generative.data import digit_images

    den = _denoiser(_sc_net(6))
    splits = digit_images()
    x = splits.test.x[:10]
    f0, f1 = probe_features(den, x, 0.0), probe_features(den, x, 0.2)
    assert f0.shape == f1.shape == (10, 8) and not torch.allclose(f0, f1)
    assert torch.allclose(f0, den.net.features(x, torch.zeros(10)), atol=1e-6)
    assert torch.equal(probe_features(den, x, 0.2), f1)  # fixed noise
    acc = linear_probe(den, splits, 0.0)
    assert 0.2 < acc <= 1.0  # random features of digits are far above chance (0.1)


def test_fragments_and_the_shipped_config(tmp_path, capsys):
    from distillery.cli import main

    assert sc_unet((16, 32), False) == {"name": "sc_unet", "params": {"channels": [16, 32], "self_condition": False}}
    assert ddae_config()["method"] == {"kind": "ddae", "params": {"sd_weight": 0.0, "ema_decay": 0.995, "sample_solver": "euler"}}
    assert ddae_config(0.1)["method"]["params"]["sd_t_max"] == 0.3
    small = ["train.steps=2", "train.progress=false", "train.tensorboard=false", "eval.metrics=[]", "eval.num_samples=8",
             "eval.steps=[1]", "data.batch_size=16"]
    sets = [a for s in small for a in ("--set", s)]
    assert main(["validate", str(CONFIGS / "ddae_digits.yaml"), *sets]) == 0
    assert "sd=" in capsys.readouterr().out
    assert main(["validate", str(CONFIGS / "ddae_digits.yaml"), *sets, "--set", "method.params.sd_temperature=-1.0"]) != 0
    captured = capsys.readouterr()
    assert "sd_temperature" in captured.out + captured.err
    assert main(["run", str(CONFIGS / "ddae_digits.yaml"), "--out", str(tmp_path / "ddae"), *sets]) == 0
    assert (tmp_path / "ddae" / "model.safetensors").is_file()


def test_the_reproduction_arms_are_valid_generative_configs():
    from distillery.config import parse_config
    from distillery.reproduce import ddae as repro

    s = repro.SETTINGS(True)
    for arm, (sc, sd) in repro.ARMS.items():
        cfg = parse_config({"seed": 0, **repro.arm_config(s, sc, sd)}, arm)
        assert cfg.student.denoiser.params["self_condition"] is sc
        assert cfg.method.kind == "ddae" and cfg.method.params["sd_weight"] == sd
    assert repro.ARMS["plain"] == (False, 0.0) and repro.ARMS["sc_sd"][1] > 0
