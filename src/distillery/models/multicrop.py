"""A network that takes a stack of crops and returns one output per crop: ``[V, B, K]``.

The engine's :class:`~distillery.engine.distiller.Distiller` runs one student forward per batch.
For DINO-style multi-crop self-distillation (Caron et al. 2021, arXiv:2104.14294) that one
forward must cover every crop: :class:`MultiCropNet` accepts the dict of crop groups made by
:class:`~distillery.data.multicrop.MultiCrop` (``{"global": [Vg, B, ...], "local": [Vl, B,
...]}``), runs each group as one batch (crops of one size together, as DINO's
``MultiCropWrapper`` does) and returns

* ``logits``: ``[Vg + Vl, B, K]``, global views first (what the ``dino`` objective reads);
* ``global`` / ``local``: ``[Vg, B, K]`` / ``[Vl, B, K]`` (the image-level and region-level
  outputs; CMD's two crop levels);
* ``embedding``: ``[Vg + Vl, B, D]``, the pooled backbone features.

Given a plain tensor ``[B, ...]`` (evaluation) it returns ``logits [B, K]``, ``embedding [B,
D]`` (the frozen feature used by linear probes and retrieval) and ``attention [B, N]`` (the
pooling weights over the ``N`` patch tokens).

The network is ``backbone`` (input -> feature map ``[B, D, *spatial]`` or tokens ``[B, N,
D]``) -> ``pool`` (mean, or MIL attention: :mod:`distillery.models.mil`) -> ``head`` (the DINO
projection head: :class:`DINOHead`). :func:`multicrop_convnet` (registered as
``multicrop_convnet``) builds one with a small CNN backbone for 1D signals or 2D images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ShapeError
from ..registry import MODELS
from .mil import MeanPool, MILAttentionPool
from .reference import ConvBlock, _activation, _ints, _norm, _shape, _strides

__all__ = ["POOLS", "ConvTokens", "DINOHead", "MultiCropNet", "multicrop_convnet"]

POOLS = ("mean", "mil")


class DINOHead(nn.Module):
    """DINO projection head (Caron et al. 2021): MLP -> L2-normalised bottleneck -> K prototypes.

    ``mlp``: ``Linear(D, hidden) - GELU - Linear(hidden, hidden) - GELU - Linear(hidden,
    bottleneck)``; then ``z / ||z||``; then ``last``: a linear map to ``out_dim`` whose weight
    rows are normalised to unit length in the forward pass (DINO's weight-normalised last layer
    with its norm fixed to 1). ``[N, D] -> [N, out_dim]``.

    ``norm="batch"``: DINO's ``use_bn_in_head`` option, a batch normalisation after each hidden
    linear layer (``Linear - BN - GELU``); here always with the statistics of the batch at hand
    (``track_running_stats=False``), in training and in eval mode alike, as DINO's teacher,
    which runs in training mode, uses them. It removes what all samples of a batch share, which
    in a small CNN with ReLU features and mean pooling is nearly everything: without it the
    head's outputs of different images have a cosine of about 0.999 at initialisation and the
    centred, sharpened targets carry no information about the sample. Needs batches of >= 2.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, bottleneck: int = 32, norm: str = "none") -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden", hidden), ("bottleneck", bottleneck)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"DINOHead: {name} must be a positive int, got {v!r}.")
        if norm not in ("none", "batch"):
            raise ConfigError(f"DINOHead: norm must be 'none' or 'batch', got {norm!r}.")

        def bn() -> nn.Module:
            return nn.BatchNorm1d(hidden, track_running_stats=False) if norm == "batch" else nn.Identity()

        layers = [nn.Linear(in_dim, hidden), bn(), nn.GELU(), nn.Linear(hidden, hidden), bn(), nn.GELU(),
                  nn.Linear(hidden, bottleneck)]
        # norm="none" keeps the original layer indices (mlp.0, mlp.2, mlp.4) of saved weights
        self.mlp = nn.Sequential(*[m for m in layers if not isinstance(m, nn.Identity)])
        self.last = nn.Linear(bottleneck, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-8)
        return F.linear(z, F.normalize(self.last.weight, dim=1, eps=1e-8))


class ConvTokens(nn.Module):
    """A plain CNN whose feature map is returned as tokens: ``blocks.i`` (``conv``, ``norm``,
    ``act``); ``[B, C, H, W] -> [B, h*w, D]`` (2D) or ``[B, (C,) L] -> [B, l, D]`` (1D)."""

    def __init__(self, dims: int, cin: int, channels: Sequence[int], strides: Sequence[int], kernel_size: int,
                 norm: str, activation: str) -> None:
        super().__init__()
        self.dims = dims
        self.blocks = nn.ModuleList()
        for cout, stride in zip(channels, strides):
            self.blocks.append(ConvBlock(dims, cin, cout, kernel_size, stride, norm, activation, "multicrop_convnet"))
            cin = cout
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 1 and x.ndim == 2:
            x = x.unsqueeze(1)
        if x.ndim != self.dims + 2:
            expected = "[B, L] or [B, C, L]" if self.dims == 1 else "[B, C, H, W]"
            raise ShapeError(f"multicrop_convnet expects crops {expected}; got {list(x.shape)}.")
        for block in self.blocks:
            x = block(x)
        return x.flatten(2).transpose(1, 2)  # [B, N, D]


class MultiCropNet(nn.Module):
    """``backbone -> pool -> head`` over a single input or a dict of crop groups (see module doc).

    Args:
        backbone: maps ``[N, ...]`` to tokens ``[N, P, D]`` or a feature map ``[N, D, *spatial]``.
        dim: ``D``.
        pool: ``"mean"`` (global average pooling) or ``"mil"`` (gated attention MIL pooling,
            :class:`~distillery.models.mil.MILAttentionPool`), or a module with the same
            interface (``tokens -> (pooled, weights)``).
        head: the projection, ``[N, D] -> [N, K]`` (e.g. :class:`DINOHead`).
        tokens_last: ``True`` when the backbone already returns ``[N, P, D]``.

    Modules: ``backbone``, ``pool``, ``head``.
    """

    def __init__(self, backbone: nn.Module, dim: int, pool: str | nn.Module, head: nn.Module, *,
                 attention_hidden: int = 32, tokens_last: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        if isinstance(pool, str):
            if pool not in POOLS:
                raise ConfigError(f"MultiCropNet: pool must be one of {POOLS}, got {pool!r}.")
            pool = MeanPool() if pool == "mean" else MILAttentionPool(dim, attention_hidden)
        self.pool = pool
        self.head = head
        self.tokens_last = tokens_last

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding [N, D], pooling weights [N, P])`` of one batch of same-size inputs."""
        tokens = self.backbone(x)
        if not self.tokens_last:
            tokens = tokens.flatten(2).transpose(1, 2)
        return self.pool(tokens)

    def forward(self, x: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(x, torch.Tensor):
            emb, att = self.embed(x)
            return {"logits": self.head(emb), "embedding": emb, "attention": att}
        if not isinstance(x, Mapping) or not x:
            raise ShapeError(f"MultiCropNet takes a tensor or a dict of crop groups [V, B, ...]; got {type(x).__name__}.")
        out: dict[str, torch.Tensor] = {}
        logits, embeddings = [], []
        batch = None
        for name, crops in x.items():
            if crops.ndim < 3:
                raise ShapeError(f"MultiCropNet: crop group {name!r} must be [V, B, ...], got {list(crops.shape)}.")
            v, b = crops.shape[0], crops.shape[1]
            if batch is not None and b != batch:
                raise ShapeError(f"MultiCropNet: crop groups disagree on the batch size ({batch} vs {b} in {name!r}).")
            batch = b
            if v == 0:
                continue
            emb, _ = self.embed(crops.reshape(v * b, *crops.shape[2:]))
            k = self.head(emb)
            out[name] = k.reshape(v, b, -1)
            logits.append(out[name])
            embeddings.append(emb.reshape(v, b, -1))
        if not logits:
            raise ShapeError("MultiCropNet: every crop group is empty.")
        out["logits"] = torch.cat(logits, 0)
        out["embedding"] = torch.cat(embeddings, 0)
        return out


@MODELS.register("multicrop_convnet")
def multicrop_convnet(
    input_shape: Sequence[int],
    channels: Sequence[int] = (32, 64),
    strides: Sequence[int] | None = None,
    kernel_size: int = 3,
    norm: str = "group",
    activation: str = "relu",
    pool: str = "mil",
    attention_hidden: int = 32,
    out_dim: int = 64,
    head_hidden: int = 128,
    bottleneck: int = 32,
    head_norm: str = "none",
) -> MultiCropNet:
    """CNN -> patch tokens -> mean or MIL-attention pooling -> DINO head, for multi-crop inputs.

    ``input_shape``: ``(C, H, W)`` (2D) or ``(L,)`` / ``(C, L)`` (1D). Modules:
    ``backbone.blocks.i`` (``conv``, ``norm``, ``act``), ``pool`` (``V``, ``U``, ``w`` for
    ``pool="mil"``), ``head.mlp``, ``head.last``. ``out_dim`` is the number of DINO prototypes
    ``K`` (unrelated to the number of classes). ``strides`` default to 1 for the first block and
    2 after; ``norm``: group (default; BatchNorm statistics differ between crop sizes and
    between the EMA teacher and the student), batch or none. ``head_norm``: ``"batch"`` puts
    batch normalisation into the head's MLP (DINO's ``use_bn_in_head``, see :class:`DINOHead`).
    """
    shape = _shape(input_shape, "multicrop_convnet")
    if len(shape) not in (1, 2, 3):
        raise ConfigError(f"multicrop_convnet: input_shape must be (L,), (C, L) or (C, H, W), got {shape}.")
    chans = _ints(channels, "channels", "multicrop_convnet")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ConfigError(f"multicrop_convnet: kernel_size must be a positive int, got {kernel_size!r}.")
    _activation(activation, "multicrop_convnet")
    _norm(norm, 8, 1, "multicrop_convnet")
    if pool not in POOLS:
        raise ConfigError(f"multicrop_convnet: pool must be one of {POOLS}, got {pool!r}.")
    dims = 2 if len(shape) == 3 else 1
    cin = shape[0] if len(shape) >= 2 else 1
    backbone = ConvTokens(dims, cin, chans, _strides(strides, len(chans), "multicrop_convnet"), kernel_size, norm, activation)
    head = DINOHead(backbone.out_dim, out_dim, head_hidden, bottleneck, norm=head_norm)
    return MultiCropNet(backbone, backbone.out_dim, pool, head, attention_hidden=attention_hidden)
