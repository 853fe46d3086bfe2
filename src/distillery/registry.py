"""Named registries of components, so that configs and ``distillery list`` can refer to them.

Each registry maps a short name (``kd``, ``ema``, ``mnist1d``) to a class or factory and a
one-line summary taken from the first paragraph of its docstring unless given explicitly.

A component that a run config can name also registers its **config section**: the pydantic
class of its keys and how to build it from them. The config schema assembles its unions
from these sections (``teacher: {kind: ...}``, a term's ``weight: {kind: ...}``,
``weighting: {gradnorm: ...}``), and the engine builds through :meth:`Registry.build`, so a
new teacher kind, schedule or balancer is one module and its registrations::

    @TEACHERS.register("frozen")
    class FrozenTeacher(Teacher): ...

    def frozen_config() -> type:          # called once, when the config schema is imported
        from ..config.base import ModelCfg, TeacherCfgBase
        class FrozenTeacherCfg(TeacherCfgBase): ...
        return FrozenTeacherCfg

    @TEACHERS.builder("frozen", config=frozen_config, member=True)
    def build_frozen(cfg, ctx, where): ...  # -> FrozenTeacher

The config class is made by a function, not at module level, so that ``import distillery``
(which imports every teacher and weighting) does not import pydantic; only loading a config
does. Sections are listed in the order they were registered (the order a package imports its
modules), which is the order error messages list the kinds in.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass
class Section:
    """How a registered component is written in a config and built from it.

    ``config()`` returns the pydantic class of the section (made on the first call, then
    kept); ``build(cfg, *args)`` builds the component from a validated section (default:
    the component called with the section's fields, ``kind`` left out); ``tags`` say where
    the section may appear (e.g. ``member=True``: inside a teacher bank)."""

    make_config: Callable[[], type]
    build: Callable[..., Any] | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    _config: type | None = None

    def config(self) -> type:
        if self._config is None:
            cls = self.make_config()
            # made inside a function, the class is named and found as if defined in its module
            # (reprs, pickle): distillery.teachers.frozen.FrozenTeacherCfg
            cls.__qualname__ = cls.__name__
            module = sys.modules[cls.__module__]
            if getattr(module, cls.__name__, cls) is not cls:
                raise ValueError(f"{cls.__module__}.{cls.__name__} names something else than the config class")
            setattr(module, cls.__name__, cls)
            self._config = cls
        return self._config


class Registry:
    """A mapping from names to components of one kind (teachers, objectives, ...)."""

    def __init__(self, kind: str, loader: str | None = None) -> None:
        self.kind = kind
        self._loader = loader
        self._entries: dict[str, tuple[Any, str]] = {}
        self._sections: dict[str, Section] = {}

    def _load(self) -> None:
        """Import the module that registers this registry's components, the first time the
        registry is read (``OBJECTIVES``: the objective modules are not imported by
        ``import distillery``)."""
        if self._loader is not None:
            import importlib

            loader, self._loader = self._loader, None
            importlib.import_module(loader)

    def register(self, name: str, summary: str | None = None, *, config: Callable[[], type] | None = None, **tags: Any) -> Callable[[Any], Any]:
        """Decorator: ``@OBJECTIVES.register("kd")`` above a class or function.

        With ``config`` (a function returning the section's pydantic class), a config can
        name the component and it is built by calling it with the section's fields."""

        def deco(obj: Any) -> Any:
            if name in self._entries and self._entries[name][0] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            line = summary or _first_line(obj.__doc__) or ""
            self._entries[name] = (obj, line)
            if config is not None:
                self._add_section(name, Section(config, None, tags))
            return obj

        return deco

    def builder(self, name: str, *, config: Callable[[], type], **tags: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``build(cfg, *args)`` builds the component registered as ``name`` from
        its config section, whose pydantic class ``config()`` returns."""

        def deco(build: Callable[..., Any]) -> Callable[..., Any]:
            if name not in self._entries:
                raise ValueError(f"{self.kind} {name!r}: register the component before its builder")
            self._add_section(name, Section(config, build, tags))
            return build

        return deco

    def _add_section(self, name: str, section: Section) -> None:
        if name in self._sections:
            raise ValueError(f"{self.kind} {name!r} has two config sections")
        self._sections[name] = section

    def get(self, name: str) -> Any:
        """Return the component registered as ``name``; a ConfigError lists the known names."""
        self._load()
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
        self._load()
        return self._entries[name][1]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, str]]:
        self._load()
        for name in sorted(self._entries):
            yield name, self._entries[name][1]

    # -- config sections ----------------------------------------------------------------------
    def sections(self, **tags: Any) -> list[tuple[str, type]]:
        """``(name, config class)`` of the sections whose tags match ``tags``, in
        registration order (a class shared by several names is listed under each)."""
        self._load()
        return [
            (name, section.config())
            for name, section in self._sections.items()
            if all(section.tags.get(k) == v for k, v in tags.items())
        ]

    def config_class(self, name: str) -> type:
        """The pydantic class of the section registered as ``name``."""
        self._load()
        if name not in self._sections:
            self.get(name)  # an unknown name: the usual error
            raise ConfigError(f"{self.kind} {name!r} cannot be written in a config.")
        return self._sections[name].config()

    def build(self, name: str, cfg: Any, *args: Any) -> Any:
        """The component registered as ``name``, built from its validated section ``cfg``
        (``args`` go to the section's builder)."""
        self.config_class(name)
        section = self._sections[name]
        if section.build is not None:
            return section.build(cfg, *args)
        fields = {k: getattr(cfg, k) for k in type(cfg).model_fields if k != "kind"}
        return self.get(name)(**fields)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __len__(self) -> int:
        self._load()
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
OBJECTIVES = Registry("objective", loader="distillery.objectives._all")
WEIGHTINGS = Registry("weighting")
DATASETS = Registry("dataset")
MODELS = Registry("model")
VIEWS = Registry("view")
RECIPES = Registry("recipe")
