"""Hard-negative mining from a score matrix (a teacher's, or the student's own).

Contrastive retrieval training learns most from the negatives that score almost as high as
the positive. A strong teacher can pick them for the student: in DCD (Rao et al. 2022,
"Dynamic Contrastive Distillation for Image-Text Retrieval", arXiv:2207.01426) "a teacher
network [estimates] the difficult samples for students", so the costly cross-modal teacher
only has to score a few candidates per query, and the student learns the teacher's
judgement exactly where it matters. The same selection serves ANCE-style mining with the
student's own scores.

Functions (all on plain tensors, no gradients through the selection):

* :func:`mine_hard_negatives`: the indices of the ``k`` highest-scoring non-positive
  candidates of each query, ``[B, N] -> [B, k]``;
* :func:`candidate_set`: the positive followed by the mined negatives, ``[B, 1 + k]``, and
  :func:`gather_candidates` to read any ``[B, N]`` matrix on that set.

Example:
    >>> import torch
    >>> scores = torch.tensor([[5.0, 4.0, 1.0, 3.0], [0.0, 2.0, 9.0, 1.0]])
    >>> mine_hard_negatives(scores, 2, positives=torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]]).bool()).tolist()
    [[1, 3], [2, 3]]
"""

from __future__ import annotations

import torch

from ..errors import ConfigError, ShapeError

__all__ = ["candidate_set", "gather_candidates", "mine_hard_negatives"]


def _positives(scores: torch.Tensor, positives: torch.Tensor | None) -> torch.Tensor:
    if scores.ndim != 2:
        raise ShapeError(f"hard-negative mining needs a score matrix [B, N], got shape {list(scores.shape)}.")
    if positives is None:
        if scores.shape[0] > scores.shape[1]:
            raise ShapeError(f"diagonal positives need B <= N, got a score matrix of shape {list(scores.shape)}.")
        return torch.eye(scores.shape[0], scores.shape[1], dtype=torch.bool, device=scores.device)
    if positives.shape != scores.shape or positives.dtype != torch.bool:
        raise ShapeError(f"positives must be a bool mask of the scores' shape {list(scores.shape)}, got "
                         f"{positives.dtype} {list(positives.shape)}.")
    return positives


@torch.no_grad()
def mine_hard_negatives(scores: torch.Tensor, k: int, positives: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of each query's ``k`` highest-scoring negatives, hardest first.

    Args:
        scores: ``[B, N]``, higher = more similar (a teacher's pair scores).
        k: negatives per query; clipped to the fewest negatives any row has (a small last
            batch), so the result is always ``[B, min(k, available)]``.
        positives: ``[B, N]`` bool; default the diagonal (row ``i``'s positive is column ``i``).

    Returns ``[B, k']`` int64 column indices (ties broken by ``torch.topk``). A ``k`` below 1
    raises :class:`~distillery.errors.ConfigError`.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"mine_hard_negatives: k must be a positive int, got {k!r}.")
    pos = _positives(scores, positives)
    available = int((~pos).sum(1).min())
    if available < 1:
        raise ShapeError("mine_hard_negatives: some query has no negative candidate (every column is a positive).")
    masked = scores.detach().masked_fill(pos, float("-inf"))
    return masked.topk(min(k, available), dim=1).indices


@torch.no_grad()
def candidate_set(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The diagonal positive followed by the ``k`` hardest negatives of each row:
    ``[B, N] -> [B, 1 + k']`` column indices (column 0 is the positive)."""
    negatives = mine_hard_negatives(scores, k)
    diag = torch.arange(scores.shape[0], device=scores.device)[:, None]
    return torch.cat([diag, negatives], dim=1)


def gather_candidates(matrix: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``matrix [B, N]`` read at ``index [B, K]`` -> ``[B, K]`` (differentiable in ``matrix``)."""
    if matrix.ndim != 2 or index.ndim != 2 or index.shape[0] != matrix.shape[0]:
        raise ShapeError(f"gather_candidates: matrix [B, N] and index [B, K] with the same B, got "
                         f"{list(matrix.shape)} and {list(index.shape)}.")
    return matrix.gather(1, index)
