"""Generalized normalized (non-causal) linear attention, and a ViT that uses it (LinFusion).

Liu et al. 2024, "LinFusion: 1 GPU, 1 Minute, 16K Image", arXiv:2409.02097: softmax
self-attention is replaced by "a generalized linear attention paradigm" whose two key features
are "attention normalization and non-causal inference"; the new modules are initialised from
the pre-trained model and distilled from it. Following the authors' released module
(``GeneralizedLinearAttention``), for tokens ``x`` ``[B, N, D]`` and each head:

    q = elu(W_q (x + f_q(x))) + 1,   k = elu(W_k (x + f_k(x))) + 1,   v = W_v x
    out_i = q_i^T (sum_j k_j v_j^T / N) / (q_i^T (sum_j k_j / N) + 1e-4)

``f_q``, ``f_k`` are small non-linear maps (Linear -> LayerNorm -> LeakyReLU -> Linear, the
"low-rank approximation of a wide spectrum of popular linear token mixers"); ``W_q, W_k, W_v``
and the output projection are copied from the softmax attention. distillery initialises the
last Linear of ``f_q``, ``f_k`` to zero, so the swapped model starts from the teacher's
projections exactly (the released code keeps PyTorch's default initialisation there). Every
query sees every key (non-causal) and the weights ``q_i^T k_j / sum_j q_i^T k_j`` sum to one
(normalised); time and memory are linear in ``N`` (``[d, d]`` per head instead of ``[N, N]``).

* :class:`LinearAttention` (``qkv``, ``q_map``, ``k_map``, ``proj``: the softmax
  :class:`~distillery.models.transformer.Attention`'s names, so taps keep their paths; it plugs
  into :class:`~distillery.models.transformer.TransformerBlock` as its ``attention``);
* :func:`linearize_attention` swaps every softmax attention of a model in place
  (:func:`distillery.models.surgery.swap_modules`);
* ``linear_vit`` (registered): a ``vit`` with linear attention; ``inherit_teacher_weights``
  copies a softmax ``vit`` teacher's weights in when the distiller is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import surgery
from ..errors import ConfigError, ShapeError
from ..registry import MODELS
from .reference import ViT, build_vit_variant
from .transformer import Attention

__all__ = ["LinearAttention", "LinearViT", "linear_attention", "linearize_attention", "linear_vit", "load_softmax_weights"]


def _feature_map(dim: int, mid: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(dim, mid), nn.LayerNorm(mid), nn.LeakyReLU(), nn.Linear(mid, dim))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Normalised non-causal linear attention on positive features.

    ``q``, ``k``: ``[..., N, d]`` (already mapped to positive values), ``v``: ``[..., N, e]``.
    Returns ``[..., N, e]``: ``out_i = q_i^T (K^T V / N) / (q_i^T mean_j k_j + eps)``. Cost
    ``O(N d e)``; no ``[N, N]`` matrix is formed.
    """
    if q.shape[:-1] != k.shape[:-1] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ShapeError(f"linear_attention: q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)} do not fit.")
    n = k.shape[-2]
    kv = (k.transpose(-2, -1) @ v) / n  # [..., d, e]
    z = q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + eps  # [..., N, 1]
    return (q @ kv) / z


class LinearAttention(nn.Module):
    """LinFusion's generalized linear attention, a drop-in for the reference :class:`Attention`.

    ``x`` ``[B, N, dim]`` -> ``[B, N, dim]``. Modules: ``qkv`` (Linear dim -> 3 dim), ``q_map``,
    ``k_map`` (the non-linear maps ``f_q``, ``f_k``, width ``mid_dim``), ``drop``, ``proj``.
    """

    def __init__(self, dim: int, heads: int, mid_dim: int | None = None, dropout: float = 0.0, eps: float = 1e-4) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"LinearAttention: dim ({dim}) must be divisible by heads ({heads}).")
        mid = int(mid_dim) if mid_dim else dim
        self.heads, self.head_dim, self.eps = heads, dim // heads, float(eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_map = _feature_map(dim, mid)
        self.k_map = _feature_map(dim, mid)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    @classmethod
    def from_attention(cls, attn: Attention, mid_dim: int | None = None) -> LinearAttention:
        """A linear attention with ``attn``'s ``qkv`` and ``proj`` weights (copies)."""
        if not isinstance(attn, Attention):
            raise ConfigError(f"LinearAttention.from_attention needs a reference Attention, got {type(attn).__name__}.")
        dim = attn.qkv.in_features
        new = cls(dim, attn.heads, mid_dim, dropout=getattr(attn.drop, "p", 0.0))
        new.qkv.load_state_dict(attn.qkv.state_dict())
        new.proj.load_state_dict(attn.proj.state_dict())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        wq, wk, wv = self.qkv.weight.chunk(3, dim=0)
        bq, bk, bv = self.qkv.bias.chunk(3, dim=0)
        q = F.linear(x + self.q_map(x), wq, bq)
        k = F.linear(x + self.k_map(x), wk, bk)
        v = F.linear(x, wv, bv)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, h, N, hd]

        q, k, v = F.elu(heads(q)) + 1.0, F.elu(heads(k)) + 1.0, heads(v)
        out = self.drop(linear_attention(q, k, v, self.eps))
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def linearize_attention(model: nn.Module, mid_dim: int | None = None) -> list[str]:
    """Replace every reference :class:`Attention` in ``model`` by :class:`LinearAttention`
    initialised from it (in place); returns the replaced module paths."""
    return surgery.swap_modules(model, Attention, lambda m: LinearAttention.from_attention(m, mid_dim))


class LinearViT(ViT):
    """A :class:`ViT` whose blocks use :class:`LinearAttention` (paths as in ``vit``:
    ``blocks.i.attn.qkv``, ``blocks.i.attn.q_map``, ...).

    Built as LinFusion does it: the softmax ViT first, then every attention converted with
    :meth:`LinearAttention.from_attention` (rather than plugging ``attention=LinearAttention``
    into the blocks), so its ``qkv``/``proj`` start as a softmax model's and its seeded initial
    weights are those of earlier releases.
    """

    def __init__(self, *args, mid_dim: int | None = None, inherit_teacher_weights: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        linearize_attention(self, mid_dim)
        self.inherit_teacher_weights = bool(inherit_teacher_weights)

    def init_from_teacher(self, teacher: nn.Module) -> None:
        """With ``inherit_teacher_weights``, load a softmax ``vit`` teacher's weights (all but the
        new ``q_map``/``k_map``, which keep their zero-output start); called by FrozenTeacher."""
        if not self.inherit_teacher_weights:
            return
        if not isinstance(teacher, ViT):
            raise ConfigError(f"linear_vit inherit_teacher_weights needs a vit teacher, got {type(teacher).__name__}.")
        load_softmax_weights(self, teacher.state_dict())


def load_softmax_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load a softmax model's ``state`` into its linearised copy ``model``: every key must
    match except the linear attentions' ``q_map``/``k_map`` (left as they are)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if ".q_map." not in k and ".k_map." not in k]
    if missing or unexpected:
        raise ConfigError(
            f"linear_vit: the teacher's weights do not fit: missing {sorted(missing)[:6]}, unexpected {sorted(unexpected)[:6]} "
            "(use the same input shape, patch_size, dim, depth, heads and mlp_ratio)."
        )
    return model


@MODELS.register("linear_vit")
def linear_vit(
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int | Sequence[int],
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 2.0,
    dropout: float = 0.0,
    mid_dim: int | None = None,
    inherit_teacher_weights: bool = False,
) -> LinearViT:
    """``vit`` with LinFusion's linear attention in every block (see :class:`LinearAttention`).

    Same parameters and module paths as ``vit`` plus ``blocks.i.attn.q_map`` / ``k_map``
    (width ``mid_dim``, default ``dim``). ``inherit_teacher_weights``: start from a frozen
    softmax ``vit`` teacher's weights (same parameters) when the distiller is built.
    """
    if mid_dim is not None and (isinstance(mid_dim, bool) or not isinstance(mid_dim, int) or mid_dim < 1):
        raise ConfigError(f"linear_vit: mid_dim must be a positive int or null, got {mid_dim!r}.")
    return build_vit_variant(LinearViT, input_shape, num_classes, patch_size, dim, depth, heads, mlp_ratio, dropout,
                             mid_dim=mid_dim, inherit_teacher_weights=inherit_teacher_weights)
