"""Schedules: a term's weight as a function of the optimizer step (:class:`Constant`,
:class:`LinearWarmup`, :class:`CosineWarmup`, :class:`StepSchedule`, :class:`CosineSchedule`).

In a config a schedule is written where a number is, e.g. a term's
``weight: {kind: linear_warmup, value: 1.0, warmup_steps: 500}``; the keys are the
constructor's arguments (the sections are made by :func:`schedule_configs`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal

from ..errors import ConfigError
from ..registry import WEIGHTINGS


class Schedule:
    """A weight as a function of the optimizer step (0-based)."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError


@functools.cache
def schedule_configs() -> dict[str, type]:
    """The config section of each schedule kind (made on first use: pydantic is imported with
    the config schema, not with ``import distillery``).

    A schedule's values are term weights: each is a finite number >= 0 (a negative weight
    would maximise its term), and ``bounds()`` gives the least and the largest value it takes
    over all steps (the schema refuses terms that are all zero at every step, and a mixing
    coefficient's schedule outside [0, 1])."""
    from pydantic import model_validator

    from ..config.base import NonNegFloat, NonNegInt, PosInt, Strict, Weight

    class ConstantCfg(Strict):
        kind: Literal["constant"]
        value: Weight = 1.0

        def bounds(self) -> tuple[float, float]:
            return float(self.value), float(self.value)

    class WarmupCfg(Strict):
        kind: Literal["linear_warmup", "cosine_warmup"]
        value: Weight = 1.0
        warmup_steps: NonNegInt = 0
        start: Weight = 0.0

        def bounds(self) -> tuple[float, float]:
            ends = (float(self.value),) if self.warmup_steps == 0 else (float(self.start), float(self.value))
            return min(ends), max(ends)

    class StepCfg(Strict):
        kind: Literal["step"]
        value: Weight = 1.0
        milestones: list[NonNegInt] = []
        gamma: NonNegFloat = 0.1

        @model_validator(mode="after")
        def _finite(self) -> StepCfg:
            if not math.isfinite(self.bounds()[1]):
                raise ValueError(
                    f"value * gamma ** {len(self.milestones)} (after the last milestone) is not a finite "
                    f"number (value {self.value!r}, gamma {self.gamma!r})"
                )
            return self

        def bounds(self) -> tuple[float, float]:
            # at step k the value is value * gamma ** (milestones <= k); milestones at 0 pass at once
            first = sum(1 for m in self.milestones if m == 0)
            values = []
            for n in range(first, len(self.milestones) + 1):
                try:
                    values.append(float(self.value) * float(self.gamma) ** n)
                except OverflowError:
                    values.append(0.0 if self.value == 0 else math.inf)
            return min(values), max(values)

    class CosineCfg(Strict):
        kind: Literal["cosine"]
        start: Weight
        end: Weight
        total_steps: PosInt

        def bounds(self) -> tuple[float, float]:
            return min(self.start, self.end), max(self.start, self.end)

    return {"constant": ConstantCfg, "linear_warmup": WarmupCfg, "cosine_warmup": WarmupCfg, "step": StepCfg, "cosine": CosineCfg}


def _section(kind: str) -> Callable[[], type]:
    return lambda: schedule_configs()[kind]


@WEIGHTINGS.register("constant", config=_section("constant"), role="schedule")
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


@WEIGHTINGS.register("linear_warmup", config=_section("linear_warmup"), role="schedule")
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


@WEIGHTINGS.register("cosine_warmup", config=_section("cosine_warmup"), role="schedule")
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


@WEIGHTINGS.register("step", config=_section("step"), role="schedule")
class StepSchedule(Schedule):
    """Piecewise constant: ``value * gamma ** (number of milestones <= step)``."""

    def __init__(self, value: float = 1.0, milestones: Sequence[int] = (), gamma: float = 0.1) -> None:
        self.value, self.milestones, self.gamma = float(value), sorted(int(m) for m in milestones), float(gamma)

    def __call__(self, step: int) -> float:
        passed = sum(1 for m in self.milestones if step >= m)
        return self.value * self.gamma**passed


@WEIGHTINGS.register("cosine", config=_section("cosine"), role="schedule")
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
