"""A tiny causal transformer LM that can take an image prefix (for LinguDistill, #40).

Input: the packed float vector of :mod:`distillery.data.miniature.language`, ``[B, 1 + F + L]``
(``has_image``, ``F`` image features, ``L`` token ids). The sequence the transformer sees is
``P`` prefix slots followed by the ``L`` token embeddings: for a sample with an image the
slots are ``projector(features)`` (the module added when the LM is adapted to images, as a
VLM's projector), otherwise a learned ``no_image`` embedding (what the pre-adaptation LM
always saw). Output dict:

* ``tokens``: ``[B, L, V]``, next-token logits at every text position (position ``t``
  predicts token ``t + 1``);
* ``targets``: int64 ``[B, L]``, the next tokens (``-1`` at the last position and where the
  next token is padding), for ``ce`` / token-level KD;
* ``logits``: ``[B, V]``, the last position's next-token logits (``tokens[:, -1]``);
* ``language``: bool ``[B]``, True for samples without an image (for the data router).

Modules: ``embed``, ``projector``, ``blocks.<i>.attn`` / ``blocks.<i>.mlp``, ``norm``, ``head``.

Its language head (text without an image) follows the sequence engine's LM contract through
:class:`distillery.sequence.vlm.TinyLMLanguageHead` (``input_ids -> LMOutput(logits, past,
hidden)``), built on :meth:`TinyLM.text_hidden` and :meth:`TinyLM.language_prefix`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, ShapeError
from ...registry import MODELS

__all__ = ["TinyLM", "tiny_lm"]


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, d/H]
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Causal transformer LM with an optional image prefix; see the module docstring."""

    def __init__(self, vocab_size: int, seq_len: int, image_features: int, prefix_tokens: int,
                 dim: int, layers: int, heads: int, pad_token: int = 0) -> None:
        super().__init__()
        self.vocab_size, self.seq_len, self.image_features = vocab_size, seq_len, image_features
        self.prefix_tokens, self.pad_token = prefix_tokens, pad_token
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(1, prefix_tokens + seq_len, dim))
        self.projector = nn.Linear(image_features, prefix_tokens * dim)
        self.no_image = nn.Parameter(torch.zeros(prefix_tokens, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.no_image, std=0.02)

    def text_hidden(self, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The final-norm hidden states ``[B, T, dim]`` at the ``T <= seq_len`` text positions,
        given the ``[B, P, dim]`` prefix slots and int64 ``tokens [B, T]``: what ``head``
        multiplies (``tokens`` logits = ``head(text_hidden(...))``)."""
        t = tokens.shape[1]
        h = torch.cat([prefix, self.embed(tokens)], dim=1) + self.position[:, :self.prefix_tokens + t]
        for block in self.blocks:
            h = block(h)
        return self.norm(h[:, self.prefix_tokens:])

    def language_prefix(self, batch: int) -> torch.Tensor:
        """The ``[B, P, dim]`` prefix of a sample without an image (the learned ``no_image``
        slots: all the pre-adaptation LM ever saw)."""
        return self.no_image.expand(batch, -1, -1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from ...data.miniature.language import unpack_multimodal

        expected = 1 + self.image_features + self.seq_len
        if x.ndim != 2 or x.shape[1] != expected:
            raise ShapeError(f"tiny_lm: expected packed inputs [B, {expected}] (has_image, {self.image_features} "
                             f"features, {self.seq_len} tokens), got {list(x.shape)}.")
        has_image, feats, tokens = unpack_multimodal(x, self.image_features)
        if bool(((tokens < 0) | (tokens >= self.vocab_size)).any()):
            raise ShapeError(f"tiny_lm: token ids must be in [0, {self.vocab_size - 1}].")
        b, d = x.shape[0], self.embed.embedding_dim
        image = self.projector(feats).view(b, self.prefix_tokens, d)
        prefix = torch.where(has_image[:, None, None], image, self.no_image.expand(b, -1, -1))
        text_logits = self.head(self.text_hidden(prefix, tokens))  # [B, L, V]
        nxt = torch.full_like(tokens, -1)
        nxt[:, :-1] = tokens[:, 1:]
        nxt = nxt.masked_fill(nxt == self.pad_token, -1)
        return {"tokens": text_logits, "targets": nxt, "logits": text_logits[:, -1], "language": ~has_image}


@MODELS.register("tiny_lm")
def tiny_lm(
    input_shape: Sequence[int],
    num_classes: int,
    image_features: int = 64,
    prefix_tokens: int = 2,
    dim: int = 64,
    layers: int = 2,
    heads: int = 4,
    pad_token: int = 0,
) -> TinyLM:
    """Tiny causal LM over ``num_classes`` tokens; ``input_shape = (1 + image_features + L,)``."""
    shape = tuple(int(s) for s in input_shape)
    for name, v in (("image_features", image_features), ("prefix_tokens", prefix_tokens), ("dim", dim),
                    ("layers", layers), ("heads", heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"tiny_lm: {name} must be a positive integer, got {v!r}.")
    if len(shape) != 1 or shape[0] <= 1 + image_features:
        raise ConfigError(f"tiny_lm: input_shape must be (1 + {image_features} + L,), got {shape}.")
    if dim % heads:
        raise ConfigError(f"tiny_lm: dim ({dim}) must be divisible by heads ({heads}).")
    return TinyLM(int(num_classes), shape[0] - 1 - image_features, image_features, prefix_tokens, dim, layers, heads, pad_token)
