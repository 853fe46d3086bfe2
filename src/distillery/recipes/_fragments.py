"""Config fragments: a method stated once, as the pieces of a ``distillery run`` config.

Each recipe module has a function that returns its method's fragments (``objectives``,
``teacher``, ``weighting``, a ``data`` view or a ``train`` setting) with the method's
parameters as keyword arguments. The reproductions compose them into run configs, and the
recipe's Python builder turns the same ``objectives`` into :class:`~distillery.engine.Term`
objects with :func:`terms_from`, so a term is written in one place only.

Example::

    >>> from distillery.recipes.ssld import ssld_config
    >>> ssld_config(temperature=2.0)
    {'objectives': [{'kind': 'kd', 'params': {'temperature': 2.0}}]}
    >>> [t.name for t in terms_from(ssld_config()["objectives"])]
    ['kd']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..engine.distiller import Term
from ..errors import ConfigError

__all__ = ["ema_teacher", "frozen_teacher", "terms_from"]


def terms_from(objectives: Sequence[Mapping[str, Any]], where: str = "objectives") -> list[Term]:
    """The terms of ``objectives`` entries (the ``objectives`` list of a run config), validated
    and built exactly as a config file's are (:func:`distillery.engine.build.build_terms`)."""
    from pydantic import ValidationError

    from ..config import TermCfg, format_validation_error
    from ..engine.build import build_terms

    cfgs = []
    for i, entry in enumerate(objectives):
        try:
            cfgs.append(TermCfg.model_validate(dict(entry)))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{where}.{i}")) from None
    return build_terms(cfgs, where)


def ema_teacher(momentum: float, final_momentum: float | None = None, **extra: Any) -> dict[str, Any]:
    """A ``teacher`` section: the EMA of the student (``final_momentum=None``: constant momentum)."""
    return {"kind": "ema", "momentum": momentum, "final_momentum": final_momentum, **extra}


def frozen_teacher(model: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A ``teacher`` section: a frozen network (``model``: ``{"name", "params", "checkpoint"}``);
    ``extra``: ``until``, ``precompute``, ``view``."""
    return {"kind": "frozen", "model": dict(model), **extra}
