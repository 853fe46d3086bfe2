"""Two-view paired datasets: an "image" and one or more "texts" per sample, for dual encoders.

Image-text contrastive methods (CLIP, ALBEF, MSD, DeGLA) train two towers on paired samples
of two modalities. Offline, two "modalities" are made from one dataset:

* ``halves``: the top and bottom half of an 8x8 digit (:func:`halves` also splits 1D signals
  into their first and second half): each half is one view of the same sample, so pairs are
  instance-level;
* ``caption``: the image and a noisy class-token "caption" vector (one-hot class + noise);
* attribute captions (:func:`attribute_digits`): the image and a caption vector naming the
  class *and* two attributes read off the image (stroke thickness and tilt), plus
  attribute-swapped hard-negative captions ("thick 3" -> "thin 3").

Every sample is stored as one flat row ``x = [image | text_0 | text_1 | ...]`` of width
``image_dim + num_texts * text_dim`` (see :func:`pack_views`), so the whole engine (loaders,
precomputed teachers, checkpoints) works unchanged; the dual encoder
(:class:`~distillery.models.dual.DualEncoder`) splits the row again. ``text_0`` is
the paired caption; ``text_1..`` are hard negatives when the dataset has them. The split
sizes are in ``DataSplits.info`` (``image_dim``, ``text_dim``, ``num_texts``).

Noisy pairs (ALBEF's web-data setting): ``mismatch=p`` replaces the text of a fraction
``p`` of the *training* pairs by the text of another training sample; test pairs are clean.
The mask of mismatched training pairs is ``info["train_mismatched"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ShapeError
from ..registry import DATASETS
from .datasets import ArrayDataset, DataSplits, _check_count, _check_fraction
from .uci_digits import digits

__all__ = [
    "ATTRIBUTES",
    "attribute_captions",
    "attribute_digits",
    "class_captions",
    "digit_attributes",
    "halves",
    "mismatch_index",
    "pack_views",
    "paired_digits",
    "paired_splits",
    "swap_attribute",
    "unpack_views",
]

#: Attribute families of :func:`attribute_digits`, each with its two values (index 0, 1).
ATTRIBUTES: dict[str, tuple[str, str]] = {"thickness": ("thin", "thick"), "tilt": ("left", "right")}


# --------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------


def pack_views(image: torch.Tensor | np.ndarray, texts: torch.Tensor | np.ndarray) -> torch.Tensor:
    """One flat row per sample: ``[image | text_0 | text_1 | ...]``.

    ``image``: ``[N, ...]`` (flattened to ``[N, image_dim]``); ``texts``: ``[N, text_dim]``
    (one text) or ``[N, T, text_dim]`` (``T`` texts). Returns float32 ``[N, image_dim +
    T * text_dim]``.
    """
    image = torch.as_tensor(image, dtype=torch.float32)
    texts = torch.as_tensor(texts, dtype=torch.float32)
    if texts.ndim == 2:
        texts = texts[:, None, :]
    if texts.ndim != 3 or image.ndim < 2 or texts.shape[0] != image.shape[0]:
        raise ShapeError(
            f"pack_views needs image [N, ...] and texts [N, text_dim] or [N, T, text_dim] with the same N; "
            f"got image {list(image.shape)} and texts {list(texts.shape)}."
        )
    return torch.cat([image.reshape(image.shape[0], -1), texts.reshape(texts.shape[0], -1)], dim=1)


def unpack_views(x: torch.Tensor, image_dim: int, text_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_views`: ``x [N, image_dim + T * text_dim]`` ->
    ``(image [N, image_dim], texts [N, T, text_dim])``; ``T >= 1``."""
    if x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    rest = x.shape[1] - image_dim
    if image_dim <= 0 or text_dim <= 0 or rest < text_dim or rest % text_dim:
        raise ShapeError(
            f"A paired row of width {x.shape[1]} cannot be split into an image of {image_dim} values and "
            f"whole texts of {text_dim} values each; check image_dim and text_dim (the dataset's "
            "info['image_dim'] and info['text_dim'])."
        )
    return x[:, :image_dim], x[:, image_dim:].reshape(x.shape[0], rest // text_dim, text_dim)


# --------------------------------------------------------------------------------------
# Views, captions, noise
# --------------------------------------------------------------------------------------


def halves(x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Split samples into two views: images ``[N, C, H, W]`` into top rows ``[:H//2]`` and
    bottom rows ``[H//2:]``; signals ``[N, L]`` into ``[:L//2]`` and ``[L//2:]``. Each view is
    returned flattened, ``[N, d]``."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim == 4:
        h = x.shape[2]
        return x[:, :, : h // 2].flatten(1), x[:, :, h // 2 :].flatten(1)
    if x.ndim == 2:
        n = x.shape[1]
        return x[:, : n // 2].clone(), x[:, n // 2 :].clone()
    raise ShapeError(f"halves expects images [N, C, H, W] or signals [N, L], got shape {list(x.shape)}.")


def class_captions(y: np.ndarray, num_classes: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Class-token "captions": ``one_hot(y) + N(0, noise^2)`` per entry, ``[N, num_classes]``."""
    y = np.asarray(y, dtype=np.int64)
    out = np.eye(num_classes, dtype=np.float64)[y]
    return (out + rng.normal(0.0, noise, size=out.shape)).astype(np.float32)


def mismatch_index(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Which text each of ``n`` samples gets when a fraction of pairs is mismatched.

    ``round(fraction * n)`` samples are chosen at random; in a random order, each chosen
    sample takes the text of the next chosen one (a cyclic shift), so every chosen sample
    gets *another* sample's text and the multiset of texts is unchanged. Returns
    ``(index [n], mismatched [n] bool)`` with ``texts_noisy = texts[index]``.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"mismatch must be a fraction in [0, 1), got {fraction!r}.")
    index = np.arange(n)
    k = round(fraction * n)
    mask = np.zeros(n, dtype=bool)
    if k >= 2:
        chosen = rng.permutation(n)[:k]
        index[chosen] = np.roll(chosen, -1)
        mask[chosen] = True
    return index, mask


def digit_attributes(images: np.ndarray, y: np.ndarray, thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two binary attributes per digit image, split at the class median (so balanced per class).

    ``images``: non-negative ink ``[N, 1, H, W]`` (or ``[N, H, W]``); ``y``: ``[N]``.

    * thickness: total ink ``sum(p)``; 1 ("thick") above the class median, else 0 ("thin");
    * tilt: the shear of the ink's second moments, ``mu11 / mu02`` with ``mu11 = sum p (c - c0)
      (r - r0)`` and ``mu02 = sum p (r - r0)^2`` (row ``r`` downward, column ``c``); 1
      ("right") above the class median, else 0 ("left").

    ``thresholds`` ``[num_classes, 2]`` (the medians) are computed from these images when
    ``None``, else applied as given (use the training set's for the test set). Returns
    ``(attributes [N, 2] int64, thresholds [num_classes, 2])``.
    """
    p = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    side = round(np.sqrt(p.shape[1]))
    if side * side != p.shape[1] or (p < -1e-9).any():
        raise ShapeError("digit_attributes expects square, non-negative single-channel images.")
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    mass = p.sum(1)
    safe = np.maximum(mass, 1e-12)
    r0 = (p * rows).sum(1) / safe
    c0 = (p * cols).sum(1) / safe
    mu11 = (p * (cols[None] - c0[:, None]) * (rows[None] - r0[:, None])).sum(1)
    mu02 = (p * (rows[None] - r0[:, None]) ** 2).sum(1)
    tilt = mu11 / np.maximum(mu02, 1e-12)
    values = np.stack([mass, tilt], axis=1)
    y = np.asarray(y, dtype=np.int64)
    if thresholds is None:
        thresholds = np.stack([np.median(values[y == c], axis=0) for c in range(int(y.max()) + 1)])
    attrs = (values > thresholds[y]).astype(np.int64)
    return attrs, thresholds


def attribute_captions(y: np.ndarray, attrs: np.ndarray | None, num_classes: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Caption vectors ``[class one-hot | thickness one-hot (2) | tilt one-hot (2)] + noise``,
    ``[N, num_classes + 4]``. ``attrs=None`` gives class-only captions (attribute slots 0)."""
    y = np.asarray(y, dtype=np.int64)
    out = np.zeros((len(y), num_classes + 2 * len(ATTRIBUTES)), dtype=np.float64)
    out[np.arange(len(y)), y] = 1.0
    if attrs is not None:
        for a in range(len(ATTRIBUTES)):
            out[np.arange(len(y)), num_classes + 2 * a + attrs[:, a]] = 1.0
    return (out + rng.normal(0.0, noise, size=out.shape)).astype(np.float32)


def swap_attribute(captions: np.ndarray, num_classes: int, attribute: int) -> np.ndarray:
    """Hard-negative captions: the two slots of attribute ``attribute`` exchanged ("thick 3"
    -> "thin 3"), every other entry (noise included) unchanged. ``[N, num_classes + 4]``."""
    out = np.array(captions, copy=True)
    i = num_classes + 2 * attribute
    out[:, [i, i + 1]] = out[:, [i + 1, i]]
    return out


def paired_splits(
    train: tuple[Any, Any, Any],
    test: tuple[Any, Any, Any],
    *,
    name: str,
    mismatch: float = 0.0,
    seed: int = 0,
    num_classes: int = 10,
    info: dict[str, Any] | None = None,
) -> DataSplits:
    """Build :class:`DataSplits` from ``(image [N, ...], texts [N, d] or [N, T, d], y [N])``
    for train and test. ``mismatch`` mismatches that fraction of the training pairs (only
    ``text_0``, the paired caption, is reassigned; see :func:`mismatch_index`)."""
    img_tr, txt_tr, y_tr = (torch.as_tensor(v) for v in train)
    img_te, txt_te, y_te = (torch.as_tensor(v) for v in test)
    txt_tr = txt_tr.float() if txt_tr.ndim == 3 else txt_tr.float()[:, None, :]
    txt_te = txt_te.float() if txt_te.ndim == 3 else txt_te.float()[:, None, :]
    index, mask = mismatch_index(len(y_tr), mismatch, np.random.default_rng([seed, 7]))
    txt_tr = txt_tr.clone()
    txt_tr[:, 0] = txt_tr[torch.as_tensor(index), 0]
    x_tr, x_te = pack_views(img_tr, txt_tr), pack_views(img_te, txt_te)
    image_dim = int(img_tr.reshape(len(img_tr), -1).shape[1])
    meta = {
        "image_dim": image_dim,
        "text_dim": int(txt_tr.shape[2]),
        "num_texts": int(txt_tr.shape[1]),
        "mismatch": float(mismatch),
        "train_mismatched": torch.as_tensor(mask),
    }
    meta.update(info or {})
    return DataSplits(
        train=ArrayDataset(x_tr, y_tr),
        test=ArrayDataset(x_te, y_te),
        unlabeled=None,
        num_classes=num_classes,
        input_shape=(int(x_tr.shape[1]),),
        name=name,
        class_names=tuple(str(i) for i in range(num_classes)),
        info=meta,
    )


# --------------------------------------------------------------------------------------
# Registered datasets
# --------------------------------------------------------------------------------------


@DATASETS.register("paired_digits")
def paired_digits(
    views: str = "halves",
    mismatch: float = 0.0,
    caption_noise: float = 0.5,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> DataSplits:
    """Digits as image-text pairs: top vs bottom half, or the image vs a noisy class token.

    ``views="halves"``: top 4 rows ``[32]`` vs bottom 4 rows ``[32]``; ``"caption"``: the
    image ``[64]`` vs a class one-hot + ``N(0, caption_noise^2)`` ``[10]``. ``mismatch``:
    fraction of training pairs whose text is another sample's (test pairs stay clean).
    Rows: ``x = [image | text]``; ``info``: ``image_dim``, ``text_dim``, ``train_mismatched``.

    Args:
        views: "halves" (top vs bottom half of the digit) or "caption" (image vs noisy class).
        mismatch: the fraction of training pairs whose text is another sample's, in [0, 1).
        caption_noise: the standard deviation of the noise on the class one-hot ("caption").
        test_fraction: the share of each class held out as the test set, in (0, 1).
        seed: the seed of the split, the caption noise and the mismatches.
    """
    if views not in ("halves", "caption"):
        raise ConfigError(f"paired_digits: views must be 'halves' or 'caption', got {views!r}.")
    if caption_noise < 0:
        raise ConfigError(f"paired_digits: caption_noise must be >= 0, got {caption_noise!r}.")
    seed = _check_count(seed, "seed")
    base = digits(test_fraction=_check_fraction(test_fraction), seed=seed)
    rng = np.random.default_rng([seed, 3])
    parts = []
    for ds in (base.train, base.test):
        if views == "halves":
            image, text = halves(ds.x)
        else:
            image, text = ds.x.flatten(1), torch.as_tensor(class_captions(ds.y.numpy(), 10, caption_noise, rng))
        parts.append((image, text, ds.y))
    return paired_splits(parts[0], parts[1], name=f"paired_digits[{views}]", mismatch=mismatch, seed=seed,
                         info={"views": views})


@DATASETS.register("attribute_digits")
def attribute_digits(
    captions: str = "attributes",
    negatives: bool = True,
    classes: Sequence[int] | None = None,
    caption_noise: float = 0.1,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> DataSplits:
    """Digits with compositional captions and attribute-swapped hard negatives (DeGLA-style).

    The image ``[64]`` is paired with a caption ``[14]``: class one-hot (10), thickness
    one-hot (2), tilt one-hot (2), plus ``N(0, caption_noise^2)``; attributes come from
    :func:`digit_attributes` with thresholds fit on the training images.

    * ``captions="attributes"``: the caption names class and both attributes; with
      ``negatives`` each row also holds two hard negatives, the caption with thickness
      swapped and with tilt swapped (``num_texts = 3``);
    * ``captions="class"``: class-only captions (attribute slots 0; the base task), no negatives.

    ``classes``: keep only these digit classes (train and test), e.g. ``[0, 1, 2, 3, 4]``.
    ``info`` holds ``prompts`` (noise-free class-only captions, ``[10, 14]``, for zero-shot
    classification), ``train_attributes`` / ``test_attributes`` (``[N, 2]``) and the split sizes.

    Args:
        captions: "attributes" (class, thickness and tilt) or "class" (class only).
        negatives: add the two attribute-swapped hard negatives (needs captions "attributes").
        classes: the digit classes to keep (null: all ten).
        caption_noise: the standard deviation of the Gaussian noise added to the captions.
        test_fraction: the share of each class held out as the test set, in (0, 1).
        seed: the seed of the split and of the caption noise.
    """
    if captions not in ("attributes", "class"):
        raise ConfigError(f"attribute_digits: captions must be 'attributes' or 'class', got {captions!r}.")
    if caption_noise < 0:
        raise ConfigError(f"attribute_digits: caption_noise must be >= 0, got {caption_noise!r}.")
    if negatives and captions != "attributes":
        raise ConfigError("attribute_digits: negatives (attribute swaps) need captions='attributes'; set negatives: false.")
    seed = _check_count(seed, "seed")
    base = digits(test_fraction=_check_fraction(test_fraction), seed=seed)
    keep_classes = list(range(10)) if classes is None else sorted({int(c) for c in classes})
    if not keep_classes or any(not 0 <= c < 10 for c in keep_classes):
        raise ConfigError(f"attribute_digits: classes must be digits 0..9, got {classes!r}.")
    mean, std = base.info["mean"], base.info["std"]

    def ink(ds: ArrayDataset) -> np.ndarray:  # back to the [0, 1] pixel scale
        return np.clip(ds.x.numpy().astype(np.float64) * std + mean, 0.0, None)

    attrs_tr, thresholds = digit_attributes(ink(base.train), base.train.y.numpy())
    attrs_te, _ = digit_attributes(ink(base.test), base.test.y.numpy(), thresholds)
    rng = np.random.default_rng([seed, 5])
    parts, kept_attrs = [], []
    for ds, attrs in ((base.train, attrs_tr), (base.test, attrs_te)):
        keep = np.isin(ds.y.numpy(), keep_classes)
        y = ds.y.numpy()[keep]
        a = attrs[keep]
        cap = attribute_captions(y, a if captions == "attributes" else None, 10, caption_noise, rng)
        texts = [cap]
        if negatives:
            texts += [swap_attribute(cap, 10, i) for i in range(len(ATTRIBUTES))]
        parts.append((ds.x[torch.as_tensor(keep)], np.stack(texts, axis=1), y))
        kept_attrs.append(torch.as_tensor(a))
    prompts = torch.as_tensor(attribute_captions(np.arange(10), None, 10, 0.0, rng))
    return paired_splits(
        parts[0], parts[1], name=f"attribute_digits[{captions}]", seed=seed,
        info={"prompts": prompts, "train_attributes": kept_attrs[0], "test_attributes": kept_attrs[1],
              "classes": keep_classes, "attributes": dict(ATTRIBUTES), "attribute_thresholds": thresholds},
    )
