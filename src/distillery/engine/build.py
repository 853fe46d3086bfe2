"""Build the Python objects of a run from a validated :class:`~distillery.config.RunConfig`.

Nothing here names a teacher kind, a schedule or a balancer: each registers its config section
and its builder (see :mod:`distillery.registry`), and this module builds through the registry.
A teacher's builder receives a :class:`TeacherContext`: what building a teacher needs besides
its section (the student, the data's shapes, how to train a model that has no checkpoint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..batch import BatchView
from ..config.signatures import check_params
from ..errors import ConfigError
from ..registry import OBJECTIVES, TEACHERS, WEIGHTINGS
from ..teachers.base import Teacher
from ..weighting import GroundTruthMix, Schedule
from . import checkpoint as ckpt
from .distiller import Distiller, Term

if TYPE_CHECKING:
    from ..config.base import ModelCfg, ViewCfg
    from ..config.schema import RunConfig
    from ..config.training import FitCfg, TermCfg


def build_view(cfg: ViewCfg | None, where: str) -> BatchView | None:
    """A :class:`BatchView` from its config (``None`` stays ``None``)."""
    from ..data.views import build_view as build_transform

    if cfg is None:
        return None
    try:
        transform = build_transform(cfg.transforms) if cfg.transforms else None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return BatchView(cfg.key, transform)


def build_model(cfg: ModelCfg, input_shape: tuple[int, ...], num_classes: int, where: str) -> nn.Module:
    """The network of ``cfg``; loads ``cfg.checkpoint`` (safetensors) when given.

    A registered model is first built on the meta device (no memory, no random numbers drawn,
    so the seeded initial weights are unchanged) to count its parameters: one too large for
    this machine's memory is a ConfigError naming its size before anything is allocated. A
    build that still fails for lack of memory, or on an impossible size (a negative or
    overflowing dimension), is a ConfigError too."""
    from ..models import build_model as _build

    count = None
    try:
        _check_int64(cfg.params, f"model {cfg.name!r}: params")
        sizes = _meta_sizes(cfg, input_shape, num_classes)
        if sizes is not None:
            count = sizes[0]
            _check_fits(cfg, *sizes)
        model = _build(cfg.name, input_shape=input_shape, num_classes=num_classes, **cfg.params)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (RuntimeError, MemoryError, OverflowError) as exc:
        size = f" It would have {count:,} parameters." if count is not None else ""
        raise ConfigError(
            f"{where}: model {cfg.name!r} with params {cfg.params} cannot be built: "
            f"{type(exc).__name__}: {_first_line(exc)}.{size} Check its sizes (widths, depths, channels)."
        ) from None
    if cfg.checkpoint is not None:
        ckpt.load_weights(model, Path(cfg.checkpoint), what=f"{where} ({cfg.name})")
    return model


def _check_int64(value: Any, where: str) -> None:
    """Refuse an integer that no tensor size can hold (torch sizes are 64-bit)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_int64(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_int64(item, f"{where}.{i}")
    elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ConfigError(f"{where} is {value}, which does not fit a 64-bit integer (no tensor can have that size).")


def _meta_sizes(cfg: ModelCfg, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, int] | None:
    """``(parameters, bytes of parameters and buffers)`` of the registered model ``cfg``,
    built on the meta device; ``None`` for an import path (user code is not run twice) or when
    the model cannot be built there. The random number generators are restored afterwards,
    whatever the model's constructor drew from them."""
    import random

    import numpy as np
    import torch

    from ..models import build_model as _build
    from ..registry import MODELS

    if cfg.name not in MODELS:
        return None
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        with torch.device("meta"):
            model = _build(cfg.name, input_shape=input_shape, num_classes=num_classes, **cfg.params)
        tensors = (*model.parameters(), *model.buffers())
        return sum(p.numel() for p in model.parameters()), sum(t.numel() * t.element_size() for t in tensors)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - only an estimate: the real build reports what is wrong
        return None
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _check_fits(cfg: ModelCfg, count: int, need: int) -> None:
    """Refuse a model whose weights alone (``need`` bytes) exceed this machine's available memory."""
    have = available_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"model {cfg.name!r} with params {cfg.params} would have {count:,} parameters "
            f"({_gigabytes(need)} of weights), more than the {_gigabytes(have)} of memory available here; "
            "make it smaller (widths, depths, channels)."
        )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` of /proc/meminfo, else
    the physical memory); ``None`` where neither can be read."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _gigabytes(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__


def build_schedule(value: Any) -> float | Schedule:
    """A number stays a number; a schedule section (``{kind: linear_warmup, ...}``) becomes
    the schedule registered under its kind."""
    if isinstance(value, (int, float)):
        return float(value)
    return WEIGHTINGS.build(value.kind, value)


def build_balancer(cfg: Any) -> Any:
    """The balancer of a ``weighting`` section (the registered balancer whose key is set), or ``None``."""
    for name, section in cfg:
        if section is not None:
            return WEIGHTINGS.build(name, section)
    return None


def build_objective(kind: str, params: dict[str, Any], where: str) -> nn.Module:
    cls = OBJECTIVES.get(kind)
    return construct(cls, params, where)


def construct(cls: Any, params: dict[str, Any], where: str) -> Any:
    """``cls(**params)`` with bad or unknown parameters (and values a constructor rejects
    with ``ValueError``) reported as a ConfigError naming ``where``."""
    check_params(cls, params, where)
    try:
        return cls(**params)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_terms(cfgs: list[TermCfg], where: str = "objectives") -> list[Term]:
    """Terms from config entries; ``where`` is their config key, named in error messages."""
    terms = []
    for i, tc in enumerate(cfgs):
        name = tc.name or tc.kind
        objective = build_objective(tc.kind, tc.params, f"{where}.{i} ({name}).params")
        mix = GroundTruthMix(build_schedule(tc.mix.alpha)) if tc.mix is not None else None
        terms.append(
            Term(
                name=name,
                objective=objective,
                weight=build_schedule(tc.weight),
                inputs=dict(tc.inputs),
                adapter=tc.adapter,
                mix=mix,
                mix_labels=tc.mix.labels if tc.mix is not None else "batch.y",
            )
        )
    return terms


@dataclass
class RunParts:
    """What a run's own teacher may use of the run besides its section (a bank's members and
    teachers built outside :func:`distillery.runner.run` get none): the run config, the
    training set, the terms, and ``precompute(teacher)``, which replaces a frozen teacher by
    its signals over the training set."""

    config: RunConfig
    train_set: Any
    terms: list[Term]
    precompute: Callable[[Teacher], Teacher]


@dataclass
class TeacherContext:
    """What a teacher's builder needs besides its config section.

    ``fit_teacher(model, fit_cfg, where)`` trains a model that has no checkpoint and returns
    it. A builder may set ``student_view`` when the teacher decides the student's input (a
    cache built on the student's augmented input replays that augmentation)."""

    student: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    fit_teacher: Callable[[nn.Module, FitCfg, str], nn.Module] | None = None
    run: RunParts | None = None
    student_view: Any = None

    def build(self, cfg: Any, where: str = "teacher") -> Teacher:
        """The teacher of section ``cfg`` (at config key ``where``), by its kind's builder."""
        return TEACHERS.build(cfg.kind, cfg, self, where)

    def member(self, cfg: Any, where: str) -> Teacher:
        """A teacher inside another one (a bank's member, an anchored teacher's parts)."""
        return dataclasses.replace(self, run=None, student_view=None).build(cfg, where)

    def view(self, cfg: Any, where: str) -> BatchView | None:
        """The view of section ``cfg.view`` (``None`` stays ``None``)."""
        return build_view(cfg.view, f"{where}.view")

    def model(self, cfg: ModelCfg, where: str) -> nn.Module:
        """The network of a ``model`` section, sized for the run's data."""
        return build_model(cfg, self.input_shape, self.num_classes, f"{where}.model")

    def trained_model(self, cfg: ModelCfg, fit: FitCfg | None, where: str) -> nn.Module:
        """The network of ``cfg``, trained as ``fit`` says when it has no checkpoint."""
        model = self.model(cfg, where)
        if cfg.checkpoint is None:
            model = self.fit_teacher(model, fit, where)
        return model


def build_teacher(
    cfg: Any,
    student: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    fit_teacher: Any,
    where: str = "teacher",
) -> Teacher:
    """A teacher from its config. ``fit_teacher(model, fit_cfg, where)`` trains a
    frozen/privileged teacher that has no checkpoint and returns it."""
    return TeacherContext(student, input_shape, num_classes, fit_teacher).build(cfg, where)


def build_distiller(cfg: RunConfig, student: nn.Module, teacher: Teacher | None, terms: list[Term] | None = None) -> Distiller:
    return Distiller(
        student,
        teacher,
        terms if terms is not None else build_terms(cfg.objectives),
        student_view=build_view(cfg.data.student_view, "data.student_view"),
        balancer=build_balancer(cfg.weighting),
    )


def trainer_kwargs(train: Any, data: Any | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Keyword arguments of :class:`~distillery.engine.Trainer` from a ``train`` section."""
    kw: dict[str, Any] = {
        "epochs": train.epochs,
        "optimizer": train.optimizer.torch_kwargs(),
        "scheduler": train.scheduler.model_dump(),
        "grad_accum": train.grad_accum,
        "clip_grad_norm": train.clip_grad_norm,
        "precision": train.precision,
        "eval_every": train.eval_every,
        "checkpoint_every": train.checkpoint_every,
        "keep_checkpoints": train.keep_checkpoints,
        "log_every": train.log_every,
        "device": train.device,
        "progress": train.progress,
        "tensorboard": train.tensorboard,
        "distributed": train.distributed,
        "find_unused_parameters": train.find_unused_parameters,
    }
    if data is not None:
        kw.update(batch_size=data.batch_size, eval_batch_size=data.eval_batch_size, num_workers=data.num_workers, drop_last=data.drop_last)
    if batch_size is not None:
        kw["batch_size"] = batch_size
    return kw


def fit_config_as_train(fit: FitCfg) -> dict[str, Any]:
    return trainer_kwargs(fit)
