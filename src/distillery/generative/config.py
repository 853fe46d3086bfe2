"""The config of a generative run (``engine: generative``), validated with pydantic.

Strict like the rest of distillery's schema (:class:`~distillery.config.base.Strict`: unknown
keys are errors, nothing is coerced); a failure is a :class:`~distillery.errors.ConfigError`
naming each bad key. :func:`distillery.config.parse_config` hands any raw config whose
``engine`` is ``generative`` to :func:`parse_generative_config`, so ``distillery run``,
``validate`` and ``--resume`` read both kinds of config through the same loader.

Example (``configs/flow_mixture2d_teacher.yaml``)::

    engine: generative
    name: flow_mixture2d_teacher
    data: {dataset: mixture2d, params: {layout: grid, modes: 25}, batch_size: 256}
    process: {kind: flow, shift: 1.0}
    student: {denoiser: {name: mlp2d, params: {hidden: [128, 128, 128]}}, prediction: velocity}
    method: {kind: denoising, params: {ema_decay: 0.999}}
    train: {steps: 3000, optimizer: {name: adam, lr: 1.0e-3}}
    eval: {steps: [1, 2, 4, 16], num_samples: 2000, metrics: [sliced_wasserstein, mode_coverage]}

The sample shape, class count and (for ``mixture2d``) the mixture come from the dataset;
``method.params`` are checked against the method's ``__init__`` when the run is built.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from ..config.base import BatchSize, PosFloat, PosInt, Strict
from ..config.devices import device_problem
from ..config.training import OptimizerCfg, SchedulerCfg
from ..engine.rundir import RESUMABLE_LOGGING
from ..errors import ConfigError

PREDICTIONS = Literal["eps", "x0", "v", "velocity"]

RESUMABLE_CHANGES = (
    "train.steps",
    *RESUMABLE_LOGGING,
    "eval",
    "name",
)
"""Keys ``--resume`` may change in a generative run: more (or fewer) steps, how the run is
logged, checkpointed, evaluated and placed (evaluation draws from its own seeded generator and
restores the global random state, so it never changes training)."""


class GenDataCfg(Strict):
    """A registered dataset (``mixture2d``, ``digit_images``, any DATASETS name), its params and
    the global batch per player update. ``conditional``: networks get the class labels."""

    dataset: str
    params: dict[str, Any] = {}
    batch_size: BatchSize = 256
    conditional: bool = False


class NetCfg(Strict):
    """A registered denoiser network (``DENOISERS``) and its keyword params."""

    name: str
    params: dict[str, Any] = {}


class GenTeacherCfg(Strict):
    """The frozen teacher: ``analytic_mixture`` (the exact score of the data's mixture),
    ``run`` (a run directory of the denoising method: its config and exported weights) or
    ``denoiser`` (a network and a ``.safetensors`` checkpoint). ``shard``: under torchrun,
    shard the frozen teacher's network over the processes with FSDP2 (``fully_shard``, the
    existing engine's ``distributed: fsdp``), each rank holding ``1 / world`` of its weights,
    all-gathered for each forward; ignored in a single process."""

    kind: Literal["analytic_mixture", "run", "denoiser"]
    run: str | None = None
    denoiser: NetCfg | None = None
    checkpoint: str | None = None
    prediction: PREDICTIONS = "eps"
    guidance: float | None = None
    shard: bool = False

    @model_validator(mode="after")
    def _complete(self) -> GenTeacherCfg:
        if self.kind == "run" and not self.run:
            raise ValueError("a teacher of kind 'run' needs teacher.run: the run directory of a trained denoising run")
        if self.kind == "denoiser" and (self.denoiser is None or not self.checkpoint):
            raise ValueError("a teacher of kind 'denoiser' needs teacher.denoiser (name, params) and teacher.checkpoint (.safetensors)")
        if self.kind != "run" and self.run:
            raise ValueError(f"teacher.run is only read for kind 'run', not {self.kind!r}")
        if self.shard and self.kind == "analytic_mixture":
            raise ValueError("teacher.shard: the analytic_mixture teacher is a closed form with no weights to shard; remove shard")
        return self


class GenStudentCfg(Strict):
    """The trained network: its denoiser, what it predicts and how it starts: ``random``, a copy
    of the ``teacher``'s weights, or (``run``) the weights exported by the earlier run in
    ``init_run`` (e.g. an ODE-pair initialisation before DMD)."""

    denoiser: NetCfg
    prediction: PREDICTIONS = "x0"
    init: Literal["random", "teacher", "run"] = "random"
    init_run: str | None = None

    @model_validator(mode="after")
    def _init_run(self) -> GenStudentCfg:
        if (self.init == "run") != (self.init_run is not None):
            raise ValueError("init 'run' needs init_run: the run directory whose exported weights start the student "
                             "(and init_run is only read with init 'run')")
        return self


class MethodCfg(Strict):
    """A registered generative method (``METHODS``) and its keyword params."""

    kind: str
    params: dict[str, Any] = {}

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        from .method import METHODS

        failed = load_methods()
        if kind not in METHODS:
            broken = "; ".join(f"{m}: {e}" for m, e in failed.items())
            try:
                METHODS.get(kind)
            except ConfigError as exc:
                raise ValueError(str(exc) + (f" (method modules that failed to import: {broken})" if broken else "")) from None
        return kind


class GenTrainCfg(Strict):
    """The step loop: ``steps`` training steps, each updating every player ``updates(player)``
    times. ``optimizer`` is every player's default; ``optimizers`` overrides keys per player
    (``{fake_score: {lr: 2.0e-4}}``)."""

    steps: Annotated[int, Field(gt=0, le=10**9)]
    optimizer: OptimizerCfg = OptimizerCfg(name="adam", lr=1e-4)
    optimizers: dict[str, dict[str, Any]] = {}
    scheduler: SchedulerCfg = SchedulerCfg()
    grad_clip: PosFloat | None = None
    log_every: PosInt = 50
    eval_every: PosInt | None = None
    """Steps between evaluations (``None``: only at the end)."""
    checkpoint_every: PosInt | None = None
    """Steps between checkpoints (``None``: only at the end)."""
    keep_checkpoints: PosInt = 2
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        problem = device_problem(device)
        if problem:
            raise ValueError(problem)
        return device

    @model_validator(mode="after")
    def _player_optimizers(self) -> GenTrainCfg:
        for player, patch in self.optimizers.items():
            merged = {**self.optimizer.model_dump(), **patch}
            try:
                OptimizerCfg.model_validate(merged)
            except ValidationError as exc:
                from ..config.messages import describe_validation_error

                raise ValueError(f"optimizers.{player}: {describe_validation_error(exc, OptimizerCfg)}") from None
        return self

    def optimizer_for(self, player: str) -> dict[str, Any]:
        """``player``'s optimizer as :func:`~distillery.engine.trainer.build_optimizer` reads it."""
        merged = OptimizerCfg.model_validate({**self.optimizer.model_dump(), **self.optimizers.get(player, {})})
        return merged.torch_kwargs()


METRIC_NAMES = ("sliced_wasserstein", "mmd", "mode_coverage", "digits_fd")


class GenEvalCfg(Strict):
    """Sampling ``num_samples`` at each step count of ``steps`` (seeded), scored by ``metrics``
    against the test split (``mode_coverage`` needs a mixture dataset)."""

    steps: list[PosInt] = [1, 2, 4]
    num_samples: PosInt = 2000
    solver: Literal["euler", "ddim", "heun"] = "euler"
    metrics: list[Literal["sliced_wasserstein", "mmd", "mode_coverage", "digits_fd"]] = ["sliced_wasserstein"]
    guidance: float | None = None
    seed: int = 1234


class GenerativeConfig(Strict):
    """A whole generative run."""

    engine: Literal["generative"]
    name: str | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    data: GenDataCfg
    process: dict[str, Any] = {"kind": "flow"}
    teacher: GenTeacherCfg | None = None
    student: GenStudentCfg
    method: MethodCfg
    train: GenTrainCfg
    eval: GenEvalCfg = GenEvalCfg()

    @field_validator("process")
    @classmethod
    def _process(cls, spec: dict[str, Any]) -> dict[str, Any]:
        from .processes import build_process

        try:
            build_process(spec)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return spec

    @model_validator(mode="after")
    def _teacher_init(self) -> GenerativeConfig:
        if self.student.init == "teacher" and (self.teacher is None or self.teacher.kind == "analytic_mixture"):
            raise ValueError("student.init 'teacher' copies a teacher network's weights; it needs a teacher of kind 'run' or 'denoiser'")
        return self


def load_methods() -> dict[str, str]:
    """Import every module of :mod:`distillery.generative.objectives` (the engine's methods) and
    of :mod:`distillery.recipes` (a paper's method registered by its recipe), so that
    :data:`~.method.METHODS` holds every method. Returns the modules that failed to import
    (``{module: error}``): one broken method module does not stop the others, and a method
    that is then unknown is reported with those errors."""
    import importlib
    import pkgutil

    failed: dict[str, str] = {}
    for name in ("distillery.generative.objectives", "distillery.recipes"):
        package = importlib.import_module(name)
        for info in pkgutil.iter_modules(package.__path__):
            try:
                importlib.import_module(f"{package.__name__}.{info.name}")
            except ImportError as exc:
                failed[info.name] = f"{type(exc).__name__}: {exc}"
    return failed


def parse_generative_config(raw: dict[str, Any], source: str = "config") -> GenerativeConfig:
    """Validate a raw dict; a failure is a ConfigError naming every bad key."""
    from ..config.messages import validate_config

    return validate_config(GenerativeConfig, raw, source)


__all__ = [
    "GenDataCfg",
    "GenEvalCfg",
    "GenStudentCfg",
    "GenTeacherCfg",
    "GenTrainCfg",
    "GenerativeConfig",
    "METRIC_NAMES",
    "MethodCfg",
    "NetCfg",
    "RESUMABLE_CHANGES",
    "load_methods",
    "parse_generative_config",
]
