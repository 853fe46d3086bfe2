"""The networks of the method reproductions, one module per paper's miniature.

Each module registers its models under the names ``distillery list`` shows; the reference
models (MLP, CNN, ResNet, ViT and the shared transformer block) live in
:mod:`distillery.models`.
"""

from ...registry import import_submodules as _import_submodules

_import_submodules(__name__, __path__)
