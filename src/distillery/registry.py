"""Named registries of components, so that configs and ``distillery list`` can refer to them.

Each registry maps a short name (``kd``, ``ema``, ``mnist1d``) to a class or factory and a
one-line summary taken from the first paragraph of its docstring unless given explicitly.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ConfigError


class Registry:
    """A mapping from names to components of one kind (teachers, objectives, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[Any, str]] = {}

    def register(self, name: str, summary: str | None = None) -> Callable[[Any], Any]:
        """Decorator: ``@OBJECTIVES.register("kd")`` above a class or function."""

        def deco(obj: Any) -> Any:
            if name in self._entries and self._entries[name][0] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            line = summary or _first_line(obj.__doc__) or ""
            self._entries[name] = (obj, line)
            return obj

        return deco

    def get(self, name: str) -> Any:
        """Return the component registered as ``name``; a ConfigError lists the known names."""
        if not isinstance(name, str):
            raise ConfigError(
                f"A {self.kind} is named by a string, got {name!r} ({type(name).__name__}). "
                f"Known {self.kind}s: {', '.join(sorted(self._entries))}."
            )
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: "
                f"{', '.join(sorted(self._entries))}."
            )
        return self._entries[name][0]

    def summary(self, name: str) -> str:
        return self._entries[name][1]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, str]]:
        for name in sorted(self._entries):
            yield name, self._entries[name][1]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _first_line(doc: str | None) -> str:
    """The docstring's first paragraph on one line, reST ``literals`` shown as `literals`."""
    if not doc:
        return ""
    lines = []
    for line in doc.strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines).replace("``", "`")


def import_submodules(package: str, path: list[str], skip: tuple[str, ...] = ()) -> None:
    """Import every module of a package so that the components they define register
    themselves (names starting with ``_`` and those in ``skip`` are left out). A new module
    in ``data/``, ``models/``, ``objectives/``, ``teachers/``, ``recipes/`` or
    ``reproduce/`` therefore needs no edit of its package's ``__init__``."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_") and info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")


TEACHERS = Registry("teacher")
OBJECTIVES = Registry("objective")
WEIGHTINGS = Registry("weighting")
DATASETS = Registry("dataset")
MODELS = Registry("model")
VIEWS = Registry("view")
RECIPES = Registry("recipe")


def load_all() -> None:
    """Import every package that registers components, so that every registry is complete
    (``distillery list``)."""
    from . import data, models, objectives, recipes, teachers, weighting  # noqa: F401
