"""Small image denoisers for 8x8 / 16x16 images: a U-Net and a DiT, both ``net(x_t, t, cond)``.

Both are registered in :data:`~.denoisers.DENOISERS` with ``shape_kind = "image"``, so
:func:`~.denoisers.build_denoiser_net` gives them ``in_channels`` and ``image_size`` from the
data (and ``num_classes`` when the data has classes). Shapes: ``x_t`` ``(B, C, H, H)``, ``t``
``(B,)`` in [0, 1], ``cond`` ``(B,)`` int labels or ``None``; the output is ``(B, C, H, H)``.

Class conditioning follows :class:`~.denoisers.MLPDenoiser`: an embedding table of
``num_classes + 1`` rows, the last one the "null" class used when ``cond`` is ``None`` (label
dropout at training, the unconditional branch of classifier-free guidance).

Both expose ``features(x_t, t, cond) -> (B, F)``: pooled mid-level activations, the input of
DMD2's GAN head and GDD's discriminator (``F = channels[-1]`` for the U-Net, ``F = dim`` for
the DiT), and the ``feature_dim`` attribute saying ``F``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.transformer import Attention, FeedForward, PatchEmbed
from .denoisers import DENOISERS, TimeEmbedding

__all__ = ["DiT", "DiTBlock", "ResBlock", "UNet", "count_parameters", "sincos_2d", "unpatchify"]


def _groups(channels: int, want: int = 8) -> int:
    """The largest divisor of ``channels`` not above ``want`` (GroupNorm's group count)."""
    return max(g for g in range(1, min(want, channels) + 1) if channels % g == 0)


def _labels(cond: torch.Tensor | None, batch: int, null: int, device: torch.device) -> torch.Tensor:
    """``cond`` as ``(B,)`` long labels; ``None`` -> the null class ``null``."""
    if cond is None:
        return torch.full((batch,), null, device=device, dtype=torch.long)
    return cond.to(device=device, dtype=torch.long)


class ResBlock(nn.Module):
    """``x + conv(SiLU(GN(conv(SiLU(GN(x))) + proj(emb))))`` (Ho et al. 2020's residual block,
    the time/class embedding added after the first convolution); ``(B, cin, H, W)`` and
    ``(B, emb_dim)`` -> ``(B, cout, H, W)``. A 1x1 convolution matches channels on the skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


@DENOISERS.register("unet")
class UNet(nn.Module):
    """A small U-Net (Ronneberger et al. 2015, arXiv:1505.04597; the diffusion form of Ho et al.
    2020, arXiv:2006.11239) for ``(C, H, H)`` images, ``H`` even (8 or 16).

    Two resolutions: a 3x3 stem to ``channels[0]``; ``blocks`` residual blocks at ``H``; a
    strided 3x3 convolution to ``channels[1]`` at ``H / 2``; ``blocks`` residual blocks there
    (the bottleneck, whose pooled output is :meth:`features`); nearest upsampling and a 3x3
    convolution back to ``channels[0]``; the encoder's ``H``-resolution activations
    concatenated (the skip connection) and ``blocks`` residual blocks; GroupNorm, SiLU and a
    zero-initialised 3x3 convolution to ``C`` (the network predicts 0 at initialisation).
    Every residual block adds the time embedding (:class:`~.denoisers.TimeEmbedding` of width
    ``time_dim``, default ``2 * channels[0]``) plus, when ``num_classes`` is set, a class
    embedding. About 175k parameters at the defaults.
    """

    shape_kind = "image"

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: tuple[int, int] | list[int] = (32, 64),
                 blocks: int = 1, time_dim: int | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 2 or min(channels) < 1:
            raise ConfigError(f"unet: channels must be two positive widths (one per resolution), got {channels}.")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ConfigError(f"unet: blocks must be a positive integer, got {blocks!r}.")
        if image_size % 2:
            raise ConfigError(f"unet: image_size must be even (one 2x downsampling), got {image_size}.")
        c0, c1 = channels
        tdim = int(time_dim or 2 * c0)
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.feature_dim = c1
        self.time = TimeEmbedding(tdim)
        self.label = nn.Embedding(num_classes + 1, tdim) if num_classes else None
        self.stem = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.down0 = nn.ModuleList(ResBlock(c0, c0, tdim) for _ in range(blocks))
        self.downsample = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.mid = nn.ModuleList(ResBlock(c1, c1, tdim) for _ in range(blocks))
        self.upsample = nn.Conv2d(c1, c0, 3, padding=1)
        self.up0 = nn.ModuleList(ResBlock(2 * c0 if i == 0 else c0, c0, tdim) for i in range(blocks))
        self.out_norm = nn.GroupNorm(_groups(c0), c0)
        self.out = nn.Conv2d(c0, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _embed(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        emb = self.time(t)
        if self.label is not None:
            emb = emb + self.label(_labels(cond, x.shape[0], self.num_classes, x.device))
        return emb

    def _encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(skip (B, c0, H, H), bottleneck (B, c1, H/2, H/2))``."""
        h = self.stem(x)
        for block in self.down0:
            h = block(h, emb)
        skip = h
        h = self.downsample(h)
        for block in self.mid:
            h = block(h, emb)
        return skip, h

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self._embed(x, t, cond)
        skip, h = self._encode(x, emb)
        h = self.upsample(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
        h = torch.cat([h, skip], dim=1)
        for block in self.up0:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Bottleneck activations averaged over space: ``(B, channels[1])`` (the encoder half only)."""
        _, h = self._encode(x, self._embed(x, t, cond))
        return h.mean(dim=(2, 3))


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``(grid * grid, dim)`` (row-major tokens), half
    the channels for the row and half for the column (Vaswani et al. 2017; as in DiT)."""
    if dim % 4:
        raise ConfigError(f"dit: dim must be a multiple of 4 for the 2-D position embedding, got {dim}.")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    ang = pos[:, None] * freqs[None]  # (grid, quarter)
    one = torch.cat([ang.sin(), ang.cos()], dim=1)  # (grid, dim / 2)
    rows = one[:, None, :].expand(grid, grid, dim // 2)
    cols = one[None, :, :].expand(grid, grid, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, dim).float()


def unpatchify(tokens: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """``(B, g * g, patch * patch * C)`` row-major tokens, each holding its patch as ``(row, col,
    C)``, -> ``(B, C, g * patch, g * patch)`` images."""
    b, n, _ = tokens.shape
    g = round(n**0.5)
    h = tokens.reshape(b, g, g, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return h.reshape(b, channels, g * patch, g * patch)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """A DiT block with adaLN-Zero (Peebles & Xie 2023, arXiv:2212.09748): from the conditioning
    ``c`` ``(B, cond_dim)``, ``ada`` (SiLU, Linear, zero-initialised) gives shift/scale/gate for
    the attention and the MLP branch; ``x + gate * branch(modulate(LN(x)))``; tokens
    ``(B, N, dim)`` -> same. At initialisation every block is the identity."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, cond_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = FeedForward(dim, max(1, round(dim * mlp_ratio)))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sa, ca, ga, sm, cm, gm = self.ada(c).chunk(6, dim=-1)
        x = x + ga[:, None] * self.attn(_modulate(self.norm1(x), sa, ca))
        return x + gm[:, None] * self.mlp(_modulate(self.norm2(x), sm, cm))


@DENOISERS.register("dit")
class DiT(nn.Module):
    """A small diffusion transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
    Transformers", arXiv:2212.09748) for ``(C, H, H)`` images, ``H`` divisible by ``patch``.

    Patchify (:class:`~distillery.models.transformer.PatchEmbed`, ``patch x patch``) to
    ``(H / patch)^2`` tokens of width ``dim`` plus a fixed sine-cosine position embedding;
    ``depth`` :class:`DiTBlock` s conditioned by adaLN-Zero on ``c = emb(t) + emb(class)``
    (width ``cond_dim``, default ``dim / 2``); a final adaLN-modulated LayerNorm and a
    zero-initialised linear layer to ``patch * patch * C`` values per token; unpatchify.
    ``mlp_ratio`` (default 2) sets the MLP width. About 190k parameters at the defaults.
    """

    shape_kind = "image"

    def __init__(self, in_channels: int = 1, image_size: int = 8, dim: int = 64, depth: int = 4, heads: int = 4,
                 patch: int = 2, mlp_ratio: float = 2.0, cond_dim: int | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        if image_size % patch:
            raise ConfigError(f"dit: image_size {image_size} is not divisible by patch {patch}.")
        if dim % heads:
            raise ConfigError(f"dit: dim {dim} is not divisible by heads {heads}.")
        if depth < 1:
            raise ConfigError(f"dit: depth must be at least 1, got {depth}.")
        cdim = int(cond_dim or dim // 2)
        self.in_channels, self.image_size, self.patch, self.num_classes = in_channels, image_size, patch, num_classes
        self.grid = image_size // patch
        self.feature_dim = dim
        self.patch_embed = PatchEmbed(2, in_channels, dim, (patch, patch))
        self.register_buffer("pos", sincos_2d(self.grid, dim), persistent=False)
        self.time = TimeEmbedding(cdim)
        self.label = nn.Embedding(num_classes + 1, cdim) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio, cdim) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(cdim, 2 * dim))
        self.head = nn.Linear(dim, patch * patch * in_channels)
        for layer in (self.ada_out[1], self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _cond(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        c = self.time(t)
        if self.label is not None:
            c = c + self.label(_labels(cond, x.shape[0], self.num_classes, x.device))
        return c

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x) + self.pos.to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        c = self._cond(x, t, cond)
        h = self._tokens(x)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        h = self.head(_modulate(self.norm_out(h), shift, scale))  # (B, N, p * p * C)
        return unpatchify(h, self.patch, self.in_channels)

    def features(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens after block ``depth // 2`` (at least one block), averaged over tokens: ``(B, dim)``."""
        c = self._cond(x, t, cond)
        h = self._tokens(x)
        for block in self.blocks[: max(1, len(self.blocks) // 2)]:
            h = block(h, c)
        return h.mean(dim=1)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

