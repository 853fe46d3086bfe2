"""Exponential-moving-average teacher (mean teacher, BYOL, DINO, ALBEF's momentum model)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..batch import Batch
from ..errors import ConfigError
from ..registry import TEACHERS
from ..weighting import CosineSchedule
from .base import BuildContext, FrozenModelMixin, Teacher, freeze, run_model


BUFFER_MODES = ("copy", "average")


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor: FSDP-sharded parameters (DTensors) are gathered (all ranks call this)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP/FSDP-style wrapper (``.module``), or the model itself."""
    return getattr(model, "module", model)


@TEACHERS.register("ema")
class EMATeacher(FrozenModelMixin, Teacher):
    """Teacher whose weights are an EMA of the student's (Tarvainen & Valpola 2017; DINO).

    After every optimizer step ``k`` (1-based), each teacher parameter moves toward the
    student's: ``theta_t <- m_k * theta_t + (1 - m_k) * theta_s``. By default the momentum
    is constant, ``m_k = momentum`` (Mean Teacher, MoCo, ALBEF). Giving ``final_momentum``
    (m1) makes it follow a cosine schedule from ``momentum`` (m0) at step 0 to m1 at the last
    step, ``m_k = m1 - (m1 - m0) * (1 + cos(pi * k / K)) / 2`` (BYOL, DINO: 0.996 -> 1.0, which
    freezes the teacher late in training); with an unknown step count ``K`` it stays at m0.

    Buffers (BatchNorm running statistics and counters):

    * ``buffers="copy"`` (default): copied from the student after every update, so the
      teacher normalises with the student's current statistics (as DINO and MoCo do in effect).
    * ``buffers="average"``: floating-point buffers are averaged with the same momentum;
      integer buffers (``num_batches_tracked``) are copied.

    The teacher starts as a deep copy of the student and runs in eval mode.

    Example::

        >>> student = nn.Linear(3, 2)
        >>> teacher = EMATeacher(student, momentum=0.9)
        >>> teacher.bind(student)
        >>> with torch.no_grad(): _ = student.weight.add_(1.0)
        >>> teacher.update(student, step=1)   # teacher = 0.9 * old + 0.1 * new
    """

    def __init__(
        self,
        student: nn.Module,
        momentum: float = 0.996,
        final_momentum: float | None = None,
        buffers: str = "copy",
        view=None,
    ) -> None:
        super().__init__(view)
        if not 0.0 <= momentum <= 1.0 or (final_momentum is not None and not 0.0 <= final_momentum <= 1.0):
            raise ConfigError(f"EMA momentum must lie in [0, 1]; got momentum={momentum}, final_momentum={final_momentum}.")
        if buffers not in BUFFER_MODES:
            raise ConfigError(f"EMA buffers must be one of {BUFFER_MODES}, got {buffers!r}.")
        self.model = freeze(copy.deepcopy(unwrap(student)))
        self.momentum0 = float(momentum)
        self.momentum1 = None if final_momentum is None else float(final_momentum)
        self.buffers_mode = buffers
        self.total_steps: int | None = None

    def tap_model(self) -> nn.Module:
        return self.model

    def set_total_steps(self, total_steps: int | None) -> None:
        self.total_steps = total_steps

    def momentum_at(self, step: int) -> float:
        """The momentum used for the update after optimizer step ``step``."""
        if self.momentum1 is None or not self.total_steps:
            return self.momentum0
        return CosineSchedule(self.momentum0, self.momentum1, self.total_steps)(step)

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return run_model(self.model, inputs, names)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        m = self.momentum_at(step)
        source = unwrap(student)
        t_params = list(self.model.parameters())
        s_params = list(source.parameters())
        if len(t_params) != len(s_params):
            raise RuntimeError("EMA teacher and student no longer have the same parameters.")
        for t, s in zip(t_params, s_params):
            t.lerp_(_full(s.detach()).to(t.dtype), 1.0 - m)
        for t, s in zip(self.model.buffers(), source.buffers()):
            if self.buffers_mode == "average" and t.is_floating_point():
                t.lerp_(_full(s).to(t.dtype), 1.0 - m)
            else:
                t.copy_(_full(s))


# -- in a config: teacher: {kind: ema, momentum, final_momentum, buffers} ----------------------
def ema_config() -> type:
    """The config section of an EMA teacher (made on first use, see :mod:`distillery.registry`)."""
    from ..config.base import TeacherCfgBase, Unit

    class EMATeacherCfg(TeacherCfgBase):
        kind: Literal["ema"]
        momentum: Unit = 0.996
        final_momentum: Unit | None = None
        """None (default): a constant momentum; a value: a cosine ramp from momentum to it (BYOL, DINO)."""
        buffers: Literal["copy", "average"] = "copy"

    return EMATeacherCfg


@TEACHERS.builder("ema", config=ema_config, member=True)
def build_ema(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    return EMATeacher(ctx.student, cfg.momentum, cfg.final_momentum, cfg.buffers, view=ctx.view(cfg, where))
