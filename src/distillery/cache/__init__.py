"""Teacher-output caches: run a frozen teacher once, read its outputs by sample index.

::

    distillery cache build CONFIG [--out DIR] [--topk K] [--views V] [--overwrite]
    distillery run CONFIG          # with teacher: {kind: cached, path: DIR}

* :mod:`.store`: the on-disk format (sharded ``.npy`` files opened as memory maps, a
  ``manifest.json`` with shapes, dtypes, fingerprints and per-shard sha256), the reader and
  the errors (:class:`CacheError` and its subclasses);
* :mod:`.builder`: :func:`build_cache` (a model and a dataset);
* :mod:`.from_config`: :func:`build_cache_from_config` (a run config; what the CLI runs);
* :mod:`.checks`: what a run checks before training on a cache;
* :class:`~distillery.teachers.CachedTeacher` reads a cache during training, and the
  ``kd_topk`` objective (:mod:`distillery.objectives.topk`) uses a top-k cache.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "apply_seeded": "builder",
    "build_cache": "builder",
    "build_cache_from_config": "from_config",
    "sample_seed": "builder",
    "teacher_fingerprint": "builder",
    "teacher_input_spec": "builder",
    "CacheCorruptError": "store",
    "CacheError": "store",
    "CacheIndexError": "store",
    "CacheMismatchError": "store",
    "CacheNotFoundError": "store",
    "CacheReader": "store",
    "read_manifest": "store",
}


def __getattr__(name: str) -> Any:
    # lazy, so that building the CLI parser (which imports .cli) does not import torch
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
