"""Schedules: a term's weight as a function of the optimizer step (:class:`Constant`,
:class:`LinearWarmup`, :class:`CosineWarmup`, :class:`StepSchedule`, :class:`CosineSchedule`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import ConfigError
from ..registry import WEIGHTINGS


class Schedule:
    """A weight as a function of the optimizer step (0-based)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError


@WEIGHTINGS.register("constant")
class Constant(Schedule):
    """Constant weight ``value`` at every step."""

    def __init__(self, value: float = 1.0) -> None:
        if not math.isfinite(float(value)):
            raise ConfigError(f"A term weight must be a finite number, got {value!r}.")
        self.value = float(value)

    def __call__(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value})"


@WEIGHTINGS.register("linear_warmup")
class LinearWarmup(Schedule):
    """Linear ramp from ``start`` to ``value`` over ``warmup_steps``, then ``value``.

    ``w(k) = start + (value - start) * min(k / warmup_steps, 1)``.
    """

    def __init__(self, value: float = 1.0, warmup_steps: int = 0, start: float = 0.0) -> None:
        if warmup_steps < 0:
            raise ConfigError(f"linear_warmup: warmup_steps must be >= 0, got {warmup_steps}.")
        self.value, self.warmup_steps, self.start = float(value), int(warmup_steps), float(start)

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.value
        return self.start + (self.value - self.start) * step / self.warmup_steps


@WEIGHTINGS.register("cosine_warmup")
class CosineWarmup(Schedule):
    """Half-cosine ramp from ``start`` to ``value`` over ``warmup_steps``, then ``value``.

    ``w(k) = start + (value - start) * (1 - cos(pi * k / warmup_steps)) / 2``.
    """

    def __init__(self, value: float = 1.0, warmup_steps: int = 0, start: float = 0.0) -> None:
        if warmup_steps < 0:
            raise ConfigError(f"cosine_warmup: warmup_steps must be >= 0, got {warmup_steps}.")
        self.value, self.warmup_steps, self.start = float(value), int(warmup_steps), float(start)

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.value
        return self.start + (self.value - self.start) * (1 - math.cos(math.pi * step / self.warmup_steps)) / 2


@WEIGHTINGS.register("step")
class StepSchedule(Schedule):
    """Piecewise constant: ``value * gamma ** (number of milestones <= step)``."""

    def __init__(self, value: float = 1.0, milestones: Sequence[int] = (), gamma: float = 0.1) -> None:
        self.value, self.milestones, self.gamma = float(value), sorted(int(m) for m in milestones), float(gamma)

    def __call__(self, step: int) -> float:
        passed = sum(1 for m in self.milestones if step >= m)
        return self.value * self.gamma**passed


@WEIGHTINGS.register("cosine")
class CosineSchedule(Schedule):
    """Cosine interpolation from ``start`` (step 0) to ``end`` (step ``total_steps``).

    ``w(k) = end - (end - start) * (1 + cos(pi * min(k, K) / K)) / 2`` with ``K = total_steps``;
    this is the momentum schedule of BYOL and DINO when ``start=m0, end=1``.
    """

    def __init__(self, start: float, end: float, total_steps: int) -> None:
        if total_steps <= 0:
            raise ConfigError(f"cosine: total_steps must be > 0, got {total_steps}.")
        self.start, self.end, self.total_steps = float(start), float(end), int(total_steps)

    def __call__(self, step: int) -> float:
        k = min(max(step, 0), self.total_steps)
        return self.end - (self.end - self.start) * (1 + math.cos(math.pi * k / self.total_steps)) / 2


def as_schedule(weight: float | Schedule) -> Schedule:
    """A float becomes :class:`Constant`; a schedule is returned as is."""
    if isinstance(weight, Schedule):
        return weight
    if isinstance(weight, (int, float)):
        return Constant(float(weight))
    raise ConfigError(f"A weight must be a number or a schedule, got {type(weight).__name__}.")
