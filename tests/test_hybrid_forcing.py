"""Hybrid Forcing (Li et al. 2026, arXiv:2604.10103): blinking-sprite data, the staged method's
checks, the hybrid attention against a hand-written formula, recall and cost measurements."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from distillery.errors import ConfigError  # noqa: E402
from distillery.recipes import hybrid_forcing as hf  # noqa: E402
from distillery.streaming.models import VideoTransformer  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "distillery" / "configs"


def _net(window: int | None, memory: str = "linear", **kw) -> VideoTransformer:
    torch.manual_seed(0)
    net = VideoTransformer(12, 1, 16, patch=8, dim=16, depth=1, heads=2, chunk=2, window=window, memory=memory,
                           max_frames=80, **{"layout": "joint", **kw})
    with torch.no_grad():  # adaLN-Zero starts as the identity: give every layer a non-trivial value
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for block in net.blocks:  # the memory gates start at 0, as in the engine
            if block.memory_gate is not None:
                block.memory_gate.zero_()
    return net.eval()


# -- data -----------------------------------------------------------------------------------------
def test_blink_sprites_hides_then_shows_the_same_static_digit():
    s = hf.blink_sprites(frames=8, show=2, hide=3, n_train=6, n_test=4)
    x, pos = s.train.x, s.train.extra["pos"]
    assert x.shape == (6, 8, 1, 16, 16) and s.name == "blink_sprites" and s.info["hide"] == 3
    assert torch.all(x[:, 2:5] == -1.0)
    assert torch.all(x[:, [0, 1, 5, 6, 7]].amax((2, 3, 4)) > 0)
    assert torch.equal(x[:, 0], x[:, 7])  # static: the same frame before and after
    assert torch.allclose(pos, pos[:, :1].expand_as(pos))


@pytest.mark.parametrize("kw, key", [({"show": 0}, "show"), ({"hide": 1.5}, "hide"), ({"show": 4, "hide": 4}, r"show \+ hide")])
def test_blink_sprites_bad_params_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        hf.blink_sprites(frames=8, n_train=2, n_test=2, **kw)


# -- hybrid attention against the formula ------------------------------------------------------------
def test_linear_memory_matches_hand_written_formula():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    evicted = torch.tensor([True, True, False, True, False])
    mem = evicted[None, :].expand(3, 5)
    from distillery.streaming.models import _Block

    out = _Block._linear_memory(q, k, v, mem, None)
    phi = lambda t: torch.where(t > 0, t + 1, torch.exp(t))  # noqa: E731  elu(t) + 1
    want = torch.zeros_like(q)
    for h in range(2):
        for i in range(3):
            w = torch.stack([phi(q[0, h, i]) @ phi(k[0, h, j]) for j in range(5) if evicted[j]])
            vs = torch.stack([v[0, h, j] for j in range(5) if evicted[j]])
            want[0, h, i] = (w[:, None] * vs).sum(0) / w.sum()
    assert torch.allclose(out, want, atol=1e-6)
    # the state form (S, z) of the same evicted keys gives the same output
    pk = F.elu(k[:, :, evicted]) + 1
    S, z = pk.transpose(-2, -1) @ v[:, :, evicted], pk.sum(2)
    assert torch.allclose(_Block._linear_memory(q, k[:, :, :0], v[:, :, :0], None, (S, z)), want, atol=1e-6)


def _stream_chunk4(net: VideoTransformer, video: torch.Tensor) -> torch.Tensor:
    cache = net.init_cache()
    for i in range(4):
        net.append_chunk(video[:, 2 * i:2 * i + 2], cache, i)
    return net.denoise_chunk(video[:, 8:10], torch.full((1,), 0.5), cache, 4)


@torch.no_grad()
def test_memory_carries_chunk_zero_beyond_the_window_only_when_gated_on():
    torch.manual_seed(2)
    video = torch.randn(1, 12, 1, 16, 16)
    other = video.clone()
    other[:, :2] = torch.randn(1, 2, 1, 16, 16)  # change chunk 0 only: 4 chunks back from chunk 4
    net = _net(window=2)
    # gates at 0 (the engine's start, and the window-only ablation): chunk 0 is out of reach
    assert torch.allclose(_stream_chunk4(net, video), _stream_chunk4(net, other), atol=1e-6)
    with torch.no_grad():
        net.blocks[0].memory_gate.fill_(0.7)
    assert not torch.allclose(_stream_chunk4(net, video), _stream_chunk4(net, other), atol=1e-4)
    # full attention sees it too
    dense = _net(window=64)
    assert not torch.allclose(_stream_chunk4(dense, video), _stream_chunk4(dense, other), atol=1e-4)


@torch.no_grad()
def test_teacher_forcing_equals_streaming_with_the_trained_gate():
    """The memory reaches the evicted context in training (teacher forcing, explicit masked form)
    as it does in the cache (state form)."""
    net = _net(window=2)
    net.blocks[0].memory_gate.fill_(0.5)
    torch.manual_seed(3)
    video, noisy = torch.randn(1, 12, 1, 16, 16), torch.randn(1, 12, 1, 16, 16)
    t = torch.full((1,), 0.5)
    full = net(noisy, t, None, context=video)
    cache = net.init_cache()
    for i in range(6):
        out = net.denoise_chunk(noisy[:, 2 * i:2 * i + 2], t, cache, i)
        assert torch.allclose(out, full[:, 2 * i:2 * i + 2], atol=1e-5), i
        net.append_chunk(video[:, 2 * i:2 * i + 2], cache, i)


# -- the method's checks ------------------------------------------------------------------------------
class _Student:
    def __init__(self, net):
        self.net = net


@pytest.mark.parametrize("window, memory, params, key", [
    (2, "linear", {"stage": "warm"}, "stage"),
    (2, "none", {"stage": "hybrid"}, "memory 'linear'"),
    (2, "linear", {"stage": "dense"}, "stage 'dense' needs a window"),
    (64, "linear", {"stage": "hybrid"}, "stage 'hybrid' needs a window"),
    (2, "linear", {"stage": "hybrid", "memory": "yes"}, "memory must be"),
    (64, "linear", {"stage": "dense", "gate_init": 0.5}, "gate_init"),
])
def test_method_refuses_bad_stage_setups(window, memory, params, key):
    net = _net(window=window, memory=memory)
    with pytest.raises(ConfigError, match=key):
        hf.HybridForcing(_Student(net), _Student(_net(window=64)), **params)


def test_method_refuses_a_windowed_or_bidirectional_teacher():
    for teacher in (_net(window=2), _net(window=64, attention="bidirectional")):
        with pytest.raises(ConfigError, match="dense causal"):
            hf.HybridForcing(_Student(_net(window=2)), _Student(teacher))


def test_window_only_freezes_gates_at_zero_and_gate_init_sets_them():
    from distillery.generative.denoisers import Denoiser
    from distillery.generative.processes import build_process

    process = build_process({"kind": "flow"})
    teacher = Denoiser(_net(window=64), process, "velocity", (12, 1, 16, 16), None)
    for memory, gate_init, want_grad, want in ((False, 0.0, False, 0.0), (True, 0.25, True, 0.25)):
        net = _net(window=2)
        net.blocks[0].memory_gate.data.fill_(0.9)
        student = Denoiser(net, process, "velocity", (12, 1, 16, 16), None)
        m = hf.HybridForcing(student, teacher, stage="hybrid", memory=memory, gate_init=gate_init)
        gate = net.blocks[0].memory_gate
        assert gate.requires_grad is want_grad and torch.allclose(gate, torch.full_like(gate, want))
        assert all(p is not gate for p in m.parameters_of("model")) is (not want_grad)
        assert m.describe()["stage"] == "hybrid"


def test_window_only_equals_a_network_without_memory():
    torch.manual_seed(4)
    video = torch.randn(1, 12, 1, 16, 16)
    a = _net(window=2)
    a.blocks[0].memory_gate.data.zero_()
    b = _net(window=2, memory="none")
    b.load_state_dict({k: v for k, v in a.state_dict().items() if "memory_gate" not in k})
    with torch.no_grad():
        assert torch.allclose(_stream_chunk4(a, video), _stream_chunk4(b, video), atol=1e-6)


# -- measurements ---------------------------------------------------------------------------------------
def test_stream_cost_cache_bytes_match_the_hand_count():
    # at frame 16 (chunk 8), the cache holds chunks 0..7: full keeps all 8, a window of 2 keeps 2
    dim, heads, depth, tokens = 16, 2, 1, 4  # patch 8 on 16x16: 4 tokens per frame
    per_token = 2 * dim * 4  # keys + values, float32
    full = hf.stream_cost(_net(window=64, memory="none"), 16, repeats=1)
    window = hf.stream_cost(_net(window=2, memory="none"), 16, repeats=1)
    hybrid = hf.stream_cost(_net(window=2), 16, repeats=1)
    assert full["cache_bytes"] == depth * 8 * 2 * tokens * per_token
    assert window["cache_bytes"] == depth * 2 * 2 * tokens * per_token
    hd = dim // heads
    assert hybrid["cache_bytes"] == window["cache_bytes"] + depth * 4 * heads * (hd * hd + hd)
    assert full["seconds_per_frame"] > 0
    with pytest.raises(ConfigError, match="max_frames"):
        hf.stream_cost(_net(window=2), 200)


def test_recall_metrics_on_ground_truth_and_on_blank_videos():
    s = hf.blink_sprites(frames=8, show=2, hide=3, n_train=2, n_test=40)
    x, pos, y = s.test.x, s.test.extra["pos"], s.test.y
    good = hf.recall_metrics(x, pos, y, 5)
    assert good["recall_position_error"] < 0.5 and good["recall_accuracy"] >= 0.7
    blank = torch.full_like(x, -1.0)
    blank[:, 5:, 0, 0:8, 8:16] = x[:, 5:, 0, 4:12, 4:12]  # something, at the wrong place
    bad = hf.recall_metrics(blank, pos, y, 5)
    assert bad["recall_position_error"] > good["recall_position_error"] + 1.0
    assert hf.hidden_leak(x, 2, 5) == 0.0
    with pytest.raises(ConfigError, match="start"):
        hf.recall_metrics(x, pos, y, 8)


def test_configs_parse():
    import yaml

    from distillery.config import parse_config

    for name in ("hybrid_forcing_blink_teacher", "hybrid_forcing_blink"):
        cfg = parse_config(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()), name)
        assert cfg.engine == "streaming"
    cfg = hf.stage_config("hybrid", memory=False)
    assert cfg["method"]["params"]["memory"] is False and "gate_init" not in cfg["method"]["params"]


def test_loss_matches_the_dense_teacher_and_trains_the_gate_only_with_memory():
    from distillery.generative.denoisers import Denoiser
    from distillery.generative.processes import build_process

    process = build_process({"kind": "flow"})
    teacher = Denoiser(_net(window=64), process, "velocity", (12, 1, 16, 16), None)
    batch = {"x": torch.randn(2, 12, 1, 16, 16), "y": torch.zeros(2, dtype=torch.long)}
    for memory in (False, True):
        net = _net(window=2)
        net.load_state_dict(teacher.net.state_dict())
        m = hf.HybridForcing(Denoiser(net, process, "velocity", (12, 1, 16, 16), None), teacher, stage="hybrid",
                             memory=memory, noise="chunk")
        loss, logs = m.loss("model", batch, 0)
        loss.backward()
        gate = net.blocks[0].memory_gate
        assert (gate.grad is not None and float(gate.grad.abs().sum()) > 0) is memory
        # the formula: the student's and the teacher's teacher-forced predictions on the same x_t
        assert logs["distill"] == pytest.approx(float(loss.detach()), rel=1e-6)
    dense = _net(window=64)
    dense.load_state_dict(teacher.net.state_dict())
    same = hf.HybridForcing(Denoiser(dense, process, "velocity", (12, 1, 16, 16), None), teacher, stage="dense")
    assert float(same.loss("model", batch, 0)[0].detach()) == pytest.approx(0.0, abs=1e-10)  # same weights, same attention
    with pytest.raises(ConfigError, match="teacher"):
        hf.HybridForcing(Denoiser(_net(window=2), process, "velocity", (12, 1, 16, 16), None), None)
