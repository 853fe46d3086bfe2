"""Helpers shared by the objective modules: dtypes, shape checks, reductions, safe logs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from .base import REDUCTIONS


def compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype losses are computed in: the promotion of the floating inputs, at least float32."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def upcast(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Cast the given tensors to :func:`compute_dtype` of all of them (``None`` passes through)."""
    dtype = compute_dtype(*tensors)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def shape_str(shape: Sequence[int] | Tensor) -> str:
    """``[8, 10]`` for a tensor or a shape."""
    if isinstance(shape, Tensor):
        shape = shape.shape
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def check_same_shape(student: Tensor, teacher: Tensor, name: str, hint: str = "") -> None:
    """Raise :class:`ShapeError` naming both shapes unless they are equal."""
    if student.shape != teacher.shape:
        msg = (
            f"{name}: the student signal has shape {shape_str(student)} but the teacher signal "
            f"has shape {shape_str(teacher)}; they must be equal."
        )
        raise ShapeError(msg + (f" {hint}" if hint else ""))


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_temperature(name: str, value: float) -> float:
    value = float(value)
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be a positive number, got {value!r}.")
    return value


def safe_log(p: Tensor) -> Tensor:
    """``log(p)`` with ``-inf`` at zeros and a zero (not NaN) gradient there."""
    positive = p > 0
    return torch.log(torch.where(positive, p, torch.ones_like(p))).masked_fill(~positive, -math.inf)


def floor_log_zeros(log_p: Tensor) -> Tensor:
    """``log p`` with ``-inf`` (a probability of exactly 0) replaced by ``log(tiny)``.

    ``tiny`` is the smallest positive normal number of ``log_p``'s dtype (``log(tiny)`` is
    about -87.3 in float32, -708.4 in float64). Only true zeros are replaced: every finite
    log-probability, however small (a log-softmax of large logits reaches -100 or -1000),
    is kept exactly, so that a loss dividing by ``q`` (``KL(p || q)`` where ``q`` may be 0)
    stays finite without being biased where ``q`` is merely small. The gradient is 0 at
    the replaced entries and 1 elsewhere.
    """
    floor = math.log(torch.finfo(log_p.dtype).tiny)
    return log_p.masked_fill(torch.isneginf(log_p), floor)


def kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q) = sum_k p_k (log p_k - log q_k)`` over the last dim, from log-probabilities.

    Terms with ``p_k = 0`` are exactly 0 (with a zero gradient), also where ``log q_k = -inf``.
    """
    p = log_p.exp()
    # where p = 0 the difference may be -inf - (-inf) = nan; it is replaced by 0 in the forward,
    # and the where passes a zero gradient to both log-probabilities there
    diff = torch.where(p > 0, log_p - log_q, 0.0)
    return (p * diff).sum(-1)


def per_sample_mean(values: Tensor) -> Tensor:
    """``[B, ...] -> [B]``: mean over every dim but the first (``[B]`` is returned as is)."""
    return values if values.ndim == 1 else values.reshape(values.shape[0], -1).mean(1)


def reduce(per_sample: Tensor, reduction: str) -> Tensor:
    return per_sample.mean() if reduction == "mean" else per_sample
