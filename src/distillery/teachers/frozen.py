"""Frozen teacher: a trained model in eval mode, without gradients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from .. import taps
from ..batch import Batch
from ..registry import TEACHERS
from .base import BuildContext, FrozenModelMixin, Teacher, freeze, run_model



@TEACHERS.register("frozen")
class FrozenTeacher(FrozenModelMixin, Teacher):
    """A fixed, pretrained model (Hinton et al. 2015); optionally run only up to a module.

    Args:
        model: the teacher network. It is put in eval mode and its parameters stop requiring
            gradients; it stays in eval mode when the distiller is put in train mode.
        until: a module path; the forward stops right after that module (the rest of the
            network is never run, as in DMAE's truncated teacher). Only signals up to there
            exist, so ``logits`` is unavailable.
        view: the batch view the teacher reads (default: the student's input).

    Example::

        >>> teacher = FrozenTeacher(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
        >>> teacher.signals(torch.randn(2, 4), {}, ["logits", "0"])["0"].shape
        torch.Size([2, 8])
    """

    def __init__(self, model: nn.Module, until: str | None = None, view=None) -> None:
        super().__init__(view)
        self.model = freeze(model)
        if until is not None:
            taps.resolve(model, until, owner="teacher")
        self.until = until

    def tap_model(self) -> nn.Module:
        return self.model

    def bind(self, student: nn.Module) -> None:
        """Keep the student; a student defining ``init_from_teacher(model)`` is given the
        teacher's network once here (e.g. :class:`~distillery.models.zero_shot.ZeroShotStudent`
        copies the teacher's text embeddings into its text head)."""
        super().bind(student)
        hook = getattr(student, "init_from_teacher", None)
        if callable(hook):
            hook(self.model)

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return run_model(self.model, inputs, names, stop_after=self.until)


@TEACHERS.register("black_box")
class BlackBoxTeacher(Teacher):
    """Outputs only: any function ``fn(inputs) -> logits`` (an API, a model you cannot tap).

    Only the ``logits`` signal exists; the function is called without gradients.
    """

    def __init__(self, fn, view=None) -> None:
        super().__init__(view)
        self.fn = fn

    def tap_model(self) -> None:
        return None

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        return taps.output_signals(self.fn(inputs))


# -- in a config: teacher: {kind: frozen, model, fit, until, precompute} -----------------------
def frozen_config() -> type:
    """The config section of a frozen teacher (made on first use, so that ``import distillery``
    does not import pydantic; see :mod:`distillery.registry`)."""
    from ..config.base import ModelCfg, TeacherCfgBase, needs_weights
    from ..config.training import FitCfg

    class FrozenTeacherCfg(TeacherCfgBase):
        """A trained model; ``checkpoint`` (safetensors) or ``fit`` (train it first) is required."""

        kind: Literal["frozen"]
        model: ModelCfg
        fit: FitCfg | None = None
        until: str | None = None
        precompute: bool = False
        """Run the teacher once over the training set and look its signals up by sample index
        (exact when the teacher sees un-augmented inputs; much faster)."""

        _needs_weights = needs_weights("frozen")

    return FrozenTeacherCfg


@TEACHERS.builder("frozen", config=frozen_config, member=True)
def build_frozen(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    """The model (trained first when it has no checkpoint); a run's own teacher with
    ``precompute`` is replaced by its signals over the training set."""
    view = ctx.view(cfg, where)
    teacher = FrozenTeacher(ctx.trained_model(cfg.model, cfg.fit, where), until=cfg.until, view=view)
    if cfg.precompute and ctx.run is not None:
        return ctx.run.precompute(teacher)
    return teacher
