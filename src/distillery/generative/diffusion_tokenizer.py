"""Discrete image tokenizers whose decoder is a diffusion model: quantizers, encoders, a
token-conditioned denoiser and the prefix-reconstruction measure.

A :class:`DiffusionTokenizer` maps an image ``x`` ``(B, C, H, W)`` to ``K`` discrete tokens
(ids ``(B, K)`` in ``[0, codebook_size)``) and back: an encoder gives ``z`` ``(B, K, d)``, a
quantizer rounds it to one of ``codebook_size`` values per token (straight-through gradients),
and the decoder is a :class:`~.denoisers.Denoiser` conditioned on the tokens, trained by the
engine's denoising regression (:func:`~.objectives.denoising.denoising_target`) and decoded by
the engine's samplers (:func:`~.samplers.sample`). Reconstruction is therefore a *sample*:
``decode(ids, noise)`` integrates the probability-flow ODE from ``noise`` with the tokens as
the condition.

Parts:

* quantizers, each ``q(z (B, K, d)) -> Quantized(values (B, K, d), ids (B, K), loss ())`` with
  ``q.embed(ids) -> values``:

  - :class:`FSQ`, finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization:
    VQ-VAE Made Simple", arXiv:2309.15505): channel ``i`` is bounded to ``u_i = (L_i - 1)
    sigmoid(z_i)`` in ``(0, L_i - 1)`` (a scaled and shifted tanh), rounded to the digit
    ``round(u_i)`` with a straight-through gradient (``u + sg(round(u) - u)``), and given the
    value ``2 digit / (L_i - 1) - 1`` in ``[-1, 1]``; ``id = sum_i digit_i prod_{j<i} L_j``; no
    codebook, no auxiliary loss (``loss = 0``);
  - :class:`VectorQuantizer` (van den Oord et al. 2017, "Neural Discrete Representation
    Learning", arXiv:1711.00937): the nearest of ``codebook_size`` learned codes ``e`` (L2),
    straight-through ``z + sg(e - z)``, ``loss = ||sg(z) - e||^2 + beta ||z - sg(e)||^2``
    (means over all entries);

* encoders ``(B, C, H, W) -> (B, K, d)``: :class:`GlobalEncoder` (an MLP on the whole image:
  every token may describe any part of it, a "1-D" tokenizer) and :class:`PatchEncoder` (one
  shared MLP per ``p x p`` patch, tokens in row-major patch order: a spatial tokenizer whose
  token ``k`` describes patch ``k`` only);

* :class:`TokenDecoderNet` (registered denoiser ``token_mlp``): ``net(x_t, t, cond)`` where
  ``cond`` is ``(B, K, d + 1)``, the token values and, in the last channel, a 0/1 *keep* flag
  (:func:`token_condition`; ``cond=None``: every token masked). Token ``k`` is *visible* at
  time ``t`` when it is kept and ``t <= injection_times[k]`` (:func:`visible_tokens`; the
  default ``injection_times = 1`` shows every kept token at every time); a visible token
  enters as ``W v_k + p_k``, an invisible one as a learned per-position mask vector ``m_k``;
  the ``K`` token vectors are concatenated with ``x_t`` and ``emb(t)`` and fed to an MLP;

* :func:`reconstruction_curve`: reconstruct a set of images from each prefix of their tokens
  (the first ``k`` kept, the rest masked), with the same noise for every ``k``, and measure the
  per-pixel squared error (and the digits FD when asked).

Shapes: images ``(B, C, H, W)``; ``t`` ``(B,)`` in [0, 1] (0: data, 1: noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ShapeError
from .denoisers import DENOISERS, Denoiser, TimeEmbedding
from .objectives.denoising import denoising_target

__all__ = [
    "FSQ",
    "DiffusionTokenizer",
    "GlobalEncoder",
    "PatchEncoder",
    "Quantized",
    "TokenDecoderNet",
    "VectorQuantizer",
    "build_quantizer",
    "patches",
    "reconstruction_curve",
    "token_condition",
    "token_perplexity",
    "visible_tokens",
]


def _positive_int(value: Any, name: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{who}: {name} must be a positive integer, got {value!r}.")
    return int(value)


def _widths(hidden: Any, name: str, who: str) -> tuple[int, ...]:
    if not isinstance(hidden, (list, tuple)) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ConfigError(f"{who}: {name} must be a list of positive widths, got {hidden!r}.")
    return tuple(int(h) for h in hidden)


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------
# Quantizers
# --------------------------------------------------------------------------------------


class Quantized(NamedTuple):
    """A quantizer's output: ``values`` ``(B, K, d)`` (straight-through), ``ids`` ``(B, K)``
    int64 and the auxiliary ``loss`` (a scalar; 0 for FSQ)."""

    values: torch.Tensor
    ids: torch.Tensor
    loss: torch.Tensor


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023, arXiv:2309.15505); see the module docstring.

    ``levels``: the number of levels ``L_i >= 2`` of each of the ``d = len(levels)`` channels;
    ``codebook_size = prod(levels)``.

    Example::

        q = FSQ([4, 4])                   # 16 codes per token
        out = q(torch.randn(2, 8, 2))     # values (2, 8, 2) in [-1, 1], ids (2, 8) in [0, 16)
        torch.equal(q.embed(out.ids), out.values)   # True
    """

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(levels, (list, tuple)) or not levels or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in levels):
            raise ConfigError(f"fsq: levels must be a non-empty list of integers >= 2, got {levels!r}.")
        self.levels = tuple(int(v) for v in levels)
        self.dim = len(self.levels)
        self.codebook_size = math.prod(self.levels)
        self.register_buffer("_levels", torch.tensor(self.levels, dtype=torch.long), persistent=False)
        basis = [math.prod(self.levels[:i]) for i in range(self.dim)]
        self.register_buffer("_basis", torch.tensor(basis, dtype=torch.long), persistent=False)

    def forward(self, z: torch.Tensor) -> Quantized:
        if z.shape[-1] != self.dim:
            raise ShapeError(f"fsq: expected {self.dim} channels per token (levels {list(self.levels)}), got shape {tuple(z.shape)}.")
        top = (self._levels - 1).to(z.dtype)
        u = top * torch.sigmoid(z)
        digits = torch.round(u)
        u_st = u + (digits - u).detach()
        values = 2.0 * u_st / top - 1.0
        ids = (digits.long() * self._basis).sum(-1)
        return Quantized(values, ids, z.new_zeros(()))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` ids -> ``(B, K, d)`` values in [-1, 1]."""
        ids = ids.long()
        if bool(((ids < 0) | (ids >= self.codebook_size)).any()):
            raise ShapeError(f"fsq: token ids must lie in [0, {self.codebook_size}).")
        digits = (ids[..., None] // self._basis) % self._levels
        top = (self._levels - 1).to(torch.get_default_dtype())
        return 2.0 * digits.to(top.dtype) / top - 1.0


class VectorQuantizer(nn.Module):
    """VQ-VAE quantization (van den Oord et al. 2017, arXiv:1711.00937); see the module docstring.

    ``codebook_size`` codes of width ``dim``; ``beta`` weighs the commitment term."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.codebook_size = _positive_int(codebook_size, "codebook_size", "vq")
        self.dim = _positive_int(dim, "dim", "vq")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ConfigError(f"vq: beta must be a non-negative number, got {beta!r}.")
        self.beta = float(beta)
        self.codebook = nn.Parameter(torch.empty(self.codebook_size, self.dim).uniform_(-1.0, 1.0))

    def forward(self, z: torch.Tensor) -> Quantized:
        if z.shape[-1] != self.dim:
            raise ShapeError(f"vq: expected tokens of width {self.dim}, got shape {tuple(z.shape)}.")
        flat = z.reshape(-1, self.dim)
        d2 = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + self.codebook.pow(2).sum(1)[None])
        ids = d2.argmin(1).reshape(z.shape[:-1])
        e = self.codebook[ids]
        loss = F.mse_loss(e, z.detach()) + self.beta * F.mse_loss(z, e.detach())
        return Quantized(z + (e - z).detach(), ids, loss)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` ids -> ``(B, K, dim)`` codes."""
        return self.codebook[ids.long()]


def build_quantizer(kind: str, *, levels: Sequence[int] = (4, 4), codebook_size: int = 16, dim: int = 2,
                    beta: float = 0.25) -> nn.Module:
    """``fsq`` (``levels``) or ``vq`` (``codebook_size`` codes of width ``dim``, commitment ``beta``)."""
    if kind == "fsq":
        return FSQ(list(levels))
    if kind == "vq":
        return VectorQuantizer(codebook_size, dim, beta)
    raise ConfigError(f"quantizer must be 'fsq' or 'vq', got {kind!r}.")


def token_perplexity(ids: torch.Tensor, codebook_size: int) -> float:
    """``exp(entropy)`` of the empirical code distribution of ``ids`` (any shape): 1 when one
    code is used, ``codebook_size`` when all are used equally (a check against code collapse)."""
    counts = torch.bincount(ids.reshape(-1).long(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp_min(1.0)
    nz = p[p > 0]
    return float(torch.exp(-(nz * nz.log()).sum()))


# --------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------


def patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, (H/p)(W/p), C p p)``: non-overlapping ``p x p`` patches in
    row-major order, each flattened as ``(C, row, col)``."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ShapeError(f"patches: a {h}x{w} image does not split into {patch}x{patch} patches.")
    g, gw = h // patch, w // patch
    out = x.reshape(b, c, g, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    return out.reshape(b, g * gw, c * patch * patch)


class GlobalEncoder(nn.Module):
    """An MLP on the flattened image: ``(B, C, H, W) -> (B, tokens, token_dim)``; every token
    sees the whole image."""

    def __init__(self, in_dim: int, tokens: int, token_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.tokens = _positive_int(tokens, "tokens", "global encoder")
        self.token_dim = _positive_int(token_dim, "token_dim", "global encoder")
        self.body = _mlp([int(in_dim), *_widths(list(hidden), "hidden", "global encoder"), self.tokens * self.token_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1)).reshape(x.shape[0], self.tokens, self.token_dim)


class PatchEncoder(nn.Module):
    """One MLP shared by every ``patch x patch`` patch: ``(B, C, H, W) -> (B, (H/p)(W/p), token_dim)``;
    token ``k`` sees patch ``k`` (row-major) only."""

    def __init__(self, channels: int, patch: int, token_dim: int, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        self.patch = _positive_int(patch, "patch", "patch encoder")
        self.token_dim = _positive_int(token_dim, "token_dim", "patch encoder")
        self.body = _mlp([int(channels) * self.patch**2, *_widths(list(hidden), "hidden", "patch encoder"), self.token_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(patches(x, self.patch))


# --------------------------------------------------------------------------------------
# The token-conditioned decoder
# --------------------------------------------------------------------------------------


def token_condition(values: torch.Tensor, keep: torch.Tensor | int | None = None) -> torch.Tensor:
    """The decoder's ``cond`` ``(B, K, d + 1)``: token ``values`` ``(B, K, d)`` and the keep flag.

    ``keep``: ``(B, K)`` booleans, or a prefix length (an int or ``(B,)`` ints: the first ``k``
    tokens kept, the rest masked), or ``None`` (all kept). Masked tokens' values are zeroed."""
    b, k = values.shape[:2]
    if keep is None:
        flag = torch.ones(b, k, dtype=values.dtype, device=values.device)
    elif torch.is_tensor(keep) and keep.dim() == 2:
        if keep.shape != (b, k):
            raise ShapeError(f"token_condition: keep must be ({b}, {k}), got {tuple(keep.shape)}.")
        flag = keep.to(values.dtype)
    else:
        prefix = torch.as_tensor(keep, device=values.device).long()
        if prefix.dim() == 0:
            prefix = prefix.expand(b)
        if prefix.shape != (b,) or bool(((prefix < 0) | (prefix > k)).any()):
            raise ShapeError(f"token_condition: a prefix length must be an int or ({b},) ints in [0, {k}], got {keep!r}.")
        flag = (torch.arange(k, device=values.device)[None] < prefix[:, None]).to(values.dtype)
    return torch.cat([values * flag[..., None], flag[..., None]], dim=-1)


def visible_tokens(t: torch.Tensor, injection_times: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` 0/1: token ``k`` is visible at time ``t_b`` when kept and ``t_b <= injection_times[k]``.

    ``t``: ``(B,)`` in [0, 1] (1: noise); ``injection_times``: ``(K,)``; ``keep``: ``(B, K)`` 0/1."""
    return keep * (t[:, None] <= injection_times[None, :]).to(keep.dtype)


@DENOISERS.register("token_mlp")
class TokenDecoderNet(nn.Module):
    """A denoiser conditioned on ``K`` discrete tokens (see the module docstring): ``net(x_t, t,
    cond (B, K, token_dim + 1) or None) -> (B, *sample_shape)``.

    Args:
        dim: the flattened sample size (supplied from the data).
        tokens: ``K``.
        token_dim: the width ``d`` of a token's value (the quantizer's).
        embed_dim: the width of each token's vector inside the network.
        hidden: the MLP's hidden widths.
        time_dim: the width of the time embedding.

    ``injection_times`` (a ``(K,)`` buffer, default all 1; :meth:`set_injection_times`): when each
    token becomes visible on the way from noise (``t = 1``) to data (``t = 0``)."""

    def __init__(self, dim: int, tokens: int = 16, token_dim: int = 2, embed_dim: int = 16,
                 hidden: Sequence[int] = (512, 512, 512), time_dim: int = 64) -> None:
        super().__init__()
        self.dim = _positive_int(dim, "dim", "token_mlp")
        self.tokens = _positive_int(tokens, "tokens", "token_mlp")
        self.token_dim = _positive_int(token_dim, "token_dim", "token_mlp")
        self.embed_dim = _positive_int(embed_dim, "embed_dim", "token_mlp")
        widths = _widths(list(hidden), "hidden", "token_mlp")
        self.time = TimeEmbedding(_positive_int(time_dim, "time_dim", "token_mlp"))
        self.token_proj = nn.Linear(self.token_dim, self.embed_dim)
        self.position = nn.Parameter(torch.randn(self.tokens, self.embed_dim) * 0.02)
        self.mask_embed = nn.Parameter(torch.randn(self.tokens, self.embed_dim) * 0.02)
        self.body = _mlp([self.dim + time_dim + self.tokens * self.embed_dim, *widths, self.dim])
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)
        self.register_buffer("injection_times", torch.ones(self.tokens))

    def set_injection_times(self, times: torch.Tensor) -> None:
        """Set when each token is injected (``(K,)`` times in [0, 1])."""
        times = torch.as_tensor(times, dtype=self.injection_times.dtype)
        if times.shape != (self.tokens,) or bool(((times < 0) | (times > 1)).any()):
            raise ConfigError(f"token_mlp: injection times must be {self.tokens} values in [0, 1], got {times.tolist()}.")
        self.injection_times.copy_(times)

    def token_vectors(self, t: torch.Tensor, cond: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """``(B, K, embed_dim)``: ``W v_k + p_k`` for visible tokens, ``m_k`` for the others."""
        if cond is None:
            values = torch.zeros(batch, self.tokens, self.token_dim, dtype=dtype, device=t.device)
            keep = torch.zeros(batch, self.tokens, dtype=dtype, device=t.device)
        else:
            if cond.shape != (batch, self.tokens, self.token_dim + 1):
                raise ShapeError(f"token_mlp: cond must be (B, K, d + 1) = ({batch}, {self.tokens}, {self.token_dim + 1}) "
                                 f"(token values and a keep flag, see token_condition), got {tuple(cond.shape)}.")
            values, keep = cond[..., :-1].to(dtype), cond[..., -1].to(dtype)
        vis = visible_tokens(t.to(dtype), self.injection_times.to(dtype), keep)[..., None]
        return vis * (self.token_proj(values) + self.position) + (1 - vis) * self.mask_embed

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        tok = self.token_vectors(t, cond, b, x.dtype)
        h = torch.cat([x.reshape(b, -1), self.time(t).to(x.dtype), tok.reshape(b, -1)], dim=-1)
        return self.body(h).reshape(x.shape)


# --------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------


class DiffusionTokenizer(nn.Module):
    """``encoder`` + ``quantizer`` + a token-conditioned ``decoder`` (a :class:`~.denoisers.Denoiser`
    around a :class:`TokenDecoderNet`).

    * :meth:`encode` ``(B, C, H, W) -> Quantized``;
    * :meth:`loss` the denoising regression of the decoder conditioned on the quantized tokens
      (gradients reach the encoder through the straight-through quantizer) plus the quantizer's
      loss;
    * :meth:`decode` ``ids (B, K)`` -> images, sampled by the engine's ODE solver;
    * ``code_counts`` ``(K, codebook_size)``: how often each code was used at each position in
      recent training batches (:meth:`count_codes`, decayed by ``count_decay`` per batch): the
      data of a unigram prior over the tokens.
    """

    def __init__(self, encoder: nn.Module, quantizer: nn.Module, decoder: Denoiser, count_decay: float = 0.99) -> None:
        super().__init__()
        net = decoder.net
        if not isinstance(net, TokenDecoderNet):
            raise ConfigError(f"A diffusion tokenizer needs the token_mlp decoder network, got {type(net).__name__}.")
        if quantizer.dim != net.token_dim:
            raise ConfigError(f"The quantizer gives tokens of width {quantizer.dim} but the decoder reads token_dim = {net.token_dim}.")
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.count_decay = float(count_decay)
        self.register_buffer("code_counts", torch.zeros(net.tokens, int(quantizer.codebook_size)))

    @property
    def tokens(self) -> int:
        return self.decoder.net.tokens

    @property
    def codebook_size(self) -> int:
        return int(self.quantizer.codebook_size)

    @torch.no_grad()
    def count_codes(self, ids: torch.Tensor) -> None:
        """``code_counts <- count_decay * code_counts + counts of ids (B, K)`` per position."""
        self.code_counts.mul_(self.count_decay)
        self.code_counts.scatter_add_(1, ids.T.long(), torch.ones_like(ids.T, dtype=self.code_counts.dtype))

    def encode(self, x: torch.Tensor) -> Quantized:
        z = self.encoder(x)
        if z.shape[1] != self.tokens:
            raise ConfigError(f"The encoder gives {z.shape[1]} tokens but the decoder reads tokens = {self.tokens}.")
        return self.quantizer(z)

    def loss(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
             keep: torch.Tensor | int | None = None) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """``(loss, figures, ids (B, K))``: ``loss = mean (decoder(x_t, t, tokens) - target)^2 +
        quantizer loss`` at ``x_t = alpha(t) x0 + sigma(t) eps``, the target in the decoder's
        prediction space; ``keep`` as in :func:`token_condition` (a prefix length per sample:
        the rest masked)."""
        q = self.encode(x0)
        cond = token_condition(q.values, keep)
        process = self.decoder.process
        x_t = process.add_noise(x0, eps, t)
        target = denoising_target(process, x0, eps, t, self.decoder.prediction)
        denoise = (self.decoder(x_t, t, cond) - target).pow(2).mean()
        loss = denoise + q.loss
        figures = {"loss": float(loss.detach()), "denoise": float(denoise.detach()), "quantizer": float(q.loss.detach())}
        return loss, figures, q.ids

    def decode(self, ids: torch.Tensor, noise: torch.Tensor, *, keep: torch.Tensor | int | None = None,
               steps: int = 20, solver: str = "euler") -> torch.Tensor:
        """Images from token ``ids`` ``(B, K)`` (``keep``: see :func:`token_condition`), sampled from
        ``noise`` ``(B, *sample_shape)`` (a draw of the process's prior) in ``steps`` steps."""
        from .samplers import sample

        cond = token_condition(self.quantizer.embed(ids).to(noise.dtype), keep)
        return sample(self.decoder, noise, steps=steps, solver=solver, cond=cond)


@torch.no_grad()
def reconstruction_curve(tokenizer: DiffusionTokenizer, x: torch.Tensor, *, prefixes: Sequence[int] | None = None,
                         steps: int = 20, solver: str = "euler", seed: int = 0, fd: bool = False,
                         batch_size: int = 512) -> dict[str, Any]:
    """Reconstruction of ``x`` ``(N, C, H, W)`` from each prefix of its tokens.

    For each ``k`` of ``prefixes`` (default ``0 .. K``), the first ``k`` tokens are kept and the
    rest masked, and the images are decoded in ``steps`` steps of ``solver`` from the same noise
    (seeded by ``seed``) for every ``k``. Returns ``{"prefix": [k...], "mse": [mean per-pixel
    squared error...], "fd": [digits FD against x...] (when fd), "ids": (N, K),
    "reconstructions": {k: (N, C, H, W)}}``."""
    tokenizer.eval()
    k_max = tokenizer.tokens
    prefixes = list(range(k_max + 1)) if prefixes is None else [int(k) for k in prefixes]
    if any(k < 0 or k > k_max for k in prefixes):
        raise ConfigError(f"reconstruction_curve: prefixes must lie in [0, {k_max}], got {prefixes}.")
    ids = torch.cat([tokenizer.encode(x[i:i + batch_size]).ids for i in range(0, len(x), batch_size)])
    g = torch.Generator().manual_seed(int(seed))
    noise = tokenizer.decoder.process.prior(tuple(x.shape), generator=g, dtype=x.dtype)
    out: dict[str, Any] = {"prefix": prefixes, "mse": [], "ids": ids, "reconstructions": {}}
    if fd:
        from .metrics import digits_fd

        out["fd"] = []
    for k in prefixes:
        rec = torch.cat([tokenizer.decode(ids[i:i + batch_size], noise[i:i + batch_size], keep=k, steps=steps, solver=solver)
                         for i in range(0, len(x), batch_size)])
        out["reconstructions"][k] = rec
        out["mse"].append(float((rec - x).pow(2).mean()))
        if fd:
            out["fd"].append(float(digits_fd(rec, x)))
    return out
