"""``mnist1d``: MNIST-1D (Greydanus 2020, arXiv:2011.14439), generated once and cached.

The samples come from the ``mnist1d`` package's generator; the raw arrays are cached as
``.npz`` files under :func:`~distillery.data.datasets.cache_dir` ``/ "mnist1d"``, named by
seed, sample count, package version and :data:`_MNIST1D_CACHE_VERSION`, so a cache hit needs
neither the (slow) ``mnist1d`` import nor a regeneration.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .datasets import ArrayDataset, DataSplits, _atomic_savez, _check_count, cache_dir

__all__ = ["mnist1d"]


@contextlib.contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for the block, restoring the caller's state afterwards."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        yield
    finally:
        np.random.set_state(state)


_MNIST1D_CACHE_VERSION = 1


def _mnist1d_modules() -> tuple[Any, Any]:
    """``(mnist1d.data, mnist1d.transform.transform)``; imported only to generate samples.

    Importing ``mnist1d`` takes about a second (it imports matplotlib and requests), so
    cache hits never do it.
    """
    try:
        import mnist1d.data as m1d_data
        from mnist1d.transform import transform
    except ImportError as e:  # pragma: no cover - mnist1d is a dependency
        raise DataError(
            f"The mnist1d dataset needs the 'mnist1d' package, which could not be imported ({e}). "
            "Install it with 'pip install mnist1d'."
        ) from e
    return m1d_data, transform


def _mnist1d_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        return "unknown"


def _mnist1d_args_dict(m1d_data: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(m1d_data.get_dataset_args()).items() if k != "url"}


def _generate_mnist1d_canonical(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The raw (unnormalised) samples of ``make_dataset``, in its order: class by class, then shuffled."""
    m1d_data, transform = _mnist1d_modules()
    args = m1d_data.get_dataset_args()
    templates = m1d_data.get_templates()
    n_classes = len(templates["y"])
    per_class = args.num_samples // n_classes
    xs, ys = [], []
    with _numpy_global_seed(seed):
        for label_ix in range(n_classes):
            for _ in range(per_class):
                x, _ = transform(templates["x"][label_ix], templates["t"], args)
                xs.append(x)
                ys.append(templates["y"][label_ix])
        perm = np.random.permutation(len(ys))
    return np.stack(xs)[perm], np.asarray(ys, dtype=np.int64)[perm], _mnist1d_args_dict(m1d_data)


def _generate_mnist1d_extra(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``n`` raw samples from the same generator; sample ``i`` is of digit ``i % 10``.

    Classes cycle, so every prefix is balanced and the first ``m`` samples do not depend on
    ``n``.
    """
    m1d_data, transform = _mnist1d_modules()
    args = m1d_data.get_dataset_args()
    templates = m1d_data.get_templates()
    n_classes = len(templates["y"])
    xs, ys = [], []
    with _numpy_global_seed(seed):
        for i in range(n):
            label_ix = i % n_classes
            x, _ = transform(templates["x"][label_ix], templates["t"], args)
            xs.append(x)
            ys.append(templates["y"][label_ix])
    x = np.stack(xs) if xs else np.zeros((0, args.final_seq_length))
    return x, np.asarray(ys, dtype=np.int64), _mnist1d_args_dict(m1d_data)


def _cached_raw(name: str, generate: Any, n: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Raw ``(x, y, generator args)`` from the cache file ``name``, generated and cached on a miss.

    The file also stores the generator's arguments (as JSON), so a hit needs neither the
    ``mnist1d`` import nor a regeneration. An unreadable or inconsistent file is regenerated
    with a warning. ``n`` is the expected number of samples, if known.
    """
    path = cache_dir() / "mnist1d" / name
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                x, y, args = f["x"], f["y"], json.loads(str(f["args"]))
            length = int(args["final_seq_length"])
            rows = int(args["num_samples"]) if n is None else n
            if x.shape != (rows, length) or y.shape != (rows,) or x.dtype != np.float64:
                raise ValueError(f"unexpected arrays x{x.shape} {x.dtype}, y{y.shape}")
            return x, y.astype(np.int64), args
        except Exception as e:  # noqa: BLE001 - any unreadable cache file is regenerated
            warnings.warn(
                f"Ignoring corrupt mnist1d cache file {path} ({type(e).__name__}: {e}); regenerating it.",
                RuntimeWarning,
                stacklevel=3,
            )
    x, y, args = generate()
    try:
        _atomic_savez(path, x=x, y=y, args=np.array(json.dumps(args, sort_keys=True)))
    except OSError as e:
        warnings.warn(f"Could not write the mnist1d cache file {path}: {e}", RuntimeWarning, stacklevel=3)
    return x, y, args


def _cache_name(kind: str, seed: int, n: int | None = None) -> str:
    count = "" if n is None else f"-n{n}"
    return f"mnist1d-{kind}-seed{seed}{count}-pkg{_mnist1d_version()}-v{_MNIST1D_CACHE_VERSION}.npz"


@DATASETS.register("mnist1d")
def mnist1d(unlabeled: int = 0, seed: int = 42, unlabeled_seed: int = 1) -> DataSplits:
    """MNIST-1D (Greydanus 2020): 4,000 train / 1,000 test length-40 signals, 10 classes.

    With the default ``seed=42`` the train and test sets equal the canonical split of the
    ``mnist1d`` package's ``make_dataset(get_dataset_args())``. ``unlabeled`` extra samples
    are drawn from the same generator with ``unlabeled_seed`` (digits cycling 0..9, so the
    classes are balanced; their true labels are kept in ``unlabeled.hidden_y``) and
    normalised with the canonical set's mean and standard deviation. Generated arrays are
    cached under :func:`cache_dir`; numpy's global RNG state is saved and restored.

    Args:
        unlabeled: how many extra unlabeled samples to generate (0: no unlabeled split).
        seed: the generator seed of the 5,000 labeled samples (42: the package's canonical
            split, as published).
        unlabeled_seed: the generator seed of the unlabeled samples; must differ from ``seed``.
    """
    seed = _check_count(seed, "seed")
    unlabeled_seed = _check_count(unlabeled_seed, "unlabeled_seed")
    unlabeled = _check_count(unlabeled, "unlabeled")
    if unlabeled and unlabeled_seed == seed:
        raise ConfigError(
            f"mnist1d: unlabeled_seed must differ from seed ({seed}), or the unlabeled samples "
            "would repeat labeled ones."
        )
    xs, ys, args = _cached_raw(_cache_name("canonical", seed), lambda: _generate_mnist1d_canonical(seed))
    # make_dataset normalises by the statistics of all its samples (train and test together)
    mean, std = xs.mean(), xs.std()
    xn = (xs - mean) / std
    split = int(len(ys) * args["train_split"])
    unl = None
    if unlabeled:
        xu, yu, _ = _cached_raw(
            _cache_name("extra", unlabeled_seed, unlabeled),
            lambda: _generate_mnist1d_extra(unlabeled, unlabeled_seed),
            n=unlabeled,
        )
        unl = ArrayDataset(((xu - mean) / std).astype(np.float32), None, hidden_y=yu)
    return DataSplits(
        train=ArrayDataset(xn[:split].astype(np.float32), ys[:split]),
        test=ArrayDataset(xn[split:].astype(np.float32), ys[split:]),
        unlabeled=unl,
        num_classes=10,
        input_shape=(int(args["final_seq_length"]),),
        name="mnist1d",
        class_names=tuple(str(i) for i in range(10)),
        info={"mean": float(mean), "std": float(std), "canonical": seed == 42},
    )
