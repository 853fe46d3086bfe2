"""The streaming engine's procedural videos: ``sprite_videos`` and ``gridworld_videos``."""

from __future__ import annotations

import pytest
import torch

from distillery.data import load_dataset
from distillery.errors import ConfigError
from distillery.registry import DATASETS
from distillery.streaming.data import (
    _MOVES,
    SPRITE,
    VideoDataset,
    audio_rows,
    gridworld_videos,
    render_camera,
    sprite_videos,
)
from distillery.streaming.metrics import sprite_positions, sync_error


def small(**kw):
    return sprite_videos(**{"n_train": 48, "n_test": 16, **kw})


def test_registered_with_documented_parameters():
    from distillery.config.describe import docstring_args
    from distillery.config.signatures import keyword_names

    for name in ("sprite_videos", "gridworld_videos"):
        assert name in DATASETS and DATASETS.summary(name)
        fn = DATASETS.get(name)
        names, _ = keyword_names(fn)
        meanings = docstring_args(fn.__doc__)
        assert all(meanings.get(n) for n in names), (name, set(names) - set(meanings))
    splits = load_dataset("sprite_videos", frames=4, n_train=3, n_test=2, seed=1)
    assert splits.train.x.shape == (3, 4, 1, 16, 16)


def test_sprite_videos_batches_and_keys():
    s = small(frames=12)
    assert s.input_shape == (12, 1, 16, 16) and s.num_classes == 10 and s.name == "sprite_videos"
    assert isinstance(s.train, VideoDataset) and len(s.train) == 48 and len(s.test) == 16
    x = s.train.x
    assert x.dtype == torch.float32 and float(x.min()) == -1.0 and float(x.max()) <= 1.0
    batch = s.train.__getitems__([3, 0, 7])
    assert set(batch) == {"x", "y", "index", "pos", "vel"}  # no audio, no actions: absent, not None
    assert batch["x"].shape == (3, 12, 1, 16, 16) and batch["pos"].shape == (3, 12, 1, 2)
    assert batch["vel"].shape == (3, 1, 2) and batch["y"].dtype == torch.int64
    assert torch.equal(batch["index"], torch.tensor([3, 0, 7]))
    assert torch.equal(batch["x"][1], s.train[0]["x"]) and torch.equal(batch["pos"][2], s.train.tensors["pos"][7])
    assert set(s.train.tensors) == {"x", "y", "pos", "vel"}
    assert ((s.train.y >= 0) & (s.train.y < 10)).all()
    assert s.info["frames"] == 12 and s.info["seed"] == 0 and s.info["placement"] == "bilinear"


@pytest.mark.parametrize("kw", [{}, {"source": "shapes"}, {"audio": True}, {"speed": (2.5, 3.0), "frames": 40}])
def test_ground_truth_centre_is_the_intensity_centroid(kw):
    s = small(**kw)
    pos = s.train.tensors["pos"][:, :, 0]
    est = sprite_positions(s.train.x)
    assert float((est - pos).norm(dim=-1).max()) < 0.5
    exact = sprite_positions(s.train.x, threshold=0.0)  # bilinear splatting moves the centroid exactly
    assert float((exact - pos).abs().max()) < 1e-3


def test_bounce_keeps_sprites_inside_and_speed_constant():
    s = small(frames=64, speed=(2.0, 3.5), source="shapes")
    x, pos, vel = s.train.x, s.train.tensors["pos"], s.train.tensors["vel"]
    mass = ((x + 1) / 2).sum((-3, -2, -1))  # total intensity per frame: nothing is cut off
    torch.testing.assert_close(mass, mass[:, :1].expand_as(mass), atol=1e-3, rtol=1e-4)
    top = pos - pos.amin(1, keepdim=True)  # sprites bounce: they reach both walls of each axis
    assert float(pos.min()) >= 0 and float(pos.max()) <= 15
    step = (pos[:, 1:] - pos[:, :-1]).abs()  # per axis: |step| <= |v|, equal away from the walls
    assert (step <= vel.abs()[:, None] + 1e-4).all()
    assert float((step - vel.abs()[:, None]).abs().median()) < 1e-4
    assert float(top.amax(1).min()) > 0
    free = small(frames=64, speed=(2.0, 3.5), bounce=False).train.x
    assert float(((free[:, -1] + 1) / 2).sum()) == 0.0  # without bouncing they all fly away


def test_sprites_are_composited_and_labelled():
    s = small(sprites=3, source="shapes", frames=5)
    assert s.train.tensors["pos"].shape == (48, 5, 3, 2) and s.train.tensors["vel"].shape == (48, 3, 2)
    assert s.class_names[0] == "square" and s.num_classes == 6
    assert float(s.train.x.max()) <= 1.0


def test_deterministic_by_seed():
    a, b = small(seed=3), small(seed=3)
    for k, v in a.train.tensors.items():
        assert torch.equal(v, b.train.tensors[k]), k
    assert torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.train.x, small(seed=4).train.x)
    assert torch.equal(small(seed=3, n_test=5).train.x, a.train.x)  # a split does not depend on the other's size
    g1, g2 = gridworld_videos(n_train=8, n_test=2, seed=5), gridworld_videos(n_train=8, n_test=2, seed=5)
    assert torch.equal(g1.train.x, g2.train.x) and torch.equal(g1.train.tensors["actions"], g2.train.tensors["actions"])


def test_longer_videos_continue_the_shorter_ones():
    """Evaluation at 4x the training length regenerates the data: the first frames are the same."""
    short, long = small(frames=8, audio=True), small(frames=32, audio=True)
    assert torch.equal(long.test.x[:, :8], short.test.x)
    assert torch.equal(long.test.tensors["audio"][:, : 8 * 4], short.test.tensors["audio"])
    torch.testing.assert_close(long.test.tensors["pos"][:, :8], short.test.tensors["pos"])


def test_audio_drives_the_vertical_motion():
    s = small(audio=True, audio_rate=4, frames=24)
    x, audio, pos = s.train.x, s.train.tensors["audio"], s.train.tensors["pos"]
    assert audio.shape == (48, 96, 1) and float(audio.abs().max()) <= 1.0
    assert (s.train.tensors["vel"][..., 0] == 0).all() and s.info["audio_rate"] == 4
    # the rule: top row = span/2 * (1 + mean audio of the frame); centre = top + the sprite's centroid offset
    rows = audio_rows(audio, 24, float(16 - SPRITE))
    offset = pos[:, :, 0, 0] - rows
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), atol=1e-4, rtol=0)
    assert float(pos[..., 0].std(1).mean()) > 0.5  # it really moves vertically
    assert sync_error(x, audio) < 0.1
    shuffled = audio.roll(1, dims=0)
    assert sync_error(x, shuffled) > 5 * max(sync_error(x, audio), 0.05)


def test_gridworld_actions_positions_and_frames():
    g = gridworld_videos(frames=17, n_train=32, n_test=8, stride=4)
    t = g.train.tensors
    assert set(t) == {"x", "y", "pos", "actions"} and (t["y"] == -1).all()
    assert t["x"].shape == (32, 17, 1, 16, 16) and t["pos"].shape == (32, 17, 1, 2) and t["actions"].dtype == torch.int64
    a, pos = t["actions"], t["pos"][:, :, 0]
    assert (a[:, 0] == 0).all() and ((a >= 0) & (a < 5)).all()
    torch.testing.assert_close(pos[:, 1:] - pos[:, :-1], 4.0 * _MOVES[a[:, 1:]].float())
    assert float(pos.min()) >= 0 and float(pos.max()) <= 48 - 16
    torch.testing.assert_close(pos[:, 16], pos[:, 0])  # out for 8 steps, then back along the same path
    torch.testing.assert_close(pos[:, 12], pos[:, 4])
    assert (a[:, 1:9] != 0).float().mean() > 0.7  # mostly moving
    worlds = g.worlds["train"]
    assert worlds.shape == (32, 48, 48)
    assert torch.equal(render_camera(worlds, t["pos"], 16), t["x"])
    assert g.input_shape == (17, 1, 16, 16) and g.info["actions"][:2] == ["stay", "up"]
    nine = gridworld_videos(frames=9, n_actions=9, revisit=False, n_train=16, n_test=2).train.tensors["actions"]
    assert int(nine.max()) <= 8 and int(nine.max()) >= 5


@pytest.mark.parametrize(
    ("fn", "kw", "name"),
    [
        (sprite_videos, {"size": 20}, "size"),
        (sprite_videos, {"size": 8}, "size"),
        (sprite_videos, {"frames": 1}, "frames"),
        (sprite_videos, {"sprites": 0}, "sprites"),
        (sprite_videos, {"source": "letters"}, "source"),
        (sprite_videos, {"speed": (2.0, 1.0)}, "speed"),
        (sprite_videos, {"speed": 1.0}, "speed"),
        (sprite_videos, {"audio_rate": 0}, "audio_rate"),
        (sprite_videos, {"n_train": 0}, "n_train"),
        (gridworld_videos, {"size": 12}, "size"),
        (gridworld_videos, {"world": 40}, "world"),
        (gridworld_videos, {"stride": 5}, "stride"),
        (gridworld_videos, {"n_actions": 4}, "n_actions"),
        (gridworld_videos, {"frames": 1}, "frames"),
    ],
)
def test_bad_input_names_the_argument(fn, kw, name):
    with pytest.raises(ConfigError, match=name):
        fn(**{"n_train": 2, "n_test": 2, **kw})


def test_video_dataset_refuses_non_videos_and_misaligned_tensors():
    with pytest.raises(ConfigError, match="x must be a video"):
        VideoDataset(torch.zeros(4, 1, 16, 16))
    with pytest.raises(ConfigError, match="pos"):
        VideoDataset(torch.zeros(4, 2, 1, 16, 16), pos=torch.zeros(3, 2, 1, 2))
    with pytest.raises(ConfigError, match="depth"):
        VideoDataset(torch.zeros(4, 2, 1, 16, 16), depth=torch.zeros(4))
    ds = VideoDataset(torch.zeros(4, 2, 1, 16, 16), audio=None)
    assert set(ds.__getitems__([0, 1])) == {"x", "y", "index"} and (ds.y == -1).all()
