"""Datasets read from the user's files: ``image_folder`` (one subfolder per class) and ``npz``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .datasets import ArrayDataset, DataSplits, _check_fraction, stratified_split

__all__ = ["image_folder", "npz", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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


# PIL modes with one colour channel ("LA": grey plus alpha, which is dropped). "P" and "PA"
# (palette) images count as grey when every palette entry they use has r == g == b.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


def _is_grey(img: Any) -> bool:
    """Whether an opened PIL image has a single colour channel (see :data:`_GREY_MODES`)."""
    if img.mode in _GREY_MODES:
        return True
    if img.mode in ("P", "PA"):
        palette = img.getpalette("RGB")
        if palette is None:
            return False
        rgb = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
        used = np.unique(np.asarray(img.getchannel(0) if img.mode == "PA" else img))
        used = used[used < len(rgb)]
        return bool(np.all(rgb[used] == rgb[used][:, :1]))
    return False


def _all_grey(files: list[Path]) -> bool:
    """Whether every image in ``files`` is single-channel (PIL reads only the headers,
    and the pixels of palette images)."""
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as img:
                if not _is_grey(img):
                    return False
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"Could not read the image file {f} ({type(e).__name__}: {e}).") from e
    return True


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
    grayscale: bool | None = None,
    seed: int = 0,
) -> DataSplits:
    """Images in one subfolder per class (PNG/JPEG), as [C, H, W] tensors in [0, 1].

    Classes are the subfolder names, sorted; label ``k`` is the ``k``-th. Without
    ``test_path`` a stratified ``test_fraction`` of the images is held out; a ``test_path``
    folder may only use class names found under ``path``. A config names it as::

        data:
          dataset: image_folder
          params: {path: data/train, test_path: data/test, size: 28}

    Args:
        path: the folder of training images, with one subfolder of images per class
            (``path/cat/*.png``, ``path/dog/*.png``); hidden files and folders are skipped.
        test_path: a folder of test images laid out the same way (null: hold out
            ``test_fraction`` of ``path``).
        test_fraction: the share of each class held out as the test set when no
            ``test_path`` is given, in (0, 1).
        size: resize every image (bilinear) to ``size`` x ``size`` or to ``[height, width]``;
            null: keep the files' size, which must then be the same for all images.
        grayscale: one channel (true), RGB (false), or, null (default), one channel when
            every image of ``path`` and ``test_path`` has one and RGB otherwise. Single-channel
            files (greyscale PNGs and JPEGs) are those of PIL modes 1, L, LA (alpha dropped),
            I, I;16 and F, and palette images whose colours in use are all grey.
        seed: the seed of the stratified train/test split.
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
    tfiles: list[Path] = []
    if test_path is not None:
        troot = Path(test_path).expanduser()
        test_files = _scan_class_folders(troot, "test image folder")
        unknown = [c for c in test_files if c not in index]
        if unknown:
            raise DataError(
                f"The test image folder {troot} has class folder(s) {', '.join(unknown)} that the "
                f"train folder {root} lacks; train classes: {', '.join(classes)}."
            )
        tfiles, yte = gather(test_files)
    if grayscale is None:
        grayscale = _all_grey(files + tfiles)
    x, ref = _read_images(files, hw, grayscale, None)
    if test_path is None:
        tr, te = stratified_split(y, _check_fraction(test_fraction), seed)
        xtr, ytr, xte, yte = x[tr], y[tr], x[te], y[te]
    else:
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
    same file, or a stratified ``test_fraction`` of the labeled samples. The per-sample shape
    of ``x`` is the models' ``input_shape``: ``[N, C, H, W]`` for images, ``[N, L]`` or
    ``[N, C, L]`` for signals, ``[N, D]`` for vectors. Write one with
    ``numpy.savez("data.npz", x=x, y=y)``.

    Args:
        path: the ``.npz`` file holding ``x`` (numeric, ``[N, ...]``) and ``y`` (integer
            labels ``[N]``, -1 for unlabeled samples), optionally ``x_test`` and ``y_test``.
        test_path: a second ``.npz`` whose ``x`` and ``y`` are the test set.
        test_fraction: the share of each class of the labeled samples held out as the test
            set when neither ``test_path`` nor ``x_test``/``y_test`` is given, in (0, 1).
        seed: the seed of that stratified train/test split.
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
