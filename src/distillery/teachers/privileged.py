"""Privileged-view teacher: the same (or another) network shown more of the input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..batch import Batch
from ..errors import ConfigError
from ..registry import TEACHERS
from .base import BuildContext, SharedWeightsMixin, Teacher, eval_mode, run_model



@TEACHERS.register("privileged")
class PrivilegedTeacher(SharedWeightsMixin, Teacher):
    """The same network (or a given one) shown a privileged view of the batch.

    The teacher sees more than the student: the full input where the student sees a masked
    or cropped one (GeoDistill's panorama vs field of view), extra context, or clean data.
    With ``model=None`` the student's own current weights are used without gradients (in
    eval mode, then restored), so the student teaches itself from the richer view.

    Args:
        view: the batch view of the teacher (required): a batch field name such as ``"x"``
            (the raw input while the student gets an augmented or masked view) or
            ``"x_full"``, or a :class:`~distillery.batch.BatchView`.
        model: a separate network, or ``None`` for shared weights.
        eval_mode: run the network in eval mode (default True).
    """

    def __init__(self, view, model: nn.Module | None = None, eval_mode: bool = True) -> None:
        if view is None:
            raise ConfigError("privileged: a teacher view is required (e.g. view: x).")
        super().__init__(view)
        self.model = model
        self.eval_mode = eval_mode

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        with eval_mode(self._net(), self.eval_mode) as net:
            return run_model(net, inputs, names)


# -- in a config: teacher: {kind: privileged, view, model, fit, eval_mode} ---------------------
def privileged_config() -> type:
    """The config section of a privileged-view teacher (made on first use, see :mod:`distillery.registry`)."""
    from ..config.base import ModelCfg, TeacherCfgBase, ViewCfg
    from ..config.training import FitCfg

    class PrivilegedTeacherCfg(TeacherCfgBase):
        kind: Literal["privileged"]
        view: ViewCfg  # required: what the teacher sees
        model: ModelCfg | None = None
        fit: FitCfg | None = None
        eval_mode: bool = True

    return PrivilegedTeacherCfg


@TEACHERS.builder("privileged", config=privileged_config, member=True)
def build_privileged(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    """The student's own weights on ``view``, or a separate ``model`` (trained by ``fit`` when it has no checkpoint)."""
    view = ctx.view(cfg, where)
    model = None
    if cfg.model is not None:
        model = ctx.model(cfg.model, where)
        if cfg.model.checkpoint is None:
            if cfg.fit is None:
                raise ConfigError(f"{where}: a separate privileged model needs model.checkpoint or fit.")
            model = ctx.fit_teacher(model, cfg.fit, where)
    return PrivilegedTeacher(view=view, model=model, eval_mode=cfg.eval_mode)
