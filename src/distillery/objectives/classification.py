"""Supervised terms on the labels of the batch (the "hard" part of a KD loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError, ShapeError
from ..registry import OBJECTIVES
from ._common import check_reduction, shape_str, upcast
from .base import Objective

__all__ = ["CrossEntropy", "cross_entropy_loss"]


def cross_entropy_loss(
    student_logits: Tensor,
    target: Tensor,
    label_smoothing: float = 0.0,
    ignore_index: int = -1,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of ``softmax(student_logits)`` against integer labels.

    ``student_logits``: ``[B, K]`` or ``[B, ..., K]`` (classes last); ``target``: ``[B]`` or
    ``[B, ...]``, with ``ignore_index`` marking unlabeled entries. With label smoothing
    ``eps`` the per-entry loss is ``(1 - eps) * (-log p_y) + eps * mean_k(-log p_k)``.

    ``"mean"``: mean over the non-ignored entries (0, keeping the graph, if all are ignored).
    ``"none"``: ``[B]``, the mean over the non-ignored entries of each sample (0 if none).
    """
    check_reduction(reduction)
    if student_logits.ndim < 2:
        raise ShapeError(
            f"ce: expected logits shaped [B, K] or [B, ..., K], got {shape_str(student_logits)}."
        )
    if target.shape != student_logits.shape[:-1]:
        raise ShapeError(
            f"ce: logits of shape {shape_str(student_logits)} need targets of shape "
            f"{shape_str(student_logits.shape[:-1])}, got {shape_str(target)}."
        )
    (logits,) = upcast(student_logits)
    assert logits is not None
    num_classes = logits.shape[-1]
    target = target.long()
    all_valid = _check_labels(target, num_classes, ignore_index)
    logits = logits.movedim(-1, 1) if logits.ndim > 2 else logits
    if reduction == "mean" and all_valid:
        # nothing to skip: torch's fused mean over every entry is exactly the mean below
        return F.cross_entropy(logits, target, reduction="mean", label_smoothing=label_smoothing)
    valid = target != ignore_index
    # ignored entries give 0 with a zero gradient (torch skips them, also in the smoothing term)
    per_entry = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing)
    if reduction == "mean":
        # an all-ignored batch gives sum(zeros) / 1 = 0, still attached to the graph
        return per_entry.sum() / valid.sum().clamp(min=1)
    if per_entry.ndim == 1:
        return per_entry
    counts = valid.reshape(valid.shape[0], -1).sum(1).clamp(min=1)
    return per_entry.reshape(per_entry.shape[0], -1).sum(1) / counts


def _check_labels(target: Tensor, num_classes: int, ignore_index: int) -> bool:
    """Raise :class:`DataError` unless every label is in ``[0, num_classes)`` or ``ignore_index``;
    return whether every label is a class (none to ignore).

    One reduction and one host sync in the common case; the full elementwise check runs only
    when the batch holds labels outside the classes (ignored ones, or wrong ones)."""
    if target.numel() == 0:
        return False
    lo, hi = torch.stack(torch.aminmax(target)).tolist()
    if lo >= 0 and hi < num_classes:
        return not (0 <= ignore_index < num_classes and (target == ignore_index).any().item())
    valid = target != ignore_index
    if bool((valid & ((target < 0) | (target >= num_classes))).any()):
        raise DataError(
            f"ce: labels must be in [0, {num_classes - 1}] or {ignore_index} (ignored); got "
            f"values in [{lo}, {hi}]."
        )
    return False


@OBJECTIVES.register("ce")
class CrossEntropy(Objective):
    """Cross-entropy with the ground-truth labels (optionally label-smoothed).

    The supervised term of Hinton et al. 2015 ("Distilling the Knowledge in a Neural
    Network", arXiv:1503.02531); label smoothing as in Szegedy et al. 2016 ("Rethinking the
    Inception Architecture for Computer Vision", arXiv:1512.00567).

    Per entry: ``(1 - eps) * (-log p_y) + eps * mean_k(-log p_k)``, ``p = softmax(student)``,
    ``eps = label_smoothing``. Entries whose label equals ``ignore_index`` (``-1``: unlabeled)
    are skipped: ``"mean"`` averages over the labeled entries only and is 0 (with a gradient,
    never NaN) when every entry is unlabeled; ``"none"`` gives ``[B]``, 0 for unlabeled samples.

    Args of ``forward``: ``student`` logits ``[B, K]`` (or ``[B, ..., K]``), ``target``
    integer labels ``[B]`` (or ``[B, ...]``).

    Example:
        >>> import torch
        >>> logits = torch.zeros(2, 4)
        >>> round(CrossEntropy()(logits, torch.tensor([0, -1])).item(), 4)  # log(4)
        1.3863
    """

    inputs = {"student": "student.logits", "target": "batch.y"}
    target_space = None

    def __init__(
        self, label_smoothing: float = 0.0, ignore_index: int = -1, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ConfigError(f"ce: label_smoothing must be in [0, 1], got {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)

    def forward(self, student: Tensor, target: Tensor) -> Tensor:
        return cross_entropy_loss(
            student, target, self.label_smoothing, self.ignore_index, self.reduction
        )

    def extra_repr(self) -> str:
        return (
            f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}"
        )
