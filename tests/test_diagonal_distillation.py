"""Diagonal Distillation (Liu et al. 2026, arXiv:2603.09488): the equal-NFE diagonal schedule,
partially denoised context, and the method's rollouts."""

from __future__ import annotations

import itertools

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import FlowProcess
from distillery.recipes.diagonal_distillation import (
    DiagonalDistillation,
    diagonal_config,
    diagonal_schedule,
    uniform_config,
)
from distillery.streaming.models import VideoTransformer
from distillery.streaming.objectives.self_forcing import SelfForcing

SHAPE = (8, 1, 8, 8)  # 4 chunks of 2 frames


def _denoiser(attention: str) -> Denoiser:
    net = VideoTransformer(frames=8, in_channels=1, image_size=8, patch=4, dim=16, depth=1, heads=2, chunk=2,
                           attention=attention, max_frames=64)
    return Denoiser(net, FlowProcess(), prediction="x0", sample_shape=SHAPE)


@pytest.fixture(scope="module")
def teacher() -> Denoiser:
    torch.manual_seed(0)
    return _denoiser("bidirectional")


def _student(teacher: Denoiser) -> Denoiser:
    student = _denoiser("block_causal")
    student.load_state_dict(teacher.state_dict())
    return student


def test_diagonal_schedule_hand_written():
    assert diagonal_schedule(4, 2, prefix_chunks=1) == [0, 3, 2, 1]
    assert diagonal_schedule(5, 3) == [5, 4, 3, 2, 1]
    assert diagonal_schedule(3, 3, last=3) == [3, 3, 3]  # last == steps: uniform
    assert diagonal_schedule(2, 2, prefix_chunks=1) == [0, 2]  # one generated chunk: the mean
    # 15 generated chunks from 3 to 1: 3 + 2*(14 - i)/14, round half to even
    assert diagonal_schedule(16, 2, prefix_chunks=1) == [0, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1]
    assert diagonal_schedule(7, 4, prefix_chunks=1, last=2) == [0, 6, 5, 4, 4, 3, 2]


def test_diagonal_nfe_equals_uniform():
    """Sum of the generated chunks' steps == generated chunks * steps, for every size."""
    for generated in range(1, 41):
        for steps in range(1, 7):
            for last in range(1, steps + 1):
                for prefix in (0, 1, 2):
                    s = diagonal_schedule(generated + prefix, steps, prefix_chunks=prefix, last=last)
                    g = s[prefix:]
                    assert s[:prefix] == [0] * prefix
                    assert sum(g) == generated * steps, (generated, steps, last, prefix, s)
                    assert all(a >= b for a, b in itertools.pairwise(g))  # more steps early, fewer later
                    if generated > 1:
                        assert g[0] == 2 * steps - last and g[-1] == last


@pytest.mark.parametrize("args,kw,key", [((4, 2), {"last": 3}, "last"), ((4, 0), {}, "steps"),
                                         ((4, 2), {"prefix_chunks": 4}, "prefix_chunks"), ((0, 2), {}, "chunks"),
                                         ((4, 2), {"last": 0}, "last")])
def test_diagonal_schedule_bad_input(args, kw, key):
    with pytest.raises(ConfigError, match=key):
        diagonal_schedule(*args, **kw)


@pytest.mark.parametrize("kw,key", [({"schedule": "uniform"}, "schedule"), ({"first": 4}, "first"),
                                    ({"last": 3}, "last"), ({"context_noise": 1.5}, "context_noise")])
def test_method_bad_params(teacher, kw, key):
    with pytest.raises(ConfigError, match=key):
        DiagonalDistillation(_student(teacher), teacher, steps=2, prefix_chunks=1, fake_updates=1, **kw)


def test_equal_nfe_rollouts_and_context_noise(teacher):
    """The method's training and inference rollouts spend the uniform schedule's NFE, and every
    context chunk enters the cache at noise level tau (training and inference)."""
    torch.manual_seed(0)
    d = DiagonalDistillation(_student(teacher), teacher, steps=2, prefix_chunks=1, context_noise=0.25, fake_updates=1)
    u = SelfForcing(_student(teacher), teacher, steps=2, prefix_chunks=1, exit="last", fake_updates=1)
    assert d.schedule == [0, 3, 2, 1] and u.schedule == [0, 2, 2, 2]  # the real prefix chunk takes no steps
    assert d.inference_schedule(16, 2) == diagonal_schedule(16, 2, prefix_chunks=1)
    net = d.generator.net
    seen: list[float] = []
    original = net.append_chunk

    def record(x, cache, i, cond=None, t=0.0):
        seen.append(float(torch.as_tensor(t).flatten()[0]))
        return original(x, cache, i, cond, t=t)

    net.append_chunk = record
    real = torch.rand(2, 32, 1, 8, 8) * 2 - 1
    r_d = d.stream(2, 16, 2, real=real)
    r_u = u.stream(2, 16, 2, real=real)
    assert r_d.nfe == r_u.nfe == 15 * 2
    assert r_d.steps == diagonal_schedule(16, 2, prefix_chunks=1)
    assert seen == [0.25] * 15  # 16 chunks: 15 context passes, all at tau
    seen.clear()
    batch = {"x": torch.rand(2, *SHAPE) * 2 - 1}
    loss, _ = d.loss("generator", batch, 0)
    loss.backward()
    assert seen == [0.25] * 3
    assert any(p.grad is not None for p in d.generator.parameters())


def test_config_fragments():
    p = diagonal_config(steps=2, context_noise=0.1)["method"]
    assert p["kind"] == "diagonal_distillation" and p["params"]["context_noise"] == 0.1
    u = uniform_config(steps=2)["method"]
    assert u["kind"] == "self_forcing" and u["params"]["exit"] == "last"
