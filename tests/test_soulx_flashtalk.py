"""SoulX-FlashTalk (Shen et al. 2025, arXiv:2512.23379): intra-chunk bidirectional vs strictly
causal attention, and multi-step retrospective self-correction windows."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import FlowProcess
from distillery.recipes.soulx_flashtalk import (
    SoulXFlashTalk,
    retrospective_audio,
    soulx_config,
)
from distillery.streaming.masks import chunk_ids, frame_ids, streaming_mask
from distillery.streaming.models import VideoTransformer
from distillery.streaming.rollout import rollout

SHAPE = (6, 1, 8, 8)  # 3 chunks of 2 frames
RATE = 2


def _denoiser(attention: str) -> Denoiser:
    net = VideoTransformer(frames=6, in_channels=1, image_size=8, patch=4, dim=16, depth=1, heads=2, chunk=2,
                           attention=attention, audio_dim=1, audio_rate=RATE, max_frames=16, layout="joint")
    return Denoiser(net, FlowProcess(), prediction="velocity", sample_shape=SHAPE)


@pytest.fixture(scope="module")
def teacher() -> Denoiser:
    torch.manual_seed(0)
    t = _denoiser("bidirectional")
    with torch.no_grad():  # off the zero-initialised output layers
        for p in t.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return t


def _soulx(teacher: Denoiser, attention: str = "block_causal", **kw) -> SoulXFlashTalk:
    student = _denoiser(attention)
    student.load_state_dict(teacher.state_dict())
    params = {"steps": 2, "prefix_chunks": 1, "fake_updates": 1, **kw}
    return SoulXFlashTalk(student, teacher, **params)


def _batch(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"x": torch.rand(n, *SHAPE, generator=g) * 2 - 1, "audio": torch.rand(n, 6 * RATE, 1, generator=g) * 2 - 1}


def test_block_and_frame_causal_masks_hand_written():
    """4 frames, chunks of 2, one token per frame."""
    c, f = chunk_ids(4, 1, 2), frame_ids(4, 1)
    block = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    frame = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(streaming_mask(c, c, "block_causal"), block)
    assert torch.equal(streaming_mask(c, c, "frame_causal", q_frames=f, k_frames=f), frame)


def test_frame_causal_first_frame_ignores_the_second_inside_a_chunk(teacher):
    """Intra-chunk bidirectional: frame 0 of a chunk sees frame 1; strictly causal: it does not."""
    cond = {"audio": _batch()["audio"]}
    x = torch.randn(2, 2, 1, 8, 8)
    x2 = x.clone()
    x2[:, 1] = torch.randn_like(x2[:, 1])
    t = torch.full((2,), 0.7)
    for attention, same in (("block_causal", False), ("frame_causal", True)):
        net = _soulx(teacher, attention).generator.net
        with torch.no_grad():
            a = net.denoise_chunk(x, t, net.init_cache(), 0, cond)
            b = net.denoise_chunk(x2, t, net.init_cache(), 0, cond)
        assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6) is same, attention


def test_retrospective_audio_formula():
    a = torch.arange(12, dtype=torch.float32).reshape(1, 12, 1)  # 6 frames at rate 2
    out = retrospective_audio(a, 4, 2)
    assert out[0, :, 0].tolist() == list(range(8)) + list(range(12))
    assert torch.equal(retrospective_audio(a, 0, 2), a)
    with pytest.raises(ConfigError, match="frames_before"):
        retrospective_audio(a, 7, 2)


def test_window_is_the_last_chunks_of_the_students_own_longer_stream(teacher):
    m = _soulx(teacher, retro_chunks=3, grad="all")
    batch = _batch()
    cond = {"audio": batch["audio"]}
    draws = []
    for _ in range(12):  # r is drawn in {0, 1, 2, 3}
        with torch.no_grad():
            torch.manual_seed(5 + len(draws))
            window, _ = m.generate(2, cond, torch.device("cpu"), real=batch["x"])
        draws.append(m.last_retro)
        assert window.shape == (2, *SHAPE)
        r = m.last_retro
        # the same stream by hand: r + 3 chunks from the real prefix, audio = first r chunks' audio + the batch's
        torch.manual_seed(5 + len(draws) - 1)
        torch.randint(0, 4, (1,))  # the draw of r (global RNG outside the training loop)
        long_real = torch.cat([batch["x"], torch.zeros(2, 2 * r, 1, 8, 8)], 1)
        with torch.no_grad():
            ref = rollout(m.generator, 2, 3 + r, [2] * (3 + r), cond={"audio": retrospective_audio(batch["audio"], 2 * r, RATE)},
                          real=long_real, prefix_chunks=1, context="self", grad="all", exit="random")
        assert torch.allclose(window, ref.video[:, 2 * r:], atol=1e-6), r
        if r:
            assert not torch.allclose(window[:, :2], batch["x"][:, :2])  # the window starts on the student's own chunk
    assert set(draws) == {0, 1, 2, 3}


def test_generator_loss_on_a_retrospective_window_reaches_the_student(teacher):
    m = _soulx(teacher, retro_chunks=2, grad="last")
    with torch.no_grad():  # the fake score starts as the teacher's copy: move it so that fake - real != 0
        for p in m.fake.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = _batch()
    torch.manual_seed(0)
    loss, logs = m.loss("generator", batch, 0)
    loss.backward()
    assert "retro_chunks" in logs and logs["dm"] >= 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.generator.parameters())
    assert all(p.grad is None for p in m.teacher.parameters())
    fake_loss, _ = m.loss("fake_score", batch, 0)
    assert torch.isfinite(fake_loss)


def test_equal_nfe_for_both_attentions_and_bad_params(teacher):
    assert _soulx(teacher, "block_causal").describe()["nfe_per_sample"] == _soulx(teacher, "frame_causal").describe()["nfe_per_sample"] == 4
    for kw, match in (({"retro_chunks": -1}, "retro_chunks"), ({"retro_chunks": 1, "context": "teacher"}, "context"),
                      ({"retro_chunks": 1, "grad": "random"}, "grad"), ({"retro_chunks": 4}, "retro_chunks"),
                      ({"retro_chunks": 1, "schedule": "diagonal"}, "uniform")):
        with pytest.raises(ConfigError, match=match):
            _soulx(teacher, **kw)
    assert soulx_config(retro_chunks=2)["method"]["params"]["retro_chunks"] == 2
