"""MCM (Zhai et al. 2024, arXiv:2406.06890): the motion representation, the blurred data, the
sharpness/motion measures and the method's losses against formulas written here."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.objectives.gan import d_loss
from distillery.generative.processes import FlowProcess
from distillery.recipes.mcm import (
    MotionConsistency,
    blur_frames,
    blurred_sprite_videos,
    centroid_acceleration,
    high_frequency_energy,
    motion_representation,
    sharp_sprite_frames,
)
from distillery.streaming.data import sprite_videos
from distillery.streaming.models import VideoTransformer

SHAPE = (4, 1, 16, 16)


def _denoiser() -> Denoiser:
    net = VideoTransformer(frames=4, in_channels=1, image_size=16, patch=8, dim=16, depth=1, heads=2, chunk=4,
                           attention="bidirectional", max_frames=8)
    return Denoiser(net, FlowProcess(), prediction="velocity", sample_shape=SHAPE)


def _method(**kw) -> MotionConsistency:
    torch.manual_seed(0)
    teacher = _denoiser()
    for p in teacher.parameters():  # a non-trivial teacher (the zero-initialised heads output 0)
        p.data.add_(0.05 * torch.randn_like(p))
    params = {"hq_images": 64, "num_scales": 6, "solver": "euler", **kw}
    return MotionConsistency(_denoiser(), teacher, **params)


def test_motion_representation_hand_written():
    v = torch.arange(2 * 3 * 1 * 1 * 2, dtype=torch.float64).reshape(2, 3, 1, 1, 2) ** 2
    d = motion_representation(v, "difference")
    assert d.shape == (2, 2, 1, 1, 2)
    assert torch.equal(d[:, 0], v[:, 1] - v[:, 0]) and torch.equal(d[:, 1], v[:, 2] - v[:, 1])
    m = motion_representation(v, "mean")
    assert torch.allclose(m, v - (v[:, 0] + v[:, 1] + v[:, 2])[:, None] / 3)
    assert motion_representation(v, "none") is v
    # appearance (a per-video constant image added to every frame) is invisible to both
    c = torch.randn(2, 1, 1, 1, 2, dtype=torch.float64)
    for kind in ("difference", "mean"):
        assert torch.allclose(motion_representation(v + c, kind), motion_representation(v, kind))
    with pytest.raises(ConfigError, match="motion"):
        motion_representation(v, "flow")
    with pytest.raises(ConfigError, match="videos"):
        motion_representation(v[:, 0], "difference")


def test_blur_is_the_binomial_kernel():
    x = torch.zeros(1, 9, 9)
    x[0, 4, 4] = 1.0
    one = torch.tensor([1.0, 2.0, 1.0]) / 4
    two = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    assert torch.allclose(blur_frames(x, 1)[0, 3:6, 3:6], torch.outer(one, one))
    assert torch.allclose(blur_frames(x, 2)[0, 2:7, 2:7], torch.outer(two, two))
    assert torch.allclose(blur_frames(x, 2).sum(), torch.tensor(1.0))  # interior mass kept
    flat = torch.full((2, 3, 1, 16, 16), -1.0)
    assert torch.equal(blur_frames(flat, 3), flat)  # the background stays -1 (edges replicated)
    assert blur_frames(x, 0) is x
    with pytest.raises(ConfigError, match="passes"):
        blur_frames(x, -1)


def test_blurred_dataset_and_image_set():
    kw = {"frames": 3, "n_train": 5, "n_test": 4, "seed": 0}
    sharp = sprite_videos(**kw)
    soft = blurred_sprite_videos(blur=2, **kw)
    assert torch.allclose(soft.train.x, blur_frames(sharp.train.x, 2))
    assert torch.equal(soft.test.extra["pos"], sharp.test.extra["pos"])
    assert soft.info["blur"] == 2
    assert high_frequency_energy(soft.test.x) < 0.5 * high_frequency_energy(sharp.test.x)
    with pytest.raises(ConfigError, match="blur"):
        blurred_sprite_videos(blur=0, **kw)
    hq = sharp_sprite_frames(10, seed=7)
    assert hq.shape == (10, 1, 16, 16)
    assert not torch.equal(hq[:3], sharp.train.x[0])  # another seed: unpaired with the videos


def test_high_frequency_energy_formula():
    x = torch.zeros(1, 3, 3)
    x[0, 1, 1] = 2.0  # one interior pixel: Laplacian 4 * 2 = 8
    assert high_frequency_energy(x) == pytest.approx(64.0)
    y = torch.arange(16.0).reshape(4, 4)  # linear ramp: Laplacian 0
    assert high_frequency_energy(y) == pytest.approx(0.0)


def test_centroid_acceleration_constant_velocity_and_zigzag():
    T = 5
    video = torch.full((1, T, 1, 16, 16), -1.0)
    for k in range(T):
        video[0, k, 0, 3, 2 + 2 * k] = 1.0  # 2 px per frame to the right
    assert centroid_acceleration(video) == pytest.approx(0.0, abs=1e-9)
    zig = torch.full((1, 3, 1, 16, 16), -1.0)
    for k, col in enumerate((4, 6, 4)):
        zig[0, k, 0, 3, col] = 1.0
    # second difference (0, 4 - 12 + 4) = (0, -4): mean of |.| over the two axes = 2
    assert centroid_acceleration(zig) == pytest.approx(2.0)


def test_student_loss_is_motion_cd_plus_weighted_gan():
    method = _method(motion="difference", gan_weight=0.0)
    batch = {"x": torch.rand(3, *SHAPE) * 2 - 1}
    torch.manual_seed(5)
    loss, logs = method.loss("student", batch, 0)
    torch.manual_seed(5)
    out, target = method.student_outputs(batch)
    d = ((out[:, 1:] - out[:, :-1]) - (target[:, 1:] - target[:, :-1])).pow(2).flatten(1).mean(1)
    assert loss.item() == pytest.approx(d.mean().item(), rel=1e-5)
    assert logs["cd"] == pytest.approx(loss.item())
    plain = _method(motion="none", gan_weight=0.0)
    torch.manual_seed(5)
    loss_plain, _ = plain.loss("student", batch, 0)
    torch.manual_seed(5)
    out, target = plain.student_outputs(batch)
    assert loss_plain.item() == pytest.approx((out - target).pow(2).flatten(1).mean(1).mean().item(), rel=1e-5)
    assert plain.updates("discriminator") == 0 and method.updates("student") == 1


def test_gan_terms_and_their_gradients():
    method = _method(motion="mean", gan_weight=0.5, gan_t_max=0.0)
    batch = {"x": torch.rand(2, *SHAPE) * 2 - 1}
    torch.manual_seed(1)
    loss, logs = method.loss("student", batch, 0)
    assert loss.item() == pytest.approx(logs["cd"] + 0.5 * logs["gan"], rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in method.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())
    method.zero_grad(set_to_none=True)
    # the discriminator's loss with s = 0: d_loss(D(hq), D(frames)) on clean frames
    torch.manual_seed(2)
    dl, _ = method.loss("discriminator", batch, 0)
    dl.backward()
    assert all(p.grad is None for p in method.student.parameters())
    assert any(p.grad is not None for p in method.discriminator.parameters())
    torch.manual_seed(2)
    with torch.no_grad():
        frames = method.student_outputs(batch)[0].flatten(0, 1)
        real = method.hq_batch(frames.shape[0], frames.device, frames.dtype)
        zero = torch.zeros(len(frames))
        expected = d_loss(method.discriminator(real, zero), method.discriminator(frames, zero))
    assert dl.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("bad,match", [({"motion": "optical_flow"}, "motion"), ({"gan_weight": -1.0}, "gan_weight"),
                                       ({"gan_t_max": 1.0}, "gan_t_max"), ({"hq_images": 1}, "hq_images")])
def test_bad_parameters_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        _method(**bad)


def test_mcm_needs_videos():
    net = VideoTransformer(frames=1, in_channels=1, image_size=16, patch=8, dim=16, depth=1, heads=2, chunk=1,
                           attention="bidirectional", max_frames=8)
    one = Denoiser(net, FlowProcess(), prediction="velocity", sample_shape=(1, 1, 16, 16))
    with pytest.raises(ConfigError, match="T >= 2"):
        MotionConsistency(one, one, hq_images=8)
