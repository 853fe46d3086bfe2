"""Where a class-conditional denoiser reads its class: cross-attention fusion, early or late.

W. Cai, Y. Zou, G. Li, C. Gu, C. Zhang, 2026, "EVLF: Early Vision-Language Fusion for
Generative Dataset Distillation", arXiv:2603.07476. Diffusion-based dataset distillation usually
injects the prompt through *late* cross-attention inside the denoiser's decoder, "where textual
prompts tend to dominate the generative process"; EVLF instead aligns the prompt embedding and
the visual latents with "a lightweight cross-attention module at the transition between the
encoder and the generative backbone".

Here the "prompt" of a class ``y`` is ``n_tokens`` learned class tokens ``c_y`` ``(n_tokens,
context_dim)`` (a row of an embedding table with ``num_classes + 1`` rows, the last the null
class of classifier-free guidance), and the "visual latents" are the ``H * W`` positions of a
feature map ``h`` ``(B, C, H, W)``. :class:`ClassCrossAttention` is the fusion block:

.. math::

    q = W_q\\,\\mathrm{GN}(h),\\quad k = W_k c_y,\\quad v = W_v c_y,\\qquad
    h \\leftarrow h + W_o\\,\\big[\\mathrm{softmax}(q k^\\top / \\sqrt{d})\\,v\\big]

per head (``d`` the head width), every position a query over the class tokens; ``W_o`` is
zero-initialised, so the block starts as the identity.

:class:`FusionUNet` (registered as the denoiser ``unet_fusion``) is the engine's
:class:`~.networks.UNet` whose residual blocks see the *time* embedding only: the class enters
through one :class:`ClassCrossAttention`, placed by ``fusion``:

* ``"early"`` (EVLF): on the stem's output, i.e. at the transition from the input encoding
  (pixels here, the VAE latents in the paper) to the denoising backbone, before any residual
  block, so the whole encoder-decoder computes on class-aware features;
* ``"late"`` (the baseline the paper argues against): in the decoder, after the last residual
  block at full resolution, just before the output layer;
* ``"both"``: the two blocks (EVLF added to a denoiser that already has late cross-attention,
  the paper's plug-in setting).

Shapes: ``x_t`` ``(B, C, H, H)``, ``t`` ``(B,)``, ``cond`` ``(B,)`` int labels or ``None`` (the
null class); the output is ``(B, C, H, H)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .denoisers import DENOISERS
from .networks import UNet, _groups, _labels

__all__ = ["FUSIONS", "ClassCrossAttention", "ClassTokens", "FusionUNet", "cross_attention"]

FUSIONS = ("early", "late", "both")


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention per head: ``softmax(q k^T / sqrt(d)) v``.

    ``q`` ``(B, heads, N, d)`` queries (visual positions), ``k``, ``v`` ``(B, heads, M, d)`` keys
    and values (class tokens) -> ``(B, heads, N, d)``."""
    weights = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)
    return weights @ v


class ClassTokens(nn.Module):
    """A class label as ``n_tokens`` learned tokens (the class "prompt"): ``(B,)`` labels (or
    ``None``: the null class ``num_classes``) -> ``(B, n_tokens, dim)``."""

    def __init__(self, num_classes: int, n_tokens: int, dim: int) -> None:
        super().__init__()
        self.num_classes, self.n_tokens, self.dim = int(num_classes), int(n_tokens), int(dim)
        self.table = nn.Embedding(self.num_classes + 1, self.n_tokens * self.dim)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, cond: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        labels = _labels(cond, batch, self.num_classes, device)
        return self.table(labels).reshape(batch, self.n_tokens, self.dim)


class ClassCrossAttention(nn.Module):
    """The fusion block: every position of a feature map attends to the class tokens.

    ``h`` ``(B, channels, H, W)`` and ``context`` ``(B, M, context_dim)`` -> ``(B, channels, H,
    W)``: ``h + W_o attn(W_q GN(h), W_k context, W_v context)`` with ``heads`` heads of width
    ``channels / heads`` (``W_o`` zero-initialised: the identity at initialisation)."""

    def __init__(self, channels: int, context_dim: int, heads: int = 1) -> None:
        super().__init__()
        if heads < 1 or channels % heads:
            raise ConfigError(f"unet_fusion: heads must divide the fused channels {channels}, got heads={heads}.")
        self.channels, self.heads = int(channels), int(heads)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(context_dim, channels)
        self.v = nn.Linear(context_dim, channels)
        self.o = nn.Linear(channels, channels)
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.channels // self.heads).transpose(1, 2)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        tokens = self.norm(h).flatten(2).transpose(1, 2)  # (B, H W, C)
        out = cross_attention(self._heads(self.q(tokens)), self._heads(self.k(context)), self._heads(self.v(context)))
        out = self.o(out.transpose(1, 2).reshape(b, hh * ww, c))
        return h + out.transpose(1, 2).reshape(b, c, hh, ww)


@DENOISERS.register("unet_fusion")
class FusionUNet(UNet):
    """The engine's U-Net with its class read by cross-attention at one place (``fusion``).

    Args:
        in_channels, image_size, channels, blocks, time_dim: as :class:`~.networks.UNet` (the
            residual blocks get the time embedding only).
        num_classes: the number of classes (required: this network exists to be conditioned).
        fusion: ``"early"`` (after the stem, EVLF), ``"late"`` (in the decoder, before the
            output layer) or ``"both"``.
        n_tokens: class tokens per label.
        context_dim: their width (default ``channels[0]``).
        heads: attention heads (must divide ``channels[0]``).

    Both placements act on ``channels[0]``-wide maps at full resolution, so ``early`` and
    ``late`` have exactly the same parameter count.
    """

    shape_kind = "image"

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: tuple[int, int] | list[int] = (32, 64),
                 blocks: int = 1, time_dim: int | None = None, num_classes: int | None = None, fusion: str = "early",
                 n_tokens: int = 4, context_dim: int | None = None, heads: int = 1) -> None:
        if fusion not in FUSIONS:
            raise ConfigError(f"unet_fusion: fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}.")
        if not num_classes:
            raise ConfigError("unet_fusion: the network reads class labels; set data.conditional: true (num_classes).")
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
            raise ConfigError(f"unet_fusion: n_tokens must be a positive integer, got {n_tokens!r}.")
        super().__init__(in_channels, image_size, channels, blocks, time_dim, num_classes=None)
        self.num_classes = int(num_classes)  # the base U-Net's additive label embedding is off (label is None)
        self.fusion = fusion
        c0 = int(tuple(channels)[0])
        cdim = int(context_dim or c0)
        self.context = ClassTokens(self.num_classes, n_tokens, cdim)
        self.early = ClassCrossAttention(c0, cdim, heads) if fusion in ("early", "both") else None
        self.late = ClassCrossAttention(c0, cdim, heads) if fusion in ("late", "both") else None

    def _encode_fused(self, x: torch.Tensor, emb: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        if self.early is not None:
            h = self.early(h, ctx)
        for block in self.down0:
            h = block(h, emb)
        skip = h
        h = self.downsample(h)
        for block in self.mid:
            h = block(h, emb)
        return skip, h

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(t)
        ctx = self.context(cond, x.shape[0], x.device).to(x.dtype)
        skip, h = self._encode_fused(x, emb, ctx)
        h = self.upsample(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
        h = torch.cat([h, skip], dim=1)
        for block in self.up0:
            h = block(h, emb)
        if self.late is not None:
            h = self.late(h, ctx)
        return self.out(F.silu(self.out_norm(h)))

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Bottleneck activations averaged over space ``(B, channels[1])`` (class-aware only with
        early fusion: the late block lies after the bottleneck)."""
        ctx = self.context(cond, x.shape[0], x.device).to(x.dtype)
        _, h = self._encode_fused(x, self.time(t), ctx)
        return h.mean(dim=(2, 3))
