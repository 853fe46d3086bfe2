"""In-memory datasets: the containers, batching, splitting, caching and :func:`load_dataset`.

Every dataset distillery trains on fits in memory as two tensors: inputs ``x`` (float,
``[N, ...]``) and labels ``y`` (int64 ``[N]``, ``-1`` for unlabeled samples). An
:class:`ArrayDataset` serves them as batch dicts ``{"x", "y", "index"}`` and fetches a whole
batch with one indexing operation (:meth:`ArrayDataset.__getitems__`); use
:func:`collate_batch` as the ``DataLoader``'s ``collate_fn``::

    loader = DataLoader(ds, batch_size=128, shuffle=True, collate_fn=collate_batch)

A dataset factory (registered in :data:`~distillery.registry.DATASETS`) returns a
:class:`DataSplits`: train, test and optional unlabeled sets plus the number of classes and
the per-sample input shape. :func:`load_dataset` builds one by name from config parameters.
Factories are deterministic given their ``seed`` and never touch a global random state.

The built-in factories live in their own modules: ``digits`` (:mod:`.uci_digits`),
``mnist1d`` (:mod:`.mnist_1d`, with its cache), ``gaussian_mixture`` (:mod:`.mixtures`),
``image_folder`` and ``npz`` (:mod:`.files`); the papers' procedural sets in :mod:`.miniature`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from ..config.signatures import check_params
from ..engine.checkpoint import chmod_by_umask
from ..errors import ConfigError
from ..registry import DATASETS

__all__ = [
    "ArrayDataset",
    "DataSplits",
    "collate_batch",
    "load_dataset",
    "cache_dir",
    "stratified_split",
]


# --------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------


class ArrayDataset(Dataset):
    """Samples ``x`` (float ``[N, ...]``) with labels ``y`` (int64 ``[N]``, ``-1`` = unlabeled).

    ``ds[i]`` is ``{"x": x[i], "y": y[i], "index": i}``; ``ds.__getitems__(indices)`` (what
    ``DataLoader`` calls for a batch) is one batched dict ``{"x": [b, ...], "y": [b],
    "index": [b]}``, which :func:`collate_batch` passes through unchanged.

    Because ``__getitems__`` returns one dict rather than a list of samples, wrap an
    ``ArrayDataset`` in ``Subset`` (fine: it forwards ``__getitems__``) but not in torch's
    ``StackDataset``, which expects a list with one entry per index.

    ``hidden_y`` optionally holds the true labels of samples served as unlabeled (for
    evaluating pseudo-labels); it is never put into batches.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray | None = None,
        hidden_y: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        x = torch.as_tensor(x)
        if not torch.is_floating_point(x):
            x = x.float()
        elif x.dtype == torch.float64:
            x = x.float()
        if x.ndim < 1:
            raise ValueError("x must have a leading sample dimension")
        n = x.shape[0]
        if y is None:
            y = torch.full((n,), -1, dtype=torch.long)
        y = torch.as_tensor(y).long().reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"x has {n} samples but y has {y.shape[0]} labels")
        if hidden_y is not None:
            hidden_y = torch.as_tensor(hidden_y).long().reshape(-1)
            if hidden_y.shape[0] != n:
                raise ValueError(f"x has {n} samples but hidden_y has {hidden_y.shape[0]}")
        self.x = x.contiguous()
        self.y = y.contiguous()
        self.hidden_y = hidden_y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        return {"x": self.x[i], "y": self.y[i], "index": i}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {"x": self.x[idx], "y": self.y[idx], "index": idx}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    def num_labeled(self) -> int:
        return int((self.y >= 0).sum())

    def fingerprint(self) -> str:
        """A short hex digest of ``x`` and ``y`` (their shapes, dtypes and bytes)."""
        h = hashlib.sha256()
        for t in (self.x, self.y):
            a = t.detach().cpu().contiguous().numpy()
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(n={len(self)}, sample_shape={self.sample_shape}, "
            f"labeled={self.num_labeled()})"
        )


def collate_batch(batch: Any) -> Any:
    """``collate_fn`` for loaders over :class:`ArrayDataset` (and ``Subset`` s of one).

    torch's map-style fetcher hands the ``collate_fn`` whatever ``__getitems__`` returned,
    here an already batched dict, which is returned as is (``default_collate`` would fail on
    it). A list of per-sample dicts (from datasets without ``__getitems__``, such as a
    ``ConcatDataset``) is stacked field by field; anything else goes to ``default_collate``.
    """
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, Sequence) and batch and all(isinstance(b, Mapping) for b in batch):
        out: dict[str, Any] = {}
        for key in batch[0]:
            vals = [b[key] for b in batch]
            if isinstance(vals[0], torch.Tensor):
                out[key] = torch.stack(vals)
            elif isinstance(vals[0], (int, np.integer)):
                out[key] = torch.as_tensor(vals, dtype=torch.long)
            else:
                out[key] = default_collate(vals)
        return out
    return default_collate(batch)


@dataclass
class DataSplits:
    """The splits of one dataset: train, test and optional unlabeled samples (``y == -1``)."""

    train: ArrayDataset
    test: ArrayDataset
    unlabeled: ArrayDataset | None
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    class_names: tuple[str, ...] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def train_with_unlabeled(self) -> ArrayDataset:
        """Train and unlabeled samples in one dataset (labels ``-1`` for the unlabeled part).

        Indices ``0 .. len(train)-1`` are the train samples, in order, followed by the
        unlabeled ones. Without unlabeled samples this is ``train`` itself.
        """
        if self.unlabeled is None or len(self.unlabeled) == 0:
            return self.train
        u = self.unlabeled
        hidden = None
        if u.hidden_y is not None:
            hidden = torch.cat([self.train.y, u.hidden_y])
        return ArrayDataset(
            torch.cat([self.train.x, u.x]),
            torch.cat([self.train.y, torch.full_like(u.y, -1)]),
            hidden_y=hidden,
        )

    def summary(self) -> str:
        n_u = 0 if self.unlabeled is None else len(self.unlabeled)
        return (
            f"{self.name}: {len(self.train)} train, {len(self.test)} test, {n_u} unlabeled, "
            f"{self.num_classes} classes, input shape {self.input_shape}"
        )


def load_dataset(name: str, **params: Any) -> DataSplits:
    """Build the registered dataset ``name`` with ``params``.

    Unknown or missing parameters raise a :class:`ConfigError` naming them and listing the
    accepted ones.
    """
    factory = DATASETS.get(name)
    check_params(factory, params, f"dataset {name!r}")
    splits = factory(**params)
    if not isinstance(splits, DataSplits):
        raise TypeError(f"dataset factory {name!r} returned {type(splits).__name__}, not DataSplits")
    return splits


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _check_fraction(value: float, name: str = "test_fraction") -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}.") from None
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be in (0, 1), got {value}.")
    return value


def _check_count(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` with ``round(test_fraction * n_c)`` test samples per class.

    Every class keeps at least one train sample. Both index arrays are sorted, so samples
    keep their original order. Deterministic given ``seed``.
    """
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = min(int(round(test_fraction * len(idx))), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def cache_dir() -> Path:
    """Where generated data is cached: ``$DISTILLERY_CACHE`` or ``~/.cache/distillery``."""
    env = os.environ.get("DISTILLERY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distillery"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` next to ``path`` and move it into place, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        chmod_by_umask(Path(tmp))  # mkstemp's 0600 would hide a shared data cache from others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
