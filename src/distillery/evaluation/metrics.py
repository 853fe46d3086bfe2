"""Evaluation metrics on predictions: accuracy, agreement, NLL, expected calibration error."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy over labeled rows (``labels >= 0``). ``logits [N, K]``, ``labels [N]``."""
    keep = labels >= 0
    if not bool(keep.any()):
        return float("nan")
    return float((logits[keep].argmax(-1) == labels[keep]).float().mean())


def agreement(a_logits: torch.Tensor, b_logits: torch.Tensor) -> float:
    """Fraction of rows where two models predict the same class. ``[N, K]`` each."""
    return float((a_logits.argmax(-1) == b_logits.argmax(-1)).float().mean())


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood over labeled rows."""
    keep = labels >= 0
    return float(F.cross_entropy(logits[keep].float(), labels[keep]))


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, list[float]]:
    """Reliability-diagram data: equal-width confidence bins on ``(0, 1]``.

    Returns per bin the mean confidence, the accuracy and the count (empty bins have
    confidence and accuracy ``nan``). ``probs [N, K]`` (rows sum to 1), ``labels [N]``.
    """
    keep = labels >= 0
    probs, labels = probs[keep].float(), labels[keep]
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    # bin b holds confidences in (edges[b], edges[b+1]]
    idx = torch.clamp(torch.bucketize(conf, edges, right=False) - 1, 0, n_bins - 1)
    out: dict[str, list[float]] = {"confidence": [], "accuracy": [], "count": [], "edges": edges.tolist()}
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        out["count"].append(n)
        out["confidence"].append(float(conf[m].mean()) if n else float("nan"))
        out["accuracy"].append(float(correct[m].mean()) if n else float("nan"))
    return out


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over equal-width bins."""
    bins = calibration_bins(probs, labels, n_bins)
    total = sum(bins["count"])
    if total == 0:
        return float("nan")
    return sum(
        n / total * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"]) if n
    )
