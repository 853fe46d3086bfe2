"""Batched autoregressive sampling with a KV cache, returning the sampler's log-probs.

:func:`generate` continues left-padded prompts of different lengths token by token. With
``use_cache=True`` the prompt is run once and each step feeds only the new token together with
the key/value cache; with ``use_cache=False`` every step recomputes the whole prefix (the
reference the cache is tested against, and the baseline of the ``kv_cache_sampling`` bench).

Sampling distribution at each step, from the last position's logits ``z`` (float32 at least):
``z / temperature``, then top-k (keep the ``k`` largest logits; ties at the k-th value are
kept), then top-p / nucleus sampling (Holtzman et al., 2020, arXiv:1904.09751: keep the
smallest set of most probable tokens whose probability reaches ``top_p``; the most probable
token is always kept), renormalised. ``temperature == 0`` is greedy decoding (argmax; its
sampling distribution is a point mass, so the log-prob is ``0``). ``Rollout.logprobs`` is the
log-probability of each sampled token under that distribution, the quantity on-policy
estimators and importance ratios need (TRL's GKD / GRPO samplers return the same).

Each sequence stops at its first ``eos_id`` (kept in the completion, and in ``completion_mask``);
after it the sequence emits ``pad_id`` with mask ``False`` and log-prob ``0``. The loop stops
when every sequence has finished or after ``max_new_tokens`` steps, so ``N <= max_new_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from .models import as_causal_lm

__all__ = ["Rollout", "filter_logits", "generate"]


@dataclass
class Rollout:
    """The result of :func:`generate` (``P`` prompt columns, ``N`` generated steps).

    * ``tokens``: int64 ``(B, P + N)``, the prompts (left-padded) followed by the completions;
    * ``completion``: int64 ``(B, N)``; ``pad_id`` after a sequence's EOS;
    * ``completion_mask``: bool ``(B, N)``, True up to and including the EOS;
    * ``logprobs``: float ``(B, N)``, log-prob of each sampled token under the sampling
      distribution (after temperature / top-k / top-p); ``0`` where the mask is False;
    * ``attention_mask``: int64 ``(B, P + N)``, the prompt mask followed by ``completion_mask``;
    * ``logits``: float ``(B, N, V)``, the raw next-token logits of each step (only with
      ``return_logits=True``, else ``None``).
    """

    tokens: Tensor
    completion: Tensor
    completion_mask: Tensor
    logprobs: Tensor
    attention_mask: Tensor
    logits: Tensor | None = None


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Log-probs ``(B, V)`` of the sampling distribution from logits ``(B, V)`` (``temperature > 0``).

    Removed tokens get ``-inf``; see the module docstring for the order and the tie rules.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    z = z / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        probs = z.softmax(dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of the strictly more probable tokens
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z.log_softmax(dim=-1)


def _check(prompt_ids: Tensor, prompt_mask: Tensor | None, max_new_tokens: int, temperature: float,
           top_k, top_p, context: int, vocab: int, pad_id: int, eos_id) -> Tensor:
    if prompt_ids.ndim != 2 or prompt_ids.dtype not in (torch.int64, torch.int32):
        raise ShapeError(f"generate: prompt_ids must be an integer tensor (B, P), got {prompt_ids.dtype} "
                         f"{list(prompt_ids.shape)}.")
    if prompt_mask is None:
        prompt_mask = torch.ones_like(prompt_ids)
    if prompt_mask.shape != prompt_ids.shape:
        raise ShapeError(f"generate: prompt_mask {list(prompt_mask.shape)} must match prompt_ids "
                         f"{list(prompt_ids.shape)}.")
    mask = prompt_mask.long()
    if prompt_ids.shape[1] == 0 or bool((mask.sum(dim=1) == 0).any()):
        raise ConfigError("generate: every prompt needs at least one token (an empty prompt has no next-token logits).")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ConfigError("generate: prompts must be left-padded (prompt_mask zeros before the ones in each row).")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"generate: max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    if not temperature >= 0.0:
        raise ConfigError(f"generate: temperature must be >= 0 (0 = greedy), got {temperature!r}.")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"generate: top_k must be a positive integer or None, got {top_k!r}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"generate: top_p must be in (0, 1] or None, got {top_p!r}.")
    for name, v in (("pad_id", pad_id), ("eos_id", eos_id)):
        if v is not None and not 0 <= int(v) < vocab:
            raise ConfigError(f"generate: {name}={v} is outside the vocabulary [0, {vocab - 1}].")
    longest = int(mask.sum(dim=1).max())
    if prompt_ids.shape[1] > context or longest > context:
        raise ConfigError(f"generate: a prompt of {prompt_ids.shape[1]} columns ({longest} tokens) is longer than "
                          f"the model's context of {context} tokens.")
    if prompt_ids.shape[1] + max_new_tokens > context:
        raise ConfigError(f"generate: prompt columns ({prompt_ids.shape[1]}) + max_new_tokens ({max_new_tokens}) "
                          f"= {prompt_ids.shape[1] + max_new_tokens} exceed the model's context of {context} tokens.")
    return mask


@torch.no_grad()
def generate(lm: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor | None = None, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             eos_id: int | None = None, pad_id: int, generator: torch.Generator | None = None,
             use_cache: bool = True, return_logits: bool = False) -> Rollout:
    """Sample completions of left-padded prompts ``(B, P)``; see the module docstring.

    ``lm`` follows the contract of :mod:`distillery.sequence.models` (a ``TinyGPT``, or any
    Hugging Face causal LM, adapted here). The same ``generator`` state gives the same tokens.
    The model's training mode is left as it is (call ``lm.eval()`` to disable dropout).

    Example::

        out = generate(lm, ids, mask, max_new_tokens=8, temperature=0.7, top_k=5, eos_id=2, pad_id=0,
                       generator=torch.Generator().manual_seed(0))
        out.completion, out.logprobs   # (B, N), (B, N)
    """
    lm = as_causal_lm(lm)
    mask = _check(prompt_ids, prompt_mask, max_new_tokens, temperature, top_k, top_p, int(lm.max_len),
                  int(lm.vocab_size), pad_id, eos_id)
    b, device = prompt_ids.shape[0], prompt_ids.device
    tokens, running_mask = prompt_ids.long(), mask
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out_tokens, out_mask, out_logprobs, out_logits = [], [], [], []
    past, step_input = None, tokens
    for _ in range(max_new_tokens):
        if use_cache:
            res = lm(step_input, running_mask, past=past, use_cache=True)
            past = res.past
        else:
            res = lm(tokens, running_mask)
        logits = res.logits[:, -1]  # (B, V)
        if return_logits:
            out_logits.append(logits.clone())
        if temperature == 0:
            nxt = logits.argmax(dim=-1)
            lp = torch.zeros(b, dtype=torch.float32 if logits.dtype != torch.float64 else logits.dtype, device=device)
        else:
            logp = filter_logits(logits, temperature, top_k, top_p)
            nxt = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
            lp = logp.gather(1, nxt[:, None])[:, 0]
        alive = ~done
        nxt = torch.where(alive, nxt, torch.full_like(nxt, pad_id))
        out_tokens.append(nxt)
        out_mask.append(alive)
        out_logprobs.append(torch.where(alive, lp, torch.zeros_like(lp)))
        if eos_id is not None:
            done = done | (nxt == eos_id)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        running_mask = torch.cat([running_mask, torch.ones_like(running_mask[:, :1])], dim=1)
        step_input = nxt[:, None]
        if bool(done.all()):
            break
    completion = torch.stack(out_tokens, dim=1)
    completion_mask = torch.stack(out_mask, dim=1)
    return Rollout(
        tokens=tokens,
        completion=completion,
        completion_mask=completion_mask,
        logprobs=torch.stack(out_logprobs, dim=1),
        attention_mask=torch.cat([mask, completion_mask.long()], dim=1),
        logits=torch.stack(out_logits, dim=1) if return_logits else None,
    )
