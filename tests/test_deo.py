"""DEO (#37): multi-band data, the band-blanking view, the input adapter and the dual-teacher loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillery.data import load_dataset
from distillery.data.miniature.bands import ZeroBands, make_bands
from distillery.errors import ConfigError, ShapeError
from distillery.models import build_model
from distillery.models.miniature.bands import BandAdapter
from distillery.recipes.deo import RECIPE, deo_distiller, single_teacher_distiller


def test_bands_are_the_fixed_maps_of_the_clean_image():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 4, 5))
    bands = make_bands(img, 0.0, rng)
    assert bands.shape == (2, 6, 4, 5)
    for k in range(4):
        np.testing.assert_allclose(bands[:, k], img)
    np.testing.assert_allclose(bands[:, 4], -img)
    blur = np.zeros_like(img)
    for n in range(2):
        for i in range(4):
            for j in range(5):
                blur[n, i, j] = sum(img[n, a, b] for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
                                    if 0 <= a < 4 and 0 <= b < 5) / 9.0
    np.testing.assert_allclose(bands[:, 5], blur)
    noisy = make_bands(img, 0.5, np.random.default_rng(1))
    assert 0.4 < float(np.std(noisy - bands)) < 0.6


def test_multiband_digits_copies_draw_fresh_noise():
    one = load_dataset("multiband_digits", noise=1.0, copies=1)
    two = load_dataset("multiband_digits", noise=1.0, copies=2)
    n = len(one.train)
    assert one.input_shape == (6, 8, 8) and len(two.train) == 2 * n and len(two.test) == len(one.test)
    assert torch.equal(two.train.y[:n], two.train.y[n:])
    assert not torch.allclose(two.train.x[:n], two.train.x[n:])
    clean = load_dataset("multiband_digits", noise=0.0)
    torch.testing.assert_close(clean.train.x[:, 0], clean.train.x[:, 3])
    with pytest.raises(ConfigError, match="noise"):
        load_dataset("multiband_digits", noise=-1.0)


def test_zero_bands_blanks_exactly_those_channels():
    x = torch.randn(3, 6, 2, 2)
    out = ZeroBands([3, 5])(x)
    assert bool((out[:, [3, 5]] == 0).all())
    torch.testing.assert_close(out[:, [0, 1, 2, 4]], x[:, [0, 1, 2, 4]])
    assert not bool((x[:, 3] == 0).all())  # the input is not modified
    with pytest.raises(ConfigError, match="do not fit"):
        ZeroBands([6])(x)
    with pytest.raises(ConfigError, match="non-empty"):
        ZeroBands([])


def _adapter_model(extra=(3, 4, 5)):
    torch.manual_seed(0)
    return build_model("band_adapter", (6, 8, 8), 10, optical=[0, 1, 2], extra=list(extra),
                       backbone={"name": "cnn2d", "params": {"channels": [8], "norm": "none"}}, out_dim=7)


def test_band_adapter_adds_the_extra_bands_through_a_zero_initialised_convolution():
    m = _adapter_model()
    x = torch.randn(4, 6, 8, 8)
    torch.testing.assert_close(m(x), m.backbone(x[:, :3]))  # at initialisation: the optical network
    assert m(x).shape == (4, 7)
    with torch.no_grad():
        m.adapter.weight.normal_()
    expected = m.backbone(x[:, :3] + F.conv2d(x[:, 3:], m.adapter.weight, padding=1))
    torch.testing.assert_close(m(x), expected)
    blank = ZeroBands([3, 4, 5])(x)
    torch.testing.assert_close(m(blank), m.backbone(x[:, :3]))  # optical-only input: the backbone alone
    optical = _adapter_model(extra=())
    assert optical.adapter is None
    torch.testing.assert_close(optical(x), optical.backbone(x[:, :3]))
    with pytest.raises(ConfigError, match="distinct"):
        BandAdapter(nn.Identity(), [0, 1], [1, 2])
    with pytest.raises(ShapeError, match="at least 6 channels"):
        m(torch.randn(2, 5, 8, 8))


def test_dual_teacher_loss_is_dino_from_the_ema_plus_cosine_to_the_optical_teacher():
    student = _adapter_model()
    optical = _adapter_model(extra=())
    with torch.no_grad():
        for p in optical.parameters():
            p.add_(0.3 * torch.randn_like(p))
    def view(x):  # a deterministic "augmentation", so the expected values can be computed
        return x * 1.5

    d = deo_distiller(student, optical, view, out_dim=7, momentum=0.9,
                      dino={"student_temperature": 0.2, "teacher_temperature": 0.05, "center_momentum": 0.5})
    assert [t.name for t in d.terms] == ["dino", "optical_kd"]
    x = torch.randn(5, 6, 8, 8)
    batch = {"x": x, "y": torch.full((5,), -1), "index": torch.arange(5)}
    d.prepare(batch)
    losses = d.step(batch)
    xs = 1.5 * x
    with torch.no_grad():
        s_logits = student(xs)
        t_logits = d.teacher.members[0].model(xs)  # the EMA copy, on its own view (same map here)
        p_t = F.softmax(t_logits / 0.05, -1)  # center 0 at the first step
        dino = -(p_t * F.log_softmax(s_logits / 0.2, -1)).sum(-1).mean()
        f_s = student.backbone.pool(student.backbone.blocks[0](xs[:, :3]))
        f_t = optical.backbone.pool(optical.backbone.blocks[0](xs[:, :3]))
        cos = (1 - F.cosine_similarity(d.adapters["optical_kd"](f_s), f_t, dim=1)).mean()
    torch.testing.assert_close(losses["dino"], dino)
    torch.testing.assert_close(losses["optical_kd"], cos)
    torch.testing.assert_close(losses["loss"], dino + cos)
    # after a step the EMA member moves toward the student, the optical teacher does not
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.5)
    before = [p.clone() for p in optical.parameters()]
    losses["loss"].backward()
    opt.step()
    d.update()
    assert all(torch.equal(a, b) for a, b in zip(before, optical.parameters()))
    ema_w = d.teacher.members[0].model.backbone.head.weight
    assert not torch.equal(ema_w, student.backbone.head.weight)
    assert float(d.objectives["dino"].center.abs().sum()) > 0
    assert not any(p.requires_grad for p in optical.parameters())


def test_single_teacher_distiller_is_dino_only():
    student = _adapter_model()
    d = single_teacher_distiller(student, lambda x: x, out_dim=7)
    assert [t.name for t in d.terms] == ["dino"] and type(d.teacher).__name__ == "EMATeacher"
    assert RECIPE.config_path().is_file()
