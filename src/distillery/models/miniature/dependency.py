"""DependencyViT: reversed attention, the patch dependency tree it induces, and leaf pruning (Lite).

Ding, Shen, Fan, Chen, Chen, Luo, Tenenbaum & Gan 2023, "Visual Dependency Transformers:
Dependency Tree Emerges from Reversed Attention", arXiv:2304.03282 (CVPR 2023).

Reversed attention (per head ``h``; ``N`` tokens; ``q, k, v`` ``[B, H, N, d_h]``)::

    A_F = softmax_i(q_j . k_i / sqrt(d_h))          forward attention, row j sums to 1
    A_R = A_F^T                                       [i, j]: what child j sends to parent i
    w_jh = softmax_h(x_j W_P / tau)  (head selector P), m_j = sigmoid(MLP(x_j))  (message controller M)
    out_i = sum_j A_R[i, j] w_jh m_j v_j             a child *sends* along a normalised distribution
    A_M[i, j] = sum_h A_R^h[i, j] w_jh m_j           the soft dependency mask, column j sums to m_j

In ordinary attention token ``i`` *gathers* from the others with a normalised distribution
(row of ``A_F``); transposed, each token ``j`` *sends* its message to its parents with one.
``A_M[:, j]`` is child ``j``'s soft parent distribution, so the dependency tree is read from it
(:func:`dependency_parents`: the parent of ``j`` is ``argmax_{i != j} A_M[i, j]``). A token
that no other token sends to is a *leaf*: its received mass ``s_i = sum_{j != i} A_M[i, j]``
(:func:`leaf_scores`) is small. DependencyViT-Lite prunes leaves progressively over the layers
("the leaf nodes which rarely send messages can be pruned without hindering the model
performance"): before block ``b`` only the ``keep[b]`` tokens with the largest received mass in
block ``b - 1`` stay. [inferred] from the abstract and the paper's figure 2: the exact score
(the diagonal left out, the head-weighted sum) and the schedule (``keep_ratios``, one per
block) are this library's; the paper prunes a fixed share of tokens at a few layers.

:class:`DependencyViT` (registered ``dependency_vit``) has no class token: the head reads the
mean of the final normalised tokens (global average pooling, as a dependency parser has no
extra root token). ``keep_ratios`` (one per block, non-increasing, the first 1) makes it the
Lite model; ``select="random"`` drops random tokens instead of leaves (a control). Modules:
``patch_embed``, ``pos_embed``, ``blocks.<i>`` (``norm1``, ``attn`` with ``qkv``,
``head_selector``, ``message_controller``, ``softmax`` (the forward attention ``A_F``
``[B, H, N, N]``), ``dependency`` (an identity the mask ``A_M`` ``[B, N, N]`` passes through: tap
``blocks.<i>.attn.dependency``), ``proj``; ``norm2``, ``mlp``), ``norm``, ``head``; ``forward``
returns logits ``[B, K]``. :func:`multiply_adds` counts the cost of a forward pass.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError, ShapeError
from ...registry import MODELS
from ..transformer import FeedForward, PatchEmbed

__all__ = [
    "SELECT_MODES",
    "DependencyBlock",
    "DependencyViT",
    "ReversedAttention",
    "dependency_parents",
    "dependency_vit",
    "keep_counts",
    "leaf_scores",
    "multiply_adds",
    "reversed_attention",
]

SELECT_MODES = ("leaf", "random")


def reversed_attention(forward_attn: torch.Tensor, send: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Messages sent along the transposed attention.

    Args:
        forward_attn: ``A_F`` ``[B, H, N, N]``, each row (a child ``j``) a distribution over parents ``i``.
        send: ``[B, H, N]``, the share child ``j`` sends through head ``h`` (head selector times
            message controller, ``w_jh m_j``).
        v: values ``[B, H, N, d_h]``.

    Returns:
        ``out`` ``[B, H, N, d_h]`` with ``out[b, h, i] = sum_j A_F[b, h, j, i] send[b, h, j] v[b, h, j]``
        and the dependency mask ``A_M`` ``[B, N, N]``, ``A_M[b, i, j] = sum_h A_F[b, h, j, i] send[b, h, j]``.
    """
    if forward_attn.dim() != 4 or forward_attn.shape[-1] != forward_attn.shape[-2]:
        raise ShapeError(f"reversed_attention: forward_attn must be [B, H, N, N], got {tuple(forward_attn.shape)}.")
    if send.shape != forward_attn.shape[:3] or v.shape[:3] != forward_attn.shape[:3]:
        raise ShapeError(f"reversed_attention: send {tuple(send.shape)} and v {tuple(v.shape)} do not fit "
                         f"forward_attn {tuple(forward_attn.shape)} ([B, H, N] and [B, H, N, d_h]).")
    reverse = forward_attn.transpose(-2, -1) * send.unsqueeze(-2)  # [B, H, N(parent i), N(child j)]
    return reverse @ v, reverse.sum(1)


def leaf_scores(dependency: torch.Tensor) -> torch.Tensor:
    """``[B, N, N]`` dependency mask -> ``[B, N]``: the mass each token receives from the *other*
    tokens, ``s_i = sum_{j != i} A_M[i, j]``; a leaf (no child depends on it) scores about 0."""
    if dependency.dim() != 3 or dependency.shape[-1] != dependency.shape[-2]:
        raise ShapeError(f"leaf_scores: the dependency mask must be [B, N, N], got {tuple(dependency.shape)}.")
    return dependency.sum(-1) - dependency.diagonal(dim1=-2, dim2=-1)


def dependency_parents(dependency: torch.Tensor) -> torch.Tensor:
    """``[B, N, N]`` -> ``[B, N]`` (long): the parent of each child ``j``, ``argmax_{i != j} A_M[i, j]``."""
    if dependency.dim() != 3 or dependency.shape[-1] != dependency.shape[-2]:
        raise ShapeError(f"dependency_parents: the dependency mask must be [B, N, N], got {tuple(dependency.shape)}.")
    n = dependency.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=dependency.device)
    return dependency.masked_fill(eye, float("-inf")).argmax(dim=-2)


def keep_counts(keep_ratios: Sequence[float] | None, depth: int, num_patches: int) -> list[int]:
    """Tokens each block sees: ``max(1, round(r_b * N))`` per block (all ``N`` without ratios)."""
    if keep_ratios is None:
        return [num_patches] * depth
    if isinstance(keep_ratios, (str, bytes)) or not isinstance(keep_ratios, Sequence):
        raise ConfigError(f"dependency_vit: keep_ratios must be a list of {depth} fractions or null, got {keep_ratios!r}.")
    ratios = [float(r) for r in keep_ratios]
    if len(ratios) != depth:
        raise ConfigError(f"dependency_vit: keep_ratios needs one fraction per block ({depth}), got {len(ratios)}.")
    if any(not 0.0 < r <= 1.0 for r in ratios) or ratios[0] != 1.0:
        raise ConfigError(f"dependency_vit: keep_ratios must be fractions in (0, 1] starting with 1.0, got {ratios}.")
    if any(b > a for a, b in itertools.pairwise(ratios)):
        raise ConfigError(f"dependency_vit: keep_ratios must not increase (pruned tokens do not come back), got {ratios}.")
    return [max(1, round(r * num_patches)) for r in ratios]


class ReversedAttention(nn.Module):
    """Multi-head reversed attention (module docstring): ``[B, N, dim]`` -> ``([B, N, dim], A_M [B, N, N])``.

    ``head_selector`` (Linear dim -> heads, no bias) with temperature ``tau``;
    ``message_controller`` (Linear dim -> dim/2, GELU, Linear -> 1, then a sigmoid).
    """

    def __init__(self, dim: int, heads: int, temperature: float = 0.1) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.temperature = float(temperature)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head_selector = nn.Linear(dim, heads, bias=False)
        hidden = max(1, dim // 2)
        self.message_controller = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.softmax = nn.Softmax(dim=-1)
        self.dependency = nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, d_h]
        forward_attn = self.softmax((q @ k.transpose(-2, -1)) * self.scale)  # [B, H, N(child), N(parent)]
        heads = torch.softmax(self.head_selector(x) / self.temperature, dim=-1)  # [B, N, H]
        message = torch.sigmoid(self.message_controller(x))  # [B, N, 1]
        send = (heads * message).transpose(1, 2)  # [B, H, N]
        out, dependency = reversed_attention(forward_attn, send, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), self.dependency(dependency)


class DependencyBlock(nn.Module):
    """Pre-norm block with reversed attention: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``;
    returns the tokens ``[B, N, dim]`` and the block's dependency mask ``[B, N, N]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, temperature: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ReversedAttention(dim, heads, temperature)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, max(1, round(dim * mlp_ratio)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        msg, dependency = self.attn(self.norm1(x))
        x = x + msg
        return x + self.mlp(self.norm2(x)), dependency


class DependencyViT(nn.Module):
    """DependencyViT (full: every token in every block) or DependencyViT-Lite (``keep_ratios``).

    ``x`` ``[B, C, H, W]`` -> logits ``[B, K]``; :meth:`trace` also returns the kept patch
    indices and dependency masks of every block.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, patch: tuple[int, int], dim: int, depth: int,
                 heads: int, mlp_ratio: float, keep_ratios: Sequence[float] | None = None, select: str = "leaf",
                 temperature: float = 0.1, inherit_teacher_weights: bool = False) -> None:
        super().__init__()
        self.input_shape = input_shape
        self.grid = (input_shape[1] // patch[0], input_shape[2] // patch[1])
        self.num_patches = self.grid[0] * self.grid[1]
        self.keep = keep_counts(keep_ratios, depth, self.num_patches)
        self.select = select
        self.inherit_teacher_weights = bool(inherit_teacher_weights)
        self.patch_embed = PatchEmbed(2, input_shape[0], dim, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(DependencyBlock(dim, heads, mlp_ratio, temperature) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def init_from_teacher(self, teacher: nn.Module) -> None:
        """With ``inherit_teacher_weights``, start from a frozen ``dependency_vit`` teacher's weights
        (same shape; pruning has no weights, so the full model's fit the Lite one); called by FrozenTeacher."""
        if not self.inherit_teacher_weights:
            return
        if not isinstance(teacher, DependencyViT):
            raise ConfigError(f"dependency_vit inherit_teacher_weights needs a dependency_vit teacher, got {type(teacher).__name__}.")
        try:
            self.load_state_dict(teacher.state_dict())
        except RuntimeError as exc:
            raise ConfigError(f"dependency_vit inherit_teacher_weights: the teacher's weights do not fit ({exc}); "
                              "use the same input, patch_size, dim, depth, heads and mlp_ratio.") from None

    def _choose(self, dependency: torch.Tensor, n_keep: int) -> torch.Tensor:
        """Positions (in the current sequence) of the ``n_keep`` tokens kept, increasing: ``[B, n_keep]``."""
        if self.select == "leaf":
            score = leaf_scores(dependency.detach())
        else:
            score = torch.rand(dependency.shape[:2], device=dependency.device)
        return torch.topk(score, n_keep, dim=1).indices.sort(dim=1).values

    def trace(self, x: torch.Tensor) -> dict[str, Any]:
        """``logits`` ``[B, K]``, ``kept`` (per block the original patch indices it saw, ``[B, n_b]``)
        and ``dependency`` (per block its mask ``[B, n_b, n_b]``)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ShapeError(f"dependency_vit: input must be [B, {', '.join(map(str, self.input_shape))}], got {tuple(x.shape)}.")
        t = self.patch_embed(x) + self.pos_embed  # [B, N, dim]
        index = torch.arange(self.num_patches, device=x.device).expand(x.shape[0], -1)
        kept: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for b, block in enumerate(self.blocks):
            if self.keep[b] < t.shape[1]:
                pos = self._choose(masks[-1], self.keep[b])
                t = torch.gather(t, 1, pos.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
                index = torch.gather(index, 1, pos)
            t, dependency = block(t)
            kept.append(index)
            masks.append(dependency)
        logits = self.head(self.norm(t).mean(1))
        return {"logits": logits, "kept": kept, "dependency": masks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x)["logits"]


def multiply_adds(model: DependencyViT) -> int:
    """Multiply-adds of one forward pass of one input: every matrix product (linear layers,
    the patch convolution, ``q k^T`` and the message aggregation), as
    :class:`torch.utils.flop_counter.FlopCounterMode` counts them (its FLOPs are 2 per
    multiply-add); biases, normalisations, softmaxes, the pooling and the token selection are
    left out. Per block with ``n`` tokens, width ``d``, ``H`` heads, MLP width ``f``:
    ``3 n d^2`` (qkv) ``+ n d H`` (head selector) ``+ n d (d/2) + n (d/2)`` (message controller)
    ``+ 2 n^2 d`` (scores, aggregation) ``+ n d^2`` (proj) ``+ 2 n d f`` (MLP)."""
    if not isinstance(model, DependencyViT):
        raise ConfigError(f"multiply_adds: needs a DependencyViT, got {type(model).__name__}.")
    d = model.pos_embed.shape[-1]
    conv = model.patch_embed.proj
    total = model.num_patches * conv.in_channels * math.prod(conv.kernel_size) * d
    for n, block in zip(model.keep, model.blocks):
        heads = block.attn.heads
        half = block.attn.message_controller[0].out_features
        f = block.mlp.fc1.out_features
        total += 3 * n * d * d + n * d * heads + n * d * half + n * half + 2 * n * n * d + n * d * d + 2 * n * d * f
    return int(total + d * model.head.out_features)


@MODELS.register("dependency_vit")
def dependency_vit(
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int | Sequence[int] = 2,
    dim: int = 32,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    keep_ratios: Sequence[float] | None = None,
    select: str = "leaf",
    temperature: float = 0.1,
    inherit_teacher_weights: bool = False,
) -> DependencyViT:
    """DependencyViT (Ding et al. 2023, arXiv:2304.03282) for images ``(C, H, W)``: reversed
    attention in every block, mean-pooled head; with ``keep_ratios`` the Lite model.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: the number of logits.
        patch_size: a side or ``(height, width)`` dividing ``H`` and ``W``.
        dim, depth, heads, mlp_ratio: as ``vit`` (``heads`` divides ``dim``).
        keep_ratios: ``null`` (full model) or one fraction per block, starting at 1.0 and
            non-increasing: block ``b`` sees ``round(r_b * N)`` tokens.
        select: ``leaf`` (prune the tokens least depended on) or ``random`` (a control).
        temperature: the head selector's softmax temperature (0.1, the paper's appendix D.1 as
            the timm re-implementation reads it).
        inherit_teacher_weights: start from a frozen ``dependency_vit`` teacher's weights.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ConfigError(f"dependency_vit: input_shape must be (C, H, W), got {shape}.")
    patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if len(patch) != 2 or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in patch):
        raise ConfigError(f"dependency_vit: patch_size must be a positive int or two of them, got {patch_size!r}.")
    if shape[1] % patch[0] or shape[2] % patch[1]:
        raise ConfigError(f"dependency_vit: patch_size {patch_size!r} must divide the image size {shape[1:]}.")
    for name, v in (("dim", dim), ("depth", depth), ("heads", heads), ("num_classes", num_classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"dependency_vit: {name} must be a positive int, got {v!r}.")
    if dim % heads:
        raise ConfigError(f"dependency_vit: dim ({dim}) must be divisible by heads ({heads}).")
    if float(mlp_ratio) <= 0:
        raise ConfigError(f"dependency_vit: mlp_ratio must be > 0, got {mlp_ratio!r}.")
    if select not in SELECT_MODES:
        raise ConfigError(f"dependency_vit: select must be one of {SELECT_MODES}, got {select!r}.")
    if not float(temperature) > 0:
        raise ConfigError(f"dependency_vit: temperature must be > 0, got {temperature!r}.")
    return DependencyViT(shape, num_classes, patch, dim, depth, heads, float(mlp_ratio), keep_ratios, select,
                         float(temperature), inherit_teacher_weights)
