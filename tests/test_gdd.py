"""#31 GDD / GDD-I (Zheng & Yang 2024, arXiv:2405.20750): the frozen convolutions, the GAN-only
losses of the method against formulas written here, the instance baseline's regression, the
registrations and the shipped configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.method import METHODS
from distillery.generative.networks import UNet
from distillery.generative.processes import build_process
from distillery.recipes.gdd import (
    GDD,
    conv_parameter_names,
    freeze_convolutions,
    gdd_config,
    instance_config,
    teacher_student,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    net = UNet(1, 8, (4, 8))
    with torch.no_grad():  # a non-zero output layer, so that the student's output depends on every layer
        net.out.weight.normal_(0, 0.1)
    return net


def _denoiser(seed: int = 0) -> Denoiser:
    return Denoiser(_unet(seed), build_process({"kind": "flow"}), "velocity", (1, 8, 8))


# the U-Net's convolutions, listed by hand from its architecture (channels (4, 8), one block)
ALL_CONVS = ["stem", "down0.0.conv1", "down0.0.conv2", "downsample", "mid.0.conv1", "mid.0.conv2", "upsample",
             "up0.0.conv1", "up0.0.conv2", "up0.0.skip", "out"]


def test_the_convolutions_are_found_by_module_type_and_kept_by_pattern():
    net = _unet()
    names = conv_parameter_names(net)
    assert sorted(names) == sorted(f"{c}.{p}" for c in ALL_CONVS for p in ("weight", "bias"))
    kept = conv_parameter_names(net, ("stem.*", "out.*"))
    assert sorted(kept) == sorted(f"{c}.{p}" for c in ALL_CONVS[1:-1] for p in ("weight", "bias"))


def test_freeze_convolutions_freezes_exactly_the_other_convolutions():
    net = _unet()
    out = freeze_convolutions(net)
    frozen_by_hand = {f"{c}.{p}" for c in ALL_CONVS[1:-1] for p in ("weight", "bias")}
    for name, p in net.named_parameters():
        assert p.requires_grad == (name not in frozen_by_hand), name
    assert set(out["frozen"]) == frozen_by_hand
    # norms, the time embedding, the per-block embedding projections and the kept convolutions train
    trainable = set(out["trainable"])
    assert {"stem.weight", "out.bias", "out_norm.weight", "down0.0.norm1.weight", "mid.0.emb.weight"} <= trainable
    assert any(n.startswith("time.") for n in trainable)
    n_frozen = sum(p.numel() for n, p in net.named_parameters() if n in frozen_by_hand)
    assert out["frozen_fraction"] == pytest.approx(n_frozen / sum(p.numel() for p in net.parameters()))
    assert 0.5 < out["frozen_fraction"] < 1.0  # "most" of the network


def test_freeze_convolutions_refuses_bad_input():
    with pytest.raises(ConfigError, match="keep_convs patterns \\['stemm.\\*'\\] match no convolution"):
        freeze_convolutions(_unet(), ("stemm.*",))
    with pytest.raises(ConfigError, match="no convolution to freeze"):
        freeze_convolutions(nn.Sequential(nn.Linear(2, 2)), ())


def test_gdd_is_registered_and_checks_its_params():
    assert METHODS.get("gdd") is GDD
    from distillery.registry import RECIPES

    assert "gdd" in RECIPES
    with pytest.raises(ConfigError, match="freeze must be one of"):
        GDD(_denoiser(1), _denoiser(0), freeze="all")
    with pytest.raises(ConfigError, match="init_from_teacher must be true"):
        GDD(_denoiser(1), _denoiser(0), init_from_teacher=False)
    with pytest.raises(ConfigError, match="keep_convs must be a list"):
        GDD(_denoiser(1), _denoiser(0), keep_convs="stem.*")


def test_the_generator_starts_as_the_teacher_and_only_unfrozen_layers_get_gradients():
    teacher = _denoiser(0)
    m = GDD(_denoiser(1), teacher, freeze="convs")
    for (n, a), b in zip(m.student.state_dict().items(), teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    names = {id(p): n for n, p in m.student.net.named_parameters()}
    trained = {names[id(p)] for p in m.parameters_of("student")}
    assert trained == set(m.freezing["trainable"]) and not trained & set(m.freezing["frozen"])
    loss, _ = m.loss("student", {"x": torch.rand(6, 1, 8, 8) * 2 - 1}, 0)
    loss.backward()
    for n, p in m.student.net.named_parameters():
        assert (p.grad is not None) == (n in trained), n
    full = GDD(_denoiser(1), _denoiser(0), freeze="none")
    assert len(full.parameters_of("student")) == len(list(full.student.parameters()))
    assert full.describe()["frozen_fraction"] == 0.0 and m.describe()["frozen_fraction"] > 0.5


class _Recorder:
    """Forward hook keeping the inputs and outputs of each call of a module."""

    def __init__(self, module: nn.Module) -> None:
        self.calls: list[tuple[tuple, torch.Tensor]] = []
        module.register_forward_hook(lambda mod, args, out: self.calls.append((args, out)))


def _sp(x: torch.Tensor) -> torch.Tensor:
    """softplus written out in float64: log(1 + exp(x))."""
    x = x.double()
    return torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0)


def test_the_generator_loss_is_the_non_saturating_gan_loss_on_its_one_step_samples():
    torch.manual_seed(0)
    m = GDD(_denoiser(1), _denoiser(0), d_time_max=0.3)
    disc, net = _Recorder(m.discriminator), _Recorder(m.student.net)
    loss, _ = m.loss("student", {"x": torch.rand(5, 1, 8, 8)}, 0)
    (x_T, t_gen, _), v = net.calls[0]
    assert torch.all(t_gen == 1.0)                             # one step from the prior end, t_max = 1
    x0 = x_T - v                                               # flow: x0 = x_t - t * velocity at t = 1
    (x_t, t, _), logits = disc.calls[0]
    assert torch.all((t >= 0) & (t <= 0.3))
    eps = (x_t - (1 - t)[:, None, None, None] * x0) / t[:, None, None, None]
    assert torch.allclose((1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps, x_t, atol=1e-5)
    assert loss.item() == pytest.approx(_sp(-logits).mean().item(), rel=1e-5)
    hinge = GDD(_denoiser(1), _denoiser(0), kind="hinge")
    rec = _Recorder(hinge.discriminator)
    loss, _ = hinge.loss("student", {"x": torch.rand(5, 1, 8, 8)}, 0)
    assert loss.item() == pytest.approx(-rec.calls[0][1].mean().item(), rel=1e-5)


def test_the_discriminator_loss_with_r1_against_the_formula():
    torch.manual_seed(0)
    gamma = 0.7
    m = GDD(_denoiser(1), _denoiser(0), r1_gamma=gamma).double()
    disc = _Recorder(m.discriminator)
    real = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    loss, logs = m.loss("discriminator", {"x": real}, 0)
    (real_t, t_real, _), real_logits = disc.calls[0]
    (_, _, _), fake_logits = disc.calls[1]
    (grad,) = torch.autograd.grad(m.discriminator(real_t, t_real).sum(), real_t)
    r1 = grad.pow(2).sum(dim=(1, 2, 3)).mean()
    by_hand = _sp(-real_logits).mean() + _sp(fake_logits).mean() + gamma / 2 * r1
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-9)
    assert logs["r1"] == pytest.approx(r1.item(), rel=1e-9)
    # the discriminator's loss trains only the discriminator (the generator ran without grad)
    loss.backward()
    assert all(p.grad is None for p in m.student.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.discriminator.parameters())


def test_the_instance_baseline_regresses_the_teachers_25_step_euler_sample():
    from distillery.generative.objectives.reflow import Reflow

    teacher = _denoiser(0)
    params = instance_config(pairs=8, pair_steps=25)["method"]["params"]
    m = Reflow(_denoiser(1), teacher, **params)
    # the teacher's sample from each noise, by an Euler loop written here (flow: t from 1 to 0)
    x = m.pool_eps.clone()
    ts = torch.linspace(1, 0, 26)
    with torch.no_grad():
        for i in range(25):
            x = x + (ts[i + 1] - ts[i]) * teacher(x, ts[i].expand(8))
    assert torch.allclose(m.pool_x, x, atol=1e-5)
    torch.manual_seed(3)
    loss, _ = m.loss("student", {"x": torch.zeros(4, 1, 8, 8)}, 0)
    torch.manual_seed(3)
    idx = torch.randint(0, 8, (4,))
    with torch.no_grad():
        one_step = m.pool_eps[idx] - m.student(m.pool_eps[idx], torch.ones(4))  # the student's 1-step Euler sample
    assert loss.item() == pytest.approx(((one_step - m.pool_x[idx]) ** 2).mean().item(), rel=1e-5)
    assert math.isfinite(loss.item())


def test_config_fragments():
    assert gdd_config("none")["method"]["params"]["freeze"] == "none"
    assert "keep_convs" not in gdd_config("none")["method"]["params"]
    assert gdd_config("convs", d_time_max=0.5)["method"] == {
        "kind": "gdd", "params": {"freeze": "convs", "kind": "nonsaturating", "r1_gamma": 0.0, "hidden": [256, 256],
                                  "feature_dim": 128, "d_time_max": 0.5, "keep_convs": ["stem.*", "out.*"]}}
    assert instance_config()["method"]["params"]["distill"] is True
    sec = teacher_student({"name": "unet"}, "velocity", "runs/t")
    assert sec["student"]["init"] == "teacher" and sec["teacher"] == {"kind": "run", "run": "runs/t"}


def test_the_shipped_configs_validate_and_run(tmp_path, capsys):
    from distillery.cli import main
    from distillery.config import load_config

    for name in ("gdd_digits_teacher.yaml", "gdd_digits.yaml"):
        assert load_config(CONFIGS / name) is not None
    small = ["train.progress=false", "train.tensorboard=false", "eval.metrics=[]", "eval.num_samples=8", "eval.steps=[1]"]
    teacher = tmp_path / "teacher"
    assert main(["run", str(CONFIGS / "gdd_digits_teacher.yaml"), "--out", str(teacher), "--set", "train.steps=2",
                 *[a for s in small for a in ("--set", s)]]) == 0
    sets = [f"teacher.run={teacher}", "train.steps=2", *small]
    assert main(["validate", str(CONFIGS / "gdd_digits.yaml"), *[a for s in sets for a in ("--set", s)]]) == 0
    assert "player student" in capsys.readouterr().out
    assert main(["run", str(CONFIGS / "gdd_digits.yaml"), "--out", str(tmp_path / "gdd"),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    assert (tmp_path / "gdd" / "student.safetensors").is_file()
