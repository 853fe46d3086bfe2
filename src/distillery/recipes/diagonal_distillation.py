"""Diagonal Distillation: more denoising steps for early chunks, fewer later, and partially
denoised context, at the NFE of a uniform schedule.

J. Liu, X. Liu, K. Mei, Y. Wen, M.-H. Yang, W. Liu, 2026, "Streaming Autoregressive Video
Generation via Diagonal Distillation", arXiv:2603.09488 (ICLR 2026). "Central to our approach is
an asymmetric generation strategy: more steps early, fewer steps later. This design allows later
chunks to inherit rich appearance information from thoroughly processed early chunks, while
using partially denoised chunks as conditional inputs for subsequent synthesis. By aligning the
implicit prediction of subsequent noise levels during chunk generation with the actual inference
conditions, our approach mitigates error propagation ..."

Mechanism, as expressed here (on the streaming engine's Self-Forcing DMD,
:class:`~distillery.streaming.objectives.self_forcing.SelfForcing`):

* **asymmetric steps** (:func:`diagonal_schedule`): over the ``G`` generated chunks (after
  ``prefix_chunks`` real ones), chunk ``g`` is denoised in
  ``K_g = round(first + (last - first) * g / (G - 1))`` steps with ``first = 2 K - last``,
  i.e. the engine's ``chunk_schedule("diagonal", G, first=2K-last, last=last)``. The ramp is
  symmetric about ``K``, so ``sum_g K_g = G K`` exactly (round-half-to-even pairs ``K + d``
  with ``K - d``): the **same denoising NFE** as ``K`` uniform steps per chunk, spent early;
* **partially denoised context**: every finished chunk enters the KV cache re-noised to
  ``context_noise`` ``tau > 0`` (``x_tau = (1 - tau) x + tau eps`` on a flow process) and run at
  noise level ``tau``, in training and at inference alike, so the noise level the student
  conditions on in training is the one it meets when streaming;
* the student is trained by Self-Forcing's DMD on its own rollouts with that schedule (gradient
  at the last step of each chunk: ``exit="last"``, so each chunk is trained at its own step
  count), and streams any horizon with the schedule stretched over it (:meth:`inference_schedule`).

[inferred] The paper's schedule and its context states are taken from the intermediate states of
the previous chunk's own denoising (the "diagonal" of the chunk x step grid); here the finished
chunk is re-noised to a fixed ``tau``, and the ramp is linear. The paper's **implicit optical-flow
modelling** (a motion term under strict step budgets) is left out.

Config: ``configs/diagonal_distillation_sprites.yaml``; reproduction:
``distillery reproduce diagonal_distillation``.
"""

from __future__ import annotations

from typing import Any


from ..errors import ConfigError
from ..generative.method import METHODS
from ..streaming.objectives.self_forcing import SelfForcing
from ..streaming.rollout import chunk_schedule
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("diagonal_distillation", "Liu et al. 2026, Diagonal Distillation, arXiv:2603.09488",
           "diagonal_distillation_sprites.yaml",
           "Self-Forcing DMD with more steps for early chunks and fewer later (equal NFE to uniform) and "
           "partially denoised (re-noised) context chunks")
)


def diagonal_schedule(chunks: int, steps: int, *, prefix_chunks: int = 0, last: int = 1) -> list[int]:
    """Steps per chunk: ``0`` for the ``prefix_chunks`` real chunks, then a linear ramp from
    ``2 * steps - last`` down to ``last`` over the generated chunks (one generated chunk:
    ``steps``). The generated chunks' steps sum to ``(chunks - prefix_chunks) * steps``, the
    NFE of ``steps`` uniform steps per chunk."""
    for key, value, low in (("chunks", chunks, 1), ("steps", steps, 1), ("prefix_chunks", prefix_chunks, 0),
                            ("last", last, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"diagonal_distillation: {key} must be an integer >= {low}, got {value!r}.")
    if prefix_chunks >= chunks:
        raise ConfigError(f"diagonal_distillation: prefix_chunks ({prefix_chunks}) must be fewer than the chunks ({chunks}).")
    if last > steps:
        raise ConfigError(f"diagonal_distillation: last ({last}) must be <= steps ({steps}): the ramp goes from "
                          f"2*steps-last down to last and averages steps.")
    generated = chunks - prefix_chunks
    ramp = [int(steps)] if generated == 1 else chunk_schedule("diagonal", generated, steps, first=2 * steps - last, last=last)
    return [0] * prefix_chunks + ramp


@METHODS.register("diagonal_distillation")
class DiagonalDistillation(SelfForcing):
    """Self-Forcing DMD with the diagonal (equal-NFE) schedule and partially denoised context.

    Args (besides Self-Forcing's and DMD's; ``schedule``/``first`` are set here):
        steps: the *average* steps per generated chunk ``K`` (the uniform baseline's steps).
        last: steps of the last chunk (``1 <= last <= K``); the first gets ``2K - last``.
        context_noise: the context chunks' noise level ``tau`` (default 0.1; 0 turns the
            partially denoised context off).
        exit: ``"last"`` (default: each chunk trained at its own step count) or ``"random"``.
    """

    def __init__(self, student: Any, teacher: Any, *, steps: int = 2, last: int = 1, context_noise: float = 0.1,
                 exit: str = "last", **params: Any) -> None:
        for key in ("schedule", "first"):
            if key in params:
                raise ConfigError(f"method 'diagonal_distillation': {key} is set by the method (the ramp from 2*steps-last "
                                  "to last); use steps and last.")
        super().__init__(student, teacher, steps=steps, schedule="uniform", context_noise=context_noise, exit=exit, **params)
        self.steps_mean, self.last = int(steps), int(last)
        self.schedule = diagonal_schedule(self.chunks, self.steps_mean, prefix_chunks=self.prefix_chunks, last=self.last)
        self.schedule_kind = "diagonal"

    def inference_schedule(self, chunks: int, steps: int, prefix_chunks: int | None = None) -> list[int]:
        """The diagonal schedule of a ``chunks``-chunk stream (``prefix_chunks`` real ones;
        default this method's) averaging ``steps`` steps per generated chunk (``last`` capped
        at ``steps``); the streaming trainer's evaluation calls this."""
        prefix = self.prefix_chunks if prefix_chunks is None else int(prefix_chunks)
        return diagonal_schedule(chunks, int(steps), prefix_chunks=prefix, last=min(self.last, int(steps)))

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update({"method": "diagonal_distillation", "steps": self.steps_mean, "last": self.last})
        return out


# -- config fragments ----------------------------------------------------------------------------
def diagonal_config(*, steps: int = 2, last: int = 1, context_noise: float = 0.1, prefix_chunks: int = 1,
                    fake_updates: int = 2, **extra: Any) -> dict[str, Any]:
    """The ``method`` section of Diagonal Distillation."""
    params = {"steps": int(steps), "last": int(last), "context_noise": float(context_noise),
              "prefix_chunks": int(prefix_chunks), "fake_updates": int(fake_updates), **extra}
    return {"method": {"kind": "diagonal_distillation", "params": params}}


def uniform_config(*, steps: int = 2, prefix_chunks: int = 1, fake_updates: int = 2, **extra: Any) -> dict[str, Any]:
    """The ``method`` section of the uniform baseline: Self-Forcing DMD with ``steps`` steps for
    every chunk, clean context, gradient at each chunk's last step."""
    params = {"steps": int(steps), "exit": "last", "prefix_chunks": int(prefix_chunks), "fake_updates": int(fake_updates),
              **extra}
    return {"method": {"kind": "self_forcing", "params": params}}


__all__ = ["DiagonalDistillation", "diagonal_config", "diagonal_schedule", "uniform_config"]
