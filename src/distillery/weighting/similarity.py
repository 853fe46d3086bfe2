"""Task similarity: how relevant is a source model to a target task, judged on target data only.

Borup, Phoo & Hariharan 2023, "Distilling from Similar Tasks for Transfer Learning on a
Budget" (ICCV), arXiv:2304.12314: source models trained on other domains are scored by a
task-similarity metric computed from *their features and pseudo-labels on the target data*
(no source data); DistillNearest distills the best-scoring source, DistillWeighted all of
them weighted by relevance. This module holds the scorers and the weighting; the recipe is
:mod:`distillery.recipes.distill_weighted`.

Scorers (each returns one float per source; higher = more similar):

* :func:`knn_task_similarity` (features): leave-one-out k-nearest-neighbour accuracy of the
  few labeled target samples in the source's feature space (cosine similarity of centred
  features). A source whose features separate the target classes scores high.
* :func:`leep` (pseudo-labels): LEEP, the log expected empirical prediction of Nguyen, Hassner,
  Seeger & Archambeau 2020 (arXiv:2002.12462), from the source's predicted distribution over
  *its own* labels on the labeled target samples.

:class:`SimilarityWeight` turns the scores into :class:`~distillery.teachers.TeacherBank`
weights (``TeacherBank(members, weights=SimilarityWeight(scores, chance=0.1))``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError, ShapeError
from ..registry import WEIGHTINGS

__all__ = ["SimilarityWeight", "knn_task_similarity", "leep", "relevance_weights"]


def _features_labels(features: torch.Tensor, labels: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(features).detach().double()
    y = torch.as_tensor(labels).detach().long().reshape(-1)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ShapeError(f"{name}: features must be [N, D] and labels [N], got {list(x.shape)} and {list(y.shape)}.")
    if bool((y < 0).any()):
        raise ShapeError(f"{name}: labels must be >= 0 (labeled target samples only), got a {int(y.min())}.")
    return x, y


def knn_task_similarity(features: torch.Tensor, labels: torch.Tensor, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy of ``labels`` in the feature space ``features``.

    ``features`` ``[N, D]`` (a source model's features of the labeled target samples),
    ``labels`` ``[N]`` (their target labels, ``>= 0``). Features are centred (mean over the N
    samples subtracted) and compared by cosine similarity. For each sample ``i`` the ``k``
    most similar *other* samples vote (ties in the ranking go to the lower index); the
    prediction is the class with the most votes, a tie between classes going to the one whose
    voters have the larger summed similarity (then the lower class id). Returns the fraction
    of samples predicted correctly, in ``[0, 1]``.
    """
    x, y = _features_labels(features, labels, "knn_task_similarity")
    n = x.shape[0]
    k = int(k)
    if not 1 <= k <= n - 1:
        raise ConfigError(f"knn_task_similarity: k must be in [1, N-1] = [1, {n - 1}], got {k}.")
    x = x - x.mean(0, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    # stable descending sort: equal similarities keep index order
    order = torch.sort(-sim, dim=1, stable=True).indices[:, :k]  # [N, k]
    nb_sim = torch.gather(sim, 1, order)
    nb_y = y[order]
    classes = int(y.max()) + 1
    votes = torch.zeros(n, classes, dtype=torch.float64).scatter_add_(1, nb_y, torch.ones_like(nb_sim))
    mass = torch.zeros(n, classes, dtype=torch.float64).scatter_add_(1, nb_y, nb_sim)
    # most votes first; among equal votes the larger similarity mass (|mass| <= k, one vote = 4k + 4)
    score = votes * (4.0 * k + 4.0) + mass
    pred = score.argmax(1)
    return float((pred == y).double().mean())


def leep(source_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """LEEP (Nguyen et al. 2020): ``(1/N) sum_i log sum_z P(y_i | z) theta_z(x_i)``.

    ``source_probs`` ``[N, Z]``: the source model's predicted distribution over its own ``Z``
    labels for each labeled target sample (its pseudo-labels); ``labels`` ``[N]``: the target
    labels. ``P(y, z) = (1/N) sum_{i: y_i = y} theta_z(x_i)`` and ``P(y | z) = P(y, z) /
    sum_y P(y, z)``. Returns a value ``<= 0``; higher means more transferable.
    """
    theta, y = _features_labels(source_probs, labels, "leep")
    if bool((theta < 0).any()) or not torch.allclose(theta.sum(1), torch.ones(theta.shape[0], dtype=theta.dtype), atol=1e-4):
        raise ShapeError("leep: source_probs must be probabilities (rows >= 0 summing to 1); pass softmax(logits).")
    n = theta.shape[0]
    classes = int(y.max()) + 1
    joint = torch.zeros(classes, theta.shape[1], dtype=theta.dtype).index_add_(0, y, theta) / n  # [C, Z]
    cond = joint / joint.sum(0, keepdim=True).clamp_min(1e-300)  # P(y | z)
    eep = (theta * cond[y]).sum(1)  # [N]
    return float(eep.clamp_min(1e-300).log().mean())


def relevance_weights(scores: Sequence[float] | torch.Tensor, chance: float = 0.0, temperature: float | None = None) -> torch.Tensor:
    """Bank weights ``[n]`` (summing to 1) from similarity scores ``[n]``.

    Without ``temperature``: ``w_s ∝ max(score_s - chance, 0)``, the relevance above what a
    useless source scores (e.g. ``chance = 1 / num_classes`` for k-NN accuracy); if no source
    scores above ``chance`` the weights are uniform. With ``temperature`` ``tau``:
    ``w = softmax(score / tau)``.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if s.numel() == 0 or not bool(torch.isfinite(s).all()):
        raise ConfigError(f"relevance_weights: scores must be finite numbers, got {s.tolist()}.")
    if temperature is not None:
        if not float(temperature) > 0:
            raise ConfigError(f"relevance_weights: temperature must be > 0, got {temperature!r}.")
        return torch.softmax(s / float(temperature), 0).float()
    w = (s - float(chance)).clamp_min(0.0)
    if float(w.sum()) <= 0:
        return torch.full_like(s, 1.0 / s.numel()).float()
    return (w / w.sum()).float()


@WEIGHTINGS.register("similarity")
class SimilarityWeight:
    """Fixed TeacherBank weights from task-similarity scores (DistillWeighted, Borup et al. 2023).

    Args:
        scores: one similarity score per bank member (e.g. :func:`knn_task_similarity` of each
            source's features on the labeled target samples).
        chance: the score of a useless source; weights are ``∝ max(score - chance, 0)``.
        temperature: if given, ``softmax(score / temperature)`` instead.

    Called as a bank's weight function ``fn(batch, outputs)`` it returns :attr:`weights`
    ``[n]`` for every batch; :meth:`nearest` is the index DistillNearest keeps.

    Example::

        >>> w = SimilarityWeight([0.9, 0.5, 0.1], chance=0.1)
        >>> [round(v, 3) for v in w.weights.tolist()], w.nearest()
        ([0.667, 0.333, 0.0], 0)
    """

    def __init__(self, scores: Sequence[float], chance: float = 0.0, temperature: float | None = None) -> None:
        self.scores = [float(s) for s in scores]
        self.chance = float(chance)
        self.temperature = temperature
        self.weights = relevance_weights(self.scores, self.chance, temperature)

    def nearest(self) -> int:
        """Index of the highest score (the first one on ties)."""
        return max(range(len(self.scores)), key=lambda i: (self.scores[i], -i))

    def __call__(self, batch: dict, outputs: list) -> torch.Tensor:
        if len(outputs) != len(self.scores):
            raise ConfigError(f"SimilarityWeight has {len(self.scores)} scores but the bank has {len(outputs)} members.")
        return self.weights

    def __repr__(self) -> str:
        return f"SimilarityWeight(scores={self.scores}, chance={self.chance}, temperature={self.temperature})"
