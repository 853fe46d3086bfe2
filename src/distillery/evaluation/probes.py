"""Evaluating frozen features: linear probes and retrieval.

Self-supervised and distilled representations are judged without fine-tuning: a linear
classifier trained on frozen features (the "linear probe" of DINO, Caron et al. 2021) and
nearest-neighbour retrieval (Rank-1 / Recall@K, as in fine-grained retrieval benchmarks).

* :func:`extract_features` runs a model over a dataset and returns one signal (an output key
  such as ``embedding``, ``logits``, or a tap address such as ``head:input``) with the labels.
* :func:`linear_probe_accuracy` fits multinomial logistic regression (scikit-learn, L-BFGS) on
  standardised train features and returns the test accuracy.
* :func:`label_recall_at_k` is leave-one-out retrieval by cosine similarity: for each query, is a
  sample of the same label among its ``k`` nearest other samples? ``k=1`` is Rank-1 / R@1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import taps
from ..batch import to_device
from ..errors import ShapeError

__all__ = ["extract_features", "label_recall_at_k", "linear_probe_accuracy"]


@torch.no_grad()
def extract_features(
    model: nn.Module, dataset: Dataset, signal: str = "embedding", batch_size: int = 512, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, D], labels [N])`` of ``model`` over ``dataset`` in eval mode.

    ``signal`` is an output key of the model (``logits`` for a plain tensor output) or a tap
    address (``layers.1``, ``head:input``); features are flattened to ``[N, D]``.
    """
    from ..engine.loading import make_loader

    loader, _ = make_loader(dataset, batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    addresses = [signal] if taps.split_address(signal)[0] in dict(model.named_modules()) and signal else []
    feats, labels = [], []
    try:
        for batch in loader:
            batch = to_device(batch, device)
            out = taps.run_tapped(model, batch["x"], addresses)
            if signal not in out:
                raise ShapeError(f"extract_features: the model produced {sorted(out)}, not {signal!r}.")
            feats.append(out[signal].detach().float().reshape(batch["x"].shape[0], -1).cpu())
            labels.append(batch["y"].cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def linear_probe_accuracy(
    train_x: torch.Tensor | np.ndarray,
    train_y: torch.Tensor | np.ndarray,
    test_x: torch.Tensor | np.ndarray,
    test_y: torch.Tensor | np.ndarray,
    C: float = 1.0,
    max_iter: int = 2000,
    **kwargs: Any,
) -> float:
    """Test accuracy of L2-regularised multinomial logistic regression on frozen features.

    ``train_x [N, D]``, ``train_y [N]``, ``test_x [M, D]``, ``test_y [M]``. Features are
    standardised with the train mean and std (std 0 -> 1); ``C`` is the inverse regularisation
    strength of :class:`sklearn.linear_model.LogisticRegression` (``lbfgs``).
    """
    from sklearn.linear_model import LogisticRegression

    xtr, xte = _np(train_x), _np(test_x)
    ytr, yte = _np(train_y).astype(np.int64), _np(test_y).astype(np.int64)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ShapeError(f"linear_probe_accuracy: features must be [N, D] and [M, D], got {xtr.shape} and {xte.shape}.")
    mean, std = xtr.mean(0), xtr.std(0)
    std[std == 0] = 1.0
    clf = LogisticRegression(C=C, max_iter=max_iter, **kwargs)
    clf.fit((xtr - mean) / std, ytr)
    return float((clf.predict((xte - mean) / std) == yte).mean())


def label_recall_at_k(features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, k: int = 1) -> float:
    """Leave-one-out class-level retrieval Recall@k by cosine similarity.

    ``features [N, D]``, ``labels [N]``. Each sample is a query against the other ``N - 1``
    samples, ranked by cosine similarity (ties by index order); it scores 1 if one of the top
    ``k`` has its label. Returns the mean over queries (``k=1``: Rank-1 / R@1, the retrieval
    metric of fine-grained benchmarks). Ranking and hit counting are
    :func:`distillery.evaluation.retrieval.recall_at_k`'s.
    """
    from .retrieval import cosine_similarity_matrix, recall_at_k

    x = torch.as_tensor(_np(features), dtype=torch.float64)
    y = torch.as_tensor(_np(labels)).long().reshape(-1)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ShapeError(f"label_recall_at_k: features [N, D] (N >= 2) and labels [N] needed, got {list(x.shape)} and {list(y.shape)}.")
    sim = cosine_similarity_matrix(x, x).double()
    sim.fill_diagonal_(-float("inf"))  # a query never retrieves itself
    same = y[:, None] == y[None, :]
    same.fill_diagonal_(False)
    return recall_at_k(sim, min(int(k), x.shape[0] - 1), same)


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)
