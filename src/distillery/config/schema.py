"""Run configs: YAML files validated with pydantic.

Every key is checked on load: an unknown key, a wrong type or a value out of range is a
:class:`~distillery.errors.ConfigError` that names the key (``train.optimizer.lr``) and what
is allowed. Nothing is coerced (see :class:`~distillery.config.base.Strict`): ``"1e-3"`` in
quotes is a string, not a number, and ``true`` is not an int. ``--set a.b=value`` overrides
are applied before validation (values are parsed as YAML, so ``--set train.epochs=3`` gives
an int and ``--set teacher=null`` removes a key's value); list items are addressed by index
(``objectives.1.weight=0.5``). Files and ``--set`` values read numbers as YAML 1.2 does:
``1e-3`` (no dot) is a number, where PyYAML's YAML 1.1 would read the string ``"1e-3"``.

The sections that name a component by its kind are not written here: each teacher kind,
schedule and balancer defines its config class next to its code and registers it (see
:mod:`distillery.registry`); this module assembles ``teacher`` (one section per teacher kind),
the members of banks, and ``weighting`` (one key per balancer) from those registrations.
The building blocks are in :mod:`.base`, training and terms in :mod:`.training`.

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
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from .. import teachers  # noqa: F401  (importing registers the teacher kinds and their sections)
from ..errors import ConfigError
from ..registry import TEACHERS, WEIGHTINGS
from . import messages as _messages
from .base import (  # noqa: F401  (re-exported: ``from distillery.config import ViewCfg``)
    BatchSize,
    ModelCfg,
    NonNegInt,
    PosFloat,
    PosInt,
    Strict,
    TeacherCfgBase,
    Unit,
    ViewCfg,
    ViewList,
    tagged_union,
    view_fields,
)
from .training import (  # noqa: F401  (re-exported)
    FitCfg,
    FitDataCfg,
    MixCfg,
    OptimizerCfg,
    ScheduleCfg,
    SchedulerCfg,
    TermCfg,
    TrainCfg,
    check_some_weight,
)

# -- the sections components register --------------------------------------------------------
TeacherCfg = tagged_union([cls for _, cls in TEACHERS.sections()])
"""``teacher: {kind: ..., ...}``: one section per registered teacher kind (see :mod:`distillery.teachers`)."""

MemberCfg = tagged_union([cls for _, cls in TEACHERS.sections(member=True)])
"""A member of a teacher bank or an anchored teacher: the kinds registered with ``member=True``."""


def _one_balancer(self: Any) -> Any:
    chosen = [name for name, value in self if value is not None]
    if len(chosen) > 1:
        names = [f"weighting.{name}" for name, _ in self]
        raise ValueError(f"choose one of {', '.join(names[:-1])} and {names[-1]} (a distiller has one balancer)")
    return self


_BALANCERS = WEIGHTINGS.sections(role="balancer")
WeightingCfg = create_model(
    "WeightingCfg",
    __base__=Strict,
    __doc__="How terms are balanced during training: at most one balancer (see :mod:`distillery.weighting`).",
    __validators__={"_one_balancer": model_validator(mode="after")(_one_balancer)},
    **{name: (cls | None, None) for name, cls in _BALANCERS},
)


# -- data and the run ------------------------------------------------------------------------
MAX_WORKERS = 1024
"""The most data-loading processes a config may start."""


class DataCfg(Strict):
    dataset: str = "mnist1d"
    params: dict[str, Any] = {}
    batch_size: BatchSize = 128
    eval_batch_size: BatchSize = 1024
    unlabeled: bool = False
    student_view: ViewCfg | None = None
    eval_view: ViewCfg | None = None
    num_workers: Annotated[int, Field(ge=0, le=MAX_WORKERS)] = 0
    drop_last: bool = False

    _coerce_views = view_fields("student_view", "eval_view")


class RunConfig(Strict):
    """A whole run: data, student, teacher, objectives, weighting, training."""

    name: str | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] = 0
    """Any integer torch accepts as a seed."""
    data: DataCfg = DataCfg()
    student: ModelCfg
    teacher: TeacherCfg | None = None
    objectives: list[TermCfg] = Field(min_length=1)
    weighting: WeightingCfg = WeightingCfg()
    train: TrainCfg = TrainCfg()

    @field_validator("objectives")
    @classmethod
    def _trains_something(cls, objectives: list[TermCfg]) -> list[TermCfg]:
        return check_some_weight(objectives)

    @model_validator(mode="after")
    def _unique_names(self) -> RunConfig:
        names = [t.name or t.kind for t in self.objectives]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"objective names must be unique, but {dupes} appear more than once; give each a 'name'")
        return self


def __getattr__(name: str) -> Any:
    """A registered section's class by its name (``FrozenTeacherCfg``, ``GamCfg``, ...)."""
    for registry in (TEACHERS, WEIGHTINGS):
        for _, cls in registry.sections():
            if cls.__name__ == name:
                return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- loading ---------------------------------------------------------------------------------
def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw config dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (for example --set train.epochs=3).")
        key, text = item.split("=", 1)
        try:
            value = read_yaml(text)
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


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads exponent numbers without a dot (``1e-3``,
    ``5E+4``, ``2.5e3``) as floats, as YAML 1.2 and every other YAML parser do; PyYAML's
    YAML 1.1 rules read them as strings, which the strict schema would refuse."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    """Parse YAML text with :class:`YamlLoader` (safe: plain data only)."""
    return yaml.load(text, Loader=YamlLoader)  # a SafeLoader: plain data only


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        raw = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys (data, student, teacher, objectives, train).")
    return raw


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a raw dict; a failure is a ConfigError naming every bad key. A config with
    ``engine: generative`` is a :class:`~distillery.generative.config.GenerativeConfig`."""
    if isinstance(raw, dict) and raw.get("engine") == "generative":
        from ..generative.config import parse_generative_config

        return parse_generative_config(raw, source)  # type: ignore[return-value]
    if isinstance(raw, dict) and raw.get("engine") == "streaming":
        from ..streaming.config import parse_streaming_config

        return parse_streaming_config(raw, source)  # type: ignore[return-value]
    if isinstance(raw, dict) and raw.get("engine") == "sequence":
        from ..sequence.config import parse_sequence_config

        return parse_sequence_config(raw, source)  # type: ignore[return-value]
    return validate_config(RunConfig, raw, source)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply ``--set`` overrides and validate."""
    raw = apply_overrides(load_yaml(path), overrides or [])
    return parse_config(raw, str(path))


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (all defaults written out), loadable again."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def validate_config(root: type[Any], raw: Any, source: str = "config") -> Any:
    """``root.model_validate(raw)`` with distillery's error message (:mod:`.messages`)."""
    return _messages.validate_config(root, raw, source, union_tags=root is RunConfig)


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel] | None = None) -> str:
    """``Invalid config (source): key.path: message; ...`` for a failed validation of ``root``
    (default :class:`RunConfig`; the engines pass their own root config class)."""
    return _messages.format_validation_error(exc, source, root or RunConfig, union_tags=root is None or root is RunConfig)


def describe_validation_error(exc: ValidationError, root: type[BaseModel] | None = None) -> str:
    """Every error of ``exc`` as ``key.path: message`` (see :mod:`.messages`)."""
    return _messages.describe_validation_error(exc, root or RunConfig, union_tags=root is None or root is RunConfig)
