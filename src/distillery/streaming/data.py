"""Procedural videos with a ground truth, for the streaming engine (C7).

Every generator here is seeded, offline and vectorised (2000 videos in well under two seconds
on one CPU core); each returns a :class:`~distillery.data.datasets.DataSplits` whose train and
test sets are :class:`VideoDataset` s. A video is a float tensor ``(T, C, H, W)`` in [-1, 1]
(black background = -1), ``C = 1``; ``input_shape`` of the splits is ``(T, C, H, W)``.

* ``sprite_videos``: digits from scikit-learn's bundled 8x8 set (Alpaydin & Kaynak 1998) or
  simple shapes moving with constant velocity and bouncing off the walls, the "moving MNIST"
  task of Srivastava et al. (2015, arXiv:1502.04681) at 16x16. Ground-truth sprite centres
  (``pos``) and velocities (``vel``); optionally a second, faster 1-D "audio" stream that drives
  the vertical motion (:func:`audio_rows`), so that audio-motion synchronisation is measurable
  (the two-stream setting of OmniForcing, methods.md row 17, and LiveTalk, row 6).
* ``gridworld_videos``: a 16x16 camera window moved by actions over a procedural world of
  digits and blocks, with action sequences that go out and come back, so that the consistency
  of revisited places is measurable (Matrix-Game 3.0's camera-aware memory, methods.md row 45).

Sub-pixel placement is **bilinear splatting**: a sprite at top-left ``(r, c)`` spreads each of
its pixels over the four canvas pixels around ``(r + i, c + j)`` with bilinear weights. This
keeps the sprite's total intensity and moves its intensity centroid by exactly ``(r, c)``, so a
sprite's centre ``pos`` (its intensity centroid, in canvas pixels, ``(row, col)``) equals the
centroid of the frame when one sprite is shown (:func:`~.metrics.sprite_positions`). Several
sprites are max-composited.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.datasets import ArrayDataset, DataSplits, _check_count
from ..errors import ConfigError
from ..registry import DATASETS

__all__ = [
    "ACTIONS",
    "SHAPES",
    "SPRITE",
    "VideoDataset",
    "audio_rows",
    "gridworld_videos",
    "render_camera",
    "shape_sprites",
    "sprite_videos",
]

SPRITE = 8
"""The side of a sprite (scikit-learn's digits are 8x8) in pixels."""

SHAPES = ("square", "frame", "disk", "triangle", "cross", "diamond")
"""The shapes of ``sprite_videos(source="shapes")``, in label order."""

ACTIONS = ("stay", "up", "down", "left", "right", "up-left", "up-right", "down-left", "down-right")
"""Gridworld actions in index order; ``n_actions = 5`` uses the first five."""

_MOVES = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1], [-1, -1], [-1, 1], [1, -1], [1, 1]])
_INVERSE = torch.tensor([0, 2, 1, 4, 3, 8, 7, 6, 5])


# ----------------------------------------------------------------------------- the container
class VideoDataset(ArrayDataset):
    """Videos ``x`` (float ``(N, T, C, H, W)``) with labels ``y`` (int64 ``(N,)``, ``-1`` = none)
    and aligned ground truth, served as batch dicts like :class:`ArrayDataset`.

    ``ds.__getitems__(idx)`` returns ``{"x": (b, T, C, H, W), "y": (b,), "index": (b,)}`` plus
    whichever optional tensors the dataset holds (absent keys are absent, never ``None``):

    * ``pos``: float ``(b, T, S, 2)``, ground-truth centres ``(row, col)`` in pixels (sprites) or
      camera top-left corners in world pixels (gridworld, ``S = 1``);
    * ``vel``: float ``(b, S, 2)``, initial velocities in pixels per frame;
    * ``audio``: float ``(b, T * rate, A)``, a second, faster stream;
    * ``actions``: int64 ``(b, T)``, the action taken before each frame.

    ``ds.tensors`` is the dict of whole-split tensors (``x``, ``y`` and the optional ones).
    """

    OPTIONAL = ("pos", "vel", "audio", "actions")

    def __init__(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray | None = None,
                 **extra: torch.Tensor | np.ndarray | None) -> None:
        x = torch.as_tensor(x)
        if x.dim() != 5:
            raise ConfigError(f"VideoDataset: x must be a video batch (N, T, C, H, W); got shape {tuple(x.shape)}.")
        super().__init__(x, y)
        n = len(self)
        self.extra: dict[str, torch.Tensor] = {}
        for key, value in extra.items():
            if key not in self.OPTIONAL:
                raise ConfigError(f"VideoDataset: unknown tensor {key!r}; accepted: {', '.join(self.OPTIONAL)}.")
            if value is None:
                continue
            t = torch.as_tensor(value)
            t = t.long() if key == "actions" else t.float()
            if t.dim() == 0 or t.shape[0] != n:
                raise ConfigError(f"VideoDataset: {key} must have {n} rows (one per video); got shape {tuple(t.shape)}.")
            self.extra[key] = t.contiguous()

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole split: ``{"x", "y", ...optional keys}``."""
        return {"x": self.x, "y": self.y, **self.extra}

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        return {"x": self.x[i], "y": self.y[i], "index": i, **{k: v[i] for k, v in self.extra.items()}}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {"x": self.x[idx], "y": self.y[idx], "index": idx, **{k: v[idx] for k, v in self.extra.items()}}

    def fingerprint(self) -> str:
        """A short hex digest of every tensor (names, shapes, dtypes and bytes)."""
        import hashlib

        h = hashlib.sha256()
        for name, t in sorted(self.tensors.items()):
            a = t.detach().cpu().contiguous().numpy()
            h.update(f"{name}{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        keys = ", ".join(self.extra) or "none"
        return f"VideoDataset(n={len(self)}, sample_shape={self.sample_shape}, extra={keys})"


# ------------------------------------------------------------------------------ validation
def _err(fn: str, name: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"{fn}: {name} must be {rule}, got {value!r}.")


def _count(fn: str, value: Any, name: str, minimum: int) -> int:
    try:
        return _check_count(value, name, minimum)
    except ConfigError:
        raise _err(fn, name, f"an integer >= {minimum}", value) from None


def _speed_range(fn: str, speed: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(s) for s in speed)
    except (TypeError, ValueError):
        raise _err(fn, "speed", "a pair (low, high) of pixels per frame", speed) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
        raise _err(fn, "speed", "a pair 0 <= low <= high", speed)
    return lo, hi


def _generator(seed: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def _uniform(shape: tuple[int, ...], gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)


# --------------------------------------------------------------------------------- sprites
@functools.lru_cache(maxsize=1)
def _digit_sets() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from ..generative.metrics import load_digits_split

    d = load_digits_split()  # the split the digits-FD feature net is trained on
    return {s: (((d[f"{s}_x"][:, 0].double() + 1.0) / 2.0).clamp(0, 1), d[f"{s}_y"]) for s in ("train", "test")}


@functools.lru_cache(maxsize=1)
def shape_sprites() -> torch.Tensor:
    """The shapes of :data:`SHAPES` as ``(len(SHAPES), 8, 8)`` float64 intensities in [0, 1]."""
    r, c = np.mgrid[0:SPRITE, 0:SPRITE].astype(np.float64) + 0.5
    cy = cx = SPRITE / 2
    masks = {
        "square": (np.abs(r - cy) < 3) & (np.abs(c - cx) < 3),
        "frame": ((np.abs(r - cy) < 4) & (np.abs(c - cx) < 4)) & ~((np.abs(r - cy) < 2) & (np.abs(c - cx) < 2)),
        "disk": (r - cy) ** 2 + (c - cx) ** 2 < 3.6**2,
        "triangle": (r > 1) & (r < 7.5) & (np.abs(c - cx) < (r - 1) * 0.62),
        "cross": ((np.abs(r - cy) < 1.1) | (np.abs(c - cx) < 1.1)) & (np.abs(r - cy) < 4) & (np.abs(c - cx) < 4),
        "diamond": np.abs(r - cy) + np.abs(c - cx) < 4,
    }
    return torch.as_tensor(np.stack([masks[s] for s in SHAPES]).astype(np.float64))


def _centroid(sprites: torch.Tensor) -> torch.Tensor:
    """Intensity centroids ``(N, 2)`` (row, col) of ``(N, h, w)`` non-negative images."""
    h, w = sprites.shape[-2:]
    rows = torch.arange(h, dtype=sprites.dtype)
    cols = torch.arange(w, dtype=sprites.dtype)
    mass = sprites.sum((-2, -1)).clamp_min(1e-12)
    return torch.stack([(sprites.sum(-1) * rows).sum(-1) / mass, (sprites.sum(-2) * cols).sum(-1) / mass], -1)


def _splat(sprites: torch.Tensor, top: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Paste ``sprites`` (``(N, s, s)``) at real top-left corners ``top`` (``(N, 2)``, row, col)
    on black ``(N, height, width)`` float32 canvases by bilinear splatting; parts outside the
    canvas are cut off."""
    n, s = sprites.shape[0], sprites.shape[-1]
    top = torch.stack([top[:, 0].clamp(-s - 1, height), top[:, 1].clamp(-s - 1, width)], -1)
    base = torch.floor(top)
    lo = 0 if n == 0 or float(base.min()) >= 0 else s + 1  # room for sprites leaving the frame
    hi = 1 if n == 0 or (float(base[:, 0].max()) <= height - s and float(base[:, 1].max()) <= width - s) else s + 1
    f = (top - base).float()
    fy, fx = f[:, 0, None, None], f[:, 1, None, None]
    spr = sprites.float()
    patch = spr.new_zeros(n, s + 1, s + 1)
    patch[:, :s, :s] = (1 - fy) * (1 - fx) * spr
    patch[:, 1:, :s] += fy * (1 - fx) * spr
    patch[:, :s, 1:] += (1 - fy) * fx * spr
    patch[:, 1:, 1:] += fy * fx * spr
    canvas = spr.new_zeros(n, height + lo + hi, width + lo + hi)
    offs = torch.arange(s + 1)
    rows = (base[:, 0].long() + lo)[:, None] + offs
    cols = (base[:, 1].long() + lo)[:, None] + offs
    canvas[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = patch
    return canvas[:, lo : lo + height, lo : lo + width]


def _reflect(p: torch.Tensor, span: float) -> torch.Tensor:
    """Positions ``p`` folded into ``[0, span]`` by reflection at both walls (a triangle wave)."""
    m = torch.remainder(p, 2 * span)
    return span - (m - span).abs()


def audio_rows(audio: torch.Tensor, frames: int, span: float) -> torch.Tensor:
    """The audio rule of ``sprite_videos(audio=True)``: the vertical top-left row of every
    sprite at each frame, ``(B, T)``, from the audio stream ``(B, T * rate, A)`` (or
    ``(B, T * rate)``; channel 0 is used).

    ``row_t = span / 2 * (1 + mean(audio over the rate samples of frame t))``, where ``span =
    size - 8`` is the room a sprite has to move in. Audio values in [-1, 1] keep the sprite
    inside the canvas."""
    a = audio[..., 0] if audio.dim() == 3 else audio
    if a.dim() != 2 or a.shape[1] % frames:
        raise ConfigError(
            f"audio_rows: audio must be (B, T * rate[, A]) with T = {frames}; got shape {tuple(audio.shape)}.")
    env = a.reshape(a.shape[0], frames, a.shape[1] // frames).mean(-1)
    return span / 2 * (1 + env)


def _audio_envelope(n: int, samples: int, rate: int, gen: torch.Generator) -> torch.Tensor:
    """A smooth random envelope ``(n, samples)`` in [-1, 1]: three sinusoids with random
    frequencies (1/48 .. 1/12 cycles per frame), phases and convex weights."""
    t = torch.arange(samples, dtype=torch.float64) / rate  # in frames
    freq = _uniform((n, 3, 1), gen, 1 / 48, 1 / 12)
    phase = _uniform((n, 3, 1), gen, 0, 2 * math.pi)
    w = _uniform((n, 3, 1), gen, 0.2, 1.0)
    w = w / w.sum(1, keepdim=True)
    return (w * torch.sin(2 * math.pi * freq * t + phase)).sum(1)


def _sprite_split(n: int, frames: int, size: int, sprites: int, source: str, speed: tuple[float, float],
                  bounce: bool, audio: bool, audio_rate: int, split: str, gen: torch.Generator) -> VideoDataset:
    if source == "digits":
        images, labels = _digit_sets()[split]
    else:
        images = shape_sprites()
        labels = torch.arange(len(SHAPES))
    pick = torch.randint(len(images), (n, sprites), generator=gen)
    spr = images[pick]  # (n, S, 8, 8)
    span = float(size - SPRITE)
    top0 = _uniform((n, sprites, 2), gen, 0, span)
    mag = _uniform((n, sprites), gen, *speed)
    t = torch.arange(frames, dtype=torch.float64)
    snd = None
    if audio:
        ang = torch.where(torch.rand((n, sprites), generator=gen) < 0.5, 0.0, math.pi).double()
        vel = torch.stack([torch.zeros_like(mag), mag * torch.cos(ang)], -1)
        snd = _audio_envelope(n, frames * audio_rate, audio_rate, gen)
        rows = audio_rows(snd, frames, span)[:, :, None].expand(n, frames, sprites)
    else:
        ang = _uniform((n, sprites), gen, 0, 2 * math.pi)
        vel = torch.stack([mag * torch.sin(ang), mag * torch.cos(ang)], -1)  # (n, S, 2)
        rows = top0[None, ..., 0] + vel[None, ..., 0] * t[:, None, None]  # (T, n, S)
        rows = rows.permute(1, 0, 2)
    cols = (top0[None, ..., 1] + vel[None, ..., 1] * t[:, None, None]).permute(1, 0, 2)
    top = torch.stack([rows, cols], -1)  # (n, T, S, 2)
    if bounce:
        top = _reflect(top, span)
    flat = spr[:, None].expand(n, frames, sprites, SPRITE, SPRITE).reshape(-1, SPRITE, SPRITE)
    canvas = _splat(flat, top.reshape(-1, 2), size, size).reshape(n, frames, sprites, size, size)
    x = (canvas.amax(2).clamp(0, 1) * 2 - 1).float()[:, :, None]  # (n, T, 1, H, W)
    pos = top + _centroid(spr.reshape(-1, SPRITE, SPRITE)).reshape(n, 1, sprites, 2)
    extra: dict[str, Any] = {"pos": pos.float(), "vel": vel.float()}
    if snd is not None:
        extra["audio"] = snd.float()[..., None]
    return VideoDataset(x, labels[pick[:, 0]], **extra)


@DATASETS.register("sprite_videos")
def sprite_videos(
    frames: int = 16,
    size: int = 16,
    sprites: int = 1,
    source: str = "digits",
    speed: Sequence[float] = (0.5, 1.5),
    bounce: bool = True,
    audio: bool = False,
    audio_rate: int = 4,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
) -> DataSplits:
    """Moving sprites (digits or shapes) on black ``size x size`` frames, with ground truth.

    Each sprite (8x8) starts at a uniform position with a constant velocity (uniform speed in
    ``speed``, uniform direction) and is reflected at the walls, so it stays inside the frame.
    Sub-pixel positions are drawn by bilinear splatting (the sprite's intensity centroid moves
    exactly with it); several sprites are max-composited. ``x``: ``(N, T, 1, size, size)`` in
    [-1, 1]; ``y``: the digit (or shape) of the first sprite; ``pos``: ``(N, T, S, 2)`` sprite
    centres (intensity centroids, ``(row, col)`` in pixels); ``vel``: ``(N, S, 2)`` initial
    velocities. Train videos use the digits of the digits-FD train split, test videos the
    held-out ones (:func:`~distillery.generative.metrics.load_digits_split`).

    With ``audio``, a second stream ``audio`` ``(N, T * audio_rate, 1)`` in [-1, 1] (a smooth
    random envelope) drives the vertical motion of every sprite by :func:`audio_rows`; the
    horizontal keeps its constant velocity (``vel[..., 0]`` is 0).

    Args:
        frames: frames per video (T >= 2).
        size: the frame side in pixels, a multiple of 8 and >= 16 (frames are average-pooled
            to 8x8 for the digits FD).
        sprites: sprites per video (>= 1).
        source: ``digits`` (scikit-learn's 8x8 digits) or ``shapes`` (:data:`SHAPES`).
        speed: ``(low, high)``, the range of speeds in pixels per frame.
        bounce: reflect sprites at the walls; without it they fly out of the frame.
        audio: add the audio stream that drives the vertical motion.
        audio_rate: audio samples per frame (>= 1).
        n_train: the number of training videos.
        n_test: the number of test videos.
        seed: the seed of both splits (each split draws from its own stream).
    """
    fn = "sprite_videos"
    frames = _count(fn, frames, "frames", 2)
    size = _count(fn, size, "size", 1)
    if size < 2 * SPRITE or size % SPRITE:
        raise _err(fn, "size", f"a multiple of {SPRITE} and >= {2 * SPRITE}", size)
    sprites = _count(fn, sprites, "sprites", 1)
    if source not in ("digits", "shapes"):
        raise _err(fn, "source", "'digits' or 'shapes'", source)
    lo, hi = _speed_range(fn, speed)
    if not isinstance(bounce, bool):
        raise _err(fn, "bounce", "true or false", bounce)
    if not isinstance(audio, bool):
        raise _err(fn, "audio", "true or false", audio)
    audio_rate = _count(fn, audio_rate, "audio_rate", 1)
    n_train = _count(fn, n_train, "n_train", 1)
    n_test = _count(fn, n_test, "n_test", 1)
    seed = _count(fn, seed, "seed", 0)
    args = (frames, size, sprites, source, (lo, hi), bounce, audio, audio_rate)
    train = _sprite_split(n_train, *args, "train", _generator(seed, 1))
    test = _sprite_split(n_test, *args, "test", _generator(seed, 2))
    names = tuple(str(i) for i in range(10)) if source == "digits" else SHAPES
    return DataSplits(
        train=train, test=test, unlabeled=None, num_classes=len(names), input_shape=(frames, 1, size, size),
        name=fn, class_names=names,
        info={"frames": frames, "size": size, "sprites": sprites, "source": source, "speed": [lo, hi],
              "bounce": bounce, "audio": audio, "audio_rate": audio_rate if audio else None,
              "sprite_size": SPRITE, "placement": "bilinear", "range": [-1.0, 1.0],
              "n_train": n_train, "n_test": n_test, "seed": seed},
    )


# -------------------------------------------------------------------------------- gridworld
def render_camera(worlds: torch.Tensor, pos: torch.Tensor, size: int) -> torch.Tensor:
    """The camera views ``(N, T, 1, size, size)`` of ``worlds`` (``(N, W, W)``) at integer
    top-left corners ``pos`` (``(N, T, 2)`` or ``(N, T, 1, 2)``, row, col), e.g. to render the
    ground truth of a gridworld along any action path."""
    if pos.dim() == 4:
        pos = pos[:, :, 0]
    p = pos.round().long()
    n = p.shape[0]
    w = worlds.shape[-1]
    if int(p.min()) < 0 or int(p.max()) > w - size:
        raise ConfigError(f"render_camera: camera positions must lie in [0, {w - size}] for a {w}-pixel world.")
    offs = torch.arange(size)
    rows = p[..., 0, None] + offs  # (N, T, size)
    cols = p[..., 1, None] + offs
    idx = torch.arange(n)[:, None, None, None]
    return worlds[idx, rows[..., :, None], cols[..., None, :]][:, :, None]


def _world(n: int, world: int, cell: int, split: str, gen: torch.Generator) -> torch.Tensor:
    """``n`` worlds ``(n, world, world)`` in [-1, 1]: in every ``cell x cell`` cell a digit at a
    random place and, half of the time, a grey block (max-composited)."""
    images = _digit_sets()[split][0]
    k = (world // cell) ** 2 * n  # cells in all worlds
    digit = images[torch.randint(len(images), (k,), generator=gen)]
    top = torch.randint(cell - SPRITE + 1, (k, 2), generator=gen).double()
    canvas = _splat(digit, top, cell, cell)  # (k, cell, cell)
    hw = torch.randint(3, SPRITE + 1, (k, 2), generator=gen)
    start = torch.floor(_uniform((k, 2), gen) * (cell - hw + 1)).long()
    level = (_uniform((k,), gen, 0.3, 0.7) * (torch.rand(k, generator=gen) < 0.5)).float()
    r = torch.arange(cell)
    inside_r = (r >= start[:, :1]) & (r < start[:, :1] + hw[:, :1])  # (k, cell)
    inside_c = (r >= start[:, 1:]) & (r < start[:, 1:] + hw[:, 1:])
    canvas = torch.maximum(canvas, (inside_r[:, :, None] & inside_c[:, None, :]) * level[:, None, None])
    g = world // cell
    canvas = canvas.reshape(n, g, g, cell, cell).permute(0, 1, 3, 2, 4).reshape(n, world, world)
    return canvas * 2 - 1


def _camera_paths(n: int, frames: int, n_actions: int, stride: int, room: int, revisit: bool,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions ``(n, T)`` and camera corners ``(n, T, 2)`` on the ``stride`` lattice of
    ``[0, room]^2``. ``actions[:, 0]`` is ``stay``; ``pos[t] = pos[t-1] + stride * move(actions[t])``.
    Random moves never leave the lattice and tend to keep their direction; with ``revisit`` the
    second half retraces the first."""
    lattice = room // stride
    pos = torch.empty(n, frames, 2, dtype=torch.long)
    pos[:, 0] = torch.randint(lattice + 1, (n, 2), generator=gen) * stride
    actions = torch.zeros(n, frames, dtype=torch.long)
    moves = _MOVES[:n_actions] * stride
    out = (frames - 1) // 2 if revisit else frames - 1
    for t in range(1, frames):
        if t <= out:
            nxt = pos[:, t - 1, None, :] + moves  # (n, A, 2)
            valid = ((nxt >= 0) & (nxt <= room)).all(-1)
            score = torch.rand(n, n_actions, generator=gen)
            score[:, 0] *= 0.3  # stay less often than move, keep going more often than turn back
            score[torch.arange(n), actions[:, t - 1]] *= 2.0
            score[torch.arange(n), _INVERSE[actions[:, t - 1]]] *= 0.3
            a = torch.where(valid, score, -1.0).argmax(1)
        elif t <= 2 * out:
            a = _INVERSE[actions[:, 2 * out + 1 - t]]
        else:
            a = torch.zeros(n, dtype=torch.long)
        actions[:, t] = a
        pos[:, t] = pos[:, t - 1] + moves[a]
    return actions, pos


def _grid_split(n: int, frames: int, size: int, world: int, n_actions: int, stride: int, revisit: bool,
                split: str, gen: torch.Generator) -> tuple[VideoDataset, torch.Tensor]:
    worlds = _world(n, world, size, split, gen)
    actions, pos = _camera_paths(n, frames, n_actions, stride, world - size, revisit, gen)
    x = render_camera(worlds, pos, size).float()
    return VideoDataset(x, None, pos=pos[:, :, None].float(), actions=actions), worlds.float()


@DATASETS.register("gridworld_videos")
def gridworld_videos(
    frames: int = 32,
    size: int = 16,
    world: int = 48,
    n_actions: int = 5,
    stride: int = 4,
    revisit: bool = True,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
) -> DataSplits:
    """An action-conditioned camera over a procedural world: ``size x size`` views of a
    ``world x world`` texture (per video: in every ``size x size`` cell one digit at a random
    place and, half of the time, a grey block), moved by actions.

    Actions (:data:`ACTIONS`): 0 stay, 1 up, 2 down, 3 left, 4 right (and with ``n_actions = 9``
    the four diagonals), each moving the camera by ``stride`` pixels; ``actions[:, t]`` is the
    action taken before frame ``t`` (``actions[:, 0]`` is ``stay``). Random moves never leave the
    world; with ``revisit`` the camera goes out for ``(T - 1) // 2`` steps and retraces its path
    back, so every place of the first half is seen again. ``x``: ``(N, T, 1, size, size)`` in
    [-1, 1]; ``y``: -1; ``pos``: ``(N, T, 1, 2)`` camera top-left corners ``(row, col)`` in world
    pixels; ``actions``: ``(N, T)`` int64. The worlds themselves are ``splits.worlds`` (``{"train",
    "test"}``, ``(N, world, world)``), to render any other path with :func:`render_camera`.

    Args:
        frames: frames per video (T >= 2).
        size: the camera (frame) side in pixels, a multiple of 8 and >= 16.
        world: the world side in pixels, a multiple of ``size`` and larger than it.
        n_actions: 5 (stay and the four directions) or 9 (with the diagonals).
        stride: pixels the camera moves per action; must divide ``world - size``.
        revisit: go out and come back (True) or walk at random (False).
        n_train: the number of training videos.
        n_test: the number of test videos.
        seed: the seed of both splits (each split draws from its own stream).
    """
    fn = "gridworld_videos"
    frames = _count(fn, frames, "frames", 2)
    size = _count(fn, size, "size", 1)
    if size < 2 * SPRITE or size % SPRITE:
        raise _err(fn, "size", f"a multiple of {SPRITE} and >= {2 * SPRITE}", size)
    world = _count(fn, world, "world", 1)
    if world <= size or world % size:
        raise _err(fn, "world", f"a multiple of size ({size}) larger than it", world)
    if isinstance(n_actions, bool) or n_actions not in (5, 9):
        raise _err(fn, "n_actions", "5 or 9", n_actions)
    stride = _count(fn, stride, "stride", 1)
    if (world - size) % stride:
        raise _err(fn, "stride", f"a divisor of world - size ({world - size})", stride)
    if not isinstance(revisit, bool):
        raise _err(fn, "revisit", "true or false", revisit)
    n_train = _count(fn, n_train, "n_train", 1)
    n_test = _count(fn, n_test, "n_test", 1)
    seed = _count(fn, seed, "seed", 0)
    args = (frames, size, world, n_actions, stride, revisit)
    train, w_train = _grid_split(n_train, *args, "train", _generator(seed, 1))
    test, w_test = _grid_split(n_test, *args, "test", _generator(seed, 2))
    splits = DataSplits(
        train=train, test=test, unlabeled=None, num_classes=0, input_shape=(frames, 1, size, size), name=fn,
        info={"frames": frames, "size": size, "world": world, "n_actions": n_actions, "stride": stride,
              "revisit": revisit, "actions": list(ACTIONS[:n_actions]), "range": [-1.0, 1.0],
              "n_train": n_train, "n_test": n_test, "seed": seed},
    )
    splits.worlds = {"train": w_train, "test": w_test}  # type: ignore[attr-defined]
    return splits
