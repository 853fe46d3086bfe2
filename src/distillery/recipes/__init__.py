"""Recipes: one module per method or paper, each citing its source.

A recipe registers itself in :data:`distillery.registry.RECIPES` with a one-line summary and
points to a copyable YAML config in ``configs/``. The configs ship inside the package
(:mod:`distillery.config.bundled`), so an installed distillery runs them by name
(``distillery run kd_mnist1d``). Later issues add the methods of the seed papers here; the
foundational ones below are expressed entirely by config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config.bundled import CONFIG_DIR
from ..registry import RECIPES


@dataclass(frozen=True)
class Recipe:
    """A named method: its paper and the config that runs it."""

    name: str
    paper: str
    config: str
    summary: str

    def config_path(self) -> Path:
        """The bundled config file (inside the installed package, editable or not)."""
        return CONFIG_DIR / self.config


def register_recipe(recipe: Recipe) -> Recipe:
    RECIPES.register(recipe.name, f"{recipe.summary} [{recipe.paper}] (configs/{recipe.config})")(recipe)
    return recipe


def load_all() -> None:
    """Import every recipe module of this package (each registers its recipes)."""
    from ..registry import import_submodules

    import_submodules(__name__, __path__)


load_all()
