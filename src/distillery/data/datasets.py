"""In-memory datasets and the built-in dataset factories.

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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from ..config.signatures import check_params
from ..errors import ConfigError, DataError
from ..registry import DATASETS

__all__ = [
    "ArrayDataset",
    "DataSplits",
    "collate_batch",
    "load_dataset",
    "cache_dir",
    "stratified_split",
    "digits",
    "mnist1d",
    "gaussian_mixture",
    "image_folder",
    "npz",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for the block, restoring the caller's state afterwards."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        yield
    finally:
        np.random.set_state(state)


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


@DATASETS.register("digits")
def digits(test_fraction: float = 0.25, seed: int = 0) -> DataSplits:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), as [1, 8, 8] images.

    Pixels are scaled to [0, 1] and then standardised with the train set's mean and
    standard deviation (one scalar each). The split is stratified by class.
    """
    test_fraction = _check_fraction(test_fraction)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float64)[:, None, :, :] / 16.0
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, test_fraction, seed)
    mean = float(x[tr].mean())
    std = float(x[tr].std())
    x = (x - mean) / std
    return DataSplits(
        train=ArrayDataset(x[tr].astype(np.float32), y[tr]),
        test=ArrayDataset(x[te].astype(np.float32), y[te]),
        unlabeled=None,
        num_classes=10,
        input_shape=(1, 8, 8),
        name="digits",
        class_names=tuple(str(i) for i in range(10)),
        info={"mean": mean, "std": std},
    )


# --------------------------------------------------------------------------------------
# MNIST-1D
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# Gaussian mixture
# --------------------------------------------------------------------------------------


@DATASETS.register("gaussian_mixture")
def gaussian_mixture(
    num_classes: int = 4,
    dim: int = 2,
    n_train: int = 1000,
    n_test: int = 1000,
    n_unlabeled: int = 0,
    separation: float = 3.0,
    noise: float = 1.0,
    seed: int = 0,
) -> DataSplits:
    """Synthetic Gaussian mixture: one isotropic Gaussian per class, in ``dim`` dimensions.

    Class means are drawn from ``N(0, separation^2 I)``; a sample is its class mean plus
    ``N(0, noise^2 I)``. Classes are balanced (sample ``i`` of a split before shuffling is
    class ``i % num_classes``). The means and each split use their own random stream derived
    from ``seed``, so changing one split's size does not change the others.
    """
    num_classes = _check_count(num_classes, "num_classes", 2)
    dim = _check_count(dim, "dim", 1)
    n_train = _check_count(n_train, "n_train", 1)
    n_test = _check_count(n_test, "n_test", 1)
    n_unlabeled = _check_count(n_unlabeled, "n_unlabeled", 0)
    seed = _check_count(seed, "seed")
    if separation < 0 or noise < 0:
        raise ConfigError(f"separation and noise must be >= 0, got {separation} and {noise}.")
    means = np.random.default_rng([seed, 0]).normal(0.0, separation, size=(num_classes, dim))

    def draw(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, stream])
        y = rng.permutation(np.arange(n) % num_classes)
        x = means[y] + rng.normal(0.0, noise, size=(n, dim))
        return x.astype(np.float32), y.astype(np.int64)

    xtr, ytr = draw(n_train, 1)
    xte, yte = draw(n_test, 2)
    unl = None
    if n_unlabeled:
        xu, yu = draw(n_unlabeled, 3)
        unl = ArrayDataset(xu, None, hidden_y=yu)
    return DataSplits(
        train=ArrayDataset(xtr, ytr),
        test=ArrayDataset(xte, yte),
        unlabeled=unl,
        num_classes=num_classes,
        input_shape=(dim,),
        name="gaussian_mixture",
        info={"means": means.tolist()},
    )


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------


def _size_hw(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0:
        return int(size), int(size)
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return int(size[0]), int(size[1])
    raise ConfigError(f"size must be a positive int or a pair (height, width), got {size!r}.")


def _scan_class_folders(root: Path, role: str) -> dict[str, list[Path]]:
    if not root.exists():
        raise DataError(f"The {role} {root} does not exist; expected a folder with one subfolder of images per class.")
    if not root.is_dir():
        raise DataError(f"The {role} {root} is not a directory; expected a folder with one subfolder of images per class.")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"The {role} {root} has no class subfolders; expected one subfolder per "
            "class (e.g. cat/, dog/) holding that class's PNG or JPEG images."
        )
    out: dict[str, list[Path]] = {}
    for c in classes:
        files = sorted(
            p for p in c.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise DataError(
                f"The class folder {c} has no images; expected PNG or JPEG files "
                f"({', '.join(IMAGE_SUFFIXES)})."
            )
        out[c.name] = files
    return out


def _read_images(
    files: list[Path], hw: tuple[int, int] | None, grayscale: bool, ref: tuple[Path, tuple[int, int]] | None
) -> tuple[np.ndarray, tuple[Path, tuple[int, int]] | None]:
    from PIL import Image, UnidentifiedImageError

    mode = "L" if grayscale else "RGB"
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert(mode)
                if hw is not None and (img.height, img.width) != hw:
                    img = img.resize((hw[1], hw[0]), Image.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"Could not read the image file {f} ({type(e).__name__}: {e}).") from e
        shape = (a.shape[0], a.shape[1])
        if ref is None:
            ref = (f, shape)
        elif shape != ref[1]:
            raise DataError(
                f"Images differ in size: {ref[0]} is {ref[1][0]}x{ref[1][1]} (height x width) but "
                f"{f} is {shape[0]}x{shape[1]}. Pass size=... to resize all images to one size."
            )
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(arrays).astype(np.float32) / 255.0, ref


@DATASETS.register("image_folder")
def image_folder(
    path: str | os.PathLike,
    test_path: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    size: int | tuple[int, int] | None = None,
    grayscale: bool = False,
    seed: int = 0,
) -> DataSplits:
    """Images in one subfolder per class (PNG/JPEG), as [C, H, W] tensors in [0, 1].

    Classes are the subfolder names, sorted; label ``k`` is the ``k``-th. Images are
    converted to RGB (``C = 3``) or, with ``grayscale``, to one channel, and resized to
    ``size`` (an int or ``(height, width)``) if given; otherwise all must share one size.
    Without ``test_path`` a stratified ``test_fraction`` of the images is held out; a
    ``test_path`` folder may only use class names found under ``path``.
    """
    hw = _size_hw(size)
    root = Path(path).expanduser()
    train_files = _scan_class_folders(root, "image folder" if test_path is None else "train image folder")
    classes = tuple(train_files)
    index = {c: k for k, c in enumerate(classes)}

    def gather(by_class: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
        files, labels = [], []
        for c, fs in by_class.items():
            files += fs
            labels += [index[c]] * len(fs)
        return files, np.asarray(labels, dtype=np.int64)

    files, y = gather(train_files)
    x, ref = _read_images(files, hw, grayscale, None)
    if test_path is None:
        tr, te = stratified_split(y, _check_fraction(test_fraction), seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    else:
        troot = Path(test_path).expanduser()
        test_files = _scan_class_folders(troot, "test image folder")
        unknown = [c for c in test_files if c not in index]
        if unknown:
            raise DataError(
                f"The test image folder {troot} has class folder(s) {', '.join(unknown)} that the "
                f"train folder {root} lacks; train classes: {', '.join(classes)}."
            )
        tfiles, yte = gather(test_files)
        xte, _ = _read_images(tfiles, hw, grayscale, ref)
        xtr, ytr = x, y
    return DataSplits(
        train=ArrayDataset(xtr, ytr),
        test=ArrayDataset(xte, yte),
        unlabeled=None,
        num_classes=len(classes),
        input_shape=tuple(int(s) for s in x.shape[1:]),
        name=f"image_folder:{root.name}",
        class_names=classes,
    )


# --------------------------------------------------------------------------------------
# .npz files
# --------------------------------------------------------------------------------------


def _read_npz(path: Path, role: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DataError(f"The {role}data file {path} does not exist; expected an .npz with arrays 'x' and 'y'.")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise DataError(f"The {role}data file {path} holds a single array, not an .npz archive with arrays 'x' and 'y'.")
            arrays = {k: f[k] for k in f.files}
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is a DataError
        raise DataError(
            f"Could not read the {role}data file {path} as an .npz archive with arrays 'x' and 'y' "
            f"({type(e).__name__}: {e})."
        ) from e
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"The {role}data file {path} lacks the array(s) {', '.join(repr(m) for m in missing)}; "
            f"it has {', '.join(repr(k) for k in arrays) or 'no arrays'}. Expected 'x' (samples) and "
            "'y' (integer labels, -1 for unlabeled)."
        )
    return arrays


def _check_xy(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype.kind not in "fiub":
        raise DataError(f"{where}: 'x' must be numeric, got dtype {x.dtype}.")
    if x.ndim < 2:
        raise DataError(f"{where}: 'x' must have shape [N, ...features], got shape {x.shape}.")
    if y.ndim != 1:
        raise DataError(f"{where}: 'y' must be one-dimensional [N], got shape {y.shape}.")
    if len(x) != len(y):
        raise DataError(f"{where}: 'x' has {len(x)} samples but 'y' has {len(y)} labels.")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DataError(
            f"{where}: labels 'y' must be integers (class indices, -1 for unlabeled), got dtype {y.dtype}"
            + (" with non-integer values." if y.dtype.kind == "f" else ".")
        )
    y = y.astype(np.int64)
    if len(y) and y.min() < -1:
        raise DataError(f"{where}: labels must be class indices >= 0 or -1 (unlabeled), found {int(y.min())}.")
    return x.astype(np.float32), y


@DATASETS.register("npz")
def npz(
    path: str | os.PathLike,
    test_path: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DataSplits:
    """Arrays ``x`` [N, ...] and ``y`` [N] (int labels, -1 = unlabeled) from an ``.npz`` file.

    Samples labeled ``-1`` form the unlabeled split. The test set is, in order of
    preference: the ``x``/``y`` arrays of ``test_path``, arrays ``x_test``/``y_test`` in the
    same file, or a stratified ``test_fraction`` of the labeled samples.
    """
    p = Path(path).expanduser()
    arrays = _read_npz(p, "")
    x, y = _check_xy(arrays["x"], arrays["y"], str(p))
    lab = y >= 0
    if not lab.any():
        raise DataError(f"{p}: every label is -1; at least some samples must be labeled.")
    xl, yl = x[lab], y[lab]
    if test_path is not None:
        tp = Path(test_path).expanduser()
        t = _read_npz(tp, "test ")
        xte, yte = _check_xy(t["x"], t["y"], str(tp))
        xtr, ytr = xl, yl
    elif "x_test" in arrays and "y_test" in arrays:
        xte, yte = _check_xy(arrays["x_test"], arrays["y_test"], f"{p} (x_test/y_test)")
        xtr, ytr = xl, yl
    else:
        tr, te = stratified_split(yl, _check_fraction(test_fraction), seed)
        xtr, ytr, xte, yte = xl[tr], yl[tr], xl[te], yl[te]
    if xte.shape[1:] != xtr.shape[1:]:
        raise DataError(f"{p}: test samples have shape {xte.shape[1:]} but train samples {xtr.shape[1:]}.")
    if len(yte) and yte.min() < 0:
        raise DataError(f"{p}: test labels must be >= 0; unlabeled (-1) samples belong in the train file.")
    unl = ArrayDataset(x[~lab], None) if (~lab).any() else None
    num_classes = int(max(ytr.max(), yte.max() if len(yte) else 0)) + 1
    return DataSplits(
        train=ArrayDataset(xtr, ytr),
        test=ArrayDataset(xte, yte),
        unlabeled=unl,
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in x.shape[1:]),
        name=f"npz:{p.stem}",
    )
