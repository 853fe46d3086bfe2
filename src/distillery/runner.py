"""``distillery run``: one config in, one run directory out.

The run directory holds ``config.yaml`` (resolved, with every default), ``metrics.jsonl``,
``tensorboard/``, ``checkpoints/``, ``student.safetensors``, ``predictions.safetensors``,
``summary.json`` and ``report.md`` with its plots. A frozen teacher without a checkpoint is
first trained in ``<run>/teacher/`` (itself a run directory), by cross-entropy or by the
objectives of its ``fit`` section.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .config import FitCfg, RunConfig, dump_config
from .engine import checkpoint as ckpt
from .engine import distributed as D
from .engine.build import (
    RunParts,
    TeacherContext,
    build_distiller,
    build_model,
    build_terms,
    build_view,
    trainer_kwargs,
)
from .engine.distiller import Distiller, Term, signal_names
from .engine.rundir import (  # noqa: F401  (prepare_run_dir and the helpers are re-exported from here)
    MISSING as _MISSING,
    RESUMABLE_LOGGING,
    check_resumed,
    differences as _differences,
    prepare_run_dir,
    remove_failed_start as _remove_failed_start,
    run_in_dir,
    short as _short,
)
from .engine.trainer import Trainer, resolve_device, seed_everything
from .errors import ConfigError
from .teachers import PrecomputedTeacher


RESUMABLE_CHANGES = (
    "train.epochs",
    *RESUMABLE_LOGGING,
    "data.num_workers",
    "data.eval_batch_size",
    "name",
)
"""Config keys that ``--resume`` may change: more (or fewer) epochs to extend a run (the LR
schedule is then recomputed over the new total), and how the run is logged, checkpointed and
placed. Any other difference from the run's stored ``config.yaml`` is refused."""


def check_resumed_config(out: Path, cfg: RunConfig) -> list[str]:
    """Compare ``cfg`` with the config stored in the run directory ``out``; refuse any
    difference outside :data:`RESUMABLE_CHANGES` with a message listing the changed keys.
    Returns the allowed changes (``key: old -> new``). Writes nothing."""
    return check_resumed(out, dump_config(cfg), RESUMABLE_CHANGES)


def load_data(cfg: RunConfig):
    from .data import load_dataset

    try:
        return load_dataset(cfg.data.dataset, **cfg.data.params)
    except ConfigError as exc:
        raise ConfigError(f"data: {exc}") from None


def fit_teacher(model: nn.Module, fit: FitCfg, splits, run_dir: Path, seed: int, resume: bool, where: str) -> nn.Module:
    """Train ``model`` by cross-entropy on the labeled training set (``<run>/teacher``), or by
    ``fit.objectives`` on it (plus the unlabeled samples when ``fit.unlabeled``)."""
    # one directory per fitted teacher: "teacher", or e.g. "teacher_members_1" for a bank member
    out = run_dir / ("teacher" if where == "teacher" else where.replace(".", "_"))
    weights = out / "student.safetensors"
    if resume and weights.is_file() and (out / "summary.json").is_file():
        ckpt.load_weights(model, weights, what=f"{where} (fitted earlier)")
        return model
    distiller, splits, data = teacher_fit_parts(model, fit, splits, where)
    teacher_resume = resume and ckpt.latest_checkpoint(out / "checkpoints") is not None if (out / "checkpoints").exists() else False
    if not teacher_resume and out.exists() and D.is_main():
        shutil.rmtree(out)
    D.barrier()
    kw = trainer_kwargs(fit)
    trainer = Trainer(
        distiller,
        data,
        eval_data=splits.test,
        out_dir=out,
        seed=seed,
        batch_size=fit.batch_size or 128,
        description="teacher",
        **kw,
    )
    trainer.fit(resume=teacher_resume)
    return model


def teacher_fit_parts(model: nn.Module, fit: FitCfg, splits, where: str) -> tuple[Distiller, Any, Any]:
    """What trains a teacher by its ``fit`` section: ``(distiller, splits, training data)``.

    The splits are ``fit.data``'s when given (checked against the run's), else the run's; the
    terms are ``fit.objectives`` or cross-entropy; the data adds the unlabeled samples when
    ``fit.unlabeled``."""
    from .objectives import CrossEntropy

    if fit.data is not None:
        splits = _fit_data(fit, splits, where)
    terms = build_terms(fit.objectives, where=f"{where}.fit.objectives") if fit.objectives else [Term("ce", CrossEntropy(label_smoothing=fit.label_smoothing))]
    if fit.unlabeled and splits.unlabeled is None:
        raise ConfigError(f"{where}.fit.unlabeled is true, but the dataset was given no unlabeled samples (see its params).")
    distiller = Distiller(model, None, terms, student_view=build_view(fit.view, f"{where}.fit.view"))
    return distiller, splits, splits.train_with_unlabeled() if fit.unlabeled else splits.train


def _fit_data(fit: FitCfg, run_splits, where: str):
    """The splits of ``fit.data`` (a teacher fitted on another dataset, e.g. a source domain)."""
    from .data import load_dataset

    try:
        splits = load_dataset(fit.data.dataset, **fit.data.params)
    except ConfigError as exc:
        raise ConfigError(f"{where}.fit.data: {exc}") from None
    if tuple(splits.input_shape) != tuple(run_splits.input_shape):
        raise ConfigError(
            f"{where}.fit.data: dataset {fit.data.dataset!r} has inputs of shape {tuple(splits.input_shape)}, but the "
            f"run's data has {tuple(run_splits.input_shape)}; a teacher fitted on it could not read the run's inputs."
        )
    if splits.num_classes > run_splits.num_classes:
        raise ConfigError(
            f"{where}.fit.data: dataset {fit.data.dataset!r} has {splits.num_classes} classes, more than the run's "
            f"{run_splits.num_classes}, which the teacher's head is built for."
        )
    return splits


def precompute_teacher(cfg: RunConfig, teacher, terms, train_set) -> PrecomputedTeacher:
    """Replace a frozen teacher by its signals over the training set (``precompute: true``)."""
    augmented = [
        where
        for where, view in (("data.student_view", cfg.data.student_view), ("teacher.view", cfg.teacher.view))
        if view is not None and (view.transforms or view.key != "x")
    ]
    if augmented and cfg.teacher.view is None or "teacher.view" in augmented:
        raise ConfigError(
            f"teacher.precompute is true, but {augmented[0]} changes the teacher's input from batch to batch, "
            "so stored signals would differ from what the teacher sees. Set precompute: false, or give "
            "the teacher an un-augmented view (teacher.view: x)."
        )
    names = signal_names(terms, "teacher")
    device = resolve_device(cfg.train.device)
    return PrecomputedTeacher.from_model(teacher.model.to(device), train_set, names, device=device, until=cfg.teacher.until)


def run(cfg: RunConfig, out: Path, *, resume: bool = False, overwrite: bool = False, report: bool = True) -> dict[str, Any]:
    """Execute a run; returns its summary.

    Under torchrun every process calls this; rank 0 alone touches the run directory.

    ``resume`` continues wherever the run stopped: the teacher's own training (a frozen
    teacher fitted first) from its last checkpoint, then the student from its last checkpoint,
    or from the start when the run was stopped before the student's first one. The config
    must equal the stored one except for :data:`RESUMABLE_CHANGES`; the stored config is
    rewritten only after that check. A start that fails before anything worth keeping was
    written (no checkpoint, no trained weights) removes the run directory it created, so the
    corrected command can be run as it stands.
    """
    resolve_device(cfg.train.device)  # a missing GPU fails before anything is trained or written
    D.init_from_env(cfg.train.device)
    if cfg.teacher is not None:
        cfg.teacher.preflight()  # e.g. a missing cache fails before the run directory is made
    summary = run_in_dir(out, lambda start: _train(cfg, start.out, resume), config_text=dump_config(cfg),
                         resumable=RESUMABLE_CHANGES, resume=resume, overwrite=overwrite)
    if report and D.is_main():
        from .evaluation.report import write_report

        write_report(Path(out))
    return summary


@dataclass
class RunBuild:
    """Everything a run config builds before its first step."""

    splits: Any
    train_set: Any
    terms: list[Term]
    teacher: Any
    distiller: Distiller
    trainer: Trainer


def build_run(cfg: RunConfig, make_fit: Callable[[Any], Callable[[nn.Module, FitCfg, str], nn.Module]], out: Path | None) -> RunBuild:
    """Load the data and build student, teacher, terms, distiller and trainer as ``cfg`` says.

    ``make_fit(splits)`` returns how a teacher without a checkpoint is trained (``run``: by
    :func:`fit_teacher`; ``distillery validate``: not at all). ``out`` is the run directory
    (``None``: the trainer writes nothing)."""
    splits = load_data(cfg)
    seed_everything(cfg.seed)  # every rank builds the same initial weights
    student = build_model(cfg.student, splits.input_shape, splits.num_classes, "student")
    if cfg.data.unlabeled and splits.unlabeled is None:
        raise ConfigError(f"data.unlabeled is true, but dataset {cfg.data.dataset!r} was given no unlabeled samples (see its params).")
    train_set = splits.train_with_unlabeled() if cfg.data.unlabeled else splits.train
    terms = build_terms(cfg.objectives)
    run_parts = RunParts(cfg, train_set, terms, precompute=lambda t: precompute_teacher(cfg, t, terms, train_set))
    context = TeacherContext(student, splits.input_shape, splits.num_classes, make_fit(splits), run=run_parts)
    teacher = context.build(cfg.teacher) if cfg.teacher is not None else None
    distiller = build_distiller(cfg, student, teacher, terms)
    if context.student_view is not None:  # the teacher decides the student's input (a cache's replayed augmentation)
        distiller.student_view = context.student_view
    trainer = Trainer(
        distiller,
        train_set,
        eval_data=splits.test,
        out_dir=out,
        seed=cfg.seed,
        eval_view=build_view(cfg.data.eval_view, "data.eval_view"),
        **trainer_kwargs(cfg.train, cfg.data),
    )
    return RunBuild(splits, train_set, terms, teacher, distiller, trainer)


def _train(cfg: RunConfig, out: Path, resume: bool) -> dict[str, Any]:
    """Build everything the config describes (fitting a teacher first if needed) and train."""

    def make_fit(splits: Any) -> Callable[[nn.Module, FitCfg, str], nn.Module]:
        return lambda model, fit, where: fit_teacher(model, fit, splits, out, cfg.seed, resume, where)

    built = build_run(cfg, make_fit, out)
    # stopped before the student's first checkpoint (e.g. while its teacher was trained): the
    # student starts from the beginning, which is where the run stood
    student_resume = resume and ckpt.latest_checkpoint(out / "checkpoints") is not None
    return built.trainer.fit(resume=student_resume)
