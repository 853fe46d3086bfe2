"""Pieces the step-distillation objectives share: checks of their parameters, prior draws,
freezing a teacher and initialising a student from it. ODE steps and samplers are those of
:mod:`..samplers` (``solve``, ``sample``, ``ode_pairs``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ..denoisers import Denoiser
from ..samplers import SOLVERS


def check_solver(solver: str, where: str) -> str:
    if solver not in SOLVERS:
        raise ConfigError(f"{where}: unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
    return solver


def times_like(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(B,)`` tensor of ``x``'s dtype and device."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.dim() == 0 else t


def sample_shape_of(denoiser: Denoiser, where: str) -> tuple[int, ...]:
    if denoiser.sample_shape is None:
        raise ConfigError(f"{where}: the student denoiser has no sample_shape; give Denoiser(..., sample_shape=...) to sample.")
    return denoiser.sample_shape


def prior_sample(denoiser: Denoiser, n: int, *, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu", where: str = "sample", draw: Any = None) -> torch.Tensor:
    """``(n, *sample_shape)`` draws from the denoiser's prior end (in its parameters' dtype),
    from ``generator``, or from ``draw`` (a method's :attr:`~..method.GenerativeMethod.draw`)."""
    dtype = next(denoiser.parameters(), torch.empty(0)).dtype
    shape = (n, *sample_shape_of(denoiser, where))
    if draw is not None and generator is None:
        return draw.prior(denoiser.process, n, shape[1:], device=device, dtype=dtype)
    return denoiser.process.prior(shape, generator=generator, device=device, dtype=dtype)


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with ``requires_grad`` off (a frozen teacher or EMA target)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def frozen_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module``."""
    return freeze(copy.deepcopy(module))


def copy_teacher_weights(student: nn.Module, teacher: nn.Module, where: str) -> None:
    """Copy the teacher's weights into the student (same architecture required)."""
    try:
        student.load_state_dict(teacher.state_dict())
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"{where}: init_from_teacher=True needs a student with the teacher's architecture ({first}); "
            "give a student of the same architecture or set init_from_teacher=False."
        ) from None


def check_same_process(student: Denoiser, teacher: Denoiser, where: str) -> None:
    if student.process.describe() != teacher.process.describe():
        raise ConfigError(
            f"{where}: student and teacher must share one noising process; got {student.process!r} (student) "
            f"and {teacher.process!r} (teacher)."
        )


def batch_cond(batch: dict[str, torch.Tensor], denoiser: Denoiser) -> torch.Tensor | None:
    """The batch's labels when the denoiser is class-conditional, else ``None``."""
    return batch.get("y") if denoiser.num_classes else None


def check_positive_int(value: object, key: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}.")
    return value


def check_decay(value: object, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{where}: {key} must lie in [0, 1], got {value!r}.")
    return float(value)
