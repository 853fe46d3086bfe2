"""The streaming engine's video metrics and pictures, against hand computations and ground truth."""

from __future__ import annotations

import time

import pytest
import torch

from distillery.errors import ConfigError
from distillery.streaming import metrics as M
from distillery.streaming.data import gridworld_videos, sprite_videos
from distillery.streaming.visual import animated_gif, curve_plot, film_strip


@pytest.fixture(scope="module")
def sprites():
    return sprite_videos(frames=16, n_train=32, n_test=8, seed=2).train


@pytest.fixture(scope="module")
def grid():
    return gridworld_videos(frames=13, n_train=8, n_test=2, seed=1).train


def blank(b=1, t=1, h=16, w=16):
    return -torch.ones(b, t, 1, h, w)


def test_sprite_positions_hand_made_frames():
    x = blank(1, 3)
    x[0, 0, 0, 3, 5] = 1.0  # one white pixel
    x[0, 1, 0, 2:4, 10:12] = 1.0  # a 2x2 block
    x[0, 1, 0, 12, 1] = -0.9  # faint noise below the threshold is ignored
    est = M.sprite_positions(x)  # frame 2 is black: the frame centre
    torch.testing.assert_close(est[0], torch.tensor([[3.0, 5.0], [2.5, 10.5], [7.5, 7.5]], dtype=torch.float64))
    y = blank(1, 1)
    y[0, 0, 0, 4, 4], y[0, 0, 0, 4, 8] = 1.0, 0.0  # intensities 1 and 0.5: centroid at col (4 + 4) / 1.5
    torch.testing.assert_close(M.sprite_positions(y)[0, 0], torch.tensor([4.0, 16 / 3], dtype=torch.float64))


def test_position_error_zero_on_ground_truth_one_pixel_off_when_shifted(sprites):
    x, pos = sprites.x, sprites.tensors["pos"]
    assert M.position_error(x, pos) < 0.2
    assert M.position_error(x, pos, threshold=0.0) < 1e-4
    assert M.position_error(x, pos[:, :, 0]) == M.position_error(x, pos)
    curve = M.position_error_curve(x, pos, threshold=0.0)
    assert len(curve) == 16 and max(curve) < 1e-4
    assert M.position_error(x, pos + torch.tensor([0.0, 1.0]), threshold=0.0) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ConfigError, match="pos"):
        M.position_error(x, torch.zeros(32, 16, 2, 2))  # two sprites: not a single-sprite position


def test_flicker_is_the_difference_of_mean_frame_changes(sprites):
    x = sprites.x
    assert M.flicker(x, x) == 0.0
    change = (x[:, 1:] - x[:, :-1]).abs().mean()
    assert M.temporal_change(x) == pytest.approx(float(change), rel=1e-6)
    static = x[:, :1].expand_as(x)
    assert M.flicker(static, x) == pytest.approx(-float(change), rel=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert M.flicker(noisy, x) > 0.05


def test_drift_per_chunk_and_slope(monkeypatch, sprites):
    from distillery.generative import metrics as G

    torch.manual_seed(0)
    net = G.DigitFeatureNet().eval().requires_grad_(False)  # an untrained net: the chunking is tested here
    monkeypatch.setattr(G, "digit_feature_net", lambda: (net, {"cached": True}))
    x = sprites.x
    gen = torch.Generator().manual_seed(0)
    noise = torch.linspace(0, 0.9, 16).reshape(1, 16, 1, 1, 1)  # growing corruption along the rollout
    worse = (x + noise * torch.randn(x.shape, generator=gen) * 2).clamp(-1, 1)
    ref = sprite_videos(frames=16, n_train=32, n_test=8, seed=9).train.x
    clean = M.drift(x, ref, chunk=4)
    curve = M.drift(worse, ref.flatten(0, 1), chunk=4)
    assert len(clean) == len(curve) == 4
    assert curve[-1] > curve[0] and curve[-1] > 3 * clean[-1]
    assert M.drift_slope(curve) > 0 and M.drift_slope([1.0, 3.0, 5.0]) == pytest.approx(2.0)
    assert M.drift_slope([2.0]) == 0.0
    with pytest.raises(ConfigError, match="chunk"):
        M.drift(x, ref, chunk=5)
    with pytest.raises(ConfigError, match="reference_frames"):
        M.drift(x, torch.zeros(10, 1, 12, 12), chunk=4)


def test_sync_error_against_hand_rule():
    s = sprite_videos(frames=12, audio=True, audio_rate=3, n_train=16, n_test=2, seed=1).train
    x, audio = s.x, s.tensors["audio"]
    assert M.sync_error(x, audio) < 0.1 and M.sync_error(x, audio[..., 0]) == M.sync_error(x, audio)
    assert max(M.sync_error_curve(x, audio)) < 0.2 and len(M.sync_error_curve(x, audio)) == 11
    wrong = -audio  # the audio says up where the sprite goes down
    rows = M.sprite_positions(x)[..., 0]
    implied = 4 * (1 - audio[..., 0].reshape(16, 12, 3).mean(-1))  # span / 2 * (1 + mean(-audio))
    expect = ((rows[:, 1:] - rows[:, :-1]) - (implied[:, 1:] - implied[:, :-1])).abs().mean()
    assert M.sync_error(x, wrong) == pytest.approx(float(expect), rel=1e-5)
    assert M.sync_error(x, wrong) > 10 * M.sync_error(x, audio)
    late = ((rows[:, 5:] - rows[:, 4:-1]) - (implied[:, 5:] - implied[:, 4:-1])).abs().mean()
    assert M.sync_error(x, wrong, start=5) == pytest.approx(float(late), rel=1e-5)
    assert len(M.sync_error_curve(x, audio, start=5)) == 7
    with pytest.raises(ConfigError, match="audio"):
        M.sync_error(x, audio[:, :-1])
    with pytest.raises(ConfigError, match="start"):
        M.sync_error(x, audio, start=12)


def test_revisit_pairs_and_consistency(grid):
    x, pos = grid.x, grid.tensors["pos"]
    pairs = M.revisit_pairs(pos)
    assert len(pairs) >= 8 * 6  # every place of the way out is seen again on the way back
    b, i, j = pairs.unbind(1)
    assert (i < j).all() and torch.equal(pos[b, i], pos[b, j])
    assert M.revisit_consistency(x, pos) == 0.0  # a static world rendered faithfully
    forgetful = x.clone()
    forgetful[:, 7:] = forgetful[:, 7:].flip(-1)  # the way back shows a mirrored world
    assert M.revisit_consistency(forgetful, pos, min_gap=2) > 0.05
    hand = torch.tensor([[[0, 0], [4, 0], [0, 0], [0, 0]]])
    assert M.revisit_pairs(hand).tolist() == [[0, 0, 2], [0, 0, 3], [0, 2, 3]]
    assert M.revisit_pairs(hand, min_gap=2).tolist() == [[0, 0, 2], [0, 0, 3]]
    v = blank(1, 4)
    v[0, 2] += 0.5
    assert M.revisit_consistency(v, hand) == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    with pytest.raises(ConfigError, match="revisited"):
        M.revisit_consistency(blank(1, 2), torch.tensor([[[0, 0], [4, 4]]]))


def test_stream_timing_calls_in_order():
    calls = []

    def chunk(k):
        calls.append(k)
        time.sleep(0.02 if k == 0 else 0.005)
        return torch.zeros(2, 4, 1, 8, 8)

    out = M.stream_timing(chunk, 3)
    assert calls == [0, 0, 1, 2] and out["frames"] == 12 and out["chunks"] == 3
    assert out["first_chunk_latency_s"] >= 0.02 and out["first_chunk_latency_s"] == out["seconds_per_chunk"][0]
    assert out["fps"] == pytest.approx(12 / sum(out["seconds_per_chunk"]))
    assert M.stream_timing(lambda k: None, 2, frames_per_chunk=5, warmup=0)["frames"] == 10
    with pytest.raises(ConfigError, match="frames_per_chunk"):
        M.stream_timing(lambda k: None, 2)
    with pytest.raises(ConfigError, match="chunks"):
        M.stream_timing(chunk, 0)


@pytest.mark.parametrize("fn", [M.sprite_positions, M.temporal_change, lambda v: M.flicker(v, v)])
def test_non_video_input_is_refused(fn):
    with pytest.raises(ConfigError, match="video"):
        fn(torch.zeros(4, 1, 16, 16))


def test_film_strip_gif_and_curves_are_written(tmp_path, grid):
    from PIL import Image

    x = grid.x[:3]
    png = film_strip(x, tmp_path / "strips" / "grid.png", rows=2, every=2, title="gridworld")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 0
    gif = animated_gif(x, tmp_path / "grid.gif", fps=5, scale=3)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 13 and im.is_animated
        assert im.size == ((16 * 2 + 1) * 3, (16 * 2 + 1) * 3 + 3)  # 2 x 2 grid plus the progress bar
    still = blank(2, 6)  # identical frames still give T GIF frames
    with Image.open(animated_gif(still, tmp_path / "still.gif", scale=1)) as im:
        assert im.n_frames == 6
    rgb = torch.rand(1, 3, 3, 8, 8) * 2 - 1
    assert film_strip(rgb, tmp_path / "rgb.png").is_file()
    c = curve_plot({"self-forcing": [1.0, 1.2, 1.3], "teacher-forcing": [1.0, 2.0, 3.5]}, tmp_path / "drift.png",
                   "chunk", "digits FD", title="drift")
    with Image.open(c) as im:
        assert im.format == "PNG"
    with pytest.raises(ConfigError, match="rows"):
        film_strip(x, tmp_path / "a.png", rows=4)
    with pytest.raises(ConfigError, match=r"\.gif"):
        animated_gif(x, tmp_path / "a.png")
    with pytest.raises(ConfigError, match="channels"):
        animated_gif(torch.zeros(1, 2, 2, 8, 8), tmp_path / "b.gif")
    with pytest.raises(ConfigError, match="curves"):
        curve_plot({}, tmp_path / "c.png", "x", "y")
