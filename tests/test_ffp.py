"""FFP-300K's identity-propagation regulariser (Huang et al. 2026, arXiv:2601.01720) on the
streaming student: the loss against a formula written here, its gradients and bad input."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import FlowProcess
from distillery.recipes.ffp import FirstFramePropagation, ffp_config, identity_loss
from distillery.streaming.models import VideoTransformer

SHAPE = (6, 1, 8, 8)  # 3 chunks of 2 frames


def _denoiser(attention: str) -> Denoiser:
    net = VideoTransformer(frames=6, in_channels=1, image_size=8, patch=4, dim=16, depth=1, heads=2, chunk=2,
                           attention=attention, max_frames=32)
    return Denoiser(net, FlowProcess(), prediction="x0", sample_shape=SHAPE)


def _method(**kw) -> FirstFramePropagation:
    torch.manual_seed(0)
    teacher = _denoiser("bidirectional")
    for p in teacher.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    student = _denoiser("block_causal")
    student.load_state_dict(teacher.state_dict())
    return FirstFramePropagation(student, teacher, **{"steps": 2, "fake_updates": 1, **kw})


def test_identity_loss_formula_skips_the_prefix():
    torch.manual_seed(0)
    v, s = torch.randn(2, 6, 1, 3, 3, dtype=torch.float64), torch.randn(2, 8, 1, 3, 3, dtype=torch.float64)
    want = sum(((v[:, k] - s[:, k]) ** 2).sum() for k in range(2, 6)) / (2 * 4 * 9)
    assert identity_loss(v, s, 2).item() == pytest.approx(want.item())
    v2 = v.clone()
    v2[:, :2] += 5.0  # the prefix (the source's own first chunk) is not scored
    assert identity_loss(v2, s, 2).item() == pytest.approx(want.item())
    assert identity_loss(s[:, :6], s, 2).item() == 0.0  # reproducing the source: zero
    for bad in (-1, 6):
        with pytest.raises(ConfigError, match="prefix_frames"):
            identity_loss(v, s, bad)
    with pytest.raises(ConfigError, match="source"):
        identity_loss(v, s[:, :4], 2)


def test_generator_loss_adds_the_weighted_identity_term():
    batch = {"x": torch.rand(3, *SHAPE) * 2 - 1}
    plain, reg = _method(identity_weight=0.0), _method(identity_weight=2.5)
    torch.manual_seed(3)
    l0, logs0 = plain.loss("generator", batch, 0)
    torch.manual_seed(3)
    l1, logs1 = reg.loss("generator", batch, 0)
    assert "identity" not in logs0
    assert reg._source is None  # not kept after the loss
    assert (l1 - l0).item() == pytest.approx(2.5 * logs1["identity"], rel=1e-4, abs=1e-6)
    # the identity term is the regression of the rollout (from the real first chunk) to the source
    torch.manual_seed(3)
    with torch.no_grad():
        video, _ = reg.generate(3, None, torch.device("cpu"), real=batch["x"])
    assert torch.equal(video[:, :2], batch["x"][:, :2])  # the prefix is the source's first chunk
    assert logs1["identity"] == pytest.approx(identity_loss(video, batch["x"], 2).item(), rel=1e-5)


def test_identity_gradient_reaches_the_generator_only():
    method = _method(identity_weight=1.0)
    batch = {"x": torch.rand(2, *SHAPE) * 2 - 1}
    loss, _ = method.loss("generator", batch, 0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.generator.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())
    assert all(p.grad is None for p in method.fake.parameters())


@pytest.mark.parametrize("bad,match", [({"identity_weight": -1.0}, "identity_weight"), ({"prefix_chunks": 0}, "prefix_chunks"),
                                       ({"identity_weight": True}, "identity_weight")])
def test_bad_parameters_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        _method(**bad)


def test_config_fragment():
    frag = ffp_config(identity_weight=0.0, fake_updates=2)
    assert frag["method"]["kind"] == "ffp"
    assert frag["method"]["params"]["identity_weight"] == 0.0 and frag["method"]["params"]["prefix_chunks"] == 1
    assert frag["method"]["params"]["fake_updates"] == 2
