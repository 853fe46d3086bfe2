"""Run configs: the YAML schema (:mod:`.schema`, validated with pydantic) and the checking of
component parameters against their signatures (:mod:`.signatures`).

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
