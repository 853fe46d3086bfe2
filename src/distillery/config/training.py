"""The sections a run shares with every teacher it fits: training, objective terms, their weights.

A term's ``weight`` (and a ground-truth mix's ``alpha``) is a number or a schedule section,
``{kind: linear_warmup, ...}``; the schedules are those registered in
:data:`~distillery.registry.WEIGHTINGS` with ``role="schedule"`` (see
:mod:`distillery.weighting.schedules`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from .. import weighting  # noqa: F401  (importing registers the schedules)
from ..errors import ConfigError
from ..registry import WEIGHTINGS
from .base import (
    NonNegInt,
    PosFloat,
    PosInt,
    Strict,
    Unit,
    ViewCfg,
    tagged_union,
    view_fields,
)


class OptimizerCfg(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: PosFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    betas: tuple[Unit, Unit] = (0.9, 0.999)

    def torch_kwargs(self) -> dict[str, Any]:
        if self.name == "sgd":
            return {"name": "sgd", "lr": self.lr, "weight_decay": self.weight_decay, "momentum": self.momentum, "nesterov": self.nesterov}
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay, "betas": tuple(self.betas)}


class SchedulerCfg(Strict):
    name: Literal["constant", "cosine", "linear", "step"] = "constant"
    warmup_steps: NonNegInt = 0
    min_lr_ratio: Unit = 0.0
    milestones: list[NonNegInt] = []
    gamma: PosFloat = 0.1


class TrainCfg(Strict):
    epochs: PosInt = 10
    optimizer: OptimizerCfg = OptimizerCfg()
    scheduler: SchedulerCfg = SchedulerCfg()
    grad_accum: PosInt = 1
    clip_grad_norm: PosFloat | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    eval_every: PosInt = 1
    checkpoint_every: PosInt | None = None
    keep_checkpoints: PosInt = 2
    log_every: PosInt = 10
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: DistributedDataParallel, or FSDP2 sharding for students too big for one device."""
    find_unused_parameters: bool = False


# -- objectives and their weights ------------------------------------------------------------
ScheduleCfg = tagged_union([cls for _, cls in WEIGHTINGS.sections(role="schedule")])
"""A schedule section, ``{kind: constant | linear_warmup | cosine_warmup | step | cosine, ...}``."""


class MixCfg(Strict):
    """Ground-truth mixing of a term's target: ``alpha * one_hot(labels) + (1 - alpha) * teacher``."""

    alpha: Unit | ScheduleCfg = 0.5
    labels: str = "batch.y"


class TermCfg(Strict):
    kind: str
    name: str | None = None
    params: dict[str, Any] = {}
    weight: float | ScheduleCfg = 1.0
    inputs: dict[str, str] = {}
    adapter: Literal["linear", "mlp", "conv1x1"] | None = None
    mix: MixCfg | None = None

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        from .. import objectives  # noqa: F401  (importing registers the objectives)
        from ..registry import OBJECTIVES

        if kind not in OBJECTIVES:
            raise ValueError(str(unknown(OBJECTIVES, kind)))
        return kind


def unknown(registry: Any, name: str) -> ConfigError:
    """The registry's error for an unknown ``name`` (it lists the known names)."""
    try:
        registry.get(name)
    except ConfigError as exc:
        return exc
    return ConfigError(name)


# -- fitting a teacher -----------------------------------------------------------------------
class FitDataCfg(Strict):
    """Another dataset to fit a teacher on (e.g. a source domain): a registered name and its params."""

    dataset: str
    params: dict[str, Any] = {}


class FitCfg(TrainCfg):
    """How to train a teacher from scratch when it has no checkpoint: by cross-entropy on the
    labels, or by the listed ``objectives`` (e.g. self-supervised masked reconstruction, which
    with ``unlabeled: true`` also reads the dataset's unlabeled samples)."""

    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    view: ViewCfg | None = None
    batch_size: PosInt | None = None
    objectives: list[TermCfg] = []
    """Terms that train the teacher (no teacher of its own); empty: cross-entropy."""
    unlabeled: bool = False
    """Fit on the training set plus the dataset's unlabeled samples (labels ``-1``)."""
    data: FitDataCfg | None = None
    """Fit on this dataset instead of the run's (same input shape; at most the run's number of
    classes), e.g. a source domain of cross-domain distillation (DistillWeighted)."""

    _coerce_view = view_fields("view")


__all__ = [
    "FitCfg",
    "FitDataCfg",
    "MixCfg",
    "OptimizerCfg",
    "ScheduleCfg",
    "SchedulerCfg",
    "TermCfg",
    "TrainCfg",
    "unknown",
]
