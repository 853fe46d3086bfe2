"""The building blocks of config sections: strict models, bounded numbers, views, models.

Every component's config class derives from :class:`Strict` (a teacher's from
:class:`TeacherCfgBase`) and is made by a function in the component's own module (see
:mod:`distillery.registry`); this module imports only pydantic, so that those functions can
import it without importing the rest of the schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
Unit = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    """Base: unknown keys are errors; values are not silently coerced across types."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def tagged_union(classes: list[type]) -> Any:
    """``Union[classes]`` told apart by their ``kind`` field (each class listed once)."""
    unique = list(dict.fromkeys(classes))
    return Annotated[Union[tuple(unique)], Field(discriminator="kind")]  # noqa: UP007  (made at run time)


# -- views, models ---------------------------------------------------------------------------
ViewList = list[dict[str, Any]]
"""A list of view specs such as ``[{name: shift1d, max_shift: 5}, {name: noise, std: 0.1}]``."""


class ViewCfg(Strict):
    """Where a model's input comes from: a batch ``key`` passed through ``transforms``."""

    key: str = "x"
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
    "ModelCfg",
    "NonNegInt",
    "PosFloat",
    "PosInt",
    "Strict",
    "TeacherCfgBase",
    "Unit",
    "ViewCfg",
    "ViewList",
    "as_view",
    "needs_weights",
    "tagged_union",
    "view_fields",
]
