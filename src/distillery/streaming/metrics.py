"""Metrics of streaming video students against the procedural ground truth of :mod:`.data`.

A video is a float tensor ``(B, T, C, H, W)`` in [-1, 1] with a black (-1) background.

* :func:`sprite_positions`, :func:`position_error`, :func:`position_error_curve`: where the
  sprite is (its intensity centroid) and how far that is from the true centre;
* :func:`flicker`: frame-to-frame change against the ground truth's (:func:`temporal_change`);
* :func:`drift`, :func:`drift_slope`: per-chunk digits FD (Heusel et al. 2017,
  arXiv:1706.08500, in :func:`~distillery.generative.metrics.digits_fd` features) over a long
  rollout, the error accumulation that Self-Forcing (Huang et al. 2025, arXiv:2506.08009) and
  Diagonal Distillation (methods.md row 47) target, and its slope per chunk;
* :func:`sync_error`, :func:`sync_error_curve`: the gap between the motion the audio implies
  (:func:`~.data.audio_rows`) and the sprite's estimated motion (OmniForcing, row 17);
* :func:`revisit_consistency`, :func:`revisit_pairs`: how much frames at the same camera
  position differ (Matrix-Game 3.0, row 45);
* :func:`stream_timing`: frames per second and first-chunk latency of a chunk generator.

All take tensors (or arrays) on any device (they are scored on the CPU) and return Python
floats or lists; bad shapes raise :class:`~distillery.errors.ConfigError` naming the argument.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError

__all__ = [
    "drift",
    "drift_slope",
    "flicker",
    "position_error",
    "position_error_curve",
    "revisit_consistency",
    "revisit_pairs",
    "sprite_positions",
    "stream_timing",
    "sync_error",
    "sync_error_curve",
    "temporal_change",
]


def _video(video: Any, name: str = "video", *, min_frames: int = 1) -> torch.Tensor:
    """``video`` as a float tensor ``(B, T, C, H, W)``, or a ConfigError naming ``name``."""
    if not isinstance(video, torch.Tensor):
        try:
            video = torch.as_tensor(video)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(f"{name} must be a video tensor (B, T, C, H, W); got {type(video).__name__}.") from None
    if video.dim() != 5:
        raise ConfigError(f"{name} must be a video tensor (B, T, C, H, W); got shape {tuple(video.shape)}.")
    if video.shape[1] < min_frames or video.shape[0] < 1:
        raise ConfigError(f"{name} needs at least 1 video of {min_frames} frames; got shape {tuple(video.shape)}.")
    video = video.detach().cpu()  # the metrics are cheap: scored on the CPU whatever the device
    return video if video.dtype in (torch.float32, torch.float64) else video.float()


def _positions(pos: Any, video: torch.Tensor, name: str = "pos") -> torch.Tensor:
    """Single-sprite positions ``(B, T, 2)`` from ``(B, T, 2)`` or ``(B, T, 1, 2)``."""
    p = torch.as_tensor(pos).detach().cpu().to(torch.float64)
    if p.dim() == 4 and p.shape[2] == 1:
        p = p[:, :, 0]
    if p.dim() != 3 or tuple(p.shape) != (video.shape[0], video.shape[1], 2):
        raise ConfigError(
            f"{name} must be (B, T, 2) or (B, T, 1, 2) with B, T = {tuple(video.shape[:2])} of the video "
            f"(one sprite); got shape {tuple(p.shape)}.")
    return p


# ------------------------------------------------------------------------------- positions
def sprite_positions(video: Any, *, threshold: float = 0.1) -> torch.Tensor:
    """The centre ``(row, col)`` in pixels of the (single) sprite in each frame: ``(B, T, 2)``.

    The intensity centroid of the pixels above the background: with ``v = (x + 1) / 2`` in
    [0, 1] (averaged over channels), pixels with ``v > threshold`` are weighted by ``v``. On
    clean :func:`~.data.sprite_videos` frames this is the true centre ``pos`` within ~0.15
    pixel at ``threshold = 0.1`` (exactly, at ``threshold = 0``); the threshold keeps a
    generator's faint background noise from pulling the estimate to the frame centre. A frame
    with no pixel above it falls back to the unthresholded centroid, and an all-black frame to
    the frame centre ``((H - 1) / 2, (W - 1) / 2)``.

    Args:
        video: ``(B, T, C, H, W)`` in [-1, 1].
        threshold: the background cut on ``v`` in [0, 1).
    """
    x = _video(video)
    if not 0.0 <= float(threshold) < 1.0:
        raise ConfigError(f"threshold must be in [0, 1); got {threshold!r}.")
    v = ((x.to(torch.float64) + 1) / 2).clamp(0, 1).mean(2)  # (B, T, H, W)
    w = torch.where(v > threshold, v, torch.zeros_like(v))
    mass = w.sum((-2, -1), keepdim=True)
    w = torch.where(mass > 0, w, v)
    mass = w.sum((-2, -1))
    h, wd = v.shape[-2:]
    rows = torch.arange(h, dtype=v.dtype)
    cols = torch.arange(wd, dtype=v.dtype)
    safe = mass.clamp_min(1e-12)
    est = torch.stack([(w.sum(-1) * rows).sum(-1) / safe, (w.sum(-2) * cols).sum(-1) / safe], -1)
    centre = torch.tensor([(h - 1) / 2, (wd - 1) / 2], dtype=v.dtype)
    return torch.where((mass > 0)[..., None], est, centre)


def position_error_curve(video: Any, pos: Any, *, threshold: float = 0.1) -> list[float]:
    """Per-frame mean (over the batch) Euclidean distance in pixels between the estimated
    sprite centre (:func:`sprite_positions`) and the true one: a list of ``T`` floats.

    ``video``: ``(B, T, C, H, W)``; ``pos``: ``(B, T, 1, 2)`` (as ``sprite_videos`` returns it
    with one sprite) or ``(B, T, 2)``."""
    x = _video(video)
    p = _positions(pos, x)
    err = (sprite_positions(x, threshold=threshold) - p).norm(dim=-1)  # (B, T)
    return [float(e) for e in err.mean(0)]


def position_error(video: Any, pos: Any, *, threshold: float = 0.1) -> float:
    """Mean Euclidean distance in pixels between estimated (:func:`sprite_positions`) and true
    sprite centres over all videos and frames. ``video``: ``(B, T, C, H, W)``; ``pos``:
    ``(B, T, 1, 2)`` or ``(B, T, 2)``; 0 on the ground truth (up to the threshold's ~0.1 px)."""
    x = _video(video)
    p = _positions(pos, x)
    return float((sprite_positions(x, threshold=threshold) - p).norm(dim=-1).mean())


# --------------------------------------------------------------------------------- flicker
def temporal_change(video: Any) -> float:
    """Mean absolute frame-to-frame change ``mean |x_t - x_{t-1}|`` over videos, frames
    ``t = 1..T-1`` and pixels, of ``video`` ``(B, T, C, H, W)`` (T >= 2)."""
    x = _video(video, min_frames=2)
    return float((x[:, 1:] - x[:, :-1]).abs().to(torch.float64).mean())


def flicker(video: Any, reference: Any) -> float:
    """Flicker as the **difference** ``temporal_change(video) - temporal_change(reference)``:
    how much more (positive) or less (negative) a generated video changes from frame to frame
    than the ground truth does; 0 for the ground truth against itself. Motion itself is not
    flicker, hence the subtraction.

    Args:
        video: ``(B, T, C, H, W)`` in [-1, 1], T >= 2.
        reference: ground-truth videos ``(B', T', C, H, W)`` (any number and length, T' >= 2).
    """
    return temporal_change(_video(video, "video", min_frames=2)) - temporal_change(
        _video(reference, "reference", min_frames=2))


# ----------------------------------------------------------------------------------- drift
def _frames_8x8(x: torch.Tensor, name: str) -> torch.Tensor:
    """Frames ``(N, 1, H, W)`` average-pooled to ``(N, 1, 8, 8)``."""
    h, w = x.shape[-2:]
    if x.shape[1] != 1 or h % 8 or w % 8 or h != w:
        raise ConfigError(
            f"{name}: the digits FD needs one-channel square frames whose side is a multiple of 8; "
            f"got frames of shape {tuple(x.shape[1:])}.")
    return torch.nn.functional.avg_pool2d(x.float(), h // 8) if h > 8 else x.float()


def drift(video: Any, reference_frames: Any, chunk: int, *, batch_size: int = 512) -> list[float]:
    """Per-chunk digits FD of a (long) rollout: a list with one float per chunk of ``chunk``
    frames, each the Frechet distance (:func:`~distillery.generative.metrics.digits_fd`)
    between all frames of that chunk (over the batch) and the reference frames, both
    average-pooled to 8x8. Quality drift over the rollout shows as a rising list; evaluate
    rollouts longer than training (e.g. 4x) and summarise with :func:`drift_slope`.

    Each chunk pools ``B * chunk`` frames; the FD estimate needs a few dozen at least (use
    ``B * chunk >= 64``) and is biased upward for small sets, so compare runs at equal sizes.

    Args:
        video: ``(B, T, 1, H, W)`` in [-1, 1], ``H = W`` a multiple of 8, ``T`` a multiple of
            ``chunk``.
        reference_frames: real frames ``(N, 1, H, W)`` or videos ``(B', T', 1, H, W)`` (e.g. the
            ground-truth test videos), N >= 2.
        chunk: frames per chunk.
        batch_size: frames per feature-net forward pass.
    """
    from ..generative.metrics import digits_fd

    x = _video(video)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"chunk must be a positive integer; got {chunk!r}.")
    b, t = x.shape[:2]
    if t % chunk:
        raise ConfigError(f"chunk ({chunk}) must divide the number of frames ({t}) of the video.")
    if b * chunk < 2:
        raise ConfigError(f"drift needs at least 2 frames per chunk over the batch; got B={b}, chunk={chunk}.")
    ref = torch.as_tensor(reference_frames).detach().cpu()
    if ref.dim() == 5:
        ref = ref.flatten(0, 1)
    if ref.dim() != 4 or len(ref) < 2:
        raise ConfigError(
            f"reference_frames must be frames (N, 1, H, W) or videos (B, T, 1, H, W) with N >= 2; "
            f"got shape {tuple(ref.shape)}.")
    ref8 = _frames_8x8(ref, "reference_frames")
    frames = _frames_8x8(x.flatten(0, 1), "video").reshape(b, t, 1, 8, 8)
    out = []
    for k in range(t // chunk):
        part = frames[:, k * chunk : (k + 1) * chunk].flatten(0, 1)
        out.append(float(digits_fd(part, ref8, batch_size=batch_size)))
    return out


def drift_slope(values: Any) -> float:
    """The least-squares slope of ``values`` (one per chunk) against the chunk index: the
    average increase per chunk (0 for a single value)."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if len(v) < 2:
        return 0.0
    k = torch.arange(len(v), dtype=torch.float64)
    k = k - k.mean()
    return float((k * (v - v.mean())).sum() / (k * k).sum())


# ------------------------------------------------------------------------------------ sync
def _sync_gap(video: Any, audio: Any, sprite_size: int, threshold: float, start: int) -> torch.Tensor:
    from .data import audio_rows

    x = _video(video, min_frames=2)
    a = torch.as_tensor(audio).detach().cpu().to(torch.float64)
    b, t = x.shape[:2]
    if a.dim() not in (2, 3) or a.shape[0] != b or a.shape[1] % t:
        raise ConfigError(
            f"audio must be (B, T * rate, A) or (B, T * rate) with B = {b}, T = {t} of the video; "
            f"got shape {tuple(a.shape)}.")
    if isinstance(sprite_size, bool) or not isinstance(sprite_size, int) or not 0 < sprite_size < x.shape[-2]:
        raise ConfigError(f"sprite_size must be an integer in (0, {x.shape[-2]}); got {sprite_size!r}.")
    implied = audio_rows(a, t, float(x.shape[-2] - sprite_size))  # (B, T) top rows
    est = sprite_positions(x, threshold=threshold)[..., 0]  # (B, T) centre rows
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < t:
        raise ConfigError(f"start must be an integer in [0, {t - 1}] (a frame of the video); got {start!r}.")
    gap = ((est[:, 1:] - est[:, :-1]) - (implied[:, 1:] - implied[:, :-1])).abs()  # (B, T-1): transition t-1 -> t
    return gap[:, max(start, 1) - 1 :]


def sync_error_curve(video: Any, audio: Any, *, sprite_size: int = 8, threshold: float = 0.1,
                     start: int = 0) -> list[float]:
    """:func:`sync_error` per frame transition: one float per transition ``(t - 1, t)`` for
    ``t = max(start, 1) .. T - 1`` (mean over the batch), to see whether audio and video drift
    apart over a long rollout."""
    return [float(g) for g in _sync_gap(video, audio, sprite_size, threshold, start).mean(0)]


def sync_error(video: Any, audio: Any, *, sprite_size: int = 8, threshold: float = 0.1, start: int = 0) -> float:
    """Audio-motion synchronisation error in pixels per frame: the mean absolute difference
    between the vertical motion the audio implies and the sprite's estimated vertical motion,
    ``mean |(r_t - r_{t-1}) - (a_t - a_{t-1})|`` over videos and ``t = 1..T-1``, where ``r`` is
    the row of :func:`sprite_positions` and ``a`` the row :func:`~.data.audio_rows` gives
    (``sprite_videos(audio=True)``'s rule). Differences of motion, not positions, so the
    sprite's own centroid offset cancels. ~0 on the ground truth; large on mismatched audio.

    Args:
        video: ``(B, T, C, H, W)`` in [-1, 1], one sprite, T >= 2.
        audio: ``(B, T * rate, A)`` or ``(B, T * rate)`` (channel 0 is used).
        sprite_size: the sprite side the data used (the motion span is ``H - sprite_size``).
        threshold: the background cut of :func:`sprite_positions`.
        start: score only the transitions into frames ``t >= start`` (e.g. the first generated
            frame after ``start`` real context frames; the step from the last real frame to the
            first generated one counts).
    """
    return float(_sync_gap(video, audio, sprite_size, threshold, start).mean())


# --------------------------------------------------------------------------------- revisit
def revisit_pairs(camera_pos: Any, *, min_gap: int = 1) -> torch.Tensor:
    """The revisits of a batch of camera paths: a long tensor ``(P, 3)`` of ``(b, i, j)`` with
    ``i < j``, ``j - i >= min_gap`` and ``camera_pos[b, i] == camera_pos[b, j]``.

    ``camera_pos``: ``(B, T, 2)`` or ``(B, T, 1, 2)`` (``gridworld_videos``' ``pos``)."""
    p = torch.as_tensor(camera_pos).detach().cpu()
    if p.dim() == 4 and p.shape[2] == 1:
        p = p[:, :, 0]
    if p.dim() != 3 or p.shape[-1] != 2:
        raise ConfigError(f"camera_pos must be (B, T, 2) or (B, T, 1, 2); got shape {tuple(p.shape)}.")
    if isinstance(min_gap, bool) or not isinstance(min_gap, int) or min_gap < 1:
        raise ConfigError(f"min_gap must be an integer >= 1; got {min_gap!r}.")
    p = p.round().long()
    t = p.shape[1]
    same = (p[:, :, None] == p[:, None, :]).all(-1)  # (B, T, T)
    i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    return (same & (j - i >= min_gap)).nonzero()


def revisit_consistency(video: Any, camera_pos: Any, *, min_gap: int = 1) -> float:
    """Mean absolute pixel difference ``mean |frame_i - frame_j|`` over all pairs of frames of
    the same video taken at the same camera position (:func:`revisit_pairs`, ``i < j``, ``j - i
    >= min_gap``); lower is better, 0 for a static world rendered faithfully.

    Args:
        video: ``(B, T, C, H, W)`` in [-1, 1].
        camera_pos: ``(B, T, 2)`` or ``(B, T, 1, 2)`` camera positions (the ground truth).
        min_gap: the smallest frame distance of a pair (e.g. > 1 to skip "stay" actions).
    """
    x = _video(video)
    camera_pos = torch.as_tensor(camera_pos).detach().cpu()
    if tuple(camera_pos.shape[:2]) != tuple(x.shape[:2]):
        raise ConfigError(
            f"camera_pos must have the video's (B, T) = {tuple(x.shape[:2])}; got shape "
            f"{tuple(camera_pos.shape)}.")
    pairs = revisit_pairs(camera_pos, min_gap=min_gap)
    if len(pairs) == 0:
        raise ConfigError("revisit_consistency: camera_pos has no revisited position (no pair of frames at the "
                          f"same place with min_gap={min_gap}).")
    total = torch.zeros((), dtype=torch.float64)
    for s in range(0, len(pairs), 4096):
        b, i, j = pairs[s : s + 4096].unbind(1)
        total += (x[b, i] - x[b, j]).abs().to(torch.float64).flatten(1).mean(1).sum()
    return float(total / len(pairs))


# ---------------------------------------------------------------------------------- timing
def stream_timing(generate_chunk: Callable[[int], Any], chunks: int, *, frames_per_chunk: int | None = None,
                  warmup: int = 1) -> dict[str, Any]:
    """Times a streaming generator: ``generate_chunk(k)`` produces chunk ``k`` (``k = 0 ..
    chunks - 1``, in order, so a generator may keep a KV cache between calls and reset it at
    ``k = 0``). ``warmup`` untimed calls of ``generate_chunk(0)`` come first; each chunk is
    then timed with ``time.perf_counter`` (CUDA synchronised after each call when the output
    is on a GPU).

    Frames per chunk: ``frames_per_chunk`` or, when ``generate_chunk`` returns a video
    ``(B, t, C, H, W)``, its ``t``. ``fps`` counts the frames of one stream (a batch of ``B``
    streams produces ``B`` times as many).

    Returns ``{"fps": frames / total seconds, "first_chunk_latency_s": seconds of chunk 0,
    "seconds_per_chunk": [...], "frames": frames generated, "chunks": chunks}``.
    """
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ConfigError(f"chunks must be a positive integer; got {chunks!r}.")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0; got {warmup!r}.")
    if frames_per_chunk is not None and (isinstance(frames_per_chunk, bool) or not isinstance(frames_per_chunk, int)
                                         or frames_per_chunk < 1):
        raise ConfigError(f"frames_per_chunk must be a positive integer; got {frames_per_chunk!r}.")

    def sync(out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.is_cuda:
            torch.cuda.synchronize(out.device)

    for _ in range(warmup):
        sync(generate_chunk(0))
    seconds, frames = [], 0
    for k in range(chunks):
        start = time.perf_counter()
        out = generate_chunk(k)
        sync(out)
        seconds.append(time.perf_counter() - start)
        if frames_per_chunk is not None:
            frames += frames_per_chunk
        elif isinstance(out, torch.Tensor) and out.dim() == 5:
            frames += int(out.shape[1])
        else:
            raise ConfigError("stream_timing: generate_chunk returned no video (B, t, C, H, W); pass frames_per_chunk.")
    total = sum(seconds)
    return {"fps": frames / total if total > 0 else float("inf"), "first_chunk_latency_s": seconds[0],
            "seconds_per_chunk": seconds, "frames": frames, "chunks": chunks}
