"""Run configs: YAML files validated with pydantic.

Every key is checked on load: an unknown key, a wrong type or a value out of range is a
:class:`~distillery.errors.ConfigError` that names the key (``train.optimizer.lr``) and what
is allowed. ``--set a.b=value`` overrides are applied before validation (values are parsed
as YAML, so ``--set train.epochs=3`` gives an int and ``--set teacher=null`` removes a key's
value); list items are addressed by index (``objectives.1.weight=0.5``).

A complete example (``configs/kd_mnist1d.yaml``)::

    seed: 0
    data: {dataset: mnist1d, batch_size: 128}
    student: {name: mlp, params: {hidden: [256, 256]}}
    teacher:
      kind: frozen
      model: {name: cnn1d}
      fit: {epochs: 30, optimizer: {name: adamw, lr: 0.003}}   # trained first if no checkpoint
    objectives:
      - {kind: ce}
      - {kind: kd, params: {temperature: 4.0}, weight: 1.0}
    train: {epochs: 40, optimizer: {name: adamw, lr: 0.001}, scheduler: {name: cosine}}
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ConfigError

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Unit = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    """Base: unknown keys are errors; values are not silently coerced across types."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# -- views, models ---------------------------------------------------------------------------
ViewList = list[dict[str, Any]]
"""A list of view specs such as ``[{name: shift1d, max_shift: 5}, {name: noise, std: 0.1}]``."""


class ViewCfg(Strict):
    """Where a model's input comes from: a batch ``key`` passed through ``transforms``."""

    key: str = "x"
    transforms: ViewList = []


def _view(value: Any) -> Any:
    """A view may be written as a field name (``x_full``) or a bare list of transforms."""
    if isinstance(value, str):
        return {"key": value}
    if isinstance(value, list):
        return {"transforms": value}
    return value


class ModelCfg(Strict):
    """A network: a registered name (``mlp``, ``cnn1d``, ...) or ``package.module:Class``."""

    name: str
    params: dict[str, Any] = {}
    checkpoint: str | None = None


# -- training --------------------------------------------------------------------------------
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

    _coerce_view = field_validator("view", mode="before")(lambda cls, v: _view(v))


# -- teachers --------------------------------------------------------------------------------
class _TeacherBase(Strict):
    view: ViewCfg | None = None

    _coerce_view = field_validator("view", mode="before")(lambda cls, v: _view(v))


class FrozenTeacherCfg(_TeacherBase):
    """A trained model; ``checkpoint`` (safetensors) or ``fit`` (train it first) is required."""

    kind: Literal["frozen"]
    model: ModelCfg
    fit: FitCfg | None = None
    until: str | None = None
    precompute: bool = False
    """Run the teacher once over the training set and look its signals up by sample index
    (exact when the teacher sees un-augmented inputs; much faster)."""

    @model_validator(mode="after")
    def _needs_weights(self) -> FrozenTeacherCfg:
        if self.model.checkpoint is None and self.fit is None:
            raise ValueError(
                "a frozen teacher needs trained weights: set teacher.model.checkpoint to a "
                ".safetensors file, or teacher.fit to train it first"
            )
        return self


class EMATeacherCfg(_TeacherBase):
    kind: Literal["ema"]
    momentum: Unit = 0.996
    final_momentum: Unit | None = 1.0
    buffers: Literal["copy", "average"] = "copy"


class SnapshotTeacherCfg(_TeacherBase):
    kind: Literal["snapshot"]
    every: PosInt | None = None


class VotingSnapshotTeacherCfg(_TeacherBase):
    """The ``size`` most recent snapshots of the student (one every ``every`` steps), voting (SD-DARTS)."""

    kind: Literal["voting_snapshots"]
    size: PosInt = 3
    every: PosInt | None = 1
    vote: Literal["soft", "majority"] = "soft"


class SelfEnsembleTeacherCfg(_TeacherBase):
    kind: Literal["self_ensemble"]
    transforms: list[ViewList] = Field(min_length=1)
    average: Literal["probs", "logits"] = "probs"
    model: ModelCfg | None = None


class PrivilegedTeacherCfg(_TeacherBase):
    kind: Literal["privileged"]
    view: ViewCfg  # required: what the teacher sees
    model: ModelCfg | None = None
    fit: FitCfg | None = None
    eval_mode: bool = True


MemberCfg = Annotated[
    Union[FrozenTeacherCfg, EMATeacherCfg, SnapshotTeacherCfg, SelfEnsembleTeacherCfg, PrivilegedTeacherCfg],
    Field(discriminator="kind"),
]


class BankTeacherCfg(_TeacherBase):
    kind: Literal["bank"]
    members: list[MemberCfg] = Field(min_length=1)
    weights: list[Annotated[float, Field(ge=0)]] | None = None
    combine: Literal["probs", "logits"] = "probs"

    @model_validator(mode="after")
    def _weights_match(self) -> BankTeacherCfg:
        if self.weights is not None and len(self.weights) != len(self.members):
            raise ValueError(f"bank has {len(self.members)} members but {len(self.weights)} weights")
        return self


class AnchoredTeacherCfg(_TeacherBase):
    """A target anchored to a base teacher (recursive meta-distillation): ``strength * p +
    (1 - strength) * q`` (arithmetic) or ``∝ p^strength q^(1 - strength)`` (geometric), where
    ``anchor`` gives ``p`` and ``current`` gives ``q`` (e.g. a snapshot of the student)."""

    kind: Literal["anchored"]
    anchor: MemberCfg
    current: MemberCfg
    strength: Unit = 0.5
    mode: Literal["arithmetic", "geometric"] = "arithmetic"


class CachedTeacherCfg(_TeacherBase):
    """Teacher outputs read by sample index from a cache built by ``distillery cache build``.

    ``view`` is the teacher's input, as for any teacher (it must be the one the cache was
    built with). ``source`` (a frozen teacher) is what ``distillery cache build`` runs, and
    lets a run check the cache's teacher against the config. ``topk``, ``temperature``,
    ``views``, ``dtype`` and ``shard_size`` are build options (CLI flags override them); a
    run reads them from the cache's manifest.
    """

    kind: Literal["cached"]
    path: str
    source: FrozenTeacherCfg | None = None
    verify: Literal["full", "size"] = "full"
    topk: PosInt | None = None
    temperature: PosFloat | None = None
    views: PosInt | None = None
    dtype: Literal["float16", "float32"] = "float16"
    shard_size: PosInt = 16384

    @model_validator(mode="after")
    def _plain_source(self) -> CachedTeacherCfg:
        if self.source is not None and (self.source.view is not None or self.source.precompute):
            raise ValueError(
                "teacher.source gives the cached teacher's model only: set the teacher's input as "
                "teacher.view (not teacher.source.view), and leave teacher.source.precompute out"
            )
        return self


class TTADenseTeacherCfg(_TeacherBase):
    """A frozen model whose dense (token) signals are averaged over whole-patch shifts and flips
    of the input, each warped back onto the patch grid (PH-Reg's denoised targets). ``patch`` is
    the model's patch size; the grid is the input size divided by it."""

    kind: Literal["tta_dense"]
    model: ModelCfg
    fit: FitCfg | None = None
    patch: PosInt | tuple[PosInt, PosInt]
    shifts: NonNegInt = 1
    flip: bool = True
    prefix_tokens: NonNegInt = 1

    @model_validator(mode="after")
    def _needs_weights(self) -> TTADenseTeacherCfg:
        if self.model.checkpoint is None and self.fit is None:
            raise ValueError(
                "a tta_dense teacher needs trained weights: set teacher.model.checkpoint to a "
                ".safetensors file, or teacher.fit to train it first"
            )
        return self


TeacherCfg = Annotated[
    Union[FrozenTeacherCfg, EMATeacherCfg, SnapshotTeacherCfg, VotingSnapshotTeacherCfg, SelfEnsembleTeacherCfg, PrivilegedTeacherCfg, BankTeacherCfg, AnchoredTeacherCfg, CachedTeacherCfg, TTADenseTeacherCfg],
    Field(discriminator="kind"),
]


# -- objectives and weighting ----------------------------------------------------------------
class ConstantCfg(Strict):
    kind: Literal["constant"]
    value: float = 1.0


class WarmupCfg(Strict):
    kind: Literal["linear_warmup", "cosine_warmup"]
    value: float = 1.0
    warmup_steps: NonNegInt = 0
    start: float = 0.0


class StepCfg(Strict):
    kind: Literal["step"]
    value: float = 1.0
    milestones: list[NonNegInt] = []
    gamma: float = 0.1


class CosineCfg(Strict):
    kind: Literal["cosine"]
    start: float
    end: float
    total_steps: PosInt


ScheduleCfg = Annotated[Union[ConstantCfg, WarmupCfg, StepCfg, CosineCfg], Field(discriminator="kind")]


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
            raise ValueError(str(_unknown(OBJECTIVES, kind)))
        return kind


class GradNormCfg(Strict):
    task: str
    ratios: dict[str, PosFloat]
    params: str = ""
    every: PosInt = 1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    min_weight: Annotated[float, Field(ge=0)] = 0.0
    max_weight: PosFloat = 1e4


class GamCfg(Strict):
    """RT-DETRv4's Gradient-guided Adaptive Modulation (:class:`distillery.weighting.gam.GradientGuidedModulation`)."""

    task: str
    term: str
    params: str
    rho: Annotated[float, Field(gt=0, lt=1)] = 0.11
    delta: Annotated[float, Field(ge=0, lt=1)] = 0.01
    initial: PosFloat = 1.0
    every: PosInt = 100
    default: PosFloat | None = None
    max_factor: Annotated[float, Field(gt=1)] = 10.0


class WeightingCfg(Strict):
    gradnorm: GradNormCfg | None = None
    gam: GamCfg | None = None

    @model_validator(mode="after")
    def _one_balancer(self) -> WeightingCfg:
        if self.gradnorm is not None and self.gam is not None:
            raise ValueError("choose one of weighting.gradnorm and weighting.gam (a distiller has one balancer)")
        return self


# -- data and the run ------------------------------------------------------------------------
class DataCfg(Strict):
    dataset: str = "mnist1d"
    params: dict[str, Any] = {}
    batch_size: PosInt = 128
    eval_batch_size: PosInt = 1024
    unlabeled: bool = False
    student_view: ViewCfg | None = None
    eval_view: ViewCfg | None = None
    num_workers: NonNegInt = 0
    drop_last: bool = False

    _coerce_views = field_validator("student_view", "eval_view", mode="before")(lambda cls, v: _view(v))


class RunConfig(Strict):
    """A whole run: data, student, teacher, objectives, weighting, training."""

    name: str | None = None
    seed: int = 0
    data: DataCfg = DataCfg()
    student: ModelCfg
    teacher: TeacherCfg | None = None
    objectives: list[TermCfg] = Field(min_length=1)
    weighting: WeightingCfg = WeightingCfg()
    train: TrainCfg = TrainCfg()

    @model_validator(mode="after")
    def _unique_names(self) -> RunConfig:
        names = [t.name or t.kind for t in self.objectives]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"objective names must be unique, but {dupes} appear more than once; give each a 'name'")
        return self


def _unknown(registry: Any, name: str) -> ConfigError:
    try:
        registry.get(name)
    except ConfigError as exc:
        return exc
    return ConfigError(name)


# -- loading ---------------------------------------------------------------------------------
def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw config dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (for example --set train.epochs=3).")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {text!r} as YAML: {exc}") from None
        parts = key.strip().split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: i + 1]))
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is a value, not a section.")
    return raw


def _child(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if isinstance(node, dict):
        if node.get(part) is None:
            node[part] = {}
        return node[part]
    raise ConfigError(f"--set: {where} is a value, not a section.")


def _index(node: list, part: str, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set {where}: {part!r} is not an index of a list of {len(node)} items.")
    return int(part)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys (data, student, teacher, objectives, train).")
    return raw


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a raw dict; a failure is a ConfigError naming every bad key."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply ``--set`` overrides and validate."""
    raw = apply_overrides(load_yaml(path), overrides or [])
    return parse_config(raw, str(path))


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (all defaults written out), loadable again."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    errors = exc.errors()
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        if loc and loc[-1] in ("float", "int") and isinstance(err.get("input"), dict) and len(errors) > 1:
            continue  # "weight: 0.5 | {kind: ...}": the mapping branch's error is the useful one
        # drop the union tags pydantic inserts (e.g. 'frozen' for the discriminated teacher)
        path = ".".join(_strip_tags(loc))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(_strip_tags(loc[:-1]), loc)
            msg = f"unknown key{'; allowed keys: ' + ', '.join(allowed) if allowed else ''}"
        elif "input" in err and err["type"] not in ("missing", "value_error") and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"{path or '<top>'}: {msg}")
    return f"Invalid config ({source}): " + "; ".join(lines) + "."


_TAGS = {"frozen", "ema", "snapshot", "voting_snapshots", "self_ensemble", "privileged", "bank", "anchored", "cached", "tta_dense", "constant", "linear_warmup",
         "cosine_warmup", "step", "cosine", "float", "int", "str", "bool", "list[dict[str,any]]",
         "function-after[_weights_match(), BankTeacherCfg]", "function-after[_needs_weights(), FrozenTeacherCfg]"}


def _strip_tags(loc: list[str]) -> list[str]:
    return [p for p in loc if p not in _TAGS and not p.startswith(("function-", "tagged-union", "union["))]


def _allowed_keys(path: list[str], raw_loc: list[str]) -> list[str]:
    """Field names of the config section at ``path`` (best effort, for error messages)."""
    model: Any = RunConfig
    tags = [p for p in raw_loc if p in _TAGS]
    for part in path:
        if part.isdigit():
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation, tags)
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}))


def _model_of(annotation: Any, tags: list[str]) -> Any:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg, tags)
        if found is not None:
            kind = getattr(found, "model_fields", {}).get("kind")
            if kind is not None and tags:
                options = typing.get_args(kind.annotation)
                if tags[0] not in options:
                    continue
            return found
    return None
