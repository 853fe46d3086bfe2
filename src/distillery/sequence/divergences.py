"""Per-token divergences between a student and a teacher language model, over the full vocabulary.

Every function here compares, at each position of ``[B, T, V]`` logits, the student's and the
teacher's next-token distributions and reduces the per-token values under a ``[B, T]`` mask
(True = the position counts, e.g. completion tokens; padding and prompt positions are False).
Only the counted positions are computed at all (their rows are gathered first), so padded rows
may hold anything, even NaN.

With ``p_t = softmax(teacher / T)``, ``p_s = softmax(student / T)`` and temperature ``T``, the
kinds of :func:`token_divergence` are, per token:

* ``forward_kl``: ``T^2 KL(p_t || p_s)`` (Hinton et al. 2015, arXiv:1503.02531; supervised and
  sequence-level KD), computed by :func:`~distillery.objectives.divergence.kd_loss`;
* ``reverse_kl``: ``T^2 KL(p_s || p_t)`` (MiniLLM, Gu et al. 2024, arXiv:2306.08543), by
  :func:`~distillery.objectives.divergence.reverse_kl_loss`;
* ``jsd``: GKD's generalized Jensen-Shannon divergence (Agarwal et al. 2024, arXiv:2306.13649)
  ``T^2 [beta KL(p_t || m) + (1 - beta) KL(p_s || m)]``, ``m = beta p_t + (1 - beta) p_s``, by
  :func:`~distillery.objectives.divergence.jsd_loss`. **beta is the teacher's weight in the
  mixture** ``m``, exactly as in TRL's ``GKDTrainer.generalized_jsd_loss`` (huggingface/trl),
  which builds ``m`` as ``logsumexp(student_log_probs + log(1 - beta), teacher_log_probs +
  log(beta))``, and as in :func:`~distillery.objectives.divergence.jsd_loss`: the same number
  means the same loss in all three. Endpoints (TRL's and jsd_loss's convention): ``beta = 0``
  is the forward KL ``KL(p_t || p_s)`` and ``beta = 1`` the reverse KL ``KL(p_s || p_t)`` (the
  limits of ``JSD(beta) / beta`` and ``JSD(beta) / (1 - beta)``; the formula itself gives 0
  there). At ``T = 1`` the ``"mean"`` reduction equals TRL's ``reduction="batchmean"`` with
  labels (sum over counted tokens / their number); at ``T != 1`` TRL applies no ``T^2`` factor.
* ``skew_kl``: DistiLLM's alpha-skew forward KL ``T^2 KL(p_t || alpha p_t + (1 - alpha) p_s)``
  (Ko et al. 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models",
  arXiv:2402.03898); ``alpha = 0`` is the forward KL;
* ``skew_rkl``: the alpha-skew reverse KL ``T^2 KL(p_s || alpha p_s + (1 - alpha) p_t)``
  (same paper); ``alpha = 0`` is the reverse KL;
* ``tvd``: total variation ``0.5 sum_v |p_t,v - p_s,v|`` (no ``T^2`` factor), by
  :func:`~distillery.objectives.divergence.tvd_loss`.

Log-probabilities are exact log-softmaxes (no clamping), mixtures are formed in log space,
and ``0 log 0 = 0``, so logits of +-1e4, near one-hot distributions and 50k-word vocabularies
give the float64 value up to float32 rounding. Half precision inputs are computed in float32,
float64 stays float64.

:func:`token_divergence_from_hidden` computes the same values from hidden states and the
output projection; with ``chunked=True`` it delegates the kinds ``forward_kl``, ``reverse_kl``
and ``jsd`` to :func:`~distillery.objectives.chunked.chunked_kd_loss` (never the full
``[tokens, V]`` logits). :func:`topk_token_divergence` is the forward KL against a cached
teacher stored as top-k log-probabilities plus a tail mass (the math of
:mod:`distillery.objectives.topk`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError, ShapeError
from ..objectives._common import check_temperature, kl_from_log_probs, shape_str
from ..objectives.chunked import DIVERGENCES as CHUNKED_KINDS
from ..objectives.chunked import chunked_kd_loss
from ..objectives.divergence import jsd_loss, kd_loss, reverse_kl_loss, tvd_loss
from ..objectives.topk import kd_topk_loss

__all__ = [
    "KINDS",
    "SEQUENCE_REDUCTIONS",
    "reduce_tokens",
    "token_divergence",
    "token_divergence_from_hidden",
    "topk_teacher",
    "topk_token_divergence",
]

#: Kinds of :func:`token_divergence`.
KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_rkl", "tvd")
#: Reductions of the per-token functions of the sequence engine.
SEQUENCE_REDUCTIONS = ("mean", "sum", "none", "seq_mean")


# --------------------------------------------------------------------------------------
# masks and reductions
# --------------------------------------------------------------------------------------


def _check_mask(name: str, mask: Tensor | None, lead: torch.Size, device: torch.device) -> Tensor:
    """Boolean mask of shape ``lead`` (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones(lead, dtype=torch.bool, device=device)
    if tuple(mask.shape) != tuple(lead):
        raise ShapeError(
            f"{name}: logits over positions {shape_str(lead)} need a mask of shape {shape_str(lead)}, "
            f"got {shape_str(mask)}."
        )
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or mask.is_complex():
        raise DataError(
            f"{name}: mask must be boolean or integer 0/1 (True = counted), got {mask.dtype}; "
            "per-token weights are not a mask."
        )
    if bool(((mask != 0) & (mask != 1)).any()):
        raise DataError(f"{name}: an integer mask must hold only 0 and 1.")
    return mask != 0


def _check_reduction(reduction: str) -> None:
    if reduction not in SEQUENCE_REDUCTIONS:
        raise ConfigError(f"reduction must be one of {SEQUENCE_REDUCTIONS}, got {reduction!r}.")


def reduce_tokens(values: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Reduce per-token values ``[B, T]`` (already 0 at masked positions) under ``mask [B, T]``.

    ``"none"``: ``values`` as is; ``"sum"``: sum over counted tokens; ``"mean"``: that sum over
    the number of counted tokens (0, with a gradient, when none counts); ``"seq_mean"``: each
    sequence's mean over its counted tokens, averaged over the sequences that have at least
    one (every dim but the first is a position).
    """
    _check_reduction(reduction)
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.sum() / mask.sum().clamp(min=1)
    if values.ndim < 2:
        raise ShapeError(f"reduction 'seq_mean' needs values [B, T], got {shape_str(values)}.")
    flat, counted = values.reshape(values.shape[0], -1), mask.reshape(mask.shape[0], -1).sum(1)
    per_sequence = flat.sum(1) / counted.clamp(min=1)
    has_tokens = counted > 0
    return per_sequence[has_tokens].sum() / has_tokens.sum().clamp(min=1)


def _scatter_rows(rows: Tensor, mask: Tensor) -> Tensor:
    """Per-row values ``[N]`` of the counted positions back into ``mask``'s shape, 0 elsewhere."""
    out = rows.new_zeros(mask.shape)
    return out.masked_scatter(mask, rows)


# --------------------------------------------------------------------------------------
# full-vocabulary divergences
# --------------------------------------------------------------------------------------


def _check_vocabularies(name: str, student: Tensor, teacher: Tensor) -> None:
    if student.shape[-1] != teacher.shape[-1]:
        raise ConfigError(
            f"{name}: the student's vocabulary has {student.shape[-1]} entries and the teacher's "
            f"{teacher.shape[-1]}; a per-token divergence needs one vocabulary. For teacher and "
            "student with different tokenizers, provide an alignment: character spans of each "
            "model's tokens for distillery.sequence.alignment.align_spans + span_merged_divergence, "
            "or use distillery.sequence.alignment.uld_loss (ULD, positions aligned by order)."
        )
    if student.shape != teacher.shape:
        raise ShapeError(
            f"{name}: student logits {shape_str(student)} and teacher logits {shape_str(teacher)} "
            "must cover the same positions."
        )


def _skew_kl_rows(log_p: Tensor, log_q: Tensor, alpha: float) -> Tensor:
    """``KL(p || alpha p + (1 - alpha) q)`` per row ``[N]``, mixture in log space."""
    if alpha == 0.0:
        return kl_from_log_probs(log_p, log_q)
    if alpha == 1.0:  # KL(p || p): exactly 0
        return kl_from_log_probs(log_p, log_p)
    log_mix = torch.logaddexp(log_p + math.log(alpha), log_q + math.log1p(-alpha))
    return kl_from_log_probs(log_p, log_mix)


def _rows(
    kind: str, s: Tensor, t: Tensor, beta: float, alpha: float, T: float
) -> Tensor:
    """Per-row values ``[N]`` of ``kind`` for logits ``[N, V]``."""
    if kind == "forward_kl":
        return kd_loss(s, t, T, reduction="none")
    if kind == "reverse_kl":
        return reverse_kl_loss(s, t, T, reduction="none")
    if kind == "jsd":
        return jsd_loss(s, t, beta, T, reduction="none")
    if kind == "tvd":
        return tvd_loss(s, t, T, reduction="none")
    dtype = torch.promote_types(torch.float32, torch.promote_types(s.dtype, t.dtype))
    log_ps = F.log_softmax(s.to(dtype) / T, dim=-1)
    log_pt = F.log_softmax(t.to(dtype) / T, dim=-1)
    if kind == "skew_kl":
        return _skew_kl_rows(log_pt, log_ps, alpha) * (T * T)
    return _skew_kl_rows(log_ps, log_pt, alpha) * (T * T)  # skew_rkl


def _check_kind(name: str, kind: str, beta: float, alpha: float) -> tuple[float, float]:
    if kind not in KINDS:
        raise ConfigError(f"{name}: kind must be one of {KINDS}, got {kind!r}.")
    beta, alpha = float(beta), float(alpha)
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"{name}: beta must be in [0, 1], got {beta!r}.")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"{name}: alpha must be in [0, 1], got {alpha!r}.")
    return beta, alpha


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    kind: str = "forward_kl",
    *,
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Per-token divergence ``kind`` between student and teacher next-token distributions.

    Args:
        student_logits: ``[B, T, V]`` (any leading dims: positions), with grad.
        teacher_logits: same shape (a different ``V`` raises :class:`ConfigError` asking for an
            alignment, see :mod:`distillery.sequence.alignment`).
        mask: ``[B, T]`` boolean or integer 0/1, True = counted; ``None`` counts every position.
        kind: one of :data:`KINDS` (formulas in the module docstring).
        beta: the teacher's weight in GKD's mixture for ``"jsd"`` (TRL's ``beta``).
        alpha: the skew of ``"skew_kl"`` / ``"skew_rkl"`` (DistiLLM's default 0.1).
        temperature: ``T``, applied to both logits; KL-type values are scaled by ``T^2``.
        reduction: ``"mean"`` over counted tokens, ``"sum"``, ``"seq_mean"`` (mean over
            sequences of the per-sequence token mean) or ``"none"`` (``[B, T]``, 0 at masked
            positions); see :func:`reduce_tokens`.

    Example:
        >>> import torch
        >>> s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
        >>> token_divergence(s, t, torch.ones(2, 5, dtype=torch.bool), "jsd", reduction="none").shape
        torch.Size([2, 5])
    """
    name = f"token_divergence[{kind}]"
    beta, alpha = _check_kind("token_divergence", kind, beta, alpha)
    _check_reduction(reduction)
    T = check_temperature("temperature", temperature)
    if student_logits.ndim < 2:
        raise ShapeError(f"{name}: expected logits [B, T, V], got {shape_str(student_logits)}.")
    _check_vocabularies(name, student_logits, teacher_logits)
    keep = _check_mask(name, mask, student_logits.shape[:-1], student_logits.device)
    V = student_logits.shape[-1]
    s_rows = student_logits.reshape(-1, V)[keep.reshape(-1)]
    t_rows = teacher_logits.reshape(-1, V)[keep.reshape(-1)]
    if s_rows.shape[0] == 0:  # nothing counts: zeros that still carry a gradient
        dtype = torch.promote_types(torch.float32, student_logits.dtype)
        values = (student_logits.to(dtype).sum(-1) * 0.0).nan_to_num()
        return reduce_tokens(values, keep, reduction)
    values = _scatter_rows(_rows(kind, s_rows, t_rows, beta, alpha, T), keep)
    return reduce_tokens(values, keep, reduction)


def token_divergence_from_hidden(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    mask: Tensor | None = None,
    kind: str = "forward_kl",
    *,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunked: bool = True,
    chunk_size: int = 1024,
) -> Tensor:
    """:func:`token_divergence` of ``hidden @ weight.T + bias`` for both models.

    ``student_hidden`` ``[B, T, H_s]``, ``student_weight`` ``[V, H_s]`` (the student's
    ``lm_head.weight``), ``teacher_hidden`` ``[B, T, H_t]``, ``teacher_weight`` ``[V, H_t]``,
    biases ``[V]`` or None, ``mask`` ``[B, T]``. With ``chunked=True`` the kinds
    ``forward_kl``, ``reverse_kl`` and ``jsd`` go to
    :func:`~distillery.objectives.chunked.chunked_kd_loss` (``chunk_size`` tokens at a time,
    same values and gradients, a few ``chunk_size x V`` buffers instead of the full logits);
    the other kinds are refused there. With ``chunked=False`` the logits are formed and passed
    to :func:`token_divergence`. The teacher side gets no gradient in the chunked path.
    """
    beta, alpha = _check_kind("token_divergence_from_hidden", kind, beta, alpha)
    _check_reduction(reduction)
    if not chunked:
        s = F.linear(student_hidden, student_weight, student_bias)
        t = F.linear(teacher_hidden, teacher_weight, teacher_bias)
        return token_divergence(
            s, t, mask, kind, beta=beta, alpha=alpha, temperature=temperature, reduction=reduction
        )
    if kind not in CHUNKED_KINDS:
        raise ConfigError(
            f"token_divergence_from_hidden: chunked=True supports the kinds {CHUNKED_KINDS}, got "
            f"{kind!r}; use chunked=False for it (the full logits are then formed)."
        )
    if student_weight.shape[0] != teacher_weight.shape[0]:
        _check_vocabularies(
            "token_divergence_from_hidden", student_weight.new_empty(1, student_weight.shape[0]),
            teacher_weight.new_empty(1, teacher_weight.shape[0]),
        )
    keep = _check_mask("token_divergence_from_hidden", mask, student_hidden.shape[:-1], student_hidden.device)
    values = chunked_kd_loss(
        student_hidden, student_weight, teacher_hidden, teacher_weight,
        student_bias=student_bias, teacher_bias=teacher_bias, divergence=kind, beta=beta,
        temperature=temperature, mask=keep, chunk_size=chunk_size, reduction="none",
    )
    values = values.reshape(keep.shape)
    return reduce_tokens(torch.where(keep, values, torch.zeros_like(values)), keep, reduction)


# --------------------------------------------------------------------------------------
# cached teacher: top-k log-probabilities plus a tail bucket
# --------------------------------------------------------------------------------------


@torch.no_grad()
def topk_teacher(teacher_logits: Tensor, k: int, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """``(topk_ids, topk_logprobs, tail_mass)`` of a teacher at ``temperature``.

    ``teacher_logits`` ``[B, T, V]`` -> int64 ids ``[B, T, k]`` (most likely first), their
    log-probabilities ``log softmax(teacher / T)`` ``[B, T, k]`` and the probability mass of
    the other ``V - k`` tokens ``[B, T]`` (from the full logits in float64; 0 for ``k = V``).
    This is the form a top-k teacher cache stores.
    """
    T = check_temperature("temperature", temperature)
    V = teacher_logits.shape[-1]
    if not 1 <= int(k) <= V:
        raise ConfigError(f"topk_teacher: k must be in [1, {V}] for a vocabulary of {V}, got {k!r}.")
    log_p = F.log_softmax(teacher_logits.double() / T, dim=-1)
    logprobs, ids = log_p.topk(int(k), dim=-1)
    if int(k) == V:
        tail = torch.zeros(log_p.shape[:-1], dtype=torch.float64, device=log_p.device)
    else:
        tail = torch.logsumexp(log_p.scatter(-1, ids, -math.inf), dim=-1).exp()
    out_dtype = torch.promote_types(torch.float32, teacher_logits.dtype)
    return ids, logprobs.to(out_dtype), tail.to(out_dtype)


def topk_token_divergence(
    student_logits: Tensor,
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    tail_mass: Tensor,
    mask: Tensor | None = None,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Forward KL per token against a cached top-k teacher, coarsened to k tokens + one tail bucket.

    Per token, with ``S`` the teacher's kept ids, ``p_i = exp(topk_logprobs_i)`` renormalised
    to ``1 - tail_mass`` (a no-op when the cache is consistent), ``p_tail = tail_mass`` and
    ``q = softmax(student / T)``, ``q_tail = sum_{j not in S} q_j``::

        T^2 [ sum_{i in S} p_i log(p_i / q_i) + p_tail log(p_tail / q_tail) ]

    the math of :func:`~distillery.objectives.topk.kd_topk_loss` (its module docstring gives
    the exact gap to the dense forward KL: ``T^2 p_tail KL(p(.|tail) || q(.|tail)) >= 0``).

    Args:
        student_logits: ``[B, T, V]``.
        topk_ids: ``[B, T, k]`` integer token ids (distinct per position).
        topk_logprobs: ``[B, T, k]`` the teacher's log-probabilities at ``temperature``.
        tail_mass: ``[B, T]`` the teacher's mass outside ``topk_ids`` at ``temperature``.
        mask: ``[B, T]``; ``temperature``: the one the cache was computed at (the student is
            softened by it too); ``reduction`` as in :func:`token_divergence`.
    """
    name = "topk_token_divergence"
    _check_reduction(reduction)
    T = check_temperature("temperature", temperature)
    lead = student_logits.shape[:-1]
    if topk_ids.shape[:-1] != lead or topk_logprobs.shape != topk_ids.shape or tuple(tail_mass.shape) != tuple(lead):
        raise ShapeError(
            f"{name}: student logits {shape_str(student_logits)} need topk_ids and topk_logprobs "
            f"{shape_str(lead)[:-1]}, k] and a tail_mass {shape_str(lead)}; got {shape_str(topk_ids)}, "
            f"{shape_str(topk_logprobs)}, {shape_str(tail_mass)}."
        )
    keep = _check_mask(name, mask, lead, student_logits.device)
    V, k = student_logits.shape[-1], topk_ids.shape[-1]
    flat = keep.reshape(-1)
    s_rows = student_logits.reshape(-1, V)[flat]
    if s_rows.shape[0] == 0:
        dtype = torch.promote_types(torch.float32, student_logits.dtype)
        return reduce_tokens((student_logits.to(dtype).sum(-1) * 0.0).nan_to_num(), keep, reduction)
    # kd_topk_loss softens its "values" by T and renormalises them to 1 - tail: passing
    # T * log p gives back log p exactly (log_softmax of log-probabilities that sum to 1 - tail).
    values = topk_logprobs.reshape(-1, k)[flat].to(torch.promote_types(torch.float32, topk_logprobs.dtype)) * T
    rows = kd_topk_loss(
        s_rows, values, topk_ids.reshape(-1, k)[flat], tail_mass.reshape(-1)[flat], T, reduction="none"
    )
    return reduce_tokens(_scatter_rows(rows, keep), keep, reduction)
