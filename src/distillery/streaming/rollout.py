"""Chunk-wise rollouts of a causal video student: what it generates and what it conditions on.

A streaming student generates chunk ``i`` from noise in ``K_i`` denoising steps, attending to
the KV cache of the chunks before it; the finished chunk is then run once more at the *context*
noise level and its keys and values appended to the cache (:meth:`~.models.VideoTransformer.append_chunk`).
What the cache holds decides the training regime (Self-Forcing, Huang et al. 2025,
arXiv:2506.08009, Sec. 3):

* ``"teacher"`` forcing: the real frames of the chunks before (clean);
* ``"diffusion"`` forcing: the real frames noised to a random level per chunk
  (Chen et al. 2024, arXiv:2407.01392);
* ``"self"`` forcing: the student's own generated chunks, as at inference (no exposure bias).

Context frames may be noised to ``context_noise`` (Diagonal Distillation's partially denoised
context; CausVid conditions on slightly noised context), and a prefix of real chunks may start
the stream (video continuation: the ground truth of the rest is then known).

Gradients (Self-Forcing's stochastic truncation): each chunk is denoised without gradient except
at one *exit* step (``exit="last"`` or a random step shared by the whole rollout, drawn from the
rollout's generator); ``grad`` picks which chunks carry it (``"all"``, ``"last"``, a ``"random"``
chunk, or ``"none"``); the cache is always built without gradient (the context is a constant of
the loss, as in the paper).

Step schedules (:func:`chunk_schedule`): ``uniform`` (``K`` steps for every chunk) or
``diagonal`` (Diagonal Distillation: more steps for the early chunks, linearly fewer later,
``first`` to ``last``); the stated NFE of a rollout is the sum of the schedule plus one context
pass per appended chunk (:attr:`Rollout.context_passes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..generative.method import GLOBAL_DRAWS

__all__ = ["CONTEXTS", "GRADS", "Rollout", "chunk_schedule", "conditions_of", "rollout", "shared_randint", "step_times"]

CONTEXTS = ("self", "teacher", "diffusion")
GRADS = ("none", "last", "random", "all")


def chunk_schedule(kind: str, chunks: int, steps: int = 2, *, first: int | None = None, last: int | None = None) -> list[int]:
    """Denoising steps per chunk: ``uniform`` (``steps`` each) or ``diagonal`` (``first`` steps for
    chunk 0 decreasing linearly to ``last`` for the final chunk, rounded; defaults ``first =
    2 * steps``, ``last = 1``). Returns ``chunks`` positive ints; their sum is the denoising NFE."""
    if chunks < 1:
        raise ConfigError(f"chunk_schedule: chunks must be >= 1, got {chunks}.")
    if kind == "uniform":
        if steps < 1:
            raise ConfigError(f"chunk_schedule: steps must be >= 1, got {steps}.")
        return [int(steps)] * chunks
    if kind == "diagonal":
        first = 2 * steps if first is None else first
        last = 1 if last is None else last
        if first < 1 or last < 1:
            raise ConfigError(f"chunk_schedule: diagonal needs first, last >= 1; got first={first}, last={last}.")
        if chunks == 1:
            return [int(first)]
        return [int(round(first + (last - first) * i / (chunks - 1))) for i in range(chunks)]
    raise ConfigError(f"chunk_schedule: kind must be 'uniform' or 'diagonal', got {kind!r}.")


def step_times(process: Any, steps: int, *, device: Any = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(steps,)`` the times a ``steps``-step generator denoises from: ``t_max`` down to the last
    time before the data end (``process.timesteps(steps)[:-1]``, as DMD2's generator)."""
    return process.timesteps(steps)[:-1].to(device=device, dtype=dtype)


def shared_randint(draw: Any, high: int) -> int:
    """One integer in ``[0, high)`` equal on every rank: drawn from the draws' shared generator
    (:class:`~distillery.generative.method.BatchDraws`) or the global RNG outside the loop."""
    gen = getattr(draw, "generator", None)
    return int(torch.randint(0, high, (1,), generator=gen)) if gen is not None else int(torch.randint(0, high, (1,)))


def conditions_of(batch: dict[str, Any], net: Any) -> Any:
    """The condition a video network takes from a batch: ``None``, labels ``(B,)`` or a dict of
    ``y``/``audio``/``actions`` (only those the network uses)."""
    keys = []
    if getattr(net, "num_classes", None):
        keys.append("y")
    if getattr(net, "audio_dim", 0):
        keys.append("audio")
    if getattr(net, "num_actions", 0):
        keys.append("actions")
    if not keys:
        return None
    for k in keys:
        if k not in batch and k != "y":
            raise ConfigError(f"the student is {k}-conditioned but the batch has no {k!r} (check the dataset's params).")
    return {k: batch[k] for k in keys if k in batch}


@dataclass
class Rollout:
    """A rolled-out video and how it was made.

    ``video``: ``(B, T, C, H, W)`` (the prefix's real frames, then the generated chunks; the
    chunks in :attr:`grad_chunks` carry gradient); ``steps``: denoising steps per chunk
    (0 for prefix chunks); ``context_passes``: forward passes that filled the cache."""

    video: torch.Tensor
    steps: list[int] = field(default_factory=list)
    context_passes: int = 0
    grad_chunks: list[int] = field(default_factory=list)
    exit_step: int | None = None

    @property
    def nfe(self) -> int:
        """Denoising network evaluations per video (the context passes not included)."""
        return int(sum(self.steps))


def _student_net(student: Any) -> Any:
    net = getattr(student, "net", student)
    if not hasattr(net, "denoise_chunk"):
        raise ConfigError(f"rollout: the student's network {type(net).__name__} cannot stream (it has no denoise_chunk); "
                          "use the video_transformer with attention 'block_causal'.")
    return net


def rollout(student: Any, n: int, chunks: int, schedule: list[int], *, cond: Any = None,
            real: torch.Tensor | None = None, prefix_chunks: int = 0, context: str = "self",
            context_noise: float = 0.0, grad: str = "none", exit: str = "last", draw: Any = None,
            device: Any = "cpu", reinject: float = 0.0) -> Rollout:
    """Generate ``chunks`` chunks with the streaming ``student`` (a Denoiser around a
    :class:`~.models.VideoTransformer`).

    Args:
        student: the causal student Denoiser (``.net``, ``.process``, ``.prediction``).
        n: videos.
        chunks: chunks per video (frames = ``chunks * net.chunk``).
        schedule: denoising steps per chunk (:func:`chunk_schedule`), ``len == chunks``.
        cond: the network's condition (labels, or a dict with audio/actions covering all frames).
        real: ``(n, T, C, H, W)`` real videos (for a prefix and teacher/diffusion forcing).
        prefix_chunks: real chunks that start the stream (not generated, no NFE).
        context: ``"self"``, ``"teacher"`` or ``"diffusion"`` (what the cache holds).
        context_noise: noise level the context chunks are appended at (0: clean).
        grad: which chunks carry gradient (see the module docstring).
        exit: ``"last"`` or ``"random"`` exit step (the step with gradient).
        draw: where per-sample draws come from (a method's ``self.draw``; default global RNG).
        reinject: with ``context="teacher"``, the probability per chunk that the student's own
            generated chunk replaces the real one in the cache (Matrix-Game 3.0's re-injection
            of imperfect generated frames).

    Returns:
        a :class:`Rollout`.
    """
    draw = draw or GLOBAL_DRAWS
    net = _student_net(student)
    process, prediction = student.process, student.prediction
    if len(schedule) != chunks:
        raise ConfigError(f"rollout: the schedule has {len(schedule)} entries for {chunks} chunks.")
    if context not in CONTEXTS:
        raise ConfigError(f"rollout: context must be one of {', '.join(CONTEXTS)}; got {context!r}.")
    if grad not in GRADS:
        raise ConfigError(f"rollout: grad must be one of {', '.join(GRADS)}; got {grad!r}.")
    if exit not in ("last", "random"):
        raise ConfigError(f"rollout: exit must be 'last' or 'random'; got {exit!r}.")
    if not 0 <= prefix_chunks < chunks:
        raise ConfigError(f"rollout: prefix_chunks must be in [0, {chunks}); got {prefix_chunks}.")
    F_ = net.chunk
    frames = chunks * F_
    if (prefix_chunks or context != "self") and real is None:
        raise ConfigError("rollout: a prefix or teacher/diffusion forcing needs the real videos (real=...).")
    if real is not None and real.shape[1] < frames:
        raise ConfigError(f"rollout: the real videos have {real.shape[1]} frames; {chunks} chunks of {F_} need {frames}.")
    dtype = next(net.parameters()).dtype
    shape = (F_, net.channels, net.size, net.size)
    generated = [i for i in range(prefix_chunks, chunks)]
    if grad == "all":
        grad_chunks = generated
    elif grad == "last":
        grad_chunks = generated[-1:]
    elif grad == "random":
        grad_chunks = [generated[shared_randint(draw, len(generated))]]
    else:
        grad_chunks = []
    exit_step = None
    if exit == "random":
        exit_step = shared_randint(draw, max(schedule[prefix_chunks:]))
    cache = net.init_cache()
    out: list[torch.Tensor] = []
    steps_used: list[int] = []
    passes = 0
    ctx_t = torch.full((n,), float(context_noise), device=device, dtype=dtype)
    for i in range(chunks):
        with_grad = i in grad_chunks
        if i < prefix_chunks:
            chunk = real[:, i * F_:(i + 1) * F_].to(device=device, dtype=dtype)
            steps_used.append(0)
        else:
            K = schedule[i]
            times = step_times(process, K, device=device, dtype=dtype)
            stop = K - 1 if exit_step is None else min(exit_step, K - 1)
            x = draw.prior(process, n, shape, device=device, dtype=dtype)
            noise = [draw.randn_like(x) for _ in range(K - 1)]
            chunk = x
            for s in range(stop + 1):
                t = times[s].expand(n)
                with torch.set_grad_enabled(with_grad and s == stop and torch.is_grad_enabled()):
                    pred = net.denoise_chunk(x, t, cache, i, cond)
                    chunk = process.convert(pred, x, t, prediction, "x0")
                if s < stop:
                    x = process.add_noise(chunk.detach(), noise[s], times[s + 1].expand(n))
            steps_used.append(stop + 1)
        out.append(chunk)
        if i + 1 < chunks:
            ctx = chunk.detach()
            if context != "self" and i >= prefix_chunks:
                real_chunk = real[:, i * F_:(i + 1) * F_].to(device=device, dtype=dtype)
                if context == "diffusion":
                    level = draw.rand(n, device=device, dtype=dtype) * process.t_max
                    real_chunk = process.add_noise(real_chunk, draw.randn_like(real_chunk), level)
                if reinject > 0:
                    keep_own = (draw.rand(n, device=device, dtype=dtype) < reinject).reshape(n, 1, 1, 1, 1)
                    real_chunk = torch.where(keep_own, ctx, real_chunk)
                ctx = real_chunk
            if context_noise > 0:
                ctx = process.add_noise(ctx, draw.randn_like(ctx), ctx_t)
            with torch.no_grad():
                net.append_chunk(ctx, cache, i, cond, t=ctx_t)
            passes += 1
    return Rollout(torch.cat(out, 1), steps_used, passes, grad_chunks, exit_step)
