"""Pictures of videos a person can look at: PNG film strips, animated GIFs and curves.

* :func:`film_strip`: a PNG, one row per video, frames left to right (matplotlib, Agg);
* :func:`animated_gif`: an animated GIF (Pillow), the videos tiled in a grid, upscaled by
  nearest neighbour, with a progress bar under the grid;
* :func:`curve_plot`: named curves (e.g. drift per chunk, error per frame) in one PNG.

Videos are float tensors ``(B, T, C, H, W)`` in [-1, 1] with ``C = 1`` (grey) or ``C = 3``
(RGB); -1 maps to black and 1 to white. matplotlib and Pillow are imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .metrics import _video

__all__ = ["animated_gif", "curve_plot", "film_strip"]

_SEPARATOR = np.array([0.25, 0.45, 0.85])  # the blue lines between frames (not a grey a video could have)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _frames01(video: Any) -> np.ndarray:
    """``video`` as a numpy array ``(B, T, H, W, 3)`` in [0, 1]."""
    x = _video(video)
    if x.shape[2] not in (1, 3):
        raise ConfigError(f"video must have 1 (grey) or 3 (RGB) channels; got shape {tuple(x.shape)}.")
    a = ((x.float().cpu().numpy() + 1.0) / 2.0).clip(0.0, 1.0)
    a = np.nan_to_num(a, nan=0.0)
    a = np.moveaxis(a, 2, -1)  # (B, T, H, W, C)
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def _count(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def _target(path: str | Path, suffix: str) -> Path:
    p = Path(path)
    if p.suffix.lower() != suffix:
        raise ConfigError(f"path must end in {suffix}; got {str(path)!r}.")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def film_strip(video: Any, path: str | Path, *, rows: int | None = None, every: int = 1,
               title: str | None = None) -> Path:
    """Write a PNG film strip of ``video`` to ``path`` and return the path.

    One row per video (the first ``rows`` videos, all by default), frames ``0, every,
    2 * every, ...`` left to right, separated by thin blue lines; columns are labelled with the
    frame index, rows with the video index.

    Args:
        video: ``(B, T, C, H, W)`` in [-1, 1], ``C`` 1 or 3.
        path: the ``.png`` file (parent folders are created).
        rows: how many videos to show (``<= B``).
        every: show every ``every``-th frame.
        title: an optional title above the strip.
    """
    frames = _frames01(video)
    b, t, h, w, _ = frames.shape
    rows = b if rows is None else _count(rows, "rows")
    if rows > b:
        raise ConfigError(f"rows ({rows}) must be at most the number of videos ({b}).")
    every = _count(every, "every")
    idx = list(range(0, t, every))
    cols = len(idx)
    mosaic = np.ones(((h + 1) * rows - 1, (w + 1) * cols - 1, 3)) * _SEPARATOR
    for r in range(rows):
        for c, k in enumerate(idx):
            mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = frames[r, k]
    p = _target(path, ".png")
    plt = _plt()
    inch = 0.42 * max(h, 8) / 16  # a 16x16 frame is about 0.42 inch (40 pixels at 96 dpi)
    fig, ax = plt.subplots(figsize=(max(2.5, cols * inch + 0.8), max(1.2, rows * inch + (0.9 if title else 0.6))))
    try:
        ax.imshow(mosaic, interpolation="nearest")
        step = max(1, math.ceil(cols / 24))  # at most ~24 tick labels
        ax.set_xticks([c * (w + 1) + (w - 1) / 2 for c in range(0, cols, step)])
        ax.set_xticklabels([str(idx[c]) for c in range(0, cols, step)], fontsize=7)
        rstep = max(1, math.ceil(rows / 24))
        ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(0, rows, rstep)])
        ax.set_yticklabels([str(r) for r in range(0, rows, rstep)], fontsize=7)
        ax.tick_params(length=0)
        ax.set_xlabel("frame", fontsize=8)
        for side in ax.spines.values():
            side.set_visible(False)
        if title:
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(p, dpi=96)
    finally:
        plt.close(fig)
    return p


def animated_gif(video: Any, path: str | Path, *, fps: float = 8, scale: int = 4) -> Path:
    """Write an animated GIF of ``video`` to ``path`` (Pillow) and return the path.

    The videos are tiled in a grid of ``ceil(sqrt(B))`` columns (1-pixel blue gaps), upscaled
    by nearest neighbour by ``scale``; every GIF frame is one time step, ``1000 / fps`` ms long,
    looping. A progress bar under the grid shows ``t / T``; it also keeps consecutive GIF
    frames distinct, so the file has exactly ``T`` frames (Pillow merges identical ones).

    Args:
        video: ``(B, T, C, H, W)`` in [-1, 1], ``C`` 1 or 3.
        path: the ``.gif`` file (parent folders are created).
        fps: frames per second of playback (> 0).
        scale: the integer upscaling factor (>= 1).
    """
    from PIL import Image

    frames = _frames01(video)
    b, t, h, w, _ = frames.shape
    scale = _count(scale, "scale")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"fps must be a positive number; got {fps!r}.")
    ncols = math.ceil(math.sqrt(b))
    nrows = math.ceil(b / ncols)
    grid = np.ones((t, (h + 1) * nrows - 1, (w + 1) * ncols - 1, 3)) * _SEPARATOR
    for i in range(b):
        r, c = divmod(i, ncols)
        grid[:, r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = frames[i]
    grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
    width = grid.shape[2]
    bar = np.full((t, max(2, scale), width, 3), 0.2)
    for k in range(t):
        bar[k, :, : math.ceil((k + 1) * width / t)] = 1.0
        if width < t:  # too narrow to move every frame: alternate the last pixel instead
            bar[k, :, -1] = 0.6 if k % 2 else 0.9
    images = (np.concatenate([grid, bar], axis=1) * 255).round().astype(np.uint8)
    pil = [Image.fromarray(im).convert("P", palette=Image.Palette.ADAPTIVE, colors=256) for im in images]
    p = _target(path, ".gif")
    pil[0].save(p, save_all=True, append_images=pil[1:], duration=max(1, round(1000 / fps)), loop=0,
                optimize=False, disposal=1)
    return p


def curve_plot(curves: Mapping[str, Sequence[float]], path: str | Path, xlabel: str, ylabel: str, *,
               title: str | None = None, x: Sequence[float] | None = None, logy: bool = False) -> Path:
    """Write a PNG line plot of named curves (e.g. drift per chunk of several students) to
    ``path`` and return the path.

    Args:
        curves: ``{name: values}``; each curve is drawn against ``0, 1, ...`` (or ``x``).
        path: the ``.png`` file (parent folders are created).
        xlabel: the x-axis label (e.g. ``chunk``).
        ylabel: the y-axis label (e.g. ``digits FD``).
        title: an optional title.
        x: shared x values, as long as the longest curve.
        logy: a logarithmic y axis.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ConfigError("curves must be a non-empty dict {name: list of floats}.")
    data = {}
    for name, values in curves.items():
        v = np.asarray(values, dtype=float).reshape(-1)
        if v.size == 0:
            raise ConfigError(f"curves[{name!r}] is empty.")
        data[str(name)] = v
    longest = max(len(v) for v in data.values())
    xs = np.arange(longest, dtype=float) if x is None else np.asarray(x, dtype=float).reshape(-1)
    if len(xs) < longest:
        raise ConfigError(f"x has {len(xs)} values but the longest curve has {longest}.")
    p = _target(path, ".png")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    try:
        for name, v in data.items():
            ax.plot(xs[: len(v)], v, marker="o", markersize=3, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        if title:
            ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(p, dpi=96)
    finally:
        plt.close(fig)
    return p
