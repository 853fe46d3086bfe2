"""The engine: the distillation step, the training loop, checkpoints and logs.

``from distillery.engine import Distiller, Term, Trainer`` works; the step and the loop are
imported on first use of these names, so that the engine's small parts (``distributed``,
``checkpoint``) can be imported by lower layers (the gradient-norm balancers of
:mod:`distillery.weighting`) without importing the step, which imports those layers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Distiller": ".distiller", "Term": ".distiller", "Trainer": ".trainer"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
