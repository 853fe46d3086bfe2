"""Building a generative run from its config: data, process, teacher, student and method.

:func:`build_generative` is what ``distillery run``, ``validate`` and ``sample`` call, so the
three build the same things. The sample shape and class count come from the dataset; a
``mixture2d`` dataset also gives the :class:`~distillery.generative.teachers.Mixture` that the
analytic teacher and the ``mode_coverage`` metric read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.signatures import check_params
from ..engine import checkpoint as ckpt
from ..errors import ConfigError
from .config import GenerativeConfig, GenTeacherCfg, load_methods
from .denoisers import Denoiser, build_denoiser_net
from .method import METHODS, GenerativeMethod
from .processes import Process, build_process


@dataclass
class GenerativeBuild:
    """Everything a generative config builds before its first step."""

    splits: Any
    train_set: Any
    sample_shape: tuple[int, ...]
    num_classes: int | None
    process: Process
    teacher: nn.Module | None
    student: Denoiser
    method: GenerativeMethod
    mixture: Any


def load_splits(cfg: GenerativeConfig) -> Any:
    from ..data import load_dataset

    _register_generative_data()
    try:
        return load_dataset(cfg.data.dataset, **cfg.data.params)
    except ConfigError as exc:
        raise ConfigError(f"data: {exc}") from None


def _register_generative_data() -> None:
    try:
        from . import data  # noqa: F401  (registers mixture2d, digit_images)
    except ModuleNotFoundError as exc:
        if exc.name != "distillery.generative.data":
            raise


def mixture_of(splits: Any, cfg: GenerativeConfig) -> Any:
    """The data's Gaussian mixture (``splits.mixture`` or ``generative.data.mixture_of``), or ``None``."""
    mixture = getattr(splits, "mixture", None) or (splits.info.get("mixture") if isinstance(getattr(splits, "info", None), dict) else None)
    if mixture is None:
        try:
            from .data import mixture_of as from_params
        except ImportError:
            return None
        try:
            mixture = from_params(cfg.data.params) if cfg.data.dataset == "mixture2d" else None
        except Exception:  # noqa: BLE001 - no mixture for this dataset
            return None
    return mixture


def build_generative(cfg: GenerativeConfig, *, probe: bool = True) -> GenerativeBuild:
    """Build data, process, teacher, student and method as ``cfg`` says (seeded: every rank
    builds the same initial weights). ``probe``: call the student once on two training samples,
    so that a network whose output shape differs from its input fails here with the message
    naming both shapes."""
    from ..engine.trainer import seed_everything

    splits = load_splits(cfg)
    sample_shape = tuple(int(s) for s in splits.input_shape)
    num_classes = int(splits.num_classes) if cfg.data.conditional else None
    if cfg.data.conditional and not num_classes:
        raise ConfigError(f"data.conditional is true, but dataset {cfg.data.dataset!r} has no classes.")
    if len(splits.train) < cfg.data.batch_size:
        raise ConfigError(f"data.batch_size = {cfg.data.batch_size} exceeds the {len(splits.train)} training samples of {cfg.data.dataset!r}.")
    process = build_process(dict(cfg.process))
    mixture = mixture_of(splits, cfg)
    seed_everything(cfg.seed)
    teacher = build_teacher(cfg.teacher, process, sample_shape, num_classes, mixture) if cfg.teacher is not None else None
    net = _net(cfg.student.denoiser.model_dump(), sample_shape, num_classes, "student.denoiser")
    student = Denoiser(net, process, cfg.student.prediction, sample_shape, num_classes)
    if cfg.student.init == "teacher":
        _copy_teacher(student, teacher)
    elif cfg.student.init == "run":
        _copy_teacher(student, load_run_denoiser(Path(cfg.student.init_run or ""), sample_shape, num_classes),
                      what=f"student.init_run ({cfg.student.init_run})")
    if probe:
        x = splits.train.x[:2].float()
        cond: Any = splits.train.y[:2] if num_classes else None
        extra = getattr(splits.train, "extra", {})  # video data: audio/actions conditions of a streaming network
        if getattr(net, "audio_dim", 0) or getattr(net, "num_actions", 0):
            cond = {k: v[:2] for k, v in (("y", cond), ("audio", extra.get("audio")), ("actions", extra.get("actions")))
                    if v is not None}
        with torch.no_grad():
            student(x, torch.full((x.shape[0],), 0.5), cond)
    method = build_method(cfg, student, teacher)
    return GenerativeBuild(splits, splits.train, sample_shape, num_classes, process, teacher, student, method, mixture)


def build_method(cfg: GenerativeConfig, student: Denoiser, teacher: nn.Module | None) -> GenerativeMethod:
    """``METHODS[cfg.method.kind](student=..., teacher=..., **params)``, params checked against
    the method's signature first (typed, nothing coerced); ``seed`` is the run's unless given."""
    load_methods()
    cls = METHODS.get(cfg.method.kind)
    params = dict(cfg.method.params)
    check_params(cls, params, f"method {cfg.method.kind!r}", supplied=("student", "teacher", "seed"))
    from ..config.signatures import accepts

    own_seed = accepts(cls, "seed")
    if own_seed and "seed" not in params:
        params["seed"] = cfg.seed
    try:
        method = cls(student=student, teacher=teacher, **params)
    except ConfigError as exc:
        raise ConfigError(f"method.params: {exc}") from None
    # the base seed of the per-update draws (GenerativeMethod.drawing): the method's own seed or the run's
    method.seed = int(params["seed"]) if own_seed else int(cfg.seed)
    return method


def _net(spec: dict[str, Any], sample_shape: tuple[int, ...], num_classes: int | None, where: str) -> nn.Module:
    from .denoisers import DENOISERS, shape_keywords

    try:
        cls = DENOISERS.get(spec["name"])
        supplied = shape_keywords(cls, sample_shape, num_classes)
        check_params(cls, spec.get("params", {}), f"denoiser {spec['name']!r}", supplied=tuple(supplied))
        return build_denoiser_net(spec, sample_shape, num_classes)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def build_teacher(tcfg: GenTeacherCfg, process: Process, sample_shape: tuple[int, ...], num_classes: int | None,
                  mixture: Any) -> nn.Module:
    """The frozen teacher (``requires_grad`` off, eval mode), wrapped for guidance when asked."""
    if tcfg.kind == "analytic_mixture":
        if mixture is None:
            raise ConfigError("teacher.kind 'analytic_mixture' needs a Gaussian-mixture dataset (mixture2d); this data has no mixture.")
        from .teachers import analytic_teacher

        teacher: nn.Module = analytic_teacher(mixture, process)
    elif tcfg.kind == "run":
        teacher = load_run_denoiser(Path(tcfg.run or ""), sample_shape, num_classes)
    else:
        assert tcfg.denoiser is not None and tcfg.checkpoint is not None
        net = _net(tcfg.denoiser.model_dump(), sample_shape, num_classes, "teacher.denoiser")
        teacher = Denoiser(net, process, tcfg.prediction, sample_shape, num_classes)
        ckpt.load_weights(teacher.net, Path(tcfg.checkpoint), what="teacher.denoiser")
    teacher.requires_grad_(False).eval()
    if tcfg.guidance is not None:
        from .samplers import Guided

        teacher = Guided(teacher, tcfg.guidance)
    return teacher


def load_run_denoiser(run_dir: Path, sample_shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> Denoiser:
    """The network a finished denoising run exported (``<run>/model.safetensors``), with the
    run's own process, prediction kind and architecture (from its ``config.yaml``)."""
    import yaml

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"teacher.run: {run_dir} is not a run directory (it has no config.yaml).")
    from ..config.schema import parse_config

    tcfg = parse_config(yaml.safe_load(config.read_text()), str(config))  # a generative or streaming run
    if not hasattr(tcfg, "student") or not hasattr(tcfg.student, "denoiser"):
        raise ConfigError(f"teacher.run: {run_dir} is not a run of the generative or streaming engine.")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    names = summary.get("exported") or ["model"]
    weights = run_dir / f"{names[0]}.safetensors"
    if not weights.is_file():
        raise ConfigError(f"teacher.run: {weights} does not exist; the run in {run_dir} has not finished (resume it first).")
    splits_shape = sample_shape
    if splits_shape is None:
        splits_shape = tuple(int(s) for s in load_splits(tcfg).input_shape)
    classes = num_classes if tcfg.data.conditional else None
    if tcfg.data.conditional and classes is None:
        classes = int(load_splits(tcfg).num_classes)
    net = _net(tcfg.student.denoiser.model_dump(), splits_shape, classes, f"teacher.run ({run_dir})")
    denoiser = Denoiser(net, build_process(dict(tcfg.process)), tcfg.student.prediction, splits_shape, classes)
    ckpt.load_weights(denoiser, weights, what=f"teacher from {run_dir}")
    return denoiser


def _copy_teacher(student: Denoiser, teacher: nn.Module | None, what: str = "student.init 'teacher'") -> None:
    base = getattr(teacher, "denoiser", teacher)  # a Guided wrapper holds the denoiser
    net = getattr(base, "net", None)
    if net is None:
        raise ConfigError(f"{what}: the teacher has no network to copy.")
    try:
        student.net.load_state_dict(net.state_dict())
    except RuntimeError as exc:
        raise ConfigError(f"{what}: the student's network does not match the source network ({str(exc).splitlines()[0]}); "
                          "give the student the same denoiser name and params.") from None
