"""Data: in-memory datasets, the built-in dataset factories and batched views.

Importing this package registers every dataset and view defined in its modules: the built-in
datasets (``digits``, ``mnist1d``, ``gaussian_mixture``, ``image_folder``, ``npz``), the views
(``identity``, ``shift1d``, ``noise``, ``scale``, ``crop2d``, ``flip2d``, ``patch_mask``, ...)
and the miniature datasets of the method reproductions (``distillery list`` shows them all).

Modules: :mod:`.datasets` (``ArrayDataset``, ``DataSplits``, batching, splitting, the cache
directory, ``load_dataset``), one module per built-in factory (:mod:`.uci_digits`,
:mod:`.mnist_1d`, :mod:`.mixtures`, :mod:`.files`), :mod:`.views`, and :mod:`.miniature` for
the papers' procedural sets. (The factory modules are not named after their functions, so that
``distillery.data.digits`` stays the function.)
"""

from __future__ import annotations

from . import datasets, views
from .datasets import ArrayDataset, DataSplits, cache_dir, collate_batch, load_dataset, stratified_split
from .files import image_folder, npz
from .mixtures import gaussian_mixture
from .mnist_1d import mnist1d
from .uci_digits import digits
from .views import (
    Compose,
    Crop2d,
    Flip2d,
    Identity,
    Noise,
    PatchMask,
    Scale,
    Shift1d,
    View,
    build_view,
)

__all__ = [
    "datasets",
    "paired",
    "views",
    "ArrayDataset",
    "DataSplits",
    "cache_dir",
    "collate_batch",
    "digits",
    "gaussian_mixture",
    "image_folder",
    "load_dataset",
    "mnist1d",
    "npz",
    "stratified_split",
    "Compose",
    "Crop2d",
    "Flip2d",
    "Identity",
    "Noise",
    "PatchMask",
    "Scale",
    "Shift1d",
    "View",
    "build_view",
]

from ..registry import import_submodules as _import_submodules  # noqa: E402

_import_submodules(__name__, __path__)

# the generative engine's datasets (mixture2d, digit_images) live with that engine
from ..generative import data as _generative_data  # noqa: E402, F401
