"""Anchored Diffusion's anchored batch inference, as a long-video baseline for the streaming engine.

I. Kligvasser, R. Cohen, G. Leifman, E. Rivlin, M. Elad, 2024, "Anchored Diffusion for Video Face
Reenactment", arXiv:2407.15153 (abstract: "during inference, we leverage the transformer
architecture to modify the diffusion process, generating a batch of non-uniform sequences
anchored to a common frame, ensuring consistency regardless of temporal distance"). Not a
distillation method (methods.md row 51): a sampler, here for the bidirectional many-step video
teacher of :mod:`distillery.streaming`.

Mechanism, as expressed here: a long video is generated as ``S`` segments of the teacher's
``T`` frames *in one batch*; frame 0 of every segment is the common **anchor** frame ``a`` (a
real frame), imposed at every step of the sampler by replacement (inpainting): with the
process's forward noising ``q(x_t | a) = add_noise(a, eps_a, t)`` and one anchor noise ``eps_a``
shared by the whole batch,

    x_t[:, 0] <- add_noise(a, eps_a, t)      before every network evaluation,
    x0_hat, eps_hat = convert(F(x_t, t));   x_{t'} = add_noise(x0_hat, eps_hat, t')   (DDIM/Euler),

and at the end ``x_0[:, 0] = a``. The long video is the anchor followed by frames ``1..T-1`` of
each segment in turn. Every segment attends (bidirectionally) to the same anchor, so appearance
cannot drift with the distance from it; :func:`autoregressive_segments` is the plain baseline
that extends segment by segment, anchoring segment ``s`` on the last frame of segment ``s - 1``
(errors can accumulate).

Left out [inferred]: the paper's sequence-DiT is trained on frames at random **non-uniform
temporal spacing** with the spacing given as guidance, so that segment ``s`` can be told how far
from the anchor its frames lie; the teacher here is trained on contiguous clips and knows only
frame offsets ``0..T-1``. Each anchored segment is therefore a continuation of the anchor over
``T - 1`` frames: appearance is tied to the anchor, but motion restarts from it at every segment
(no continuity across segment boundaries). The CLIP/landmark guidance is not modelled either.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("anchored_diffusion", "Kligvasser et al. 2024, Anchored Diffusion, arXiv:2407.15153",
           "video_teacher_sprites.yaml",
           "long videos as a batch of segments sampled by the bidirectional teacher, all inpainted with one common "
           "anchor frame (a baseline against autoregressive segment extension; not KD)")
)

__all__ = ["anchored_sample", "autoregressive_segments", "inpainted_sample", "stitch"]


def _denoiser_parts(teacher: Any) -> tuple[Any, Any, str, tuple[int, ...]]:
    net = getattr(teacher, "net", None)
    if net is None or not hasattr(teacher, "process"):
        raise ConfigError("anchored_diffusion: the teacher must be a Denoiser (net, process, prediction).")
    return net, teacher.process, teacher.prediction, tuple(teacher.sample_shape)


@torch.no_grad()
def inpainted_sample(teacher: Any, first: torch.Tensor, steps: int, *, cond: Any = None,
                     noise: torch.Tensor | None = None, first_noise: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, T, C, H, W)`` videos sampled by ``teacher`` in ``steps`` DDIM/Euler steps with frame 0
    imposed as ``first`` ``(B, C, H, W)`` (replacement inpainting; see the module docstring).
    ``noise`` ``(B, T, C, H, W)``: the starting noise; ``first_noise`` ``(B, C, H, W)``: the noise
    the imposed frame is diffused with (shared by the batch for a common anchor)."""
    net, process, prediction, shape = _denoiser_parts(teacher)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"anchored_diffusion: steps must be a positive integer, got {steps!r}.")
    b = first.shape[0]
    if tuple(first.shape[1:]) != shape[1:]:
        raise ConfigError(f"anchored_diffusion: the anchor frame must be (B, {', '.join(map(str, shape[1:]))}); "
                          f"got {tuple(first.shape)}.")
    x = process.prior((b, *shape)) if noise is None else noise.clone()
    eps_a = torch.randn_like(first) if first_noise is None else first_noise.expand_as(first)
    times = process.timesteps(steps).to(first.dtype)
    for k in range(steps):
        t, t_next = times[k].expand(b), times[k + 1].expand(b)
        x[:, 0] = process.add_noise(first, eps_a, t)
        pred = teacher(x, t, cond)
        x0 = process.convert(pred, x, t, prediction, "x0")
        eps = process.convert(pred, x, t, prediction, "eps")
        x = process.add_noise(x0, eps, t_next) if k + 1 < steps else x0
    x[:, 0] = first
    return x


@torch.no_grad()
def anchored_sample(teacher: Any, anchor: torch.Tensor, segments: int, steps: int, *, cond: Any = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, S, T, C, H, W)``: ``S = segments`` segments per anchor ``(B, C, H, W)``, sampled in one
    batch, each with frame 0 = the common anchor (one anchor noise for all segments of a video).
    ``cond``: per-video condition (repeated over segments) or ``None``."""
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ConfigError(f"anchored_diffusion: segments must be a positive integer, got {segments!r}.")
    _, process, _, shape = _denoiser_parts(teacher)
    b = anchor.shape[0]
    noise = torch.randn((b * segments, *shape), generator=generator).to(anchor)
    eps_a = torch.randn(anchor.shape, generator=generator).to(anchor).repeat_interleave(segments, 0)
    first = anchor.repeat_interleave(segments, 0)
    c = cond.repeat_interleave(segments, 0) if isinstance(cond, torch.Tensor) else cond
    x = inpainted_sample(teacher, first, steps, cond=c, noise=noise, first_noise=eps_a)
    return x.reshape(b, segments, *shape)


@torch.no_grad()
def autoregressive_segments(teacher: Any, first: torch.Tensor, segments: int, steps: int, *, cond: Any = None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, S, T, C, H, W)``: segment 0 starts from ``first`` ``(B, C, H, W)``, segment ``s``
    from the last frame of segment ``s - 1`` (plain segment-by-segment extension)."""
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise ConfigError(f"anchored_diffusion: segments must be a positive integer, got {segments!r}.")
    _, _, _, shape = _denoiser_parts(teacher)
    out, start = [], first
    for _ in range(segments):
        noise = torch.randn((first.shape[0], *shape), generator=generator).to(first)
        eps_a = torch.randn(first.shape, generator=generator).to(first)
        seg = inpainted_sample(teacher, start, steps, cond=cond, noise=noise, first_noise=eps_a)
        out.append(seg)
        start = seg[:, -1]
    return torch.stack(out, 1)


def stitch(segments: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + S (T - 1), C, H, W)``: the first segment whole, then frames ``1..T-1`` of each
    later one (frame 0 of every segment repeats the anchor / the previous segment's last frame)."""
    if segments.dim() != 6:
        raise ConfigError(f"stitch: segments must be (B, S, T, C, H, W); got {tuple(segments.shape)}.")
    return torch.cat([segments[:, 0]] + [segments[:, s, 1:] for s in range(1, segments.shape[1])], 1)
