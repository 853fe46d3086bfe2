"""Imports the modules that register networks in :data:`.denoisers.DENOISERS` (its loader)."""

from . import diffusers_models, fusion, networks, restoration  # noqa: F401
