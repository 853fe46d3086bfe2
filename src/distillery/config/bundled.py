"""The run configs shipped inside the package, and ``distillery run NAME``'s lookup of them.

The YAML files live in ``src/distillery/configs/`` and are package data, so a wheel or
``pip install .`` carries them and an installed distillery finds them without a source tree.
The repository's top-level ``configs/`` is a symbolic link to that folder: one copy, which is
both what the package ships and what users read and copy.

A config is named by its file's stem (``kd_mnist1d`` for ``kd_mnist1d.yaml``). On the command
line a path that exists always wins; only an argument that is not an existing path is looked up
here.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from ..errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""The folder of the bundled configs (inside the installed package)."""

_SUFFIXES = (".yaml", ".yml")


def names() -> list[str]:
    """The names of the bundled configs, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.iterdir() if p.suffix in _SUFFIXES and p.is_file())


def path_of(name: str) -> Path:
    """The file of the bundled config ``name`` (``kd_mnist1d`` or ``kd_mnist1d.yaml``).

    An unknown name is a ConfigError listing the closest names.
    """
    stem = _stem(name)
    for suffix in _SUFFIXES:
        path = CONFIG_DIR / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise ConfigError(f"'{name}' is neither an existing config file nor the name of a bundled config.{_hint(stem)}")


def resolve(arg: str | Path) -> Path:
    """The config file that ``distillery run ARG`` means.

    An existing file wins. Otherwise a bare name (no folder in it) is a bundled config; a path
    with a folder that does not exist is an error that points to the bundled config of the same
    name when there is one (``configs/kd_mnist1d.yaml`` typed outside the repository).
    """
    path = Path(arg)
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"Config {arg} is a directory; give a YAML file or the name of a bundled config.{_hint(_stem(path.name))}")
    if len(path.parts) == 1:
        return path_of(str(arg))
    stem = _stem(path.name)
    if stem in names():
        raise ConfigError(
            f"Config file {arg} does not exist. The package bundles a config of that name: "
            f"run it with 'distillery run {stem}'."
        )
    raise ConfigError(f"Config file {arg} does not exist.{_hint(stem)}")


def _stem(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _hint(stem: str) -> str:
    known = names()
    close = difflib.get_close_matches(stem, known, n=5, cutoff=0.5)
    close += [n for n in known if stem and stem in n and n not in close][: 5 - len(close)]
    listing = " 'distillery list' shows every bundled config."
    if not close:
        return listing
    return f" Close matches among the bundled configs: {', '.join(close)}." + listing
