"""Cross-tokenizer distillation: a teacher and a student whose vocabularies differ.

Two ways to compare models that cut the same text into different tokens:

* :func:`uld_loss`, the Universal Logit Distillation loss (N. Boizard, K. El Haddad,
  C. Hudelot, P. Colombo, 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit
  Distillation Loss for LLMs", arXiv:2402.12030). At each aligned position both next-token
  distributions are sorted in decreasing order, the smaller vocabulary is padded with zero
  probabilities to the larger size, and the closed-form Wasserstein-1 distance under ULD's
  cost (0 between equal ranks, 1 otherwise) is ``sum_i |p_s,(i) - p_t,(i)|`` over the ranks
  ``i``. It compares the *shapes* of the distributions (how peaked, how spread), not which
  token is which: it needs no vocabulary mapping. **Positions are aligned by order** (ULD's
  convention): the ``k``-th counted student position is compared with the ``k``-th counted
  teacher position, for ``k`` up to the smaller of the two counts of that sequence; the
  remaining positions of the longer side are dropped.
* :func:`align_spans` + :func:`span_merged_divergence`: tokens are grouped by character
  offsets into the smallest pieces of text on which both tokenizations agree (``"1234"`` as
  ``1|2|3|4`` and ``12|34`` gives the pieces ``"12"`` and ``"34"``); for each piece, the
  probability that each model gives to that exact piece of the *actual* text after the same
  preceding text (the product of its tokens' conditional probabilities) is compared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError, ShapeError
from ..objectives._common import check_temperature, shape_str

__all__ = [
    "SPAN_KINDS",
    "align_spans",
    "span_merged_divergence",
    "uld_loss",
]

#: Divergences of :func:`span_merged_divergence`.
SPAN_KINDS = ("forward_kl", "reverse_kl")

Span = tuple[int, int]
Group = tuple[tuple[int, ...], tuple[int, ...]]


# --------------------------------------------------------------------------------------
# ULD
# --------------------------------------------------------------------------------------


def _bool_mask(name: str, mask: Tensor | None, lead: torch.Size, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(lead, dtype=torch.bool, device=device)
    if tuple(mask.shape) != tuple(lead):
        raise ShapeError(f"{name}: logits over positions {shape_str(lead)} need a mask of that shape, got {shape_str(mask)}.")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or bool(((mask != 0) & (mask != 1)).any()):
            raise DataError(f"{name}: masks must be boolean or integer 0/1 (True = counted), got {mask.dtype}.")
        mask = mask != 0
    return mask


def _ordered_rows(logits: Tensor, mask: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of the first ``n[b]`` counted positions of each sequence, packed to ``[B, P, V]``,
    and the ``[B, P]`` validity of the packed slots (``P = max n``)."""
    B = logits.shape[0]
    P = int(n.max()) if B else 0
    rank = mask.long().cumsum(1) - 1  # order of each counted position within its sequence
    take = mask & (rank < n.unsqueeze(1))
    out = logits.new_zeros(B, P, logits.shape[-1])
    b_idx, t_idx = take.nonzero(as_tuple=True)
    out = out.index_put((b_idx, rank[b_idx, t_idx]), logits[b_idx, t_idx])
    slots = torch.arange(P, device=logits.device).unsqueeze(0) < n.unsqueeze(1)
    return out, slots


def uld_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    student_mask: Tensor | None = None,
    teacher_mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """ULD's sorted-probability Wasserstein-1 distance per aligned position.

    Args:
        student_logits: ``[B, T_s, V_s]`` (with grad).
        teacher_logits: ``[B, T_t, V_t]``; ``V_t`` and ``T_t`` may differ from the student's.
        student_mask: ``[B, T_s]`` (True = a position to distill, e.g. the answer tokens);
            ``None``: all.
        teacher_mask: ``[B, T_t]``; ``None``: all.
        temperature: both models' logits are divided by it before the softmax (no ``T^2``).
        reduction: ``"mean"`` over aligned positions (0, with a gradient, if none), ``"sum"``,
            or ``"none"``: ``[B, P]`` per aligned slot (``P`` the largest aligned count; 0 past a
            sequence's count).

    Per aligned pair: ``sum_i |sort(p_s)_i - sort(p_t)_i|`` with both sorted in decreasing
    order and the shorter vector padded with zeros (module docstring). Values lie in ``[0, 2]``.
    """
    name = "uld_loss"
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    T = check_temperature("temperature", temperature)
    if student_logits.ndim != 3 or teacher_logits.ndim != 3 or student_logits.shape[0] != teacher_logits.shape[0]:
        raise ShapeError(
            f"{name}: expected student logits [B, T_s, V_s] and teacher logits [B, T_t, V_t] with the "
            f"same B, got {shape_str(student_logits)} and {shape_str(teacher_logits)}."
        )
    s_mask = _bool_mask(name, student_mask, student_logits.shape[:-1], student_logits.device)
    t_mask = _bool_mask(name, teacher_mask, teacher_logits.shape[:-1], teacher_logits.device)
    n = torch.minimum(s_mask.sum(1), t_mask.sum(1))
    dtype = torch.promote_types(torch.float32, torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    s_rows, slots = _ordered_rows(student_logits.to(dtype), s_mask, n)
    t_rows, _ = _ordered_rows(teacher_logits.to(dtype), t_mask, n)
    p_s = F.softmax(s_rows / T, dim=-1).sort(dim=-1, descending=True).values
    p_t = F.softmax(t_rows / T, dim=-1).sort(dim=-1, descending=True).values
    V = max(p_s.shape[-1], p_t.shape[-1])
    p_s = F.pad(p_s, (0, V - p_s.shape[-1]))
    p_t = F.pad(p_t, (0, V - p_t.shape[-1]))
    values = torch.where(slots, (p_s - p_t).abs().sum(-1), torch.zeros((), dtype=dtype, device=p_s.device))
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return values.sum() / slots.sum().clamp(min=1)


# --------------------------------------------------------------------------------------
# span alignment
# --------------------------------------------------------------------------------------


def _check_spans(name: str, spans: Sequence[Span]) -> list[tuple[int, Span]]:
    """``(position, span)`` of the tokens with a non-empty span, in order; checks they are
    ordered and do not overlap."""
    kept: list[tuple[int, Span]] = []
    last_end = -1
    for pos, span in enumerate(spans):
        try:
            start, end = (int(x) for x in span)
        except (TypeError, ValueError):
            raise DataError(f"align_spans: {name} token {pos} has span {span!r}; expected (start, end).") from None
        if start > end or start < 0:
            raise DataError(f"align_spans: {name} token {pos} has span {(start, end)}; need 0 <= start <= end.")
        if start == end:  # special tokens (BOS, EOS) cover no text
            continue
        if start < last_end:
            raise DataError(
                f"align_spans: {name} token {pos} starts at {start}, before the previous token ends at "
                f"{last_end}; spans must be in order and must not overlap."
            )
        kept.append((pos, (start, end)))
        last_end = end
    return kept


def align_spans(student_spans: Sequence[Span], teacher_spans: Sequence[Span]) -> list[Group]:
    """The minimal groups of tokens whose character spans coincide.

    ``student_spans``, ``teacher_spans``: one ``(start, end)`` character offset per token (as a
    fast tokenizer's ``return_offsets_mapping`` gives) over the *same* text. Tokens with an
    empty span (special tokens) belong to no group. Returns a list of
    ``(student_positions, teacher_positions)``, tuples of token indices, in text order: each
    group is the shortest run of tokens on both sides that ends at the same character offset
    (gaps between tokens, such as skipped whitespace, belong to the group they fall in).

    Example:
        >>> align_spans([(0, 1), (1, 2), (2, 3), (3, 4)], [(0, 2), (2, 4)])
        [((0, 1), (0,)), ((2, 3), (1,))]
    """
    s = _check_spans("student", student_spans)
    t = _check_spans("teacher", teacher_spans)
    if not s or not t:
        if s or t:
            raise DataError("align_spans: one side has tokens covering text and the other has none.")
        return []
    if s[-1][1][1] != t[-1][1][1]:
        raise DataError(
            f"align_spans: the student's tokens end at character {s[-1][1][1]} and the teacher's at "
            f"{t[-1][1][1]}; both must tokenize the same text."
        )
    groups: list[Group] = []
    i = j = 0
    while i < len(s):
        gs, gt = [s[i][0]], [t[j][0]]
        end_s, end_t = s[i][1][1], t[j][1][1]
        i, j = i + 1, j + 1
        while end_s != end_t:
            if end_s < end_t:
                gs.append(s[i][0])
                end_s = s[i][1][1]
                i += 1
            else:
                gt.append(t[j][0])
                end_t = t[j][1][1]
                j += 1
        groups.append((tuple(gs), tuple(gt)))
    return groups


def _group_logprobs(name: str, logprobs: Tensor, groups: Sequence[Sequence[int]]) -> Tensor:
    """``[G]``: the sum of ``logprobs[positions]`` over each group's positions."""
    n_groups = len(groups)
    index = [g for g, positions in enumerate(groups) for _ in positions]
    positions = [p for group in groups for p in group]
    if positions and (max(positions) >= logprobs.shape[0] or min(positions) < 0):
        raise ShapeError(
            f"span_merged_divergence: a {name} group names position {max(positions)}, but the {name} "
            f"log-probabilities have {logprobs.shape[0]} positions."
        )
    out = logprobs.new_zeros(n_groups)
    if not positions:
        return out
    idx = torch.tensor(index, device=logprobs.device)
    return out.index_add(0, idx, logprobs[torch.tensor(positions, device=logprobs.device)])


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Maechler 2012); ``-inf`` at
    ``x = 0`` with a finite (zero) gradient there."""
    inside = x < 0
    x_safe = torch.where(inside, x, torch.full_like(x, -1.0))
    value = torch.where(
        x_safe > -math.log(2.0), torch.log(-torch.expm1(x_safe)), torch.log1p(-torch.exp(x_safe))
    )
    return torch.where(inside, value, torch.full_like(x, -math.inf))


def _binary_kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """``KL(Bern(a) || Bern(b))`` from ``log a``, ``log b``, with ``0 log 0 = 0``."""
    la1, lb1 = _log1mexp(log_a), _log1mexp(log_b)
    a, a1 = log_a.exp(), la1.exp()
    first = a * torch.where(a > 0, log_a - log_b, torch.zeros_like(a))
    second = a1 * torch.where(a1 > 0, la1 - lb1, torch.zeros_like(a1))
    return first + second


def span_merged_divergence(
    student_logprobs: Tensor,
    teacher_logprobs: Tensor,
    groups: Sequence[Sequence[Group]],
    *,
    kind: str = "forward_kl",
    reduction: str = "mean",
) -> Tensor:
    """Compare, per aligned piece of text, the probability both models give to that piece.

    **What is compared.** For a group ``g`` of :func:`align_spans` covering the text piece
    ``x_g``, ``log P_s(g) = sum_{i in g} log p_s(token_i | tokens_<i)``: the student's
    probability of producing exactly ``x_g`` next (as its own tokens of it), given the text
    before it; likewise ``log P_t(g)`` for the teacher with its tokens. Both condition on the
    same preceding text, so the two numbers are probabilities of the same event ("the next
    text is ``x_g``"), each model counting only its own canonical tokenization of it. Each
    pair is compared as two-outcome distributions {``x_g``, anything else}:
    ``"forward_kl"``: ``KL(Bern(P_t) || Bern(P_s))``; ``"reverse_kl"``:
    ``KL(Bern(P_s) || Bern(P_t))``. A group of one token on both sides with equal
    vocabularies is the binary (target vs rest) part of the token-level KL.

    Args:
        student_logprobs: ``[B, T_s]`` log-probabilities of the actual student tokens (with
            grad; e.g. :func:`distillery.sequence.estimators.token_logprobs`).
        teacher_logprobs: ``[B, T_t]`` the same for the teacher's tokens.
        groups: one list of ``(student_positions, teacher_positions)`` per sequence, as
            returned by :func:`align_spans` (positions index the log-probability rows).
        kind: ``"forward_kl"`` or ``"reverse_kl"``.
        reduction: ``"mean"`` over all groups of the batch, ``"sum"``, or ``"none"`` (a list of
            ``[G_b]`` tensors, one per sequence).
    """
    if kind not in SPAN_KINDS:
        raise ConfigError(f"span_merged_divergence: kind must be one of {SPAN_KINDS}, got {kind!r}.")
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"span_merged_divergence: reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
    if student_logprobs.ndim != 2 or teacher_logprobs.ndim != 2:
        raise ShapeError(
            f"span_merged_divergence: expected log-probabilities [B, T_s] and [B, T_t], got "
            f"{shape_str(student_logprobs)} and {shape_str(teacher_logprobs)}."
        )
    B = student_logprobs.shape[0]
    if teacher_logprobs.shape[0] != B or len(groups) != B:
        raise ShapeError(
            f"span_merged_divergence: {B} student sequences, {teacher_logprobs.shape[0]} teacher sequences "
            f"and {len(groups)} group lists; they must be equal."
        )
    dtype = torch.promote_types(torch.float32, torch.promote_types(student_logprobs.dtype, teacher_logprobs.dtype))
    per_sequence = []
    for b in range(B):
        log_ps = _group_logprobs("student", student_logprobs[b].to(dtype), [g[0] for g in groups[b]])
        log_pt = _group_logprobs("teacher", teacher_logprobs[b].to(dtype), [g[1] for g in groups[b]])
        if kind == "forward_kl":
            per_sequence.append(_binary_kl(log_pt, log_ps))
        else:
            per_sequence.append(_binary_kl(log_ps, log_pt))
    if reduction == "none":
        return per_sequence  # type: ignore[return-value]
    flat = torch.cat(per_sequence) if per_sequence else student_logprobs.new_zeros(0, dtype=dtype)
    total = flat.sum()
    if reduction == "sum":
        return total
    return total / max(flat.numel(), 1)
