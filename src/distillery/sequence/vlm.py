"""A vision-language student's language head under the sequence engine (LinguDistill, #40).

LinguDistill ("LinguDistill: Recovering Linguistic Ability in Vision-Language Models via
Selective Cross-Modal Distillation", 2026; the seed listing gives no authors or arXiv id)
distils the frozen pre-adaptation LM into the adapted VLM "on language-intensive data". On a
text-only sample the VLM is just a causal LM over the text, so the sequence engine's parts
apply unchanged:

* the data router is a token mask: :func:`router_mask` turns the per-sample route ``[B]``
  (True = language-only) and the next-token targets ``[B, L]`` (``-1`` = nothing to predict)
  into the ``[B, L]`` mask of :func:`~distillery.sequence.divergences.token_divergence`;
  :func:`routed_token_divergence` is that divergence under the router's mask (what the
  ``routed_kd`` objective computes);
* the language head follows the LM contract of :mod:`distillery.sequence.models`
  (``lm(input_ids, attention_mask) -> LMOutput(logits, past, hidden)``):
  :class:`TinyLMLanguageHead` adapts distillery's miniature ``tiny_lm`` (image prefix slots
  filled with its learned "no image" embedding), and :func:`language_lm` returns it for a
  ``tiny_lm`` and :func:`~distillery.sequence.models.as_causal_lm` of anything else (a
  :class:`~distillery.sequence.models.TinyGPT`, a Hugging Face causal LM such as a VLM's
  ``language_model``, a peft LoRA model);
* :func:`language_kd_loss` is the token-level KD of LinguDistill written against that
  contract only, so the same code distils a ``tiny_lm`` or a Hugging Face language head.

The paper's layer-wise KV sharing (the text-only teacher reading the student's image
positions) is not here: KD is routed to language-only samples, where the teacher sees exactly
the student's tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from ..objectives._common import shape_str
from .divergences import token_divergence
from .models import LMOutput, as_causal_lm

__all__ = ["TinyLMLanguageHead", "language_kd_loss", "language_lm", "router_mask", "routed_token_divergence"]


def router_mask(route: Tensor, targets: Tensor | None = None, length: int | None = None) -> Tensor:
    """The data router as a token mask: bool ``[B, L]``, True at position ``t`` of sample ``b``
    iff ``route[b]`` and (``targets is None`` or ``targets[b, t] >= 0``).

    ``route``: bool or 0/1 ``[B]``; ``targets``: int ``[B, L]`` (``-1`` = not counted) or
    ``None``, then ``length`` gives ``L``.
    """
    if route.ndim != 1:
        raise ShapeError(f"router_mask: route must have shape [B], got {shape_str(route)}.")
    b = route.shape[0]
    if targets is None:
        if length is None:
            raise ConfigError("router_mask: give targets [B, L] or the length L.")
        return route.bool()[:, None].expand(b, int(length))
    if targets.ndim != 2 or targets.shape[0] != b:
        raise ShapeError(f"router_mask: targets must have shape [{b}, L], got {shape_str(targets)}.")
    return route.bool()[:, None] & (targets >= 0)


def routed_token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    route: Tensor,
    targets: Tensor | None = None,
    kind: str = "forward_kl",
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    beta: float = 0.5,
    alpha: float = 0.1,
) -> Tensor:
    """:func:`~distillery.sequence.divergences.token_divergence` on the routed samples' counted
    positions (mask :func:`router_mask`).

    ``student_logits``, ``teacher_logits``: ``[B, L, V]``; ``route``: ``[B]``; ``targets``:
    ``[B, L]`` or ``None``. With ``kind="forward_kl"`` each counted token gives
    ``T^2 KL(softmax(teacher / T) || softmax(student / T))``; ``reduction`` as in
    ``token_divergence`` (``"mean"``: the mean over every counted token of the batch, 0 with a
    gradient when nothing is routed; ``"none"``: ``[B, L]``, 0 at uncounted positions).
    """
    if student_logits.ndim != 3:
        raise ShapeError(f"routed_token_divergence: logits must be [B, L, V], got {shape_str(student_logits)}.")
    b, length = student_logits.shape[:2]
    if route.shape != (b,):
        raise ShapeError(f"routed_token_divergence: route must have shape [{b}], got {shape_str(route)}.")
    mask = router_mask(route, targets, length)
    if mask.shape != (b, length):
        raise ShapeError(f"routed_token_divergence: targets must have shape [{b}, {length}], got "
                         f"{shape_str(targets)}.")
    return token_divergence(student_logits, teacher_logits, mask, kind, beta=beta, alpha=alpha,
                            temperature=temperature, reduction=reduction)


class TinyLMLanguageHead(nn.Module):
    """A ``tiny_lm`` (:class:`~distillery.models.miniature.language.TinyLM`) on text without an
    image, under the sequence engine's LM contract.

    ``forward(input_ids [B, T], attention_mask [B, T] | None) -> LMOutput(logits [B, T, V],
    None, hidden [B, T, dim])``: the prefix slots hold the model's learned ``no_image``
    embedding (exactly what ``tiny_lm`` computes for a packed sample with ``has_image = 0``),
    ``hidden`` is the final-norm state that ``head`` multiplies. ``T <= seq_len``. The model
    has absolute positions and no padding mask, so ``attention_mask`` may only pad on the
    right (causal attention then leaves the real tokens unaffected); it has no key/value
    cache (``past`` / ``use_cache`` are refused).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.vocab_size, self.max_len = int(model.vocab_size), int(model.seq_len)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, past=None,
                use_cache: bool = False) -> LMOutput:
        if past is not None or use_cache:
            raise ConfigError("tiny_lm language head: the model has no key/value cache; pass the whole "
                              "sequence with past=None and use_cache=False.")
        if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ShapeError(f"tiny_lm language head: input_ids must be an integer tensor (B, T), got "
                             f"{input_ids.dtype} {shape_str(input_ids)}.")
        b, t = input_ids.shape
        if t > self.max_len:
            raise ConfigError(f"tiny_lm language head: sequence of {t} tokens exceeds the context "
                              f"max_len={self.max_len}.")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise ShapeError(f"tiny_lm language head: token ids must be in [0, {self.vocab_size - 1}].")
        if attention_mask is not None:
            if attention_mask.shape != (b, t):
                raise ShapeError(f"tiny_lm language head: attention_mask must be ({b}, {t}), got "
                                 f"{shape_str(attention_mask)}.")
            m = attention_mask.long()
            if bool(((m != 0) & (m != 1)).any()) or bool((m[:, 1:] > m[:, :-1]).any()):
                raise ConfigError("tiny_lm language head: attention_mask may only pad on the right (ones, "
                                  "then zeros); left padding and packed segments need per-token positions, "
                                  "which tiny_lm does not have.")
        hidden = self.model.text_hidden(self.model.language_prefix(b), input_ids.long())
        return LMOutput(self.model.head(hidden), None, hidden)


def language_lm(model: nn.Module) -> nn.Module:
    """``model``'s language head under the LM contract: a ``tiny_lm`` wrapped in
    :class:`TinyLMLanguageHead`, anything else through
    :func:`~distillery.sequence.models.as_causal_lm` (for a Hugging Face VLM, pass its
    language model, e.g. a ``*ForCausalLM``)."""
    from ..models.miniature.language import TinyLM

    if isinstance(model, TinyLMLanguageHead):
        return model
    if isinstance(model, TinyLM):
        return TinyLMLanguageHead(model)
    return as_causal_lm(model)


def language_kd_loss(
    student: nn.Module,
    teacher: nn.Module,
    input_ids: Tensor,
    mask: Tensor,
    attention_mask: Tensor | None = None,
    kind: str = "forward_kl",
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    beta: float = 0.5,
    alpha: float = 0.1,
) -> Tensor:
    """LinguDistill's token-level KD on text-only sequences, against the LM contract only.

    ``student`` (with gradient) and ``teacher`` (the frozen pre-adaptation LM, run under
    ``no_grad``) are any models :func:`language_lm` accepts; ``input_ids``: int64 ``[B, T]``
    language-only sequences (route them with :func:`router_mask` first); ``mask``: ``[B, T]``,
    True where position ``t``'s next-token distribution is distilled (e.g. ``targets >= 0``);
    ``attention_mask``: ``[B, T]`` or ``None``. Returns
    :func:`~distillery.sequence.divergences.token_divergence` of the two models' logits.
    """
    s_lm, t_lm = language_lm(student), language_lm(teacher)
    s_logits = s_lm(input_ids, attention_mask).logits
    with torch.no_grad():
        t_logits = t_lm(input_ids, attention_mask).logits
    return token_divergence(s_logits, t_logits, mask, kind, beta=beta, alpha=alpha,
                            temperature=temperature, reduction=reduction)
