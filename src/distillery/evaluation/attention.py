"""Per-head attention statistics of a ViT: how far and how broadly each head looks.

The measures behind the "diversity vs discrimination" argument of Hybrid Distill (Shi et al.
2023, arXiv:2306.15876: "MIM can introduce more local and diverse attention across all
transformer layers", while supervised/CL models attend globally and their heads collapse).
For one block's attention probabilities ``A`` ``[B, H, 1 + N, 1 + N]`` (class token first,
then ``N`` patch tokens on a grid):

* **attention distance** of head ``h`` (Dosovitskiy et al. 2021, "mean attention distance"):
  ``mean_{b, i} sum_j A'[b, h, i, j] * ||p_i - p_j||``, over patch queries ``i`` and patch keys
  ``j``, with ``A'`` the patch-to-patch attention renormalised over patch keys and ``p`` the
  patch's grid coordinates (in patches);
* **attention entropy** of head ``h``: ``mean_{b, i} -sum_j A[b, h, i, j] log A[b, h, i, j]``
  over patch queries ``i`` and all keys (nats);
* **head diversity** of a block: the standard deviation over heads of their attention
  distances (heads that look at different ranges -> high; collapsed heads -> 0).

:func:`attention_statistics` runs a model over a dataset and returns them per block.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import taps
from ..errors import ShapeError

__all__ = ["attention_distance", "attention_entropy", "attention_statistics", "patch_coordinates"]


def patch_coordinates(grid: Sequence[int]) -> torch.Tensor:
    """Coordinates ``[N, len(grid)]`` of the patches of a grid, in the ViT's (row-major) order."""
    return torch.tensor(list(itertools.product(*[range(int(g)) for g in grid])), dtype=torch.float64)


def _check(attn: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    n = 1
    for g in grid:
        n *= int(g)
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2] or attn.shape[-1] != n + 1:
        raise ShapeError(f"attention statistics: expected [B, H, 1 + N, 1 + N] with N = {n} patches, got {list(attn.shape)}.")
    return attn.double()


def attention_distance(attn: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Mean attention distance per head ``[H]`` (in patches) from ``attn`` ``[B, H, 1+N, 1+N]``."""
    a = _check(attn, grid)[:, :, 1:, 1:]
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-300)
    pos = patch_coordinates(grid).to(a.device)
    dist = torch.cdist(pos, pos)  # [N, N], Euclidean
    return (a * dist).sum(-1).mean((0, 2))


def attention_entropy(attn: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Mean entropy per head ``[H]`` (nats) of the patch queries' attention rows over all keys."""
    a = _check(attn, grid)[:, :, 1:, :]
    ent = -(a * torch.log(a.clamp_min(1e-300))).sum(-1)
    return ent.mean((0, 2))


@torch.no_grad()
def attention_statistics(model: nn.Module, dataset: Dataset, grid: Sequence[int], depth: int, prefix: str = "",
                         batch_size: int = 512) -> dict[str, list]:
    """Attention distance, entropy and head diversity of every block of a ViT over ``dataset``.

    ``model`` has modules ``{prefix}blocks.<i>.attn.softmax`` for ``i < depth`` (the reference
    ViT: ``prefix=""``; an MAE's encoder: ``prefix="encoder."``); it runs in eval mode on every
    token. Returns ``{"distance": [depth][H], "entropy": [depth][H], "diversity": [depth],
    "mean_distance": float, "mean_entropy": float, "mean_diversity": float}`` (means over
    blocks, heads and samples; per-sample means are averaged weighting batches by size).
    """
    from ..engine.loading import make_loader

    addresses = [f"{prefix}blocks.{i}.attn.softmax" for i in range(depth)]
    loader, _ = make_loader(dataset, batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    dist_sum: list[torch.Tensor | float] = [0.0] * depth
    ent_sum: list[torch.Tensor | float] = [0.0] * depth
    count = 0
    try:
        for batch in loader:
            sig = taps.run_tapped(model, batch["x"], addresses, owner="model")
            b = batch["x"].shape[0]
            for i, address in enumerate(addresses):
                dist_sum[i] = dist_sum[i] + attention_distance(sig[address], grid) * b
                ent_sum[i] = ent_sum[i] + attention_entropy(sig[address], grid) * b
            count += b
    finally:
        model.train(was_training)
    distance = [(d / count).tolist() for d in dist_sum]  # type: ignore[union-attr]
    entropy = [(e / count).tolist() for e in ent_sum]  # type: ignore[union-attr]
    diversity = [float(torch.tensor(d, dtype=torch.float64).std(unbiased=False)) for d in distance]
    return {
        "distance": distance,
        "entropy": entropy,
        "diversity": diversity,
        "mean_distance": float(torch.tensor(distance, dtype=torch.float64).mean()),
        "mean_entropy": float(torch.tensor(entropy, dtype=torch.float64).mean()),
        "mean_diversity": float(torch.tensor(diversity, dtype=torch.float64).mean()),
    }
