"""Inter-layer similarity of a block stack, and the contiguous intervals it makes redundant (PPCL).

Ma, Peng, Zhu, Xie, Chen, Lu 2025, "Pluggable Pruning with Contiguous Layer Distillation for
Diffusion Transformers" (PPCL), arXiv:2511.16156: "we identify redundant layer intervals
through a linear probing mechanism combined with the first-order differential trend analysis
of similarity metrics". The abstract gives no formulas; this module is distillery's reading
of that sentence, on the hidden states ``h_0 .. h_L`` at the boundaries of an ``L``-block
stack (``h_0`` the input of block 0, ``h_i`` the output of block ``i - 1``), each ``[N, D]``:

* similarity: linear CKA (Kornblith et al. 2019, arXiv:1905.00414),
  ``CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with column-centred
  ``X_c, Y_c`` (:func:`linear_cka`);
* linear probing: how well one linear map replaces the interval ``[a, b)``: ridge regression
  ``h_b ~ [h_a, 1] W`` fitted on half of the samples and scored by ``R^2`` on the other half
  (:func:`linear_substitutability`);
* first-order trend: with ``s_i = CKA(h_i, h_{i+1})`` (block ``i``'s input vs its output),
  ``delta_i = s_i - s_{i-1}`` for ``i = 1..L-1``. A jump ``|delta_i| > mean|delta| + std|delta|``
  marks a *break* between blocks ``i - 1`` and ``i``: an interval may not span it
  (:func:`similarity_profile`);
* intervals: disjoint runs of blocks with ``num_remove`` blocks in total that minimise
  ``sum cost(a, b)``, ``cost(a, b) = 1 - (CKA(h_a, h_b) + clip(R^2(h_a -> h_b), 0, 1)) / 2``,
  by dynamic programming over the block boundaries (:func:`find_redundant_intervals`). If the
  breaks make the budget impossible, the weakest breaks are dropped one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import taps
from ..errors import ConfigError, ShapeError

__all__ = [
    "LayerProfile",
    "boundary_features",
    "find_redundant_intervals",
    "interval_cost",
    "linear_cka",
    "linear_substitutability",
    "similarity_profile",
]


def _matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().double()
    if x.ndim < 2:
        raise ShapeError(f"{name}: expected features [N, ...] with N samples, got shape {list(x.shape)}.")
    return x.reshape(x.shape[0], -1)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same ``N`` samples.

    ``x``: ``[N, D1]`` (or ``[N, ...]``, flattened), ``y``: ``[N, D2]``. Returns a float in
    ``[0, 1]`` (1: equal up to an orthogonal map and a scale); 0 if either is constant.
    """
    a, b = _matrix(x, "linear_cka"), _matrix(y, "linear_cka")
    if a.shape[0] != b.shape[0]:
        raise ShapeError(f"linear_cka: both representations need the same samples, got {a.shape[0]} and {b.shape[0]} rows.")
    a = a - a.mean(0, keepdim=True)
    b = b - b.mean(0, keepdim=True)
    cross = (b.T @ a).pow(2).sum()
    norm = torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b)
    return float(cross / norm) if float(norm) > 0 else 0.0


def linear_substitutability(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> float:
    """Held-out ``R^2`` of a ridge-regression map ``y ~ [x, 1] W`` (the "linear probe").

    ``x``: ``[N, D1]``, ``y``: ``[N, D2]``, ``N >= 4``. The first ``N // 2`` samples fit ``W``
    (``(A^T A + ridge * tr(A^T A) / D1 * I)^-1 A^T y``, the bias unpenalised); the rest score
    ``R^2 = 1 - sum (y - y_hat)^2 / sum (y - mean_fit(y))^2``. 1: a linear layer replaces the
    map exactly; can be negative for a map no linear layer follows.
    """
    a, b = _matrix(x, "linear_substitutability"), _matrix(y, "linear_substitutability")
    n = a.shape[0]
    if n != b.shape[0] or n < 4:
        raise ShapeError(f"linear_substitutability: x and y need the same N >= 4 samples, got {a.shape[0]} and {b.shape[0]}.")
    half = n // 2
    xa, ya, xb, yb = a[:half], b[:half], a[half:], b[half:]
    mx, my = xa.mean(0, keepdim=True), ya.mean(0, keepdim=True)
    xc, yc = xa - mx, ya - my
    gram = xc.T @ xc
    lam = float(ridge) * float(torch.trace(gram)) / max(gram.shape[0], 1) + 1e-12
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
    pred = (xb - mx) @ w + my
    sse = (yb - pred).pow(2).sum()
    sst = (yb - my).pow(2).sum()
    return float(1.0 - sse / sst) if float(sst) > 0 else (1.0 if float(sse) == 0 else 0.0)


@torch.no_grad()
def boundary_features(model: nn.Module, x: torch.Tensor, container: str = "blocks") -> list[torch.Tensor]:
    """``[h_0, ..., h_L]``: the input of block 0 and the output of each block of the stack at
    ``container`` (an ``nn.ModuleList``/``nn.Sequential``), each flattened to ``[N, D]``.

    ``model`` runs once on ``x`` in eval mode (restored after).
    """
    stack = taps.resolve(model, container, owner="model")
    if not isinstance(stack, (nn.ModuleList, nn.Sequential)) or len(stack) == 0:
        raise ConfigError(f"boundary_features: {container!r} must be a non-empty nn.ModuleList or nn.Sequential of blocks.")
    names = [f"{container}.0:input"] + [f"{container}.{i}" for i in range(len(stack))]
    was = model.training
    model.eval()
    try:
        sig = taps.run_tapped(model, x, names, owner="model")
    finally:
        model.train(was)
    return [sig[n].detach().reshape(x.shape[0], -1) for n in names]


@dataclass
class LayerProfile:
    """Similarity statistics of an ``L``-block stack (see the module docstring).

    ``cka [L+1, L+1]`` (CKA between boundaries), ``adjacent [L]`` (``s_i = CKA(h_i, h_{i+1})``,
    block ``i``'s input vs output), ``trend [L-1]`` (entry ``j`` is ``s_{j+1} - s_j``),
    ``breaks`` (indices ``i`` in ``1..L-1`` with ``|trend[i-1]| > threshold``: no interval may
    hold both block ``i - 1`` and block ``i``), ``threshold`` (``mean + std`` of ``|trend|``),
    ``probe`` (``{(a, b): R^2}`` of the intervals scored so far).
    """

    cka: torch.Tensor
    adjacent: torch.Tensor
    trend: torch.Tensor
    breaks: list[int]
    threshold: float
    features: list[torch.Tensor] = field(repr=False, default_factory=list)
    probe: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return len(self.features) - 1

    def substitutability(self, a: int, b: int) -> float:
        """Held-out ``R^2`` of a linear map ``h_a -> h_b`` (cached)."""
        if (a, b) not in self.probe:
            self.probe[(a, b)] = linear_substitutability(self.features[a], self.features[b])
        return self.probe[(a, b)]

    def cost(self, a: int, b: int) -> float:
        """``1 - (CKA(h_a, h_b) + clip(R^2, 0, 1)) / 2``: the cost of removing blocks ``a..b-1``."""
        r2 = min(max(self.substitutability(a, b), 0.0), 1.0)
        return 1.0 - 0.5 * (float(self.cka[a, b]) + r2)


def similarity_profile(features: Sequence[torch.Tensor]) -> LayerProfile:
    """CKA matrix, adjacent similarity, its first-order trend and the breaks of ``[h_0..h_L]``."""
    feats = [_matrix(f, "similarity_profile").float() for f in features]
    if len(feats) < 2:
        raise ShapeError("similarity_profile: needs at least the input and the output of one block.")
    n = len(feats)
    cka = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            cka[i, j] = cka[j, i] = linear_cka(feats[i], feats[j])
    adjacent = torch.tensor([float(cka[i, i + 1]) for i in range(n - 1)], dtype=torch.float64)
    trend = adjacent[1:] - adjacent[:-1]
    threshold = math.inf
    breaks: list[int] = []
    if trend.numel() >= 2:
        mag = trend.abs()
        threshold = float(mag.mean() + mag.std(unbiased=False))
        breaks = [j + 1 for j in range(trend.numel()) if float(mag[j]) > threshold]
    return LayerProfile(cka, adjacent, trend, breaks, threshold, feats)


def interval_cost(profile: LayerProfile, a: int, b: int) -> float:
    """:meth:`LayerProfile.cost` of removing blocks ``a..b-1``."""
    return profile.cost(a, b)


def _best_intervals(profile: LayerProfile, k: int, breaks: set[int], max_len: int | None) -> tuple[float, list[tuple[int, int]]] | None:
    L = profile.num_blocks
    inf = math.inf
    # keep[i][r]: first i blocks decided, block i-1 kept (or i == 0), r removed; gone[i][r]: block i-1 removed
    keep = [[inf] * (k + 1) for _ in range(L + 1)]
    gone = [[inf] * (k + 1) for _ in range(L + 1)]
    back: dict[tuple[str, int, int], tuple] = {}
    keep[0][0] = 0.0
    for i in range(1, L + 1):
        for r in range(k + 1):
            options = [(keep[i - 1][r], ("keep", i - 1, r)), (gone[i - 1][r], ("gone", i - 1, r))]
            val, arg = min(options, key=lambda t: t[0])
            keep[i][r], back[("keep", i, r)] = val, arg
        for a in range(i - 1, -1, -1):  # interval [a, i)
            length = i - a
            if max_len is not None and length > max_len:
                break
            if any(a < br < i for br in breaks):
                break
            c = None
            for r in range(length, k + 1):
                prev = keep[a][r - length]
                if prev == inf:
                    continue
                if c is None:
                    c = profile.cost(a, i)
                if prev + c < gone[i][r]:
                    gone[i][r] = prev + c
                    back[("gone", i, r)] = ("keep", a, r - length, (a, i))
    best, state = min((keep[L][k], ("keep", L, k)), (gone[L][k], ("gone", L, k)), key=lambda t: t[0])
    if best == inf:
        return None
    out: list[tuple[int, int]] = []
    kind, i, r = state
    while i > 0:
        step = back[(kind, i, r)]
        if kind == "gone":
            out.append(step[3])
        kind, i, r = step[0], step[1], step[2]
    return best, sorted(out)


def find_redundant_intervals(
    profile: LayerProfile, num_remove: int, max_len: int | None = None
) -> list[tuple[int, int]]:
    """Disjoint half-open block intervals ``[(a, b), ...]`` with ``num_remove`` blocks in total
    that minimise the summed :meth:`LayerProfile.cost`, no interval spanning a break of the
    similarity trend (the weakest breaks are relaxed until the budget fits).

    ``num_remove`` in ``0..L``; ``max_len`` bounds an interval's length (``None``: no bound).
    """
    L = profile.num_blocks
    if isinstance(num_remove, bool) or not isinstance(num_remove, int) or not 0 <= num_remove <= L:
        raise ConfigError(f"find_redundant_intervals: num_remove must be an int in 0..{L}, got {num_remove!r}.")
    if num_remove == 0:
        return []
    breaks = sorted(profile.breaks, key=lambda i: float(profile.trend[i - 1].abs()))  # weakest first
    while True:
        found = _best_intervals(profile, num_remove, set(breaks), max_len)
        if found is not None:
            return found[1]
        if not breaks:
            raise ConfigError(f"find_redundant_intervals: no {num_remove} blocks can be removed with max_len={max_len}.")
        breaks.pop(0)
