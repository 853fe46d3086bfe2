"""Build the Python objects of a run from a validated :class:`~distillery.config.RunConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..config.signatures import check_params
from ..batch import BatchView
from ..config import (
    AnchoredTeacherCfg,
    BankTeacherCfg,
    EMATeacherCfg,
    FitCfg,
    FrozenTeacherCfg,
    ModelCfg,
    PrivilegedTeacherCfg,
    RunConfig,
    SelfEnsembleTeacherCfg,
    SnapshotTeacherCfg,
    TermCfg,
    ViewCfg,
    VotingSnapshotTeacherCfg,
)
from ..errors import ConfigError
from ..registry import OBJECTIVES
from ..teachers import (
    EMATeacher,
    FrozenTeacher,
    PrivilegedTeacher,
    SelfEnsembleTeacher,
    SnapshotTeacher,
    Teacher,
    TeacherBank,
    VotingSnapshotTeacher,
)
from ..weighting import (
    Constant,
    CosineSchedule,
    CosineWarmup,
    GradNormBalancer,
    GroundTruthMix,
    LinearWarmup,
    Schedule,
    StepSchedule,
)
from . import checkpoint as ckpt
from .distiller import Distiller, Term


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
    """The network of ``cfg``; loads ``cfg.checkpoint`` (safetensors) when given."""
    from ..models import build_model as _build

    try:
        model = _build(cfg.name, input_shape=input_shape, num_classes=num_classes, **cfg.params)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if cfg.checkpoint is not None:
        ckpt.load_weights(model, Path(cfg.checkpoint), what=f"{where} ({cfg.name})")
    return model


def build_schedule(value: Any) -> float | Schedule:
    if isinstance(value, (int, float)):
        return float(value)
    kind = value.kind
    if kind == "constant":
        return Constant(value.value)
    if kind == "linear_warmup":
        return LinearWarmup(value.value, value.warmup_steps, value.start)
    if kind == "cosine_warmup":
        return CosineWarmup(value.value, value.warmup_steps, value.start)
    if kind == "step":
        return StepSchedule(value.value, value.milestones, value.gamma)
    return CosineSchedule(value.start, value.end, value.total_steps)


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


def build_teacher(
    cfg: Any,
    student: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    fit_teacher: Any,
    where: str = "teacher",
) -> Teacher:
    """A teacher from its config. ``fit_teacher(model, fit_cfg, view, where)`` trains a
    frozen/privileged teacher that has no checkpoint and returns it."""
    view = build_view(cfg.view, f"{where}.view")
    if getattr(cfg, "kind", None) == "cached":
        from ..teachers.cached import CachedTeacher

        # the view only feeds the evaluation teacher; training reads the cache by sample index
        return CachedTeacher(cfg.path, verify=cfg.verify, eval_view=view)
    if isinstance(cfg, FrozenTeacherCfg):
        model = build_model(cfg.model, input_shape, num_classes, f"{where}.model")
        if cfg.model.checkpoint is None:
            model = fit_teacher(model, cfg.fit, where)
        return FrozenTeacher(model, until=cfg.until, view=view)
    if getattr(cfg, "kind", None) == "tta_dense":
        from ..teachers.tta import DenseTTATeacher

        model = build_model(cfg.model, input_shape, num_classes, f"{where}.model")
        if cfg.model.checkpoint is None:
            model = fit_teacher(model, cfg.fit, where)
        patch = (cfg.patch, cfg.patch) if isinstance(cfg.patch, int) else tuple(cfg.patch)
        if len(input_shape) != 3 or input_shape[1] % patch[0] or input_shape[2] % patch[1]:
            raise ConfigError(f"{where}.patch: {cfg.patch} must divide the image size of inputs {tuple(input_shape)} (C, H, W).")
        grid = (input_shape[1] // patch[0], input_shape[2] // patch[1])
        return DenseTTATeacher(model, grid, patch, cfg.shifts, cfg.flip, cfg.prefix_tokens, view=view)
    if isinstance(cfg, EMATeacherCfg):
        return EMATeacher(student, cfg.momentum, cfg.final_momentum, cfg.buffers, view=view)
    if isinstance(cfg, SnapshotTeacherCfg):
        return SnapshotTeacher(student, cfg.every, view=view)
    if isinstance(cfg, VotingSnapshotTeacherCfg):
        return VotingSnapshotTeacher(student, cfg.size, cfg.every, cfg.vote, view=view)
    if isinstance(cfg, SelfEnsembleTeacherCfg):
        from ..data.views import build_view as build_transform

        transforms = []
        for i, spec in enumerate(cfg.transforms):
            try:
                transforms.append(build_transform(spec))
            except ConfigError as exc:
                raise ConfigError(f"{where}.transforms.{i}: {exc}") from None
        model = build_model(cfg.model, input_shape, num_classes, f"{where}.model") if cfg.model else None
        return SelfEnsembleTeacher(transforms, model=model, average=cfg.average, view=view)
    if isinstance(cfg, PrivilegedTeacherCfg):
        model = None
        if cfg.model is not None:
            model = build_model(cfg.model, input_shape, num_classes, f"{where}.model")
            if cfg.model.checkpoint is None:
                if cfg.fit is None:
                    raise ConfigError(f"{where}: a separate privileged model needs model.checkpoint or fit.")
                model = fit_teacher(model, cfg.fit, where)
        return PrivilegedTeacher(view=view, model=model, eval_mode=cfg.eval_mode)
    if isinstance(cfg, AnchoredTeacherCfg):
        from ..teachers.anchored import AnchoredTeacher

        anchor = build_teacher(cfg.anchor, student, input_shape, num_classes, fit_teacher, f"{where}.anchor")
        current = build_teacher(cfg.current, student, input_shape, num_classes, fit_teacher, f"{where}.current")
        return AnchoredTeacher(anchor, current, cfg.strength, cfg.mode, view=view)
    if isinstance(cfg, BankTeacherCfg):
        members = [
            build_teacher(m, student, input_shape, num_classes, fit_teacher, f"{where}.members.{i}")
            for i, m in enumerate(cfg.members)
        ]
        return TeacherBank(members, cfg.weights, cfg.combine)
    raise ConfigError(f"{where}: unsupported teacher kind {getattr(cfg, 'kind', cfg)!r}.")


def build_distiller(cfg: RunConfig, student: nn.Module, teacher: Teacher | None, terms: list[Term] | None = None) -> Distiller:
    balancer = None
    if cfg.weighting.gradnorm is not None:
        g = cfg.weighting.gradnorm
        balancer = GradNormBalancer(g.task, dict(g.ratios), g.params, g.every, g.momentum, g.min_weight, g.max_weight)
    elif getattr(cfg.weighting, "gam", None) is not None:
        from ..weighting.gam import GradientGuidedModulation

        g = cfg.weighting.gam
        balancer = GradientGuidedModulation(g.task, g.term, g.params, g.rho, g.delta, g.initial, g.every, g.default, g.max_factor)
    return Distiller(
        student,
        teacher,
        terms if terms is not None else build_terms(cfg.objectives),
        student_view=build_view(cfg.data.student_view, "data.student_view"),
        balancer=balancer,
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
