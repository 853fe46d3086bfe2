"""LiveTalk (Chern et al. 2025, arXiv:2512.23576): condition curation on audio-motion sync, and
the ODE-init -> teacher-forcing DMD -> self-forcing DMD schedule."""

from __future__ import annotations

import itertools

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import FlowProcess
from distillery.recipes.livetalk import (
    LiveTalk,
    corrupt_conditions,
    livetalk_config,
    per_video_sync_error,
    talking_sprites,
)
from distillery.streaming.data import audio_rows, sprite_videos
from distillery.streaming.metrics import sync_error

SHAPE = (6, 1, 8, 8)  # 3 chunks of 2 frames
RATE = 2


def _denoiser(attention: str) -> Denoiser:
    from distillery.streaming.models import VideoTransformer

    net = VideoTransformer(frames=6, in_channels=1, image_size=8, patch=4, dim=16, depth=1, heads=2, chunk=2,
                           attention=attention, audio_dim=1, audio_rate=RATE, layout="joint")
    return Denoiser(net, FlowProcess(), prediction="velocity", sample_shape=SHAPE)


@pytest.fixture(scope="module")
def teacher() -> Denoiser:
    torch.manual_seed(0)
    t = _denoiser("bidirectional")
    with torch.no_grad():  # off the zero-initialised output layers, so that the teacher is not the zero map
        for p in t.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return t


def _livetalk(teacher: Denoiser, **kw) -> LiveTalk:
    student = _denoiser("block_causal")
    student.load_state_dict(teacher.state_dict())
    params = {"steps": 2, "prefix_chunks": 1, "fake_updates": 1, **kw}
    return LiveTalk(student, teacher, **params)


def _batch(n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"x": torch.rand(n, *SHAPE, generator=g) * 2 - 1, "audio": torch.rand(n, 6 * RATE, 1, generator=g) * 2 - 1}


# -- curation -----------------------------------------------------------------------------------
def test_per_video_sync_error_is_the_metric_per_video_and_the_formula():
    s = sprite_videos(frames=8, audio=True, n_train=6, n_test=2, seed=1)
    x, a = s.train.x, s.train.extra["audio"]
    err = per_video_sync_error(x, a)
    assert err.shape == (6,)
    assert float(err.mean()) == pytest.approx(sync_error(x, a), abs=1e-9)  # same rule, per video
    # the formula, written out: centroid rows of pixels above 0.1 against the audio's implied rows
    v = ((x.double() + 1) / 2).clamp(0, 1).mean(2)
    w = torch.where(v > 0.1, v, torch.zeros_like(v))
    rows = (w.sum(-1) * torch.arange(16, dtype=torch.float64)).sum(-1) / w.sum((-2, -1))
    implied = (16 - 8) / 2 * (1 + a[..., 0].double().reshape(6, 8, 4).mean(-1))
    ref = ((rows.diff(dim=1) - implied.diff(dim=1)).abs()).mean(1)
    assert torch.allclose(err, ref, atol=1e-9)
    assert torch.allclose(implied, audio_rows(a.double(), 8, 8.0))
    assert float(err.max()) < 0.3  # the true audio drives the motion


def test_corrupt_conditions_swaps_audio_among_noisy_videos_only():
    audio = torch.arange(40, dtype=torch.float32).reshape(10, 4, 1)
    out, noisy = corrupt_conditions(audio, 0.5, torch.Generator().manual_seed(0))
    assert noisy.any() and (~noisy).any()
    assert torch.equal(out[~noisy], audio[~noisy])
    own = (out[noisy] == audio[noisy]).flatten(1).all(1)
    assert not bool(own.any())  # every noisy video carries another video's audio
    assert sorted(out[noisy][:, 0, 0].tolist()) == sorted(audio[noisy][:, 0, 0].tolist())  # a permutation
    with pytest.raises(ConfigError, match="noisy_fraction"):
        corrupt_conditions(audio, 1.5, torch.Generator())


def test_talking_sprites_curation_drops_desynchronised_videos():
    clean = sprite_videos(frames=8, audio=True, n_train=60, n_test=5, seed=2)
    noisy = talking_sprites(frames=8, noisy_fraction=0.4, curate=False, n_train=60, n_test=5, seed=2)
    cur = talking_sprites(frames=8, noisy_fraction=0.4, curate=True, sync_threshold=0.1, n_train=60, n_test=5, seed=2)
    assert noisy.info["kept"] == 60 and noisy.info["noisy"] > 10
    assert torch.equal(cur.test.x, clean.test.x) and torch.equal(cur.test.extra["audio"], clean.test.extra["audio"])
    err = per_video_sync_error(cur.train.x, cur.train.extra["audio"])
    assert float(err.max()) <= 0.1
    assert cur.info["kept"] == len(cur.train) < 60
    assert cur.info["noisy_kept"] <= 1  # a swapped audio rarely happens to match the motion (clean: < 0.07 px)
    assert float(per_video_sync_error(noisy.train.x, noisy.train.extra["audio"]).mean()) > float(err.mean()) + 0.15
    for key, value, match in (("noisy_fraction", -0.1, "noisy_fraction"), ("curate", "yes", "curate"),
                              ("sync_threshold", 0.0, "sync_threshold"), ("audio", False, "audio")):
        with pytest.raises(ConfigError, match=match):
            talking_sprites(frames=8, n_train=4, n_test=2, **{key: value})


# -- the schedule -------------------------------------------------------------------------------
def test_stages_by_step(teacher):
    m = _livetalk(teacher, ode_steps=3, warmup_steps=2, pair_steps=1)
    assert [m.stage(s) for s in range(7)] == ["ode"] * 3 + ["teacher_forcing"] * 2 + ["self_forcing"] * 2
    base = _livetalk(teacher, warmup_steps=2, final_context="teacher")
    assert {base.stage(s) for s in range(10)} == {"teacher_forcing"}
    assert m.describe()["nfe_per_sample"] == 4  # 2 steps x 2 generated chunks (chunk 0 is the real prefix)


def test_ode_stage_regresses_the_teachers_conditioned_ode_path(teacher):
    """K = 1: every chunk's input is the prior noise at t_max, the target the teacher's Euler
    solution under the batch's audio, the context the teacher's clean video."""
    m = _livetalk(teacher, ode_steps=2, pair_steps=3, steps=1)
    batch = _batch()
    torch.manual_seed(9)
    loss, logs = m.loss("generator", batch, 0)
    assert logs["stage"] == 0.0 and "regression" in logs
    torch.manual_seed(9)
    x_T = FlowProcess().prior((3, *SHAPE))
    cond = {"audio": batch["audio"]}
    x = x_T.clone()
    grid = torch.linspace(1.0, 0.0, 4)  # flow: t_max = 1 to the data end 0 in 3 Euler steps
    with torch.no_grad():
        for a, b in itertools.pairwise(grid):
            v = teacher(x, a.expand(3), cond)  # velocity prediction dx/dt
            x = x + (b - a) * v
    t = torch.ones(3, 6)
    pred = m.generator.net(x_T, t, cond, context=x)
    x0_hat = x_T - pred  # flow x_t = (1 - t) x0 + t eps, velocity eps - x0, at t = 1: x0 = x_t - v
    want = (x0_hat - x).pow(2).mean()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-4)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.generator.parameters())


def test_context_follows_the_stage(teacher):
    """Teacher forcing: a generated chunk sees the *real* chunk before it; self forcing: its own."""
    m = _livetalk(teacher, warmup_steps=1)
    batch = _batch(2)
    cond = {"audio": batch["audio"]}
    changed = batch["x"].clone()
    changed[:, 2:4] = -changed[:, 2:4]  # the real chunk 1 (chunk 0 is the prefix)

    def chunk2(stage_step: int, real: torch.Tensor) -> torch.Tensor:
        m.context = "self" if m.stage(stage_step) == "self_forcing" else "teacher"
        torch.manual_seed(4)
        with torch.no_grad():
            video, _ = m.generate(2, cond, torch.device("cpu"), real=real)
        return video[:, 4:6]

    assert not torch.allclose(chunk2(0, batch["x"]), chunk2(0, changed))  # teacher forcing reads real chunk 1
    assert torch.allclose(chunk2(1, batch["x"]), chunk2(1, changed))  # self forcing does not
    # and loss() sets the context by the step
    m.loss("fake_score", batch, 0)
    assert m.context == "teacher"
    m.loss("fake_score", batch, 1)
    assert m.context == "self"


def test_bad_params_name_the_key(teacher):
    for kw, match in (({"context": "self"}, "context"), ({"ode_steps": -1}, "ode_steps"),
                      ({"warmup_steps": 1.5}, "warmup_steps"), ({"pair_steps": 0}, "pair_steps"), ({"final_context": "diffusion"}, "final_context"),
                      ({"ode_steps": 1, "schedule": "diagonal"}, "uniform")):
        with pytest.raises(ConfigError, match=match):
            _livetalk(teacher, **kw)
    assert livetalk_config(ode_steps=2)["method"]["params"]["pair_steps"] == 4
