"""The streaming engine's core: masks against hand-written matrices, the KV cache against the
uncached forward pass (windows, sinks, linear memory), rollouts (gradients only where stated,
schedules summing to the stated NFE) and bad input."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError
from distillery.generative.denoisers import Denoiser
from distillery.generative.processes import build_process
from distillery.streaming import masks as M
from distillery.streaming.models import VideoTransformer
from distillery.streaming.rollout import chunk_schedule, rollout

# -- masks ------------------------------------------------------------------------------------


def test_block_causal_mask_by_hand():
    c = M.chunk_ids(frames=4, tokens_per_frame=1, chunk=2)  # frames 0,1 | 2,3
    assert c.tolist() == [0, 0, 1, 1]
    expected = torch.tensor([[1, 1, 0, 0],
                             [1, 1, 0, 0],
                             [1, 1, 1, 1],
                             [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(M.block_causal(c, c), expected)
    f = M.frame_ids(4, 1)
    frame_causal = M.streaming_mask(c, c, "frame_causal", q_frames=f, k_frames=f)
    assert torch.equal(frame_causal, torch.tril(torch.ones(4, 4, dtype=torch.bool)))
    assert M.bidirectional(c, c).all()


def test_window_sinks_and_evicted_by_hand():
    c = torch.arange(5)  # one token per chunk
    window = M.sliding_window(c, c, 2)
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [0, 1, 1, 0, 0],
                             [0, 0, 1, 1, 0],
                             [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(window, expected)
    sinks = M.with_sinks(window, c, c, 1)
    expected[2:, 0] = True
    assert torch.equal(sinks, expected)
    gone = M.evicted(c, c, window=2, sinks=1)
    want = torch.zeros(5, 5, dtype=torch.bool)
    want[3, 1] = want[4, 1] = want[4, 2] = True
    assert torch.equal(gone, want)
    # every causal key is in exactly one of: the window, a sink, or evicted
    causal = M.block_causal(c, c)
    assert torch.equal((sinks | gone), causal) and not (sinks & gone).any()


def test_two_stream_asymmetric_alignment():
    q = torch.tensor([0, 1, 0, 0, 1, 1])  # chunk of each token
    s = torch.tensor([0, 0, 1, 1, 1, 1])  # stream 0: video (one token per chunk), stream 1: audio (two)
    plain = M.two_stream_block_causal(q, q, s, s)
    assert torch.equal(plain, M.block_causal(q, q))
    led = M.two_stream_block_causal(q, q, s, s, lead={0: {1: 1}})  # video sees the next chunk's audio
    assert bool(led[0, 4]) and not bool(plain[0, 4])  # video chunk 0 -> audio chunk 1
    assert not bool(led[2, 1])  # audio chunk 0 still does not see video chunk 1


def test_bad_mask_arguments():
    c = torch.arange(3)
    with pytest.raises(ConfigError, match="window"):
        M.sliding_window(c, c, 0)
    with pytest.raises(ConfigError, match="attention"):
        M.streaming_mask(c, c, "sideways")
    with pytest.raises(ConfigError, match="chunk"):
        M.chunk_ids(4, 1, 0)


# -- the KV cache equals the uncached pass ---------------------------------------------------------


def _model(**kw):
    torch.manual_seed(0)
    m = VideoTransformer(frames=8, chunk=2, max_frames=32, dim=16, depth=2, heads=2, **kw).double()
    with torch.no_grad():
        for p in m.parameters():  # zero-initialised adaLN and output layers would hide differences
            p.normal_(0.0, 0.2)
    return m


@pytest.mark.parametrize("kw", [{}, {"window": 2}, {"window": 2, "sinks": 1},
                                {"window": 2, "sinks": 1, "memory": "linear", "layout": "joint"},
                                {"attention": "frame_causal"}, {"layout": "joint"}, {"layout": "joint", "window": 2}],
                         ids=["full", "window", "sinks", "linear_memory", "frame_causal", "joint", "joint_window"])
def test_streaming_with_the_cache_equals_teacher_forcing(kw):
    m = _model(**kw)
    n, chunks = 2, 6  # 12 frames: longer than training (8), shorter than the table (32)
    context = torch.randn(n, 12, 1, 16, 16, dtype=torch.float64)
    noisy = torch.randn(n, 12, 1, 16, 16, dtype=torch.float64)
    t = torch.rand(n, dtype=torch.float64)
    full = m(noisy, t, context=context, context_t=0.3)
    cache, outs = m.init_cache(), []
    for i in range(chunks):
        outs.append(m.denoise_chunk(noisy[:, 2 * i:2 * i + 2], t, cache, i))
        m.append_chunk(context[:, 2 * i:2 * i + 2], cache, i, t=0.3)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=1e-10)
    if "window" in kw:  # the rolling cache is bounded: window + sinks chunks of 2 frames x 16 tokens
        assert len(cache) == (kw["window"] + kw.get("sinks", 0)) * 2 * 16
    else:
        assert len(cache) == chunks * 2 * 16


def test_the_linear_memory_changes_outputs_only_once_tokens_are_evicted():
    m = _model(window=2, memory="linear", layout="joint")
    x = torch.randn(1, 8, 1, 16, 16, dtype=torch.float64)
    t = torch.rand(1, dtype=torch.float64)
    with torch.no_grad():
        gated = m(x, t)
        for b in m.blocks:
            b.memory_gate.zero_()
        plain = m(x, t)
    # chunks 0 and 1 evict nothing (window 2): identical; chunk 2 on sees the memory of chunk 0
    torch.testing.assert_close(gated[:, :4], plain[:, :4], rtol=0, atol=1e-12)
    assert (gated[:, 4:] - plain[:, 4:]).abs().max() > 1e-6


def test_divided_attention_spatial_then_temporal():
    """Divided space-time attention: one block attends within a frame (a change in frame 0 reaches
    no other frame); the second block carries it across frames."""
    m = _model(layout="divided", attention="bidirectional")
    one = VideoTransformer(frames=8, chunk=2, dim=16, depth=1, heads=2, layout="divided", attention="bidirectional").double()
    with torch.no_grad():
        for p in one.parameters():
            p.normal_(0.0, 0.2)
    x = torch.randn(1, 8, 1, 16, 16, dtype=torch.float64)
    t = torch.rand(1, dtype=torch.float64)
    y = x.clone()
    y[:, 0, :, :4, :4] += 1.0  # patch 0 of frame 0
    d1 = (one(y, t) - one(x, t)).abs()
    assert d1[:, 1:].max() == 0 and d1[:, 0].max() > 0  # spatial only
    d2 = (m(y, t) - m(x, t)).abs()  # spatial then temporal
    assert d2[:, 3].max() > 0  # a later frame hears it through the temporal block
    with pytest.raises(ConfigError, match="layout"):
        VideoTransformer(frames=8, chunk=2, window=2, memory="linear")


def test_causality_later_frames_do_not_change_earlier_outputs():
    m = _model()
    x = torch.randn(2, 8, 1, 16, 16, dtype=torch.float64)
    t = torch.rand(2, 8, dtype=torch.float64)
    base = m(x, t)
    y = x.clone()
    y[:, 5] += 1.0  # frame 5 is in chunk 2
    moved = m(y, t)
    torch.testing.assert_close(moved[:, :4], base[:, :4], rtol=0, atol=0)
    assert (moved[:, 4:6] - base[:, 4:6]).abs().max() > 1e-6  # the same chunk sees it (bidirectional inside)


def test_position_table_and_condition_errors():
    m = VideoTransformer(frames=8, chunk=2, max_frames=8, dim=16, depth=1, heads=2, audio_dim=1, audio_rate=4)
    cache = m.init_cache()
    audio = torch.randn(1, 8 * 4, 1)
    for i in range(4):
        m.append_chunk(torch.zeros(1, 2, 1, 16, 16), cache, i, {"audio": audio})
    with pytest.raises(ConfigError, match="position table"):
        m.denoise_chunk(torch.zeros(1, 2, 1, 16, 16), torch.ones(1), cache, 4, {"audio": torch.randn(1, 40, 1)})
    with pytest.raises(ConfigError, match="audio stream"):
        m(torch.zeros(1, 8, 1, 16, 16), torch.ones(1), {"audio": torch.randn(1, 20, 1)})
    with pytest.raises(ConfigError, match="does not divide"):
        VideoTransformer(frames=9, chunk=2)
    with pytest.raises(ConfigError, match="window"):
        VideoTransformer(frames=8, chunk=2, memory="linear", layout="joint")
    with pytest.raises(ConfigError, match="cannot stream"):
        VideoTransformer(frames=8, chunk=2, attention="bidirectional").init_cache()


# -- rollouts ------------------------------------------------------------------------------------


def _student():
    torch.manual_seed(0)
    net = VideoTransformer(frames=8, chunk=2, dim=16, depth=2, heads=2)  # a spatial and a temporal block
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return Denoiser(net, build_process({"kind": "flow"}), "x0", sample_shape=(8, 1, 16, 16))


def test_chunk_schedules_sum_to_the_stated_nfe():
    assert chunk_schedule("uniform", 4, 2) == [2, 2, 2, 2]
    diagonal = chunk_schedule("diagonal", 4, first=4, last=1)
    assert diagonal == [4, 3, 2, 1] and sum(diagonal) == 10
    student = _student()
    r = rollout(student, 2, 4, diagonal)
    assert r.nfe == 10 and r.steps == diagonal and r.context_passes == 3
    r = rollout(student, 2, 4, [2, 2, 2, 2], real=torch.zeros(2, 8, 1, 16, 16), prefix_chunks=1)
    assert r.nfe == 6 and r.steps == [0, 2, 2, 2]
    with pytest.raises(ConfigError, match="diagonal"):
        chunk_schedule("diagonal", 3, first=0)


@pytest.mark.parametrize("grad", ["last", "all"])
def test_gradients_reach_only_the_stated_chunks(grad):
    student = _student()
    r = rollout(student, 2, 4, [2, 2, 2, 2], grad=grad, exit="last")
    assert r.grad_chunks == ([3] if grad == "last" else [0, 1, 2, 3])
    # the video is one tensor; per chunk, its gradient wrt the student's weights is zero unless stated
    for c in range(4):
        student.zero_grad()
        part = r.video[:, 2 * c:2 * c + 2]
        if not part.requires_grad:
            assert c not in r.grad_chunks
            continue
        part.sum().backward(retain_graph=True)
        got = sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None)
        assert (got > 0) == (c in r.grad_chunks), (c, got)


def test_teacher_forcing_context_is_the_real_video():
    student = _student()
    real = torch.randn(2, 8, 1, 16, 16)
    torch.manual_seed(1)
    a = rollout(student, 2, 4, [1, 1, 1, 1], real=real, context="teacher")
    torch.manual_seed(1)
    b = rollout(student, 2, 4, [1, 1, 1, 1], real=real, context="self")
    torch.testing.assert_close(a.video[:, :2], b.video[:, :2])  # chunk 0 sees no context in either
    assert (a.video[:, 2:] - b.video[:, 2:]).abs().max() > 1e-6  # later chunks see different context
    with pytest.raises(ConfigError, match="real videos"):
        rollout(student, 2, 4, [1, 1, 1, 1], context="teacher")
    with pytest.raises(ConfigError, match="schedule"):
        rollout(student, 2, 4, [1, 1])
