"""The sections a run shares with every teacher it fits: training, objective terms, their weights.

A term's ``weight`` (and a ground-truth mix's ``alpha``) is a number or a schedule section,
``{kind: linear_warmup, ...}``; the schedules are those registered in
:data:`~distillery.registry.WEIGHTINGS` with ``role="schedule"`` (see
:mod:`distillery.weighting.schedules`). A weight is never negative (that would maximise its
term), and a list of terms whose weights are all zero at every step is refused: it would
train nothing.

Bounds that are not a type's own say why in their message: a learning rate is at most
:data:`MAX_LR`, a batch at most :data:`~distillery.config.base.MAX_BATCH` samples, a run at
most :data:`MAX_EPOCHS` epochs; ``device`` is one of the forms in
:mod:`distillery.config.devices`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from .. import weighting  # noqa: F401  (importing registers the schedules)
from ..errors import ConfigError
from ..registry import WEIGHTINGS
from .base import (
    BatchSize,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    Strict,
    Unit,
    UnitOpen,
    ViewCfg,
    Weight,
    pair,
    tagged_union,
    view_fields,
)
from .devices import device_problem

MAX_LR = 10.0
"""The largest learning rate a config may give."""

MAX_EPOCHS = 10**6
"""The most epochs a config may ask for."""


def _learning_rate(value: float) -> float:
    if value > MAX_LR:
        raise ValueError(
            f"must be in (0, {MAX_LR:g}], got {value!r}: a step that large diverges at once for any "
            "network and optimizer here (learning rates are typically 1e-5 to 1)"
        )
    return value


LearningRate = Annotated[float, Field(gt=0), AfterValidator(_learning_rate)]
Betas = pair(UnitOpen)
"""Adam's ``(beta1, beta2)``, each in [0, 1) (at 1 a moment estimate never changes)."""


class OptimizerCfg(Strict):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: LearningRate = 1e-3
    weight_decay: NonNegFloat = 0.0
    momentum: UnitOpen = 0.9
    nesterov: bool = False
    betas: Betas = (0.9, 0.999)

    def torch_kwargs(self) -> dict[str, Any]:
        if self.name == "sgd":
            return {"name": "sgd", "lr": self.lr, "weight_decay": self.weight_decay, "momentum": self.momentum, "nesterov": self.nesterov}
        return {"name": self.name, "lr": self.lr, "weight_decay": self.weight_decay, "betas": tuple(self.betas)}


class SchedulerCfg(Strict):
    name: Literal["constant", "cosine", "linear", "step"] = "constant"
    warmup_steps: NonNegInt = 0
    min_lr_ratio: UnitOpen = 0.0
    """The final learning rate's fraction of ``lr`` (cosine, linear); at 1 nothing would be scheduled."""
    milestones: list[NonNegInt] = []
    gamma: PosFloat = 0.1


class TrainCfg(Strict):
    epochs: Annotated[int, Field(gt=0, le=MAX_EPOCHS)] = 10
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
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (see :mod:`distillery.config.devices`)."""
    progress: bool = True
    tensorboard: bool = True
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: DistributedDataParallel, or FSDP2 sharding for students too big for one device."""
    find_unused_parameters: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        problem = device_problem(device)
        if problem:
            raise ValueError(problem)
        return device


# -- objectives and their weights ------------------------------------------------------------
ScheduleCfg = tagged_union([cls for _, cls in WEIGHTINGS.sections(role="schedule")])
"""A schedule section, ``{kind: constant | linear_warmup | cosine_warmup | step | cosine, ...}``."""


class MixCfg(Strict):
    """Ground-truth mixing of a term's target: ``alpha * one_hot(labels) + (1 - alpha) * teacher``."""

    alpha: Unit | ScheduleCfg = 0.5
    labels: str = "batch.y"

    @field_validator("alpha")
    @classmethod
    def _alpha_in_unit(cls, alpha: Any) -> Any:
        if not isinstance(alpha, (int, float)):
            low, high = alpha.bounds()
            if low < 0 or high > 1:
                raise ValueError(f"the schedule of a mixing coefficient must stay in [0, 1], but it spans [{low:g}, {high:g}]")
        return alpha


class TermCfg(Strict):
    kind: str
    name: str | None = None
    params: dict[str, Any] = {}
    weight: Weight | ScheduleCfg = 1.0
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

    def always_zero(self) -> bool:
        """Whether the term's weight is 0 at every step (the term trains nothing)."""
        if isinstance(self.weight, (int, float)):
            return self.weight == 0
        return self.weight.bounds() == (0.0, 0.0)


def check_some_weight(terms: list[TermCfg]) -> list[TermCfg]:
    """``terms``, unless their weights are all zero at every step (nothing would be trained):
    then a ValueError (a validator's error) naming them."""
    if terms and all(t.always_zero() for t in terms):
        names = ", ".join(t.name or t.kind for t in terms)
        raise ValueError(
            f"every term's weight is 0 at every step ({names}), so nothing would be trained; "
            "give at least one term a positive weight"
        )
    return terms


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

    label_smoothing: UnitOpen = 0.0
    view: ViewCfg | None = None
    batch_size: BatchSize | None = None
    objectives: list[TermCfg] = []
    """Terms that train the teacher (no teacher of its own); empty: cross-entropy."""
    unlabeled: bool = False
    """Fit on the training set plus the dataset's unlabeled samples (labels ``-1``)."""
    data: FitDataCfg | None = None
    """Fit on this dataset instead of the run's (same input shape; at most the run's number of
    classes), e.g. a source domain of cross-domain distillation (DistillWeighted)."""

    _coerce_view = view_fields("view")

    @field_validator("objectives")
    @classmethod
    def _trains_something(cls, objectives: list[TermCfg]) -> list[TermCfg]:
        return check_some_weight(objectives)


__all__ = [
    "MAX_EPOCHS",
    "MAX_LR",
    "Betas",
    "FitCfg",
    "FitDataCfg",
    "MixCfg",
    "OptimizerCfg",
    "ScheduleCfg",
    "SchedulerCfg",
    "TermCfg",
    "TrainCfg",
    "check_some_weight",
    "unknown",
]
