"""Run configs: the YAML schema (:mod:`.schema`, validated with pydantic) and the checking of
component parameters against their signatures (:mod:`.signatures`).

* :mod:`.base`: the building blocks of every section (strict models, bounded numbers, views,
  models, the base of teacher sections);
* :mod:`.training`: training, objective terms and their weights, fitting a teacher;
* :mod:`.schema`: the run config, assembled from the sections that teachers, schedules and
  balancers register next to their code (see :mod:`distillery.registry`), and loading.

``from distillery.config import load_config, RunConfig, ...`` works as before; the schema
module is imported on first use, so ``import distillery`` does not load pydantic or YAML.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    schema = importlib.import_module(".schema", __name__)
    try:
        return getattr(schema, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
