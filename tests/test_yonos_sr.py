"""YONOS-SR (Noroozi et al. 2024, arXiv:2401.17258): scale distillation's targets, the direct
baseline, initialisation from the teacher, one-step sampling, bad input and the config."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import FlowProcess
from distillery.generative.restoration import SRUNet, lr_condition
from distillery.recipes.yonos_sr import (
    ScaleDistillation,
    direct_config,
    scale_distillation_target,
    stage_config,
)


def _pair(prediction: str = "velocity"):
    torch.manual_seed(0)
    process = FlowProcess()
    teacher = Denoiser(SRUNet(channels=(4, 8)), process, prediction, (1, 8, 8))
    torch.nn.init.normal_(teacher.net.unet.out.weight, std=0.2)
    student = Denoiser(SRUNet(channels=(4, 8)), process, prediction, (1, 8, 8))
    return student, teacher


def _replay(x0: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (eps, t, x_t) a loss draws from the global RNG after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    eps = torch.randn_like(x0)
    t = FlowProcess().sample_t(x0.shape[0])
    return eps, t, (1 - t)[:, None, None, None] * x0 + t[:, None, None, None] * eps


def test_loss_regresses_the_teachers_prediction_from_the_less_degraded_condition():
    student, teacher = _pair()
    m = ScaleDistillation(student, teacher, scale=4, teacher_scale=2)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters(), strict=True))
    torch.nn.init.normal_(student.net.unet.out.weight, std=0.2)  # let the student differ from its start
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1
    torch.manual_seed(7)
    loss, _ = m.loss("model", {"x": x0}, 0)
    _eps, t, x_t = _replay(x0, 7)
    with torch.no_grad():
        target = teacher.net(x_t, t, lr_condition(x0, 2))  # velocity teacher, velocity student: no conversion
        want = (student.net(x_t, t, lr_condition(x0, 4)) - target).pow(2).mean()
    assert math.isclose(float(loss.detach()), float(want), rel_tol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_direct_baseline_uses_the_data_target_and_mixing_is_linear():
    student, teacher = _pair()
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    eps, t, x_t = _replay(x0, 3)
    with torch.no_grad():
        taught = teacher.net(x_t, t, lr_condition(x0, 2))
        pred = student.net(x_t, t, lr_condition(x0, 4))
    data_target = eps - x0  # flow velocity
    for w in (1.0, 0.3):
        m = ScaleDistillation(student, teacher, scale=4, teacher_scale=2, gt_weight=w, init_from_teacher=False)
        torch.manual_seed(3)
        loss, _ = m.loss("model", {"x": x0}, 0)
        want = (pred - ((1 - w) * taught + w * data_target)).pow(2).mean()
        assert math.isclose(float(loss.detach()), float(want), rel_tol=1e-5)


def test_target_is_converted_to_the_students_prediction_kind():
    _, teacher = _pair("velocity")
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    _eps, t, x_t = _replay(x0, 1)
    cond = lr_condition(x0, 2)
    v = scale_distillation_target(teacher, x_t, t, cond, "velocity")
    x0_hat = scale_distillation_target(teacher, x_t, t, cond, "x0")
    # flow: x_t = (1 - t) x0 + t eps, v = eps - x0  =>  x0 = x_t - t v
    assert torch.allclose(x0_hat, x_t - t[:, None, None, None] * v, atol=1e-6)


def test_one_step_sampling_is_the_x0_prediction_at_t_max():
    student, teacher = _pair()
    m = ScaleDistillation(student, teacher, scale=4, teacher_scale=2)
    cond = lr_condition(torch.rand(3, 1, 8, 8) * 2 - 1, 4)
    g = torch.Generator().manual_seed(0)
    out = m.sample(3, 1, cond=cond, generator=g)
    x1 = FlowProcess().prior((3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = student.predict(x1, torch.ones(3), cond, "x0")
    assert torch.allclose(out, want, atol=1e-6)


def test_bad_params_name_the_key():
    student, teacher = _pair()
    with pytest.raises(ConfigError, match="teacher"):
        ScaleDistillation(student, None)
    with pytest.raises(ConfigError, match="teacher_scale"):
        ScaleDistillation(student, teacher, scale=2, teacher_scale=4)
    with pytest.raises(ConfigError, match="gt_weight"):
        ScaleDistillation(student, teacher, gt_weight=1.5)
    with pytest.raises(ConfigError, match="scale"):
        ScaleDistillation(student, teacher, scale=16)
    other = Denoiser(SRUNet(channels=(8, 8)), FlowProcess(), "velocity", (1, 8, 8))
    with pytest.raises(ConfigError, match="init_from_teacher"):
        ScaleDistillation(other, teacher)
    with pytest.raises(ConfigError, match="process"):
        ScaleDistillation(Denoiser(SRUNet(channels=(4, 8)), FlowProcess(shift=3.0), "velocity", (1, 8, 8)), teacher)
    assert isinstance(teacher, nn.Module)


def test_fragments_and_config():
    import yaml

    from distillery.config.bundled import CONFIG_DIR
    from distillery.generative.config import parse_generative_config

    assert stage_config(4, 2, "runs/t")["method"]["params"]["gt_weight"] == 0.0
    assert direct_config(4, 2, "runs/t")["method"]["params"]["gt_weight"] == 1.0
    cfg = parse_generative_config(yaml.safe_load((CONFIG_DIR / "yonos_sr_digits.yaml").read_text()))
    assert cfg.method.kind == "yonos_sr" and cfg.method.params["scale"] == 4
