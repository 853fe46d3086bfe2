"""OmniForcing (Su et al. 2026, arXiv:2603.11647): the packed AV stream, the joint model's KV cache
against its teacher-forcing pass, the asymmetric mask by hand, shapes and bad input."""

from __future__ import annotations

import pytest
import torch

from distillery.errors import ConfigError
from distillery.recipes.omniforcing import joint_av_mask, method, net, omni_sprites, pack_av, unpack_av
from distillery.streaming.models import VideoTransformer


def test_pack_layout_by_hand_and_round_trip():
    video = torch.zeros(1, 2, 1, 4, 3)
    audio = torch.tensor([[0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4]])  # (B, T*rate), rate 4
    x = pack_av(video, audio)
    assert x.shape == (1, 2, 2, 4, 3)
    want = torch.tensor([[0.1] * 3, [0.2] * 3, [0.3] * 3, [0.4] * 3])  # frame 0: one row (band) per sample
    assert torch.equal(x[0, 0, 1], want)
    assert torch.equal(x[0, 1, 1], -want)
    v, a = unpack_av(x, 4)
    assert torch.equal(v, video)
    assert torch.allclose(a[..., 0], audio)
    # a generated band is read as its mean
    x[0, 0, 1, 0] = torch.tensor([0.0, 0.1, 0.2])
    assert torch.allclose(unpack_av(x, 4)[1][0, 0, 0], torch.tensor(0.1))
    # the audio-only stream: C = 0
    assert pack_av(video[:, :, :0], audio).shape == (1, 2, 1, 4, 3)


def test_joint_mask_by_hand():
    # tokens: chunk 0 video, chunk 0 audio, chunk 1 video, chunk 1 audio, chunk 2 video, chunk 2 audio
    c = torch.tensor([0, 0, 1, 1, 2, 2])
    s = torch.tensor([0, 1, 0, 1, 0, 1])
    plain = torch.tensor([[1, 1, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0, 0],
                          [1, 1, 1, 1, 0, 0],
                          [1, 1, 1, 1, 0, 0],
                          [1, 1, 1, 1, 1, 1],
                          [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(joint_av_mask(c, c, s, s), plain)
    lead = plain.clone()
    lead[0, 3] = lead[2, 5] = True  # a video query sees the next chunk's audio
    assert torch.equal(joint_av_mask(c, c, s, s, audio_lead=1), lead)
    # sinks only re-add causal keys of the first chunks: with full causality nothing changes
    assert torch.equal(joint_av_mask(c, c, s, s, sinks=1), plain)


def _joint(**kw):
    torch.manual_seed(0)
    params = dict(net("block_causal", "joint")["params"])
    params.update(kw)
    model = VideoTransformer(8, in_channels=2, image_size=16, **params).eval()
    for p in model.parameters():  # the zero-initialised head would make every output 0
        torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize("kw", [{}, {"window": 2, "sinks": 1}])
def test_cache_equals_teacher_forcing_pass(kw):
    model = _joint(**kw)
    b, chunk = 2, model.chunk
    g = torch.Generator().manual_seed(1)
    clean = pack_av(torch.rand(b, 8, 1, 16, 16, generator=g) * 2 - 1, torch.rand(b, 32, 1, generator=g) * 2 - 1)
    noisy = torch.randn(b, 8, 2, 16, 16, generator=g)
    t = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        full = model(noisy, t, context=clean, context_t=0.0)
        cache = model.init_cache()
        for i in range(8 // chunk):
            sl = slice(i * chunk, (i + 1) * chunk)
            out = model.denoise_chunk(noisy[:, sl], t, cache, i)
            assert torch.allclose(out, full[:, sl], atol=1e-5), (kw, i)
            model.append_chunk(clean[:, sl], cache, i, t=torch.zeros(b))
    assert full.shape == (b, 8, 2, 16, 16)


def test_dataset_shapes():
    joint = omni_sprites("joint", frames=4, n_train=3, n_test=2)
    assert joint.train.x.shape == (3, 4, 2, 16, 16) and joint.input_shape == (4, 2, 16, 16)
    v, a = unpack_av(joint.test.x)
    assert torch.allclose(a, joint.test.extra["audio"], atol=1e-6)
    audio = omni_sprites("audio", frames=4, n_train=3, n_test=2)
    assert audio.train.x.shape == (3, 4, 1, 16, 16)
    video = omni_sprites("video", frames=4, n_train=3, n_test=2)
    assert video.train.x.shape == (3, 4, 1, 16, 16) and video.train.extra["audio"].shape == (3, 16, 1)


def test_bad_input():
    with pytest.raises(ConfigError, match="stream"):
        omni_sprites("both", frames=4, n_train=2, n_test=2)
    with pytest.raises(ConfigError, match="stream"):
        net("block_causal", "sound")
    with pytest.raises(ConfigError, match="video must be"):
        pack_av(torch.zeros(2, 4, 16, 16), torch.zeros(2, 16))
    with pytest.raises(ConfigError, match="audio must be"):
        pack_av(torch.zeros(2, 4, 1, 16, 16), torch.zeros(2, 15))
    with pytest.raises(ConfigError, match="not divisible"):
        pack_av(torch.zeros(1, 2, 1, 6, 6), torch.zeros(1, 8))
    with pytest.raises(ConfigError, match="rate"):
        unpack_av(torch.zeros(1, 2, 2, 16, 16), 3)
    with pytest.raises(ConfigError, match="audio_lead"):
        joint_av_mask(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                      torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), audio_lead=-1)


def test_method_fragment():
    assert method()["method"]["kind"] == "self_forcing"
    assert method()["method"]["params"]["context"] == "self"
    staged = method(ode_steps=5)["method"]
    assert staged["kind"] == "livetalk" and staged["params"]["ode_steps"] == 5
    assert staged["params"]["final_context"] == "self" and staged["params"]["warmup_steps"] == 0
    with pytest.raises(ConfigError, match="ode_steps"):
        method(ode_steps=-1)
