"""Self-ensemble teacher: the mean of a model's outputs over a list of input transforms."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import Batch
from ..errors import ConfigError
from ..registry import TEACHERS
from .base import BuildContext, SharedWeightsMixin, Teacher, eval_mode, run_model


AVERAGES = ("probs", "logits")


@TEACHERS.register("self_ensemble")
class SelfEnsembleTeacher(SharedWeightsMixin, Teacher):
    """Teacher output = mean over input transforms of one model's outputs, without gradients.

    Used for test-time-augmentation teachers and self-supervised label augmentation (SLA+SD,
    Lee et al. 2020): the aggregate over M transforms teaches a single-pass student.

    Args:
        transforms: callables ``t(x) -> x'`` on batched inputs (e.g. rotations, flips). Include
            the identity yourself if it should count.
        model: the network to run; ``None`` (default) uses the student's own current weights
            (shared, not copied; run under ``no_grad`` and in eval mode, then restored).
        average: ``"probs"`` averages ``softmax(logits)`` and returns
            ``logits = log(mean probs)`` (so ``softmax`` of it is the mean distribution);
            ``"logits"`` averages logits. Tapped signals are always averaged as they are,
            which is meaningful only when the transforms keep their layout.
        view: the batch view the teacher reads (default: the student's input).
    """

    def __init__(
        self,
        transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]],
        model: nn.Module | None = None,
        average: str = "probs",
        view=None,
    ) -> None:
        super().__init__(view)
        if not transforms:
            raise ConfigError("self_ensemble: give at least one transform.")
        if average not in AVERAGES:
            raise ConfigError(f"self_ensemble: average must be one of {AVERAGES}, got {average!r}.")
        self.transforms = list(transforms)
        self.model = model
        self.average = average

    @torch.no_grad()
    def signals(self, inputs: torch.Tensor, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
        with eval_mode(self._net()) as net:
            outs = [run_model(net, t(inputs), names) for t in self.transforms]
        result: dict[str, torch.Tensor] = {}
        for name in outs[0]:
            stacked = torch.stack([o[name].float() for o in outs])
            if name == "logits" and self.average == "probs":
                log_probs = F.log_softmax(stacked, dim=-1)
                result[name] = torch.logsumexp(log_probs, dim=0) - math.log(len(outs))
            else:
                result[name] = stacked.mean(0)
        return result


# -- in a config: teacher: {kind: self_ensemble, transforms, average, model} -------------------
def self_ensemble_config() -> type:
    """The config section of a self-ensemble teacher (made on first use, see :mod:`distillery.registry`)."""
    from pydantic import Field

    from ..config.base import ModelCfg, TeacherCfgBase, ViewList

    class SelfEnsembleTeacherCfg(TeacherCfgBase):
        kind: Literal["self_ensemble"]
        transforms: list[ViewList] = Field(min_length=1)
        average: Literal["probs", "logits"] = "probs"
        model: ModelCfg | None = None

    return SelfEnsembleTeacherCfg


@TEACHERS.builder("self_ensemble", config=self_ensemble_config, member=True)
def build_self_ensemble(cfg: Any, ctx: BuildContext, where: str) -> Teacher:
    """Each entry of ``transforms`` is a list of view specs; ``model`` (optional) replaces the student's weights."""
    from ..data.views import build_view as build_transform

    view = ctx.view(cfg, where)
    transforms = []
    for i, spec in enumerate(cfg.transforms):
        try:
            transforms.append(build_transform(spec))
        except ConfigError as exc:
            raise ConfigError(f"{where}.transforms.{i}: {exc}") from None
    model = ctx.model(cfg.model, where) if cfg.model else None
    return SelfEnsembleTeacher(transforms, model=model, average=cfg.average, view=view)
