"""The building blocks of config sections: strict models, bounded numbers, views, models.

Every component's config class derives from :class:`Strict` (a teacher's from
:class:`TeacherCfgBase`) and is made by a function in the component's own module (see
:mod:`distillery.registry`); this module imports only pydantic, so that those functions can
import it without importing the rest of the schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Unit = Annotated[float, Field(ge=0, le=1)]
"""A number in [0, 1] (a probability, a mixing coefficient)."""
UnitOpen = Annotated[float, Field(ge=0, lt=1)]
"""A number in [0, 1): a decay or momentum, where 1 would freeze what it averages."""

MAX_BATCH = 2**20
"""The largest batch a config may ask for (about a million samples)."""


def _batch(value: int) -> int:
    if value > MAX_BATCH:
        raise ValueError(
            f"at most {MAX_BATCH} (2**20) samples per batch, got {value}; a batch that large cannot "
            "be held in memory (to train on more samples per step, use train.grad_accum)"
        )
    return value


BatchSize = Annotated[int, Field(gt=0), AfterValidator(_batch)]
"""A number of samples per batch: 1 to 2**20."""


def _weight(value: float) -> float:
    if value < 0:
        raise ValueError(
            f"a term's weight must be >= 0, got {value!r}: a negative weight would maximise the term "
            "instead of minimising it (use 0 to switch a term off)"
        )
    return value


Weight = Annotated[float, AfterValidator(_weight)]
"""A loss term's weight (or a schedule's value): a finite number >= 0."""


def pair(item: Any) -> Any:
    """``tuple[item, item]`` that a YAML list (or a tuple) fills; the items stay strict."""
    return Annotated[tuple[item, item], Field(strict=False)]


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors and nothing is coerced.

    Strict mode: a string or a boolean never becomes a number (``lr: "1e-3"`` and
    ``epochs: true`` are refused), a number never becomes a string or a boolean, and a float
    never becomes an int (``epochs: 2.0``); an int fills a float field, and a list fills a
    tuple field declared with :func:`pair`. NaN and infinite numbers are refused in every
    float field (``allow_inf_nan=False``)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)


def tagged_union(classes: list[type]) -> Any:
    """``Union[classes]`` told apart by their ``kind`` field (each class listed once)."""
    unique = list(dict.fromkeys(classes))
    return Annotated[Union[tuple(unique)], Field(discriminator="kind")]  # noqa: UP007  (made at run time)


# -- views, models ---------------------------------------------------------------------------
ViewList = list[dict[str, Any]]
"""A list of view specs such as ``[{name: shift1d, max_shift: 5}, {name: noise, std: 0.1}]``."""


class ViewCfg(Strict):
    """Where a model's input comes from: a batch ``key`` passed through ``transforms``."""

    key: Annotated[str, Field(min_length=1)] = "x"
    transforms: ViewList = []


def as_view(value: Any) -> Any:
    """A view may be written as a field name (``x_full``) or a bare list of transforms."""
    if isinstance(value, str):
        return {"key": value}
    if isinstance(value, list):
        return {"transforms": value}
    return value


def view_fields(*names: str) -> Any:
    """A validator that reads the fields ``names`` as views (see :func:`as_view`)."""
    return field_validator(*names, mode="before")(lambda cls, v: as_view(v))


class ModelCfg(Strict):
    """A network: a registered name (``mlp``, ``cnn1d``, ...) or ``package.module:Class``."""

    name: str
    params: dict[str, Any] = {}
    checkpoint: str | None = None


# -- teachers --------------------------------------------------------------------------------
class TeacherCfgBase(Strict):
    """Base of the ``teacher`` sections: every teacher may read its own ``view``."""

    view: ViewCfg | None = None

    _coerce_view = view_fields("view")

    def preflight(self) -> None:
        """Checks that need more than the config (files on disk); a run calls this before it
        makes its run directory, so that a missing input fails without leaving one."""


def needs_weights(kind: str) -> Any:
    """A validator: a teacher of ``kind`` built from ``model`` needs ``model.checkpoint`` or ``fit``."""

    def check(self: Any) -> Any:
        if self.model.checkpoint is None and self.fit is None:
            raise ValueError(
                f"a {kind} teacher needs trained weights: set teacher.model.checkpoint to a "
                ".safetensors file, or teacher.fit to train it first"
            )
        return self

    check.__name__ = "_needs_weights"
    return model_validator(mode="after")(check)


__all__ = [
    "MAX_BATCH",
    "BatchSize",
    "ModelCfg",
    "NonNegFloat",
    "NonNegInt",
    "PosFloat",
    "PosInt",
    "Strict",
    "TeacherCfgBase",
    "Unit",
    "UnitOpen",
    "ViewCfg",
    "ViewList",
    "Weight",
    "as_view",
    "needs_weights",
    "pair",
    "tagged_union",
    "view_fields",
]
