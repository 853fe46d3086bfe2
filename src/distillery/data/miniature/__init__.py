"""The procedural data sets of the method reproductions, one module per paper's miniature.

Each module registers its datasets and views under the names ``distillery list`` shows; the
general-purpose datasets and views live one level up in :mod:`distillery.data`.
"""

from ...registry import import_submodules as _import_submodules

_import_submodules(__name__, __path__)
