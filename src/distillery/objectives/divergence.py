"""Divergences between the student's and the teacher's class distributions.

Every loss here compares two distributions over the **last** dimension of logits shaped
``[B, K]``, or ``[B, ..., K]`` (e.g. ``[B, L, V]`` for token sequences: the divergence is
computed at every position and averaged over the positions of a sample). The pure functions
(:func:`kd_loss`, :func:`reverse_kl_loss`, :func:`jsd_loss`, :func:`tvd_loss`,
:func:`dkd_loss`) return one value per sample, shape ``[B]``, with ``reduction="none"`` and
a scalar mean with ``reduction="mean"``.

The teacher is given either as logits (``teacher``, softened by the temperature like the
student) or, when ground-truth mixing has already produced the target, as a probability
vector (``teacher_probs``, used as is: no temperature is applied to it). Exactly one of the
two must be given.

Computation happens in float32 at least: half and bfloat16 inputs are upcast, float64 stays
float64. Logits are turned into log-probabilities by an exact ``log_softmax`` (never by
``log(softmax)`` nor by clamping), so large, peaked or one-hot-like logits over large
vocabularies give the float64 value up to float32 rounding. Zero teacher probabilities
contribute ``0 * log 0 = 0``, never NaN; where a zero teacher probability would be divided
by (reverse KL, ``jsd`` at ``beta = 1``), only that true zero (``log p = -inf``, from a
``teacher_probs`` entry of 0 or a teacher logit of ``-inf``) is replaced by the smallest
positive normal float, see :func:`~distillery.objectives._common.floor_log_zeros`.

"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, DataError, ShapeError
from ..registry import OBJECTIVES
from ._common import (
    check_reduction,
    check_same_shape,
    check_temperature,
    floor_log_zeros,
    kl_from_log_probs,
    per_sample_mean,
    reduce,
    safe_log,
    shape_str,
    upcast,
)
from .base import Objective

__all__ = [
    "DKD",
    "GeneralizedJSD",
    "ReverseKL",
    "SoftTargetKD",
    "TotalVariation",
    "dkd_loss",
    "jsd_loss",
    "kd_loss",
    "reverse_kl_loss",
    "tvd_loss",
]


def _log_probs(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    teacher_probs: Tensor | None,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """Tempered student log-probs and teacher log-probs (``log(teacher_probs)`` untempered)."""
    if (teacher_logits is None) == (teacher_probs is None):
        raise TypeError(f"{name}: give exactly one of teacher (logits) or teacher_probs")
    teacher = teacher_logits if teacher_logits is not None else teacher_probs
    assert teacher is not None
    if student_logits.ndim < 2:
        raise ShapeError(
            f"{name}: expected logits shaped [B, K] or [B, ..., K], got a student signal of "
            f"shape {shape_str(student_logits)}."
        )
    check_same_shape(
        student_logits,
        teacher,
        name,
        "Both must be logits over the same classes (a different vocabulary or class count "
        "needs a mapping first).",
    )
    s, t = upcast(student_logits, teacher)
    assert s is not None and t is not None
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1) if teacher_logits is not None else safe_log(t)
    return log_ps, log_pt


# --------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None = None,
    temperature: float = 4.0,
    *,
    teacher_probs: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Hinton soft-target loss ``T^2 * KL(softmax(t/T) || softmax(s/T))`` per sample.

    ``student_logits``, ``teacher_logits``/``teacher_probs``: ``[B, K]`` or ``[B, ..., K]``.
    Returns ``[B]`` (``reduction="none"``) or a scalar (``"mean"``).
    """
    check_reduction(reduction)
    T = check_temperature("temperature", temperature)
    log_ps, log_pt = _log_probs("kd", student_logits, teacher_logits, teacher_probs, T)
    per_position = kl_from_log_probs(log_pt, log_ps) * (T * T)
    return reduce(per_sample_mean(per_position), reduction)


def reverse_kl_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None = None,
    temperature: float = 1.0,
    *,
    teacher_probs: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Reverse KL ``T^2 * KL(softmax(s/T) || p_t)`` per sample.

    ``log p_t`` is the exact log-softmax of the teacher logits (or ``log(teacher_probs)``);
    only zero teacher probabilities (``log p_t = -inf``) are replaced by the smallest
    positive normal number of the compute dtype, so the loss stays finite (large) instead
    of ``+inf``. Shapes as in :func:`kd_loss`.
    """
    check_reduction(reduction)
    T = check_temperature("temperature", temperature)
    log_ps, log_pt = _log_probs("reverse_kl", student_logits, teacher_logits, teacher_probs, T)
    per_position = kl_from_log_probs(log_ps, floor_log_zeros(log_pt)) * (T * T)
    return reduce(per_sample_mean(per_position), reduction)


def jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    *,
    teacher_probs: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Generalized Jensen-Shannon divergence of GKD, times ``T^2``, per sample.

    ``JSD(beta) = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)``,
    ``m = beta * p_t + (1 - beta) * p_s``, for ``0 < beta < 1``. At the endpoints, following
    the GKD reference code, ``beta = 0`` is the forward KL ``KL(p_t || p_s)`` and ``beta = 1``
    the reverse KL ``KL(p_s || p_t)`` (the limits of ``JSD(beta) / beta`` and
    ``JSD(beta) / (1 - beta)``; the formula itself would give 0 there). The mixture is
    formed in log space (``log m = logsumexp(log beta + log p_t, log(1 - beta) + log p_s)``).

    Equals TRL's ``generalized_jsd_loss`` (same ``beta``: the teacher's weight in ``m``) at
    ``T = 1`` and carries a ``T^2`` factor otherwise; see :class:`GeneralizedJSD` for the
    reductions under which the two agree.
    """
    check_reduction(reduction)
    T = check_temperature("temperature", temperature)
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"jsd: beta must be in [0, 1], got {beta!r}.")
    log_ps, log_pt = _log_probs("jsd", student_logits, teacher_logits, teacher_probs, T)
    if beta == 0.0:
        per_position = kl_from_log_probs(log_pt, log_ps)
    elif beta == 1.0:
        per_position = kl_from_log_probs(log_ps, floor_log_zeros(log_pt))
    else:
        log_m = torch.logsumexp(
            torch.stack([log_pt + math.log(beta), log_ps + math.log1p(-beta)]), dim=0
        )
        per_position = beta * kl_from_log_probs(log_pt, log_m) + (1.0 - beta) * kl_from_log_probs(
            log_ps, log_m
        )
    return reduce(per_sample_mean(per_position * (T * T)), reduction)


def tvd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None = None,
    temperature: float = 1.0,
    *,
    teacher_probs: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Total variation distance ``0.5 * sum_k |p_t,k - p_s,k|`` per sample (no ``T^2`` factor)."""
    check_reduction(reduction)
    T = check_temperature("temperature", temperature)
    log_ps, log_pt = _log_probs("tvd", student_logits, teacher_logits, teacher_probs, T)
    per_position = 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum(-1)
    return reduce(per_sample_mean(per_position), reduction)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    *,
    teacher_probs: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Decoupled KD: ``T^2 * (alpha * TCKD + beta * NCKD)``; labels ``-1`` are skipped.

    ``student_logits``: ``[B, K]`` (or ``[B, ..., K]``); ``target``: ``[B]`` (or ``[B, ...]``)
    integer labels, ``-1`` for unlabeled. ``"none"`` gives ``[B]`` (0 for unlabeled samples;
    for ``[B, ..., K]`` the mean over the labeled positions of a sample); ``"mean"`` is the mean
    over labeled samples (positions), 0 with a gradient if none is labeled.
    """
    check_reduction(reduction)
    T = check_temperature("temperature", temperature)
    log_ps, log_pt = _log_probs("dkd", student_logits, teacher_logits, teacher_probs, T)
    num_classes = log_ps.shape[-1]
    if num_classes < 2:
        raise ShapeError(f"dkd needs at least 2 classes, got logits of shape {shape_str(log_ps)}.")
    if target.shape != log_ps.shape[:-1]:
        raise ShapeError(
            f"dkd: logits of shape {shape_str(log_ps)} need targets of shape "
            f"{shape_str(log_ps.shape[:-1])}, got {shape_str(target)}."
        )
    target = target.long()
    labeled = target != -1
    if bool(((target < -1) | (target >= num_classes)).any()):
        raise DataError(
            f"dkd: labels must be in [0, {num_classes - 1}] or -1 (unlabeled); got values in "
            f"[{int(target.min())}, {int(target.max())}]."
        )
    index = target.clamp(min=0).unsqueeze(-1)
    is_target = torch.zeros_like(log_ps, dtype=torch.bool).scatter_(-1, index, True)

    def split(log_p: Tensor) -> tuple[Tensor, Tensor]:
        # binary [p_target, 1 - p_target] and the distribution among non-target classes,
        # both in log space; the non-target mass is a logsumexp, not 1 - p (no cancellation).
        log_rest_all = log_p.masked_fill(is_target, -math.inf)
        log_rest = torch.logsumexp(log_rest_all, dim=-1)
        binary = torch.stack([log_p.gather(-1, index).squeeze(-1), log_rest], dim=-1)
        # a (one-hot) teacher without non-target mass has no non-target distribution: its
        # log-probs stay -inf, so that NCKD is 0 for that sample instead of NaN
        finite_rest = torch.where(torch.isfinite(log_rest), log_rest, torch.zeros_like(log_rest))
        return binary, log_rest_all - finite_rest.unsqueeze(-1)

    binary_s, nontarget_s = split(log_ps)
    binary_t, nontarget_t = split(log_pt)
    tckd = kl_from_log_probs(binary_t, binary_s)
    nckd = kl_from_log_probs(nontarget_t, nontarget_s)
    per_position = (alpha * tckd + beta * nckd) * (T * T)
    per_position = torch.where(labeled, per_position, torch.zeros_like(per_position))
    if reduction == "mean":
        return per_position.sum() / labeled.sum().clamp(min=1)
    if per_position.ndim == 1:
        return per_position
    counts = labeled.reshape(labeled.shape[0], -1).sum(1).clamp(min=1)
    return per_position.reshape(per_position.shape[0], -1).sum(1) / counts


# --------------------------------------------------------------------------------------
# objectives
# --------------------------------------------------------------------------------------

_LOGIT_INPUTS = {"student": "student.logits", "teacher": "teacher.logits"}


class _TemperedDivergence(Objective):
    """Shared body of the divergences parameterised by a temperature alone.

    A subclass sets :attr:`_loss_fn`, a pure loss called as
    ``fn(student, teacher, T, teacher_probs=..., reduction=...)``.
    """

    inputs = dict(_LOGIT_INPUTS)
    target_space = "logits"
    _loss_fn: Callable[..., Tensor]

    def __init__(self, temperature: float = 1.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.temperature = check_temperature("temperature", temperature)

    def forward(
        self, student: Tensor, teacher: Tensor | None = None, *, teacher_probs: Tensor | None = None
    ) -> Tensor:
        return self._loss_fn(
            student, teacher, self.temperature, teacher_probs=teacher_probs,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"


@OBJECTIVES.register("kd")
class SoftTargetKD(_TemperedDivergence):
    """Soft-target knowledge distillation (Hinton et al. 2015): T^2 * KL(p_t || p_s).

    Paper: G. Hinton, O. Vinyals, J. Dean, 2015, "Distilling the Knowledge in a Neural
    Network", arXiv:1503.02531.

    Per sample: ``T^2 * sum_k p_t,k * (log p_t,k - log p_s,k)`` with
    ``p_s = softmax(student / T)`` and ``p_t = softmax(teacher / T)`` (or ``p_t =
    teacher_probs`` as given, without temperature). The ``T^2`` factor keeps gradient
    magnitudes comparable across temperatures.

    Args of ``forward``: ``student`` logits ``[B, K]`` (or ``[B, ..., K]``, averaged over
    positions); exactly one of ``teacher`` logits (same shape) or ``teacher_probs``
    (probabilities, same shape). Returns ``[B]`` (``reduction="none"``) or a scalar.

    Example:
        >>> import torch
        >>> logits = torch.randn(4, 10)
        >>> SoftTargetKD(temperature=4.0)(logits, logits).item()
        0.0
        >>> SoftTargetKD(reduction="none")(torch.randn(4, 10), torch.randn(4, 10)).shape
        torch.Size([4])
    """

    inputs = dict(_LOGIT_INPUTS)
    _loss_fn = staticmethod(kd_loss)

    def __init__(self, temperature: float = 4.0, reduction: str = "mean") -> None:
        super().__init__(temperature, reduction)


@OBJECTIVES.register("reverse_kl")
class ReverseKL(_TemperedDivergence):
    """Reverse (mode-seeking) KL distillation: T^2 * KL(p_s || p_t).

    Used e.g. in MiniLLM (Y. Gu, L. Dong, F. Wei, M. Huang, 2024, "MiniLLM: Knowledge
    Distillation of Large Language Models", arXiv:2306.08543) and as an endpoint of GKD.

    Per sample: ``T^2 * sum_k p_s,k * (log p_s,k - log p_t,k)``, ``p_s = softmax(student/T)``,
    ``p_t = softmax(teacher/T)`` or ``teacher_probs``. Log-probabilities are exact
    log-softmaxes; only zero teacher probabilities (``log p_t = -inf``) are replaced by the
    smallest positive normal float of the compute dtype, so the loss is large but finite.

    Args of ``forward``: ``student`` ``[B, K]`` (or ``[B, ..., K]``), ``teacher`` logits or
    ``teacher_probs`` of the same shape. Returns ``[B]`` or a scalar.

    Example:
        >>> import torch
        >>> logits = torch.randn(4, 10)
        >>> ReverseKL()(logits, logits).item()
        0.0
    """

    inputs = dict(_LOGIT_INPUTS)
    _loss_fn = staticmethod(reverse_kl_loss)


@OBJECTIVES.register("jsd")
class GeneralizedJSD(Objective):
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. 2024), times T^2.

    Paper: R. Agarwal, N. Vieillard, Y. Zhou, P. Stanczyk, S. Ramos, M. Geist, O. Bachem,
    2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes"
    (ICLR), arXiv:2306.13649.

    With ``p_s = softmax(student/T)``, ``p_t = softmax(teacher/T)`` (or ``teacher_probs``) and
    ``m = beta * p_t + (1 - beta) * p_s``, per sample:
    ``T^2 * [beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)]`` for ``0 < beta < 1``
    (``beta = 0.5`` is the symmetric JSD). Endpoint convention (as in the GKD reference code):
    ``beta = 0`` gives the forward KL ``T^2 * KL(p_t || p_s)`` and ``beta = 1`` the reverse KL
    ``T^2 * KL(p_s || p_t)``; these are the limits of ``JSD(beta)/beta`` and
    ``JSD(beta)/(1-beta)``, whereas the formula itself would degenerate to 0.

    Relation to TRL: ``beta`` means the same as in TRL's ``GKDTrainer.generalized_jsd_loss``
    (huggingface/trl, ``trl/experimental/gkd/gkd_trainer.py``): the weight of the teacher in
    the mixture ``m``, with ``beta = 0`` the forward and ``beta = 1`` the reverse KL. At
    ``T = 1`` the ``"mean"`` value equals TRL's with ``reduction="batchmean"`` for ``[B, K]``
    logits, and for ``[B, L, V]`` logits when TRL gets labels that count every position
    (without labels TRL's ``batchmean`` divides the sum over all positions by ``B``, i.e.
    ``L`` times distillery's mean over positions). At ``T != 1`` TRL divides the logits by
    ``T`` but applies no ``T^2`` factor: distillery's value is ``T^2`` times TRL's.

    Args of ``forward``: ``student`` ``[B, K]`` (or ``[B, ..., K]``), ``teacher`` logits or
    ``teacher_probs`` of the same shape. Returns ``[B]`` or a scalar.

    Example:
        >>> import torch
        >>> logits = torch.randn(4, 10)
        >>> GeneralizedJSD(beta=0.5)(logits, logits).abs().item() < 1e-6
        True
    """

    inputs = dict(_LOGIT_INPUTS)
    target_space = "logits"

    def __init__(
        self, beta: float = 0.5, temperature: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__(reduction)
        if not 0.0 <= float(beta) <= 1.0:
            raise ConfigError(f"jsd: beta must be in [0, 1], got {beta!r}.")
        self.beta = float(beta)
        self.temperature = check_temperature("temperature", temperature)

    def forward(
        self, student: Tensor, teacher: Tensor | None = None, *, teacher_probs: Tensor | None = None
    ) -> Tensor:
        return jsd_loss(
            student, teacher, self.beta, self.temperature, teacher_probs=teacher_probs,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, temperature={self.temperature}, reduction={self.reduction!r}"


@OBJECTIVES.register("tvd")
class TotalVariation(_TemperedDivergence):
    """Total variation distance between teacher and student distributions: 0.5 * |p_t - p_s|_1.

    A symmetric divergence bounded in ``[0, 1]``; one of the four variants of f-DISTILL
    (Y. Wen, Z. Li, W. Du, L. Mou, 2023, "f-Divergence Minimization for Sequence-Level
    Knowledge Distillation", ACL, arXiv:2307.15190).

    Per sample: ``0.5 * sum_k |p_t,k - p_s,k|`` with ``p_s = softmax(student/T)``,
    ``p_t = softmax(teacher/T)`` or ``teacher_probs``. No ``T^2`` factor is applied.

    Args of ``forward``: ``student`` ``[B, K]`` (or ``[B, ..., K]``), ``teacher`` logits or
    ``teacher_probs`` of the same shape. Returns ``[B]`` or a scalar.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.0, 0.0]]); p = torch.tensor([[1.0, 0.0]])
        >>> TotalVariation()(s, teacher_probs=p).item()
        0.5
    """

    inputs = dict(_LOGIT_INPUTS)
    _loss_fn = staticmethod(tvd_loss)


@OBJECTIVES.register("dkd")
class DKD(Objective):
    """Decoupled knowledge distillation (Zhao et al. 2022): T^2 * (alpha*TCKD + beta*NCKD).

    Paper: B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang, 2022, "Decoupled Knowledge
    Distillation" (CVPR), arXiv:2203.08679.

    With ``p = softmax(logits / T)`` for student and teacher (or ``teacher_probs`` for the
    teacher) and ``y`` the label: ``b = [p_y, 1 - p_y]`` (target vs non-target mass) and
    ``p_hat_k = p_k / (1 - p_y)`` for ``k != y`` (the distribution among non-target classes).
    ``TCKD = KL(b_t || b_s)``, ``NCKD = KL(p_hat_t || p_hat_s)``; per sample
    ``T^2 * (alpha * TCKD + beta * NCKD)``. The non-target distribution is computed by masking
    the target class out in log space (no ``-1000`` constant). A ``teacher_probs`` target
    with no non-target mass (one-hot) gives ``NCKD = 0`` for that sample.

    Unlabeled samples (``target == -1``) contribute 0: with ``reduction="none"`` their entry
    is 0; with ``"mean"`` they are excluded from the mean (the mean is over labeled samples,
    and 0, with a gradient, if none is labeled).

    Args of ``forward``: ``student`` logits ``[B, K]`` (or ``[B, ..., K]``), ``teacher`` logits
    of the same shape or ``teacher_probs``, ``target`` integer labels ``[B]`` (or ``[B, ...]``).

    Example:
        >>> import torch
        >>> s, t = torch.randn(4, 10), torch.randn(4, 10)
        >>> y = torch.tensor([1, 2, -1, 3])
        >>> DKD(reduction="none")(s, t, target=y)[2].item()
        0.0
    """

    inputs = {"student": "student.logits", "teacher": "teacher.logits", "target": "batch.y"}
    target_space = "logits"

    def __init__(
        self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.temperature = check_temperature("temperature", temperature)

    def forward(
        self,
        student: Tensor,
        teacher: Tensor | None = None,
        *,
        target: Tensor,
        teacher_probs: Tensor | None = None,
    ) -> Tensor:
        return dkd_loss(
            student, teacher, target, self.alpha, self.beta, self.temperature,
            teacher_probs=teacher_probs, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, "
            f"reduction={self.reduction!r}"
        )
