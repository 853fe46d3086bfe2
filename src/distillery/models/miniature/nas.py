"""A small DARTS supernet: cells of mixed operations weighted by architecture parameters.

Liu, Simonyan, Yang 2019, "DARTS: Differentiable Architecture Search" (ICLR),
arXiv:1806.09055. Every edge ``(i -> j)`` of a cell computes a *mixed operation*
``o_bar(x) = sum_o softmax(alpha_e)_o * o(x)`` over the candidate operations; a node is the sum
of its incoming edges. The architecture parameters ``alpha`` ``[num_edges, num_ops]`` are
shared by all cells (DARTS shares them across its normal cells). After the search the
*derived* (discretised) architecture keeps, for every node, its ``top_k`` strongest incoming
edges (strength = the largest softmax weight of a non-``none`` op) with that op alone
(:meth:`DartsSupernet.genotype`, :meth:`DartsSupernet.discrete_weights`).

Simplifications of the miniature: one input per cell (the previous cell's output, not the
previous two), no reduction cells, a cell's output is ``project(concat(nodes))`` back to ``C``
channels; operations use BatchNorm without affine parameters, as in the DARTS search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, ShapeError
from ...registry import MODELS

__all__ = ["DEFAULT_OPS", "OPS", "DartsSupernet", "darts", "edge_index"]


class ReLUConvBN(nn.Module):
    """``relu -> conv (k x k, same padding) -> bn`` (affine-free BN, as in the DARTS search)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.relu(x)))


class Zero(nn.Module):
    """The ``none`` operation: zeros of the input's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class PoolBN(nn.Module):
    """3x3 pooling (stride 1) followed by affine-free BN, as DARTS does for pooling in the search."""

    def __init__(self, kind: str, channels: int) -> None:
        super().__init__()
        self.kind = kind
        self.pool = nn.MaxPool2d(3, 1, 1) if kind == "max" else nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max" and x.device.type == "cpu":
            # the same values; PyTorch's CPU max pooling is several times faster in channels-last
            return self.bn(self.pool(x.contiguous(memory_format=torch.channels_last)).contiguous())
        return self.bn(self.pool(x))


OPS = {
    "none": lambda c: Zero(),
    "skip_connect": lambda c: nn.Identity(),
    "conv_3x3": lambda c: ReLUConvBN(c, c, 3),
    "conv_5x5": lambda c: ReLUConvBN(c, c, 5),
    "dil_conv_3x3": lambda c: ReLUConvBN(c, c, 3, dilation=2),
    "max_pool_3x3": lambda c: PoolBN("max", c),
    "avg_pool_3x3": lambda c: PoolBN("avg", c),
}
"""Candidate operations by name: ``factory(channels) -> nn.Module`` keeping ``[B, C, H, W]``."""

DEFAULT_OPS = ("skip_connect", "conv_3x3", "max_pool_3x3")


def edge_index(nodes: int) -> list[tuple[int, int]]:
    """The edges ``(source, node)`` of a cell in order: node ``j`` (0-based) reads the cell
    input (source 0) and nodes ``0 .. j-1`` (sources ``1 .. j``); ``nodes * (nodes + 1) / 2`` edges."""
    return [(i, j) for j in range(nodes) for i in range(j + 1)]


class MixedOp(nn.Module):
    """``sum_o w_o * op_o(x)``; operations whose weight is exactly 0 are skipped."""

    def __init__(self, channels: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(OPS[name](channels) for name in ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for w, op in zip(weights.unbind(0), self.ops):
            if not w.requires_grad and float(w) == 0.0:
                continue
            term = w * op(x)
            out = term if out is None else out + term
        return out if out is not None else x.mul(0.0)


class Cell(nn.Module):
    """``preprocess`` (ReLU-conv1x1-BN), ``edges.e`` (:class:`MixedOp`), ``project`` (concat of nodes -> C)."""

    def __init__(self, channels: int, nodes: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.nodes = nodes
        self.preprocess = ReLUConvBN(channels, channels, 1)
        self.edges = nn.ModuleList(MixedOp(channels, ops) for _ in edge_index(nodes))
        self.project = ReLUConvBN(channels * nodes, channels, 1)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess(x)]
        e = 0
        for j in range(self.nodes):
            total = None
            for i in range(j + 1):
                term = self.edges[e](states[i], weights[e])
                total = term if total is None else total + term
                e += 1
            states.append(total)
        return self.project(torch.cat(states[1:], dim=1))


class DartsSupernet(nn.Module):
    """A DARTS supernet for images ``[B, C, H, W]``: ``stem``, ``cells.k``, ``pool``, ``head``.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: output classes.
        channels: width ``C`` of every cell.
        cells: number of cells (all share ``alpha``).
        nodes: intermediate nodes per cell (edges: ``nodes * (nodes + 1) / 2``).
        ops: candidate operation names (keys of :data:`OPS`).
        top_k: incoming edges kept per node by the derived architecture.

    Parameters: ``alpha`` ``[num_edges, num_ops]`` (architecture, initialised ``1e-3 * N(0, 1)``
    as in DARTS) and the operation weights (:meth:`weight_parameters`). ``forward(x)``
    returns logits ``[B, num_classes]`` computed with ``softmax(alpha, -1)``, or with the fixed
    weights set by :meth:`set_fixed_weights` (the derived architecture with inherited weights).

    Example:
        >>> net = darts((1, 8, 8), 10, channels=8, cells=1, nodes=2)
        >>> net(torch.randn(2, 1, 8, 8)).shape, tuple(net.alpha.shape)
        (torch.Size([2, 10]), (3, 3))
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: int,
        cells: int,
        nodes: int,
        ops: Sequence[str],
        top_k: int,
    ) -> None:
        super().__init__()
        self.input_shape = input_shape
        self.op_names = tuple(ops)
        self.nodes = nodes
        self.top_k = top_k
        self.edges = edge_index(nodes)
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        self.cells = nn.ModuleList(Cell(channels, nodes, ops) for _ in range(cells))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(self.edges), len(ops)))
        self.fixed_weights: torch.Tensor | None = None

    # -- parameters -------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        """``[alpha]``: what the architecture step updates."""
        return [self.alpha]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but ``alpha``: what the weight step updates."""
        return [p for name, p in self.named_parameters() if name != "alpha"]

    def mixing_weights(self) -> torch.Tensor:
        """The edge weights in use ``[num_edges, num_ops]``: fixed ones, or ``softmax(alpha)``."""
        return self.fixed_weights if self.fixed_weights is not None else F.softmax(self.alpha, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ShapeError(f"darts expects input [B, {', '.join(map(str, self.input_shape))}]; got {list(x.shape)}.")
        weights = self.mixing_weights()
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h, weights)
        return self.head(self.pool(h).flatten(1))

    # -- the derived architecture ---------------------------------------------------------------
    def genotype(self) -> list[tuple[int, int, str]]:
        """The derived architecture as ``(source, node, op)`` edges, DARTS's rule.

        On each edge the best op is the argmax of ``softmax(alpha_e)`` over ops other than
        ``none``; each node keeps its ``min(top_k, inputs)`` incoming edges with the largest
        such weight (ties: the earlier edge).
        """
        w = F.softmax(self.alpha.detach().float(), dim=-1)
        allowed = torch.tensor([name != "none" for name in self.op_names])
        if not bool(allowed.any()):
            raise ConfigError("darts: the candidate ops contain only 'none'.")
        masked = w.masked_fill(~allowed, -1.0)
        strength, best = masked.max(dim=-1)
        chosen: list[tuple[int, int, str]] = []
        for j in range(self.nodes):
            incoming = [e for e, (_, node) in enumerate(self.edges) if node == j]
            order = sorted(incoming, key=lambda e: (-float(strength[e]), e))
            for e in sorted(order[: min(self.top_k, len(incoming))]):
                chosen.append((self.edges[e][0], j, self.op_names[int(best[e])]))
        return chosen

    def discrete_weights(self, genotype: Sequence[tuple[int, int, str]] | None = None) -> torch.Tensor:
        """One-hot edge weights ``[num_edges, num_ops]`` of a genotype (default: :meth:`genotype`);
        rows of dropped edges are zero."""
        genotype = self.genotype() if genotype is None else genotype
        w = torch.zeros(len(self.edges), len(self.op_names), device=self.alpha.device, dtype=self.alpha.dtype)
        for source, node, op in genotype:
            if (source, node) not in self.edges or op not in self.op_names:
                raise ConfigError(f"darts: edge ({source} -> {node}, {op!r}) is not in this supernet.")
            w[self.edges.index((source, node)), self.op_names.index(op)] = 1.0
        return w

    def set_fixed_weights(self, weights: torch.Tensor | None) -> None:
        """Use ``weights`` ``[num_edges, num_ops]`` instead of ``softmax(alpha)`` (``None``: back to alpha)."""
        if weights is not None and tuple(weights.shape) != tuple(self.alpha.shape):
            raise ShapeError(f"darts: fixed weights must be {list(self.alpha.shape)}, got {list(weights.shape)}.")
        self.fixed_weights = None if weights is None else weights.detach().to(self.alpha.device, self.alpha.dtype)


@MODELS.register("darts")
def darts(
    input_shape: Sequence[int],
    num_classes: int,
    channels: int = 16,
    cells: int = 2,
    nodes: int = 3,
    ops: Sequence[str] = DEFAULT_OPS,
    top_k: int = 2,
) -> DartsSupernet:
    """DARTS supernet (Liu et al. 2019, arXiv:1806.09055) for images (C, H, W).

    Modules: ``stem``, ``cells.k.preprocess``, ``cells.k.edges.e.ops.o``, ``cells.k.project``,
    ``pool``, ``head``; parameter ``alpha`` ``[nodes * (nodes + 1) / 2, len(ops)]``. Default
    ops: skip_connect, conv_3x3, max_pool_3x3 (all of :data:`OPS` are available).
    """
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise ConfigError(f"darts: input_shape must be (C, H, W), got {input_shape!r}.") from None
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ConfigError(f"darts: input_shape must be (C, H, W) with positive sizes, got {input_shape!r}; darts is for images.")
    for name, v in (("channels", channels), ("cells", cells), ("nodes", nodes), ("top_k", top_k), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"darts: {name} must be a positive int, got {v!r}.")
    ops = tuple(ops)
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops or len(set(ops)) != len(ops):
        raise ConfigError(f"darts: ops must be distinct names from {sorted(OPS)}, got {list(ops)}.")
    return DartsSupernet(shape, num_classes, channels, cells, nodes, ops, top_k)
