"""The pre-norm transformer block and the patch embedding, written once for every ViT in distillery.

Vaswani et al. 2017 ("Attention Is All You Need", arXiv:1706.03762) for the block, in the
pre-norm arrangement of Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words",
arXiv:2010.11929): ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``, on tokens ``[B, N, dim]``.
The reference ``vit`` (:mod:`~distillery.models.reference`), the MAE decoder
(:mod:`~distillery.models.mae`), LinFusion's ``linear_vit``
(:mod:`~distillery.models.linear_attention`), PH-Reg's ``register_vit`` and Hybrid Distill's
``token_masking_vit`` (:mod:`~distillery.models.miniature`) are all built from these modules.

The attention is a pluggable part: :class:`TransformerBlock` takes ``attention``, a callable
``attention(dim=..., heads=..., dropout=...) -> nn.Module`` mapping ``[B, N, dim]`` to
``[B, N, dim]`` (default: the softmax :class:`Attention`;
:class:`~distillery.models.linear_attention.LinearAttention` fits too). Attention maps are not
returned by ``forward``: the softmax :class:`Attention` computes its probabilities in a
submodule ``softmax`` (``[B, heads, N, N]``), so a method that needs them taps
``blocks.<i>.attn.softmax`` (Hybrid Distill's token scorer, attention-map objectives); linear
attention never forms them.

Submodule names are the state-dict keys of saved checkpoints, and the order in which the
modules are created fixes the seeded initial weights; neither may change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["AttentionFactory", "Attention", "FeedForward", "PatchEmbed", "TransformerBlock"]

AttentionFactory = Callable[..., nn.Module]
"""``attention(dim=..., heads=..., dropout=...)`` -> a module mapping ``[B, N, dim]`` to ``[B, N, dim]``."""


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``[B, C, L]`` or ``[B, C, H, W]`` -> ``[B, N, dim]``.

    ``proj`` is a convolution with kernel and stride ``patch`` (``(p,)`` in 1D, ``(ph, pw)`` in
    2D); tokens come row-major (the order of :func:`~distillery.models.mae.patchify`).
    """

    def __init__(self, dims: int, cin: int, dim: int, patch: tuple[int, ...]) -> None:
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        ks = patch[0] if dims == 1 else patch
        self.proj = conv(cin, dim, ks, stride=ks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head softmax self-attention written out, so the probabilities pass through ``softmax``.

    ``softmax(q k^T / sqrt(head_dim)) v`` per head (Vaswani et al. 2017). ``x`` ``[B, N, dim]``
    -> ``[B, N, dim]``. Modules: ``qkv`` (Linear dim -> 3 dim), ``softmax`` (``nn.Softmax(-1)``,
    output ``[B, heads, N, N]``: tap it for attention maps), ``drop``, ``proj``.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, head_dim]
        attn = self.softmax((q @ k.transpose(-2, -1)) * self.scale)
        out = self.drop(attn) @ v  # [B, heads, N, head_dim]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """``fc1 -> act (GELU) -> fc2``: ``[..., dim]`` -> ``[..., hidden]`` -> ``[..., dim]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; ``[B, N, dim]`` -> same.

    Modules, created in this order: ``norm1`` (LayerNorm), ``attn`` (``attention(dim=dim,
    heads=heads, dropout=dropout)``, default :class:`Attention`), ``norm2``, ``mlp``
    (:class:`FeedForward` of width ``round(dim * mlp_ratio)``, at least 1).

    Example:
        >>> from distillery.models.linear_attention import LinearAttention
        >>> block = TransformerBlock(16, 2, mlp_ratio=2.0, dropout=0.0, attention=LinearAttention)
        >>> block(torch.zeros(3, 5, 16)).shape
        torch.Size([3, 5, 16])
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, attention: AttentionFactory = Attention) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = attention(dim=dim, heads=heads, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, max(1, int(round(dim * mlp_ratio))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
