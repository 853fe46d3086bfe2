"""Evaluation of dual encoders: image<->text retrieval, zero-shot and hard-negative accuracy,
few-shot linear probes.

All functions take embeddings as they come out of a model and L2-normalise them, so a score
is a cosine similarity. Conventions follow image-text retrieval papers (CLIP, ALBEF): with
``N`` paired samples, row ``i`` of ``image`` and of ``text`` form a pair; image->text
retrieval ranks all ``N`` texts for each image, text->image all images for each text, and
``R@K`` is the fraction of queries whose match is among the ``K`` highest scores.

Example:
    >>> import torch
    >>> image = torch.eye(3)
    >>> text = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    >>> m = retrieval_metrics(image, text, ks=(1,))
    >>> m["i2t_r1"], m["t2i_r1"]
    (0.3333333432674408, 0.3333333432674408)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError

__all__ = [
    "cosine_similarity_matrix",
    "few_shot_probe",
    "hard_negative_accuracy",
    "recall_at_k",
    "retrieval_metrics",
    "zero_shot_accuracy",
]


def _matrix(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 2:
        raise ShapeError(f"{name}: expected embeddings [N, D], got shape {list(x.shape)}.")
    return x.detach().float()


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``S_ij = <a_i, b_j> / (|a_i| |b_j|)``; ``a`` ``[N, D]``, ``b`` ``[M, D]`` -> ``[N, M]``."""
    a, b = _matrix("a", a), _matrix("b", b)
    if a.shape[1] != b.shape[1]:
        raise ShapeError(f"cosine similarity of embeddings of sizes {a.shape[1]} and {b.shape[1]}.")
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def recall_at_k(scores: torch.Tensor, k: int, positives: torch.Tensor | None = None) -> float:
    """Fraction of rows whose positive is among the ``k`` highest scores.

    ``scores`` ``[Nq, Ng]``; ``positives`` ``[Nq, Ng]`` bool (a row may have several; a hit
    is any of them in the top ``k``), or ``None`` for the diagonal (``Nq == Ng``). Ties are
    broken by index order (``torch.topk``). A row without a positive counts as a miss.
    """
    if scores.ndim != 2:
        raise ShapeError(f"recall_at_k: scores must be [Nq, Ng], got {list(scores.shape)}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"recall_at_k: k must be a positive int, got {k!r}.")
    if positives is None:
        if scores.shape[0] != scores.shape[1]:
            raise ShapeError(f"recall_at_k: diagonal positives need a square score matrix, got {list(scores.shape)}.")
        positives = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if positives.shape != scores.shape:
        raise ShapeError(f"recall_at_k: positives {list(positives.shape)} must match scores {list(scores.shape)}.")
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return float(positives.gather(1, top).any(dim=1).float().mean())


def retrieval_metrics(
    image: torch.Tensor,
    text: torch.Tensor,
    ks: Sequence[int] = (1, 5),
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """Image->text and text->image ``R@K`` of paired embeddings ``image``, ``text`` ``[N, D]``.

    Returns ``i2t_r{k}``, ``t2i_r{k}`` and their mean ``r{k}`` for each ``k``. With
    ``labels`` ``[N]`` a retrieved item also counts as a hit when it has the query's label
    (class-level retrieval, keys prefixed ``class_``) in addition to the instance-level ones.
    """
    sim = cosine_similarity_matrix(image, text)
    if sim.shape[0] != sim.shape[1]:
        raise ShapeError(f"retrieval_metrics: {sim.shape[0]} images but {sim.shape[1]} texts; pairs need equal counts.")
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = recall_at_k(sim, k)
        out[f"t2i_r{k}"] = recall_at_k(sim.T, k)
        out[f"r{k}"] = 0.5 * (out[f"i2t_r{k}"] + out[f"t2i_r{k}"])
    if labels is not None:
        labels = labels.reshape(-1).to(sim.device)
        same = labels[:, None] == labels[None, :]
        for k in ks:
            out[f"class_i2t_r{k}"] = recall_at_k(sim, k, same)
            out[f"class_t2i_r{k}"] = recall_at_k(sim.T, k, same.T)
            out[f"class_r{k}"] = 0.5 * (out[f"class_i2t_r{k}"] + out[f"class_t2i_r{k}"])
    return out


def zero_shot_accuracy(image: torch.Tensor, prompts: torch.Tensor, labels: torch.Tensor) -> float:
    """CLIP zero-shot classification: each image ``[N, D]`` takes the class of its most
    similar prompt embedding ``[C, D]``; accuracy against ``labels`` ``[N]``."""
    pred = cosine_similarity_matrix(image, prompts).argmax(1)
    return float((pred.cpu() == labels.reshape(-1).cpu()).float().mean())


def hard_negative_accuracy(image: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> float:
    """Compositional accuracy (ARO / SugarCrepe style): the fraction of (image, hard negative)
    comparisons in which the image is closer to its caption than to the negative caption.

    ``image``, ``positive``: ``[N, D]``; ``negatives``: ``[N, K, D]``. Returns the mean over
    ``N * K`` comparisons of ``cos(image, positive) > cos(image, negative_k)``.
    """
    image, positive = _matrix("image", image), _matrix("positive", positive)
    if negatives.ndim != 3 or negatives.shape[0] != image.shape[0] or negatives.shape[2] != image.shape[1]:
        raise ShapeError(f"hard_negative_accuracy: negatives must be [N, K, D] matching image {list(image.shape)}, got {list(negatives.shape)}.")
    i = F.normalize(image, dim=1)
    pos = (i * F.normalize(positive, dim=1)).sum(1)
    neg = torch.einsum("nd,nkd->nk", i, F.normalize(negatives.detach().float(), dim=2))
    return float((pos[:, None] > neg).float().mean())


def few_shot_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    shots: int,
    seed: int = 0,
    c: float = 1.0,
) -> float:
    """Few-shot linear probe: multinomial logistic regression (scikit-learn, L-BFGS, inverse
    regularisation ``c``) on ``shots`` random training samples per class of L2-normalised
    features ``[N, D]``; returns test accuracy. The samples are drawn with ``seed``."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ConfigError(f"few_shot_probe: shots must be a positive int, got {shots!r}.")
    xtr = F.normalize(_matrix("train_features", train_features), dim=1).cpu().numpy()
    xte = F.normalize(_matrix("test_features", test_features), dim=1).cpu().numpy()
    ytr, yte = train_labels.reshape(-1).cpu().numpy(), test_labels.reshape(-1).cpu().numpy()
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(ytr):
        idx = np.flatnonzero(ytr == cls)
        if len(idx) < shots:
            raise ConfigError(f"few_shot_probe: class {cls} has {len(idx)} training samples, fewer than shots={shots}.")
        chosen.append(rng.choice(idx, size=shots, replace=False))
    sel = np.concatenate(chosen)
    clf = LogisticRegression(C=c, max_iter=2000)
    clf.fit(xtr[sel], ytr[sel])
    return float((clf.predict(xte) == yte).mean())
