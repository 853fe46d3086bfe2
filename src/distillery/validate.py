"""``distillery validate``: check a config without training.

Validates the config, then builds what :func:`distillery.runner.run` builds, with the same
function (:func:`~distillery.runner.build_run`: data, student, teacher, terms, distiller,
trainer; then the trainer's loader, optimizer and schedule), and runs
ONE batch of the training set through student and teacher as the first training step would
(views, taps, adapters built from that batch, ground-truth mixing), without a backward pass.
It reports the data, the networks and their parameter counts, the shape and dtype of every
signal each term reads, and each term's value on that batch.

Nothing is trained and nothing is written (no run directory): a teacher that ``run`` would
first train by its ``fit`` section keeps its random initial weights here (its ``fit`` section
is checked on one batch instead); a cached teacher reads its cache; a teacher with
``precompute`` computes its signals over the training set as ``run`` does. Generated datasets
are cached as by ``run`` (see :func:`distillery.data.datasets.cache_dir`).

Example::

    >>> from distillery.config import load_config
    >>> report = validate(load_config("configs/fitnets_digits.yaml"))   # doctest: +SKIP
    >>> print("\\n".join(report.lines()))                               # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .batch import to_device
from .engine.build import trainer_kwargs
from .engine.distiller import Distiller, Term, parse_ref
from .engine.loading import steps_per_epoch
from .engine.trainer import Trainer, build_optimizer, build_scheduler
from .teachers.base import Teacher

if TYPE_CHECKING:
    from .config import FitCfg, RunConfig


@dataclass
class SignalInfo:
    """One input of a term: the argument, its signal reference, shape and dtype (``None`` for
    a value that is not a tensor, then ``kind`` names its type), and the shape an adapter maps
    it to."""

    arg: str
    ref: str
    shape: tuple[int, ...] | None
    dtype: str
    adapted: tuple[int, ...] | None = None


@dataclass
class TermInfo:
    """One term on the validation batch: its unweighted value and its weight at step 0."""

    name: str
    kind: str
    value: float
    weight: float
    inputs: list[SignalInfo]
    adapter: str | None = None


@dataclass
class Validation:
    """What ``distillery validate`` found; :meth:`lines` is its printed form."""

    name: str
    data: str
    batch: str
    student: str
    teacher: str | None
    extra: str | None
    notes: list[str]
    terms: list[TermInfo]
    training: str
    evaluation: str
    wall_s: float = 0.0
    total: float = field(default=math.nan)

    def lines(self) -> list[str]:
        out = [f"config: {self.name}", f"data: {self.data}", f"batch: {self.batch}", f"student: {self.student}"]
        if self.teacher is not None:
            out.append(f"teacher: {self.teacher}")
        if self.extra is not None:
            out.append(f"adapters and objectives: {self.extra}")
        out += [f"note: {n}" for n in self.notes]
        out.append("terms (unweighted value on this batch x weight at step 0; the signals each term reads):")
        width = max(len(t.name) for t in self.terms)
        refs = max((len(s.ref) for t in self.terms for s in t.inputs), default=0)
        shapes = max((len(str(list(s.shape))) for t in self.terms for s in t.inputs if s.shape is not None), default=0)
        for t in self.terms:
            kind = f"  ({t.kind})" if t.kind != t.name else ""
            out.append(f"  {t.name:<{width}}  {t.value:.6g} x {t.weight:g}{kind}")
            for s in t.inputs:
                shape = str(list(s.shape)) if s.shape is not None else ""
                line = f"  {'':<{width}}  {s.ref:<{refs}}  {shape:<{shapes}}  {s.dtype}"
                if s.adapted is not None:
                    line += f"  -> {t.adapter} adapter -> {list(s.adapted)}"
                out.append(line)
        out.append(f"  weighted total: {self.total:.6g}")
        out += [f"training: {self.training}", f"evaluation: {self.evaluation}", f"ok ({self.wall_s:.1f}s)"]
        return out


def validate(cfg: RunConfig, name: str | None = None) -> Validation:
    """Build the run of ``cfg`` and run one training batch through it without training.

    Raises the error ``run`` would raise (a :class:`~distillery.errors.ConfigError`,
    :class:`~distillery.errors.TapError`, :class:`~distillery.errors.ShapeError`, ...), or
    :class:`~distillery.errors.NonFiniteLossError` when a term is not finite on the batch.
    """
    from .runner import build_run

    t0 = time.perf_counter()
    if cfg.teacher is not None:
        cfg.teacher.preflight()  # e.g. a missing cache
    fitters: list[_UntrainedFit] = []

    def make_fit(splits: Any) -> _UntrainedFit:
        fitters.append(_UntrainedFit(splits, cfg.seed))
        return fitters[-1]

    built = build_run(cfg, make_fit, out=None)  # what run builds; the trainer writes nothing
    splits, train_set, teacher, distiller, trainer = built.splits, built.train_set, built.teacher, built.distiller, built.trainer
    student = distiller.student
    notes = fitters[0].notes
    if getattr(cfg.teacher, "precompute", False):
        notes.append(f"teacher.precompute: the teacher's signals were computed over the {len(train_set):,} training samples, as run does first")

    # the trainer's set-up, on one process: loader, total steps, the first batch, optimizer
    loader, sampler = trainer.train_loader()
    batches = sampler.global_batches()
    total_steps = steps_per_epoch(batches, trainer.grad_accum) * trainer.epochs
    distiller.set_total_steps(total_steps)
    batch = to_device(next(iter(loader)), trainer.device)
    distiller.train()
    distiller.prepare(batch)
    params = distiller.trainable_parameters()
    optimizer = build_optimizer(params, trainer.optimizer_spec)
    build_scheduler(optimizer, trainer.scheduler_spec, total_steps)

    with torch.no_grad(), trainer.autocast():
        signals, values = distiller.dry_step(batch)
        infos = _term_infos(distiller, signals, batch, values)
    distiller.raise_if_not_finite(values, 0)
    total = sum(t.weight * t.value for t in infos)
    if distiller.balancer is not None:
        notes.append(f"weighting: {type(distiller.balancer).__name__} sets the weights during training; the weights shown are the configured ones")

    evaluation = _evaluate_one_batch(trainer, splits.test)
    student_ids = {id(p) for p in student.parameters()}
    extra = [p for p in params if id(p) not in student_ids]
    accum = f", {trainer.grad_accum} micro-batches per step" if trainer.grad_accum > 1 else ""
    n_u = 0 if splits.unlabeled is None else len(splits.unlabeled)
    return Validation(
        name=name or cfg.name or "(unnamed)",
        data=(
            f"{splits.name}: {len(splits.train):,} train, {len(splits.test):,} test, {n_u:,} unlabeled"
            f"{' (trained on)' if cfg.data.unlabeled else ''}; input shape {list(splits.input_shape)}, "
            f"{splits.num_classes} classes"
        ),
        batch=f"the first of {batches:,} batches of the training set ({_batch_fields(batch)}) on {trainer.device}",
        student=_describe_model(cfg.student.name, student, params),
        teacher=_describe_teacher(teacher, student, params) if teacher is not None else None,
        extra=f"{sum(p.numel() for p in extra):,} trainable parameters" if extra else None,
        notes=notes,
        terms=infos,
        training=(
            f"{trainer.epochs} epochs x {batches:,} batches = {total_steps:,} optimizer steps{accum}; "
            f"{trainer.optimizer_spec.get('name', 'adamw')} over {sum(p.numel() for p in params):,} parameters, "
            f"{trainer.scheduler_spec.get('name', 'constant')} schedule, {trainer.precision}"
        ),
        evaluation=evaluation,
        wall_s=time.perf_counter() - t0,
        total=float(total),
    )


class _UntrainedFit:
    """Stands in for :func:`distillery.runner.fit_teacher`: checks the ``fit`` section as far as
    possible without training (its data, its terms on one batch of its training set) and returns
    the model with its random initial weights."""

    def __init__(self, splits: Any, seed: int) -> None:
        self.splits, self.seed = splits, seed
        self.notes: list[str] = []

    def __call__(self, model: nn.Module, fit: FitCfg, where: str) -> nn.Module:
        from .runner import teacher_fit_parts

        distiller, _, data = teacher_fit_parts(model, fit, self.splits, where)  # the run's own checks and terms
        trainer = Trainer(distiller, data, out_dir=None, seed=self.seed, batch_size=fit.batch_size or 128, **trainer_kwargs(fit))
        loader, _ = trainer.train_loader()  # as run would: at least one batch
        distiller.train()
        distiller.prepare(to_device(next(iter(loader)), trainer.device))  # every fit term computes
        self.notes.append(
            f"{where} would be trained first by {where}.fit ({fit.epochs} epochs); its random weights are used here"
        )
        return model


def _term_infos(distiller: Distiller, signals: dict, batch: dict, values: dict[str, torch.Tensor]) -> list[TermInfo]:
    """Per term: each input's reference, shape and dtype (through the adapter, if any)."""
    sources = {"student": signals.get("student", {}), "teacher": signals.get("teacher", {}), "batch": batch}
    infos = []
    for term in distiller.terms:
        refs = term.refs()
        if term.mix is not None:
            refs["mix labels"] = term.mix_labels
        inputs = []
        for arg, ref in refs.items():
            source, name = parse_ref(ref, term.name)
            value = sources[source].get(name)
            adapted = None
            if term.adapter is not None and arg == "student" and term.name in distiller.adapters and isinstance(value, torch.Tensor):
                adapted = tuple(distiller.adapters[term.name](value).shape)
            if isinstance(value, torch.Tensor):
                inputs.append(SignalInfo(arg, ref, tuple(value.shape), str(value.dtype).removeprefix("torch."), adapted))
            else:
                size = f" of {len(value)}" if hasattr(value, "__len__") else ""
                inputs.append(SignalInfo(arg, ref, None, f"{type(value).__name__}{size}"))
        weight = float(distiller.schedules[term.name](0))
        infos.append(TermInfo(term.name, _kind(term), float(values[term.name].detach().float()), weight, inputs, term.adapter))
    return infos


def _kind(term: Term) -> str:
    from .registry import OBJECTIVES

    cls = type(term.objective)
    return next((n for n in OBJECTIVES.names() if OBJECTIVES.get(n) is cls), cls.__name__)


def _evaluate_one_batch(trainer: Trainer, test: Any) -> str:
    """The end-of-epoch evaluation, on one batch of the test set."""
    if test is None or len(test) == 0:
        return "no test set"
    subset = torch.utils.data.Subset(test, range(min(len(test), trainer.eval_batch_size)))
    metrics = trainer.evaluate(subset)
    return f"one batch of {len(subset):,} test samples gives {', '.join(metrics)} (untrained)"


def _batch_fields(batch: dict) -> str:
    parts = []
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            parts.append(f"{key} {list(value.shape)} {str(value.dtype).removeprefix('torch.')}")
        else:
            parts.append(f"{key} {type(value).__name__}")
    return ", ".join(parts)


def _count(params: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def _describe_model(name: str, model: nn.Module, trainable: list[nn.Parameter]) -> str:
    ids = {id(p) for p in trainable}
    own = list(model.parameters())
    return (
        f"{type(model).__name__} ({name}), {_count(own):,} parameters, "
        f"{_count(p for p in own if id(p) in ids):,} trainable"
    )


def _describe_teacher(teacher: nn.Module, student: nn.Module, trainable: list[nn.Parameter]) -> str:
    """The teacher's class, its network(s) and parameters. A self-teacher that runs the student's
    own weights says so; a teacher's own parameters are never trained (0 trainable)."""
    ids = {id(p) for p in trainable}
    student_ids = {id(p) for p in student.parameters()}
    own = [p for p in teacher.parameters() if id(p) not in student_ids]
    members = getattr(teacher, "members", None)
    network = teacher.tap_model()
    if isinstance(members, nn.ModuleList) and len(members) and all(isinstance(m, Teacher) for m in members):
        nets = [m if m.tap_model() is None else m.tap_model() for m in members]  # no network: the teacher's class
        net = f"{len(nets)} members ({', '.join(type(n).__name__ for n in nets)})"
    elif network is student:
        net = f"the student's own network (its {_count(student.parameters()):,} parameters)"
    elif network is not None:
        net = f"network {type(network).__name__}"
    else:
        net = "no network to tap"
    text = f"{type(teacher).__name__}, {net}, {_count(own):,} parameters of its own, {_count(p for p in own if id(p) in ids):,} trainable"
    extra = teacher.extra_repr()
    return f"{text} ({extra})" if extra else text


__all__ = ["SignalInfo", "TermInfo", "Validation", "validate"]
