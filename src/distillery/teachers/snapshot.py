"""Snapshot teacher: a frozen copy of the student taken at some step (a past self)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..batch import Batch
from ..errors import ConfigError
from ..registry import TEACHERS
from .base import BuildContext, FrozenModelMixin, Teacher, freeze, run_model
from .ema import unwrap



@TEACHERS.register("snapshot")
class SnapshotTeacher(FrozenModelMixin, Teacher):
    """A past student: a frozen copy refreshed every ``every`` optimizer steps, or by hand.

    Born-again networks (Furlanello et al. 2018) and generational self-distillation use one
    snapshot per generation (call :meth:`snapshot` between generations); "distill from the
    model of k steps ago" uses ``every=k``. ``every=None`` never refreshes automatically.
    """

    def __init__(self, student: nn.Module, every: int | None = None, view=None) -> None:
        super().__init__(view)
        if every is not None and every < 1:
            raise ConfigError(f"snapshot: every must be >= 1 or null, got {every}.")
        self.every = every
        self.model = freeze(copy.deepcopy(unwrap(student)))
        self.register_buffer("taken_at", torch.zeros((), dtype=torch.long))

    def tap_model(self) -> nn.Module:
        return self.model

    @torch.no_grad()
    def snapshot(self, student: nn.Module, step: int | None = None) -> None:
        """Copy the student's current weights and buffers into the teacher."""
        self.model.load_state_dict(unwrap(student).state_dict())
        if step is not None:
            self.taken_at.fill_(int(step))

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return run_model(self.model, inputs, names)

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> None:
        if self.every is not None and step % self.every == 0:
            self.snapshot(student, step)


# -- in a config: teacher: {kind: snapshot, every} ---------------------------------------------
def snapshot_config() -> type:
    """The config section of a snapshot teacher (made on first use, see :mod:`distillery.registry`)."""
    from ..config.base import PosInt, TeacherCfgBase

    class SnapshotTeacherCfg(TeacherCfgBase):
        kind: Literal["snapshot"]
        every: PosInt | None = None

    return SnapshotTeacherCfg


@TEACHERS.builder("snapshot", config=snapshot_config, member=True)
def build_snapshot(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    return SnapshotTeacher(ctx.student, cfg.every, view=ctx.view(cfg, where))
