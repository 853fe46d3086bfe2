"""Selftok: discrete visual tokens that follow the reverse diffusion process (an AR prior).

Selftok Team (Media Technology Institute, Huawei), 2025, "Selftok: Discrete Visual
Tokens of Autoregression, by Diffusion, and for Reasoning", arXiv:2505.07538 (project page
selftok-team.github.io/report). "We completely discard the conventional spatial prior in image
representation and introduce a novel discrete visual tokenizer ... we compose an
autoregressive (AR) prior -- mirroring the causal structure of language -- into visual tokens by
using the reverse diffusion process of image generation." Not a distillation method (row 53 of
the design's methods table: "not really KD"); what the library takes from it is the tokenizer
mechanism and a small AR prior over its tokens.

Mechanism, as expressed here (the engine's time: ``t = 0`` data, ``t = 1`` noise; the paper runs
its flow the other way):

* an encoder maps the image to ``K`` token vectors ``z_1..z_K`` (from the whole image: no token
  is tied to a place), each quantized (FSQ or VQ, straight-through) to one of ``C`` codes;
* a diffusion decoder ``D(x_t, t, V)`` is trained by the denoising regression, conditioned on
  the tokens **injected so far**: token ``k`` is injected at time ``tau_k`` on the way from noise
  to data and is visible at every ``t <= tau_k`` (:func:`injection_times`, the token schedule:
  ``tau_k = 1 - (k - 1)(1 - t_last)/(K - 1)``, ``tau_1 = 1`` .. ``tau_K = t_last``, uniform in
  ``t`` [inferred: the paper's schedule is its own design; here uniform, ``t_last = 1/K`` by
  default]). So ``x_t`` on the reverse path depends only on the prefix ``V_{<k(t)}``: the
  paper's "P(V_{<i}) <=> x_t, P(V_{>=i} | V_{<i}) <=> int_t^1 v_s(x_s) ds". Early tokens are
  needed at the noisiest times, where only coarse content can be decided; later tokens only
  near the data, where detail is decided;
* [inferred, added for the comparison] *prefix dropout*: with probability ``prefix_dropout`` a
  training sample keeps only a uniformly drawn prefix of its tokens (``0..K``), the rest
  replaced by the decoder's per-position mask vectors, so that a prefix decodes with the same
  sampler as the whole sequence, for Selftok and for the spatial tokenizer alike;
* the spatial baseline: the same decoder and quantizer, tokens = ``p x p`` patches (each token
  encodes its own patch; row-major), every token visible at every time.

:class:`Selftok` is the generative method ``selftok`` (player ``tokenizer``: encoder, quantizer
and decoder trained together); its :meth:`~Selftok.sample` decodes tokens drawn position by
position from their training frequencies (a unigram prior: the tokenizer has no prior of its
own). :func:`train_token_prior` / :func:`sample_token_prior` fit the sequence engine's
:class:`~distillery.sequence.models.TinyGPT` to token sequences and sample new ones (the AR
prior of the paper's VLM, in miniature). Engine parts: :mod:`distillery.generative.diffusion_tokenizer`.
Config: ``configs/selftok_digits.yaml``; reproduction: ``distillery reproduce selftok``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..generative.denoisers import Denoiser
from ..generative.diffusion_tokenizer import (
    DiffusionTokenizer,
    GlobalEncoder,
    PatchEncoder,
    TokenDecoderNet,
    build_quantizer,
    token_perplexity,
)
from ..generative.method import METHODS, GenerativeMethod, drawn
from . import Recipe, register_recipe

RECIPE = register_recipe(
    Recipe("selftok", "Selftok Team 2025, Selftok, arXiv:2505.07538", "selftok_digits.yaml",
           "Discrete tokens injected into a diffusion decoder along the reverse process (coarse first: an AR prior), vs spatial patch tokens")
)

LAYOUTS = ("selftok", "spatial")


def injection_times(tokens: int, t_last: float | None = None) -> torch.Tensor:
    """Selftok's token schedule ``(K,)``: token ``k`` (1-based) is injected at ``tau_k = 1 - (k - 1)
    (1 - t_last) / (K - 1)`` and visible at every ``t <= tau_k`` (``t_last`` default ``1 / K``,
    which gives ``tau_k = 1 - (k - 1) / K``). Decreasing from ``tau_1 = 1`` to ``tau_K = t_last``."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"selftok: tokens must be a positive integer, got {tokens!r}.")
    t_last = 1.0 / tokens if t_last is None else t_last
    if isinstance(t_last, bool) or not isinstance(t_last, (int, float)) or not 0.0 < t_last <= 1.0:
        raise ConfigError(f"selftok: t_last must lie in (0, 1], got {t_last!r}.")
    if tokens == 1:
        return torch.ones(1)
    k = torch.arange(tokens, dtype=torch.float64)
    return (1.0 - k * (1.0 - float(t_last)) / (tokens - 1)).float()


@METHODS.register("selftok")
class Selftok(GenerativeMethod):
    """Trains a discrete tokenizer with a diffusion decoder; player ``tokenizer``.

    Args:
        student: the decoder, a :class:`~distillery.generative.denoisers.Denoiser` around a
            ``token_mlp`` network (its ``tokens`` and ``token_dim`` set the tokenizer's).
        teacher: none (must be ``None``).
        layout: ``selftok`` (a global encoder, tokens injected along the reverse process by
            :func:`injection_times`) or ``spatial`` (patch tokens, all visible at every time).
        quantizer: ``fsq`` (``levels``) or ``vq`` (``codebook_size`` codes, commitment ``beta``).
        encoder_hidden: the encoder MLP's hidden widths.
        patch: the patch side of the ``spatial`` layout (``K`` must be the number of patches).
        t_last: injection time of the last token (``selftok``; default ``1 / K``).
        prefix_dropout: probability that a training sample keeps only a uniformly drawn prefix.
        sample_solver: the solver of :meth:`sample` (``euler``, ``ddim``, ``heun``).
        seed: base seed of the per-update draws (the run's seed; set by the loop).
    """

    players = ("tokenizer",)

    def __init__(self, student: Denoiser, teacher: nn.Module | None = None, *, layout: str = "selftok",
                 quantizer: str = "fsq", levels: Sequence[int] = (4, 4), codebook_size: int = 16, beta: float = 0.25,
                 encoder_hidden: Sequence[int] = (256, 256), patch: int = 2, t_last: float | None = None,
                 prefix_dropout: float = 0.5, sample_solver: str = "euler", seed: int = 0) -> None:
        super().__init__()
        if teacher is not None:
            raise ConfigError("method 'selftok' trains a tokenizer from data and takes no teacher; remove the teacher section.")
        if layout not in LAYOUTS:
            raise ConfigError(f"method 'selftok': layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
        net = student.net
        if not isinstance(net, TokenDecoderNet):
            raise ConfigError(f"method 'selftok': student.denoiser must be the 'token_mlp' network, got {type(net).__name__}.")
        if isinstance(prefix_dropout, bool) or not isinstance(prefix_dropout, (int, float)) or not 0.0 <= prefix_dropout <= 1.0:
            raise ConfigError(f"method 'selftok': prefix_dropout must lie in [0, 1], got {prefix_dropout!r}.")
        if sample_solver not in ("euler", "ddim", "heun"):
            raise ConfigError(f"method 'selftok': sample_solver must be euler, ddim or heun, got {sample_solver!r}.")
        shape = student.sample_shape
        if shape is None or len(shape) != 3:
            raise ConfigError(f"method 'selftok': the data must be images (C, H, W), got samples of shape {shape}.")
        try:
            q = build_quantizer(quantizer, levels=levels, codebook_size=codebook_size, dim=net.token_dim, beta=beta)
        except ConfigError as exc:
            raise ConfigError(f"method 'selftok': {exc}") from None
        if q.dim != net.token_dim:
            raise ConfigError(f"method 'selftok': quantizer 'fsq' with levels {list(levels)} gives tokens of width {q.dim}; "
                              f"set student.denoiser.params.token_dim to {q.dim}.")
        k = net.tokens
        if layout == "selftok":
            encoder: nn.Module = GlobalEncoder(int(net.dim), k, net.token_dim, encoder_hidden)
            net.set_injection_times(injection_times(k, t_last))
        else:
            if t_last is not None:
                raise ConfigError("method 'selftok': t_last is a parameter of layout 'selftok'; remove it for layout 'spatial'.")
            c, h, w = shape
            if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or h % patch or w % patch:
                raise ConfigError(f"method 'selftok': patch must divide the {h}x{w} image, got {patch!r}.")
            if (h // patch) * (w // patch) != k:
                raise ConfigError(f"method 'selftok': layout 'spatial' with patch {patch} gives {(h // patch) * (w // patch)} "
                                  f"tokens but student.denoiser.params.tokens is {k}.")
            encoder = PatchEncoder(c, patch, net.token_dim, encoder_hidden)
            net.set_injection_times(torch.ones(k))
        self.tokenizer = DiffusionTokenizer(encoder, q, student)
        self.layout, self.quantizer_kind, self.prefix_dropout = layout, quantizer, float(prefix_dropout)
        self.sample_solver, self.seed = sample_solver, int(seed)

    @property
    def process(self) -> Any:
        return self.tokenizer.decoder.process

    def prefix_lengths(self, n: int, device: Any = "cpu") -> torch.Tensor:
        """``(n,)`` prefix lengths of a training batch: ``K``, or with probability
        ``prefix_dropout`` one drawn uniformly from ``0..K``."""
        k = self.tokenizer.tokens
        u = self.draw.rand(n, device=device)
        length = self.draw.randint(0, k + 1, n, device=device)
        return torch.where(u < self.prefix_dropout, length, torch.full_like(length, k))

    @drawn
    def loss(self, player: str, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = batch["x"]
        eps = self.draw.randn_like(x0)
        t = self.draw.times(self.process, x0.shape[0], device=x0.device, dtype=x0.dtype)
        prefix = self.prefix_lengths(x0.shape[0], x0.device)
        loss, figures, ids = self.tokenizer.loss(x0, eps, t, prefix)
        self.tokenizer.count_codes(ids)
        return loss, figures

    def sample(self, n: int, steps: int, *, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        """Decoded images of token sequences drawn position by position from the recent training
        frequencies of the codes (``tokenizer.code_counts``, add-one smoothed): a unigram prior,
        the baseline of an AR prior."""
        probs = (self.tokenizer.code_counts + 1.0).cpu().double()
        ids = torch.multinomial(probs / probs.sum(1, keepdim=True), n, replacement=True, generator=generator).T
        shape = self.tokenizer.decoder.sample_shape
        noise = self.process.prior((n, *shape), generator=generator).to(device)
        return self.tokenizer.decode(ids.to(device), noise, steps=steps, solver=self.sample_solver)

    def exported(self) -> dict[str, nn.Module]:
        return {"tokenizer": self.tokenizer}

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        counts = self.tokenizer.code_counts.sum(0).double()
        p = counts[counts > 0] / counts.sum()
        perplexity = float(torch.exp(-(p * p.log()).sum())) if len(p) else 0.0
        out.update({"layout": self.layout, "tokens": self.tokenizer.tokens, "codebook_size": self.tokenizer.codebook_size,
                    "quantizer": self.quantizer_kind, "prefix_dropout": self.prefix_dropout,
                    "injection_times": [round(float(v), 6) for v in self.tokenizer.decoder.net.injection_times],
                    "code_perplexity": perplexity})
        return out


# -- the AR prior over the tokens -------------------------------------------------------------
def train_token_prior(ids: torch.Tensor, vocab: int, *, steps: int = 600, batch_size: int = 128, lr: float = 3e-3,
                      dim: int = 64, depth: int = 2, heads: int = 4, seed: int = 0) -> nn.Module:
    """A :class:`~distillery.sequence.models.TinyGPT` fitted to token sequences ``ids`` ``(N, K)``
    (codes in ``[0, vocab)``) by next-token cross-entropy, each sequence preceded by a
    beginning-of-image token (id ``vocab``). AdamW, ``steps`` batches of ``batch_size`` drawn
    with replacement from a generator seeded by ``seed``. Returns the model in eval mode."""
    from ..sequence.models import TinyGPT

    if ids.dim() != 2 or len(ids) < 1:
        raise ConfigError(f"train_token_prior: ids must be (N, K) token sequences, got shape {tuple(ids.shape)}.")
    if bool(((ids < 0) | (ids >= vocab)).any()):
        raise ConfigError(f"train_token_prior: token ids must lie in [0, vocab = {vocab}).")
    torch.manual_seed(seed)
    lm = TinyGPT(vocab + 1, dim, depth, heads, ids.shape[1] + 1)
    seq = torch.cat([torch.full((len(ids), 1), vocab, dtype=torch.long), ids.long()], dim=1)
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    lm.train()
    with torch.enable_grad():
        for _ in range(steps):
            rows = seq[torch.randint(len(seq), (batch_size,), generator=g)]
            logits = lm(rows[:, :-1]).logits
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return lm.eval()


@torch.no_grad()
def token_prior_nll(lm: nn.Module, ids: torch.Tensor, vocab: int) -> float:
    """Mean next-token negative log-likelihood (nats per token) of ``ids`` ``(N, K)`` under the
    prior (the beginning-of-image token ``vocab`` prepended)."""
    seq = torch.cat([torch.full((len(ids), 1), vocab, dtype=torch.long), ids.long()], dim=1)
    logits = lm(seq[:, :-1]).logits
    return float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), seq[:, 1:].reshape(-1)))


@torch.no_grad()
def sample_token_prior(lm: nn.Module, n: int, tokens: int, vocab: int, *, generator: torch.Generator | None = None,
                       temperature: float = 1.0) -> torch.Tensor:
    """``(n, tokens)`` code sequences sampled token by token from the prior, each step restricted
    to the ``vocab`` image codes (the beginning-of-image id is never drawn)."""
    if not temperature > 0:
        raise ConfigError(f"sample_token_prior: temperature must be positive, got {temperature!r}.")
    seq = torch.full((n, 1), vocab, dtype=torch.long)
    for _ in range(tokens):
        logits = lm(seq).logits[:, -1, :vocab].float() / temperature
        nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, 1:]


# -- measures of the prefix curve --------------------------------------------------------------
def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of two sequences: Pearson's correlation of their ranks (ties
    get their average rank); ``nan`` when either is constant."""

    def ranks(v: Sequence[float]) -> torch.Tensor:
        t = torch.as_tensor([float(a) for a in v], dtype=torch.float64)
        return torch.tensor([((t < a).sum() + ((t == a).sum() + 1) / 2).item() for a in t], dtype=torch.float64)

    if len(x) != len(y) or len(x) < 2:
        raise ConfigError(f"spearman: need two sequences of the same length >= 2, got {len(x)} and {len(y)}.")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else float("nan")


def prefix_gain(mse: Sequence[float], k: int) -> float:
    """The share of the full prefix's error reduction reached with the first ``k`` tokens:
    ``(m_0 - m_k) / (m_0 - m_K)`` for the errors ``mse = [m_0, .., m_K]`` of prefixes ``0..K``."""
    m = [float(v) for v in mse]
    if not 0 <= k < len(m) or m[0] == m[-1]:
        raise ConfigError(f"prefix_gain: need errors of prefixes 0..K with m_0 != m_K and 0 <= k <= K; got k={k}, {len(m)} errors.")
    return (m[0] - m[k]) / (m[0] - m[-1])


# -- config fragments ----------------------------------------------------------------------------
def decoder_student(tokens: int = 16, token_dim: int = 2, *, embed_dim: int = 16,
                    hidden: Sequence[int] = (256, 256, 256), prediction: str = "x0") -> dict[str, Any]:
    """The ``student`` section: the ``token_mlp`` diffusion decoder."""
    return {"student": {"denoiser": {"name": "token_mlp", "params": {"tokens": int(tokens), "token_dim": int(token_dim),
                                                                      "embed_dim": int(embed_dim), "hidden": list(hidden)}},
                        "prediction": prediction}}


def selftok_config(layout: str = "selftok", *, levels: Sequence[int] = (4, 4), encoder_hidden: Sequence[int] | None = None,
                   patch: int = 2, t_last: float | None = None, prefix_dropout: float = 0.5) -> dict[str, Any]:
    """The ``method`` section of the Selftok tokenizer (``layout="selftok"``) or of the spatial
    baseline (``layout="spatial"``, ``patch x patch`` patch tokens), FSQ with ``levels``."""
    params: dict[str, Any] = {"layout": layout, "quantizer": "fsq", "levels": list(levels), "prefix_dropout": float(prefix_dropout)}
    if encoder_hidden is not None:
        params["encoder_hidden"] = list(encoder_hidden)
    if layout == "spatial":
        params["patch"] = int(patch)
    elif t_last is not None:
        params["t_last"] = float(t_last)
    return {"method": {"kind": "selftok", "params": params}}


__all__ = ["LAYOUTS", "Selftok", "decoder_student", "injection_times", "prefix_gain", "sample_token_prior", "selftok_config",
           "spearman", "token_perplexity", "token_prior_nll", "train_token_prior"]
