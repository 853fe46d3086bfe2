"""ASD (Yang et al. 2025, arXiv:2511.01419): First-Frame Enhancement schedules, the n vs n+1
self-distillation discriminator and where its gradients go."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import FlowProcess
from distillery.recipes.asd import ASD, asd_config, ffe_schedule, self_forcing_config
from distillery.streaming.models import VideoTransformer

SHAPE = (6, 1, 8, 8)  # 3 chunks of 2 frames


def _denoiser(attention: str) -> Denoiser:
    net = VideoTransformer(frames=6, in_channels=1, image_size=8, patch=4, dim=16, depth=1, heads=2, chunk=2,
                           attention=attention)
    return Denoiser(net, FlowProcess(), prediction="x0", sample_shape=SHAPE)


@pytest.fixture(scope="module")
def teacher() -> Denoiser:
    torch.manual_seed(0)
    return _denoiser("bidirectional")


def _asd(teacher: Denoiser, **kw) -> ASD:
    torch.manual_seed(1)
    student = _denoiser("block_causal")
    student.load_state_dict(teacher.state_dict())
    params = {"max_steps": 3, "prefix_chunks": 1, "fake_updates": 1, "disc_hidden": [16], "disc_features": 8, **kw}
    return ASD(student, teacher, **params)


def test_ffe_schedule_hand_written():
    assert ffe_schedule(4, 1) == [1, 1, 1, 1]
    assert ffe_schedule(4, 1, ffe_steps=3) == [3, 1, 1, 1]
    assert ffe_schedule(4, 2, prefix_chunks=1, ffe_steps=4) == [0, 4, 2, 2]
    assert ffe_schedule(4, 3, prefix_chunks=1, ffe_steps=2) == [0, 3, 3, 3]  # never fewer than steps
    assert ffe_schedule(3, 2, prefix_chunks=2, ffe_steps=5) == [0, 0, 5]
    # the stated NFE: max(ffe, steps) + (chunks - prefix - 1) * steps
    for chunks, steps, prefix, ffe in [(8, 1, 1, 3), (16, 2, 1, 4), (5, 3, 0, 0)]:
        assert sum(ffe_schedule(chunks, steps, prefix_chunks=prefix, ffe_steps=ffe)) == max(ffe, steps) + (chunks - prefix - 1) * steps


@pytest.mark.parametrize("kw,key", [({"steps": 0}, "steps"), ({"ffe_steps": -1}, "ffe_steps"),
                                    ({"prefix_chunks": 4}, "prefix_chunks"), ({"chunks": 0}, "chunks")])
def test_ffe_schedule_bad_input(kw, key):
    args = {"chunks": 4, "steps": 1, **kw}
    with pytest.raises(ConfigError, match=key):
        ffe_schedule(args.pop("chunks"), args.pop("steps"), **args)


@pytest.mark.parametrize("kw,key", [({"max_steps": 1}, "max_steps"), ({"ffe_steps": 99}, "ffe_steps"),
                                    ({"asd_weight": -1.0}, "asd_weight"), ({"gan_kind": "wgan"}, "gan_kind"),
                                    ({"steps": 2}, "steps"), ({"exit": "random"}, "exit"), ({"d_time_max": 0.0}, "d_time_max")])
def test_asd_bad_params(teacher, kw, key):
    with pytest.raises(ConfigError, match=key):
        _asd(teacher, **kw)


def test_players_and_steps_drawn_in_range(teacher):
    m = _asd(teacher, max_steps=4)
    assert m.players == ("fake_score", "discriminator", "generator")
    torch.manual_seed(0)
    seen = {m.draw_steps() for _ in range(200)}
    assert seen == {1, 2, 3}


def test_discriminator_loss_is_n_vs_n_plus_1(teacher):
    """L_D = E softplus(-D(x^(n+1))) + E softplus(D(x^(n))): the (n+1)-step rollout is the
    'real' side. Rollouts and logits are replaced by known functions of n."""
    m = _asd(teacher)
    videos = {k: torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(k)) for k in (1, 2, 3)}
    calls = []

    def fake_rollout(n, cnt, cond, device, real, *, grad):
        calls.append((n, grad, torch.is_grad_enabled()))
        return videos[n]

    m._rollout = fake_rollout
    m.asd_logits = lambda x, track=False: (x.flatten(1).mean(1), x)
    batch = {"x": torch.zeros(3, *SHAPE)}
    for n in (1, 2):
        calls.clear()
        m._n = n
        loss, _ = m.discriminator_loss(batch)
        expected = F.softplus(-videos[n + 1].flatten(1).mean(1)).mean() + F.softplus(videos[n].flatten(1).mean(1)).mean()
        assert torch.allclose(loss, expected, atol=1e-6)
        assert sorted(c[0] for c in calls) == [n, n + 1]
        assert all(g == "none" and not enabled for _, g, enabled in calls)  # both rollouts are stop-grad
    m._n = None


def test_gradients_go_where_stated(teacher):
    m = _asd(teacher, asd_weight=1.0)
    batch = {"x": torch.rand(2, *SHAPE) * 2 - 1}
    disc = list(m.discriminator.parameters())
    gen = [p for p in m.generator.parameters() if p.requires_grad]
    # discriminator player: only the discriminator gets gradient (rollouts are stop-grad)
    loss, logs = m.loss("discriminator", batch, 0)
    loss.backward()
    assert all(p.grad is not None for p in disc) and all(p.grad is None for p in gen)
    assert logs["n"] in (1.0, 2.0)
    m.zero_grad(set_to_none=True)
    # generator player: the student gets gradient (through the ASD term even where DMD's is 0),
    # the discriminator none; the logged terms add up to the loss
    loss, logs = m.loss("generator", batch, 0)
    loss.backward()
    assert all(p.grad is None for p in disc)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen)
    assert torch.isclose(loss.detach(), torch.tensor(logs["dm"] + 1.0 * logs["asd_g"]), atol=1e-5)
    assert set(m.parameters_of("discriminator")) == set(disc)


def test_generator_asd_term_formula(teacher):
    """L_G = softplus(-D(x^(n))) averaged, on the generator's own n-step rollout."""
    m = _asd(teacher, asd_weight=0.5)
    m.asd_logits = lambda x, track=False: (x.flatten(1).mean(1), x)
    x = torch.randn(2, *SHAPE, requires_grad=True)
    logs: dict[str, float] = {}
    total = m.auxiliary_generator_terms(torch.tensor(0.0), logs, x, None, 2, torch.device("cpu"))
    assert torch.isclose(total, 0.5 * F.softplus(-x.flatten(1).mean(1)).mean(), atol=1e-6)
    assert logs["asd_g"] == pytest.approx(float(F.softplus(-x.detach().flatten(1).mean(1)).mean()), abs=1e-6)


def test_stream_uses_ffe_and_training_rollout_uses_n(teacher):
    m = _asd(teacher, ffe_steps=3)
    real = torch.rand(2, *SHAPE) * 2 - 1
    r = m.stream(2, 3, 1, real=real)
    assert r.steps == [0, 3, 1] and r.nfe == 4
    assert m.inference_schedule(6, 2, 1) == [0, 3, 2, 2, 2, 2]
    assert m.training_schedule(2) == [0, 2, 2]  # FFE off in training by default
    assert _asd(teacher, ffe_steps=3, ffe_train=True).training_schedule(1) == [0, 3, 1]


def test_config_fragments():
    sec = asd_config(max_steps=3, ffe_steps=3)["method"]
    assert sec["kind"] == "asd" and sec["params"]["max_steps"] == 3 and sec["params"]["ffe_steps"] == 3
    assert self_forcing_config(steps=2)["method"]["params"]["exit"] == "random"
