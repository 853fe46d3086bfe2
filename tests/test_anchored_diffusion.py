"""Anchored Diffusion (arXiv:2407.15153): anchored batch inference by replacement inpainting of a
common anchor frame, the autoregressive baseline, and stitching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import FlowProcess
from distillery.recipes.anchored_diffusion import anchored_sample, autoregressive_segments, inpainted_sample, stitch

SHAPE = (4, 1, 4, 4)


class Recorder(nn.Module):
    """An x0-predicting 'network': x0_hat = 0.5 * x_t + 0.1 * mean over frames; records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        self.seen.append((x.clone(), t.clone()))
        return 0.5 * x + 0.1 * x.mean(1, keepdim=True)


def _teacher() -> Denoiser:
    return Denoiser(Recorder(), FlowProcess(), prediction="x0", sample_shape=SHAPE)


def test_anchor_is_imposed_with_shared_noise_at_every_step():
    teacher = _teacher()
    anchor = torch.rand(2, 1, 4, 4) * 2 - 1
    out = anchored_sample(teacher, anchor, 3, 4, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, *SHAPE)
    assert torch.equal(out[:, :, 0], anchor[:, None].expand(2, 3, 1, 4, 4))
    g = torch.Generator().manual_seed(0)
    torch.randn((6, *SHAPE), generator=g)  # the segments' starting noise
    eps_a = torch.randn(anchor.shape, generator=g)
    seen = teacher.net.seen
    assert len(seen) == 4
    for x, t in seen:  # (1 - t) a + t eps_a, the same for the 3 segments of a video
        expected = (1 - t[0]) * anchor + t[0] * eps_a
        assert torch.allclose(x[:, 0].reshape(2, 3, 1, 4, 4), expected[:, None].expand(2, 3, 1, 4, 4), atol=1e-6)
    # the other frames differ between segments (independent noise)
    assert not torch.allclose(out[:, 0, 1:], out[:, 1, 1:])


def test_one_step_is_the_x0_prediction_with_the_anchor_inpainted():
    teacher = _teacher()
    first = torch.rand(2, 1, 4, 4)
    noise = torch.randn(2, *SHAPE)
    eps_a = torch.randn(2, 1, 4, 4)
    out = inpainted_sample(teacher, first, 1, noise=noise, first_noise=eps_a)
    x = noise.clone()
    x[:, 0] = eps_a  # t = 1: the anchor fully noised
    expected = 0.5 * x + 0.1 * x.mean(1, keepdim=True)
    expected[:, 0] = first
    assert torch.allclose(out, expected, atol=1e-6)


def test_two_steps_follow_ddim():
    teacher = _teacher()
    first, noise, eps_a = torch.rand(1, 1, 4, 4), torch.randn(1, *SHAPE), torch.randn(1, 1, 4, 4)
    out = inpainted_sample(teacher, first, 2, noise=noise, first_noise=eps_a)
    t0, t1 = FlowProcess().timesteps(2)[:2].tolist()
    x = noise.clone()
    x[:, 0] = (1 - t0) * first + t0 * eps_a
    x0 = 0.5 * x + 0.1 * x.mean(1, keepdim=True)
    eps = (x - (1 - t0) * x0) / t0
    x = (1 - t1) * x0 + t1 * eps
    x[:, 0] = (1 - t1) * first + t1 * eps_a
    x0 = 0.5 * x + 0.1 * x.mean(1, keepdim=True)
    x0[:, 0] = first
    assert torch.allclose(out, x0, atol=1e-5)


def test_autoregressive_segments_chain_on_the_last_frame():
    teacher = _teacher()
    first = torch.rand(2, 1, 4, 4)
    out = autoregressive_segments(teacher, first, 3, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, 0, 0], first)
    for s in (1, 2):
        assert torch.equal(out[:, s, 0], out[:, s - 1, -1])
    long = stitch(out)
    assert long.shape == (2, 1 + 3 * 3, 1, 4, 4)
    assert torch.equal(long[:, :4], out[:, 0]) and torch.equal(long[:, 4:7], out[:, 1, 1:])


def test_bad_input():
    teacher = _teacher()
    with pytest.raises(ConfigError, match="segments"):
        anchored_sample(teacher, torch.zeros(1, 1, 4, 4), 0, 2)
    with pytest.raises(ConfigError, match="steps"):
        inpainted_sample(teacher, torch.zeros(1, 1, 4, 4), 0)
    with pytest.raises(ConfigError, match="anchor frame"):
        inpainted_sample(teacher, torch.zeros(1, 1, 8, 8), 2)
    with pytest.raises(ConfigError, match="Denoiser"):
        anchored_sample(Recorder(), torch.zeros(1, 1, 4, 4), 1, 1)
    with pytest.raises(ConfigError, match="stitch"):
        stitch(torch.zeros(1, 4, 1, 4, 4))
