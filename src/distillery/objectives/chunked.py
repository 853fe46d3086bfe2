"""Chunked (fused linear + divergence) distillation loss for large vocabularies.

A language model's distillation loss compares two distributions over a vocabulary of tens
of thousands of tokens at every position. Computed densely (:func:`dense_kd_loss`, which
calls :func:`~distillery.objectives.divergence.kd_loss`,
:func:`~distillery.objectives.divergence.reverse_kl_loss` or
:func:`~distillery.objectives.divergence.jsd_loss` on the full logits), the loss holds the
``[tokens, vocabulary]`` logits of both models together with the softmax, log-softmax and
product buffers that autograd keeps for the backward pass: several times ``N x V`` floats
(4096 tokens x 32,000 words x 4 bytes is 0.5 GB per buffer).

:func:`chunked_kd_loss` computes the same value and the same gradients from the *hidden
states* and the *output projection weights* instead, one chunk of tokens at a time: it
forms the logits of a chunk (one matmul per model), computes the divergence of that chunk
and drops the chunk again. Its backward pass recomputes each chunk's logits and turns the
closed-form gradient with respect to the student's logits into gradients for the student's
hidden states, weight and bias. At no time does it hold more than a few ``chunk_size x V``
buffers; the price is two more matmuls (the logits are computed twice). With
``grad_in_forward=True`` the gradients are instead computed during the forward pass and kept
until backward (they have the sizes of the inputs), as Liger-Kernel's fused linear losses
do: no recomputation, hence faster, but the gradient work is done even if no backward
follows and it is not available for per-token values (``reduction="none"``).

The divergences and their conventions are those of the dense functions (GKD endpoints:
``jsd`` with ``beta = 0`` is the forward KL and with ``beta = 1`` the reverse KL; ``T^2``
scaling; exact log-softmaxes, of which only a teacher's ``log 0 = -inf`` (a logit of
``-inf``) is replaced by ``log(tiny)`` for the reverse KL; ``0 log 0 = 0``). Per chunk, with
``z = logits / T``, ``p = softmax(z)`` and per-token value ``T^2 D``, the gradient with
respect to the student's raw logits is ``T * dD/dz_s`` where

* forward KL, ``D = KL(p_t || p_s)``: ``dD/dz_s = p_s - p_t``;
* reverse KL, ``D = KL(p_s || p_t)``, ``r = log p_s - log p_t``:
  ``dD/dz_s = p_s * (r - D)``;
* JSD(beta), ``m = beta p_t + (1 - beta) p_s``, ``r = log p_s - log m``:
  ``dD/dz_s = (1 - beta) * p_s * (r - KL(p_s || m))`` (the terms through ``m`` cancel,
  since ``dD/dp_s = (1 - beta) * r``).

The teacher side is a constant: no gradient flows to the teacher's hidden states, weight
or bias (they are detached), as in a :class:`~distillery.engine.distiller.Distiller`, whose
teacher signals are computed without gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError, ShapeError
from ..registry import OBJECTIVES
from ._common import check_temperature, compute_dtype, shape_str
from .base import Objective
from .divergence import jsd_loss, kd_loss, reverse_kl_loss

__all__ = ["DIVERGENCES", "ChunkedKD", "chunked_kd_loss", "dense_kd_loss"]

#: Divergences of :func:`chunked_kd_loss`.
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
#: Reductions of :func:`chunked_kd_loss`.
CHUNKED_REDUCTIONS = ("mean", "sum", "none")


class _Spec(NamedTuple):
    divergence: str  # "forward_kl" | "reverse_kl" | "jsd" (0 < beta < 1)
    beta: float
    temperature: float
    chunk_size: int
    dtype: torch.dtype  # the compute dtype (float32 at least)


# --------------------------------------------------------------------------------------
# one chunk
# --------------------------------------------------------------------------------------


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, spec: _Spec) -> Tensor:
    """``hidden @ weight.T + bias`` in the inputs' dtype, then upcast and divided by ``T``
    (as the dense losses do with the logits they are given)."""
    z = F.linear(hidden, weight, bias).to(spec.dtype)
    return z.div_(spec.temperature) if spec.temperature != 1.0 else z


def _chunk(
    h_s: Tensor, w_s: Tensor, b_s: Tensor | None,
    h_t: Tensor, w_t: Tensor, b_t: Tensor | None,
    spec: _Spec, want_grad: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per-token values ``T^2 D`` ``[c]`` of one chunk and, if ``want_grad``, their gradient
    with respect to the student's raw logits ``[c, V]`` (closed form, see the module doc).

    Buffers are freed or reused in place as soon as possible: three ``[c, V]`` buffers live
    at once (four for JSD), besides the logits matmul's output while it is normalized.
    """
    T = spec.temperature
    log_ps = torch.log_softmax(_logits(h_s, w_s, b_s, spec), dim=-1)
    log_pt = torch.log_softmax(_logits(h_t, w_t, b_t, spec), dim=-1)
    grad: Tensor | None = None
    if spec.divergence == "forward_kl":
        p_t = log_pt.exp()
        diff = log_pt.sub_(log_ps).masked_fill_(p_t == 0, 0.0)  # terms with p_t = 0 are 0
        value = diff.mul_(p_t).sum(-1)
        del diff, log_pt
        if want_grad:
            grad = log_ps.exp_().sub_(p_t).mul_(T)
    elif spec.divergence == "reverse_kl":
        # only true zeros (log p_t = -inf) are floored, as floor_log_zeros does for the dense
        # loss; finite log-probabilities, however small, are kept exactly
        log_pt.masked_fill_(torch.isneginf(log_pt), math.log(torch.finfo(spec.dtype).tiny))
        p_s = log_ps.exp()
        r = log_pt.neg_().add_(log_ps).masked_fill_(p_s == 0, 0.0)  # log p_s - log p_t
        del log_pt, log_ps
        value = (r * p_s).sum(-1)
        if want_grad:
            grad = r.sub_(value.unsqueeze(-1)).mul_(p_s).mul_(T)
    else:  # jsd, 0 < beta < 1
        beta = spec.beta
        log_m = log_pt + math.log(beta)
        torch.logaddexp(log_m, log_ps + math.log1p(-beta), out=log_m)
        p_t = log_pt.exp()
        kl_t = log_pt.sub_(log_m).masked_fill_(p_t == 0, 0.0).mul_(p_t).sum(-1)
        del p_t, log_pt
        p_s = log_ps.exp()
        r = log_ps.sub_(log_m).masked_fill_(p_s == 0, 0.0)  # log p_s - log m
        del log_m, log_ps
        kl_s = (r * p_s).sum(-1)
        value = beta * kl_t + (1.0 - beta) * kl_s
        if want_grad:
            grad = r.sub_(kl_s.unsqueeze(-1)).mul_(p_s).mul_((1.0 - beta) * T)
    return value.mul_(T * T), grad


def _accumulate(
    grad_logits: Tensor, h_s: Tensor, w_s: Tensor, rows: slice,
    grad_h: Tensor | None, grad_w: Tensor | None, grad_b: Tensor | None,
) -> None:
    """Chain rule through ``logits = h_s @ w_s.T + b_s`` for one chunk of rows."""
    g = grad_logits.to(h_s.dtype)  # as autograd casts the gradient back through the upcast
    if grad_h is not None:
        grad_h[rows] = g @ w_s
    if grad_w is not None:
        if grad_w.dtype == g.dtype:
            grad_w.addmm_(g.t(), h_s[rows])
        else:
            grad_w.add_(g.t() @ h_s[rows])
    if grad_b is not None:
        grad_b.add_(grad_logits.sum(0))


class _ChunkedDivergence(torch.autograd.Function):
    """Sum (``per_token=False``) or per-token values ``[N]`` of the divergence over chunks.

    ``grad_in_forward`` (sum only): compute the gradients during the forward pass and keep
    them (``[N, H]`` and ``[V, H]``, the sizes of the inputs); the backward pass then only
    scales them. Otherwise nothing but the inputs is kept and backward recomputes per chunk.
    """

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, spec, per_token, grad_in_forward):  # type: ignore[override]
        n = h_s.shape[0]
        values = torch.empty(n, dtype=spec.dtype, device=h_s.device)
        early = grad_in_forward and not per_token and any(ctx.needs_input_grad[:3])
        grads = _new_grads(ctx.needs_input_grad, h_s, w_s, b_s, spec) if early else (None,) * 3
        for start in range(0, n, spec.chunk_size):
            rows = slice(start, start + spec.chunk_size)
            value, grad = _chunk(h_s[rows], w_s, b_s, h_t[rows], w_t, b_t, spec, want_grad=early)
            values[rows] = value
            if grad is not None:
                _accumulate(grad, h_s, w_s, rows, *grads)
            del grad
        ctx.spec = spec
        ctx.early = early
        ctx.dtypes = (h_s.dtype, w_s.dtype, None if b_s is None else b_s.dtype)
        if early:
            ctx.save_for_backward(*grads)
        else:
            ctx.save_for_backward(h_s, w_s, b_s, h_t, w_t, b_t)
        return values if per_token else values.sum()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        spec: _Spec = ctx.spec
        if ctx.early:  # gradients of the sum, computed in forward: scale them
            grads = tuple(None if g is None else g * grad_out for g in ctx.saved_tensors)
        else:
            h_s, w_s, b_s, h_t, w_t, b_t = ctx.saved_tensors
            grads = _new_grads(ctx.needs_input_grad, h_s, w_s, b_s, spec)
            if any(g is not None for g in grads):
                scale = grad_out.to(spec.dtype)
                for start in range(0, h_s.shape[0], spec.chunk_size):
                    rows = slice(start, start + spec.chunk_size)
                    _, grad = _chunk(h_s[rows], w_s, b_s, h_t[rows], w_t, b_t, spec, want_grad=True)
                    assert grad is not None
                    grad.mul_(scale[rows].unsqueeze(-1) if scale.ndim else scale)
                    _accumulate(grad, h_s, w_s, rows, *grads)
                    del grad
        cast = tuple(None if g is None else g.to(d) for g, d in zip(grads, ctx.dtypes))
        return (*cast, None, None, None, None, None, None)


def _new_grads(
    needs: tuple[bool, ...], h_s: Tensor, w_s: Tensor, b_s: Tensor | None, spec: _Spec
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradient buffers for (h_s, w_s, b_s), ``None`` where not needed: ``h_s``'s in its own
    dtype (each row is written once), the weight's and bias's zeroed in the compute dtype
    (they accumulate over chunks)."""
    grad_h = torch.empty(h_s.shape, dtype=h_s.dtype, device=h_s.device) if needs[0] else None
    grad_w = torch.zeros(w_s.shape, dtype=spec.dtype, device=w_s.device) if needs[1] else None
    grad_b = None
    if b_s is not None and needs[2]:
        grad_b = torch.zeros(b_s.shape, dtype=spec.dtype, device=b_s.device)
    return grad_h, grad_w, grad_b


# --------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------


def _check(
    name: str,
    student_hidden: Tensor, student_weight: Tensor, student_bias: Tensor | None,
    teacher_hidden: Tensor, teacher_weight: Tensor, teacher_bias: Tensor | None,
    divergence: str, beta: float, temperature: float, reduction: str,
) -> tuple[str, float, float]:
    if reduction not in CHUNKED_REDUCTIONS:
        raise ValueError(f"reduction must be one of {CHUNKED_REDUCTIONS}, got {reduction!r}")
    if divergence not in DIVERGENCES:
        raise ConfigError(f"{name}: divergence must be one of {DIVERGENCES}, got {divergence!r}.")
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"{name}: beta must be in [0, 1], got {beta!r}.")
    if divergence == "jsd" and beta in (0.0, 1.0):  # GKD endpoints
        divergence = "forward_kl" if beta == 0.0 else "reverse_kl"
    T = check_temperature("temperature", temperature)
    for who, hidden, weight, bias in (
        ("student", student_hidden, student_weight, student_bias),
        ("teacher", teacher_hidden, teacher_weight, teacher_bias),
    ):
        if hidden.ndim < 2 or weight.ndim != 2 or hidden.shape[-1] != weight.shape[1]:
            raise ShapeError(
                f"{name}: {who} hidden states {shape_str(hidden)} and output weight "
                f"{shape_str(weight)} do not fit: expected hidden [..., H] and weight [V, H]."
            )
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise ShapeError(
                f"{name}: {who} bias {shape_str(bias)} does not fit the weight "
                f"{shape_str(weight)}: expected [{weight.shape[0]}]."
            )
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ShapeError(
            f"{name}: the student's vocabulary has {student_weight.shape[0]} entries and the "
            f"teacher's {teacher_weight.shape[0]}; they must be equal (a different vocabulary "
            "needs a mapping first)."
        )
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ShapeError(
            f"{name}: the student's hidden states {shape_str(student_hidden)} and the teacher's "
            f"{shape_str(teacher_hidden)} must cover the same positions (all but the last dim "
            "equal)."
        )
    return divergence, beta, T


def _valid_positions(
    name: str, lead: torch.Size, labels: Tensor | None, ignore_index: int, mask: Tensor | None
) -> Tensor | None:
    """Boolean ``[N]`` of the positions that count, or ``None`` when all do."""
    valid = None
    for what, given in (("labels", labels), ("mask", mask)):
        if given is None:
            continue
        if given.shape != lead:
            raise ShapeError(
                f"{name}: hidden states over positions {shape_str(lead)} need {what} of shape "
                f"{shape_str(lead)}, got {shape_str(given)}."
            )
        if what == "mask" and given.dtype != torch.bool:
            raise DataError(f"{name}: mask must be a boolean tensor (True = counted), got {given.dtype}.")
        keep = (given != ignore_index) if what == "labels" else given
        valid = keep.reshape(-1) if valid is None else valid & keep.reshape(-1)
    return valid


def chunked_kd_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    chunk_size: int = 1024,
    reduction: str = "mean",
    grad_in_forward: bool = False,
) -> Tensor:
    """Distillation divergence between ``student_hidden @ student_weight.T + student_bias`` and
    the teacher's logits, computed ``chunk_size`` tokens at a time (never the full logits).

    Equal in value and gradients to :func:`dense_kd_loss` (up to rounding); use it when the
    ``[tokens, vocabulary]`` logits of both models, with their softmax buffers, do not fit in
    memory. See the module docstring for the formulas.

    Args:
        student_hidden: ``[N, H_s]`` or ``[B, T, H_s]`` (any leading dims: positions),
            the input of the student's output projection.
        student_weight: ``[V, H_s]``, the output projection (``lm_head.weight``).
        teacher_hidden: ``[N, H_t]`` or ``[B, T, H_t]``, same positions as the student.
        teacher_weight: ``[V, H_t]``.
        student_bias, teacher_bias: ``[V]`` or ``None``.
        divergence: ``"forward_kl"`` (``T^2 KL(p_t || p_s)``, as :func:`kd_loss`),
            ``"reverse_kl"`` (``T^2 KL(p_s || p_t)``) or ``"jsd"`` (GKD's generalized JSD
            with ``beta``; ``beta = 0``/``1`` are the forward/reverse KL).
        temperature: ``T``, applied to both models' logits; values are scaled by ``T^2``.
        labels: ``[N]`` or ``[B, T]``; positions whose label is ``ignore_index`` are ignored.
        mask: boolean, same shape as ``labels``; ``False`` positions are ignored. With both,
            a position counts if it passes both.
        chunk_size: tokens per chunk; the working memory is a few ``chunk_size x V`` buffers.
        reduction: ``"mean"`` over the counted positions (0, with a gradient, if none),
            ``"sum"``, or ``"none"``: one value per position, shape of the leading dims,
            0 at ignored positions.
        grad_in_forward: compute the gradients already in the forward pass (the approach of
            Liger-Kernel's fused linear losses: four matmuls per chunk instead of six, so it
            is faster, but it does that work even if no backward follows). Only for ``"mean"``
            and ``"sum"``; ``"none"`` always recomputes in backward.

    Gradients flow to ``student_hidden``, ``student_weight`` and ``student_bias``; the teacher
    tensors are treated as constants. Ignored positions are skipped (their logits are never
    computed) and get zero gradients. The result is float32, or float64 for float64 inputs.

    Example:
        >>> import torch
        >>> h, w = torch.randn(6, 4, requires_grad=True), torch.randn(10, 4)
        >>> loss = chunked_kd_loss(h, w, h.detach(), w, chunk_size=4)
        >>> abs(loss.item()) < 1e-6
        True
        >>> loss.backward(); h.grad.shape
        torch.Size([6, 4])
    """
    name = "chunked_kd"
    divergence, beta, T = _check(
        name, student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
        teacher_bias, divergence, beta, temperature, reduction,
    )
    if int(chunk_size) < 1:
        raise ConfigError(f"{name}: chunk_size must be a positive integer, got {chunk_size!r}.")
    lead = student_hidden.shape[:-1]
    valid = _valid_positions(name, lead, labels, ignore_index, mask)
    spec = _Spec(divergence, beta, T, int(chunk_size), compute_dtype(student_hidden, teacher_hidden))

    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    h_t = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    n = h_s.shape[0]
    index = None
    if valid is not None and not bool(valid.all()):
        index = valid.nonzero().squeeze(1)
        h_s, h_t = h_s.index_select(0, index), h_t.index_select(0, index)
    w_t = teacher_weight.detach()
    b_t = None if teacher_bias is None else teacher_bias.detach()
    per_token = reduction == "none"
    early = bool(grad_in_forward) and torch.is_grad_enabled()  # no gradients under no_grad
    out = _ChunkedDivergence.apply(
        h_s, student_weight, student_bias, h_t, w_t, b_t, spec, per_token, early
    )
    if per_token:
        if index is not None:
            out = out.new_zeros(n).index_copy(0, index, out)
        return out.reshape(lead)
    if reduction == "mean":
        return out / max(h_s.shape[0], 1)
    return out


def dense_kd_loss(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """The plain computation that :func:`chunked_kd_loss` reproduces: full logits of both
    models, then :func:`kd_loss`, :func:`reverse_kl_loss` or :func:`jsd_loss` per position.

    Same arguments and result as :func:`chunked_kd_loss` (without ``chunk_size``); the
    reference of its tests and of ``benchmarks/chunked_kd.py``. The teacher is constant.
    """
    name = "dense_kd"
    divergence, beta, T = _check(
        name, student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight,
        teacher_bias, divergence, beta, temperature, reduction,
    )
    lead = student_hidden.shape[:-1]
    valid = _valid_positions(name, lead, labels, ignore_index, mask)
    s = F.linear(student_hidden.reshape(-1, student_hidden.shape[-1]), student_weight, student_bias)
    with torch.no_grad():
        t = F.linear(teacher_hidden.reshape(-1, teacher_hidden.shape[-1]), teacher_weight, teacher_bias)
    if divergence == "forward_kl":
        per_token = kd_loss(s, t, T, reduction="none")
    elif divergence == "reverse_kl":
        per_token = reverse_kl_loss(s, t, T, reduction="none")
    else:
        per_token = jsd_loss(s, t, beta, T, reduction="none")
    if valid is not None:
        per_token = torch.where(valid, per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return per_token.reshape(lead)
    if reduction == "sum":
        return per_token.sum()
    count = per_token.shape[0] if valid is None else int(valid.sum())
    return per_token.sum() / max(count, 1)


# --------------------------------------------------------------------------------------
# objective
# --------------------------------------------------------------------------------------


@OBJECTIVES.register("chunked_kd")
class ChunkedKD(Objective):
    """Token-level distillation of a language model from hidden states, chunk by chunk.

    The loss of :class:`~distillery.objectives.divergence.SoftTargetKD` (``forward_kl``),
    :class:`~distillery.objectives.divergence.ReverseKL` (``reverse_kl``) or
    :class:`~distillery.objectives.divergence.GeneralizedJSD` (``jsd``, GKD: R. Agarwal et al.
    2024, arXiv:2306.13649) on the next-token distributions, computed by
    :func:`chunked_kd_loss` from the inputs of the two output projections, so that the
    ``[tokens, vocabulary]`` logits are never materialized by the loss.

    Args:
        student_head: the student's output projection (e.g. ``student.lm_head``), any module
            with ``weight`` ``[V, H_s]`` and optionally ``bias`` ``[V]``. Its weight and bias
            receive gradients.
        teacher_head: the teacher's output projection (``weight`` ``[V, H_t]``), constant.
        divergence, beta, temperature, ignore_index, chunk_size, grad_in_forward: as in
            :func:`chunked_kd_loss`.
        reduction: ``"mean"`` (over the counted tokens of the batch) or ``"none"`` (``[B]``:
            the mean over the counted positions of each sample, 0 if none).

    The heads are read at every call (so updates are seen) but are not registered as
    submodules: they belong to the student and the teacher, and registering them here would
    store their weights a second time in the distiller's state.

    Inputs of ``forward``: ``student`` hidden states ``[B, T, H_s]`` (default signal
    ``student.lm_head:input``), ``teacher`` hidden states ``[B, T, H_t]``
    (``teacher.lm_head:input``) and ``labels`` ``[B, T]`` (``batch.y``), aligned with the
    positions (``labels[b, t]`` is the token predicted at position ``t``, as for ``ce`` on
    ``[B, T, V]`` logits); positions labelled ``ignore_index`` (padding, prompt) are ignored.

    Wiring for a causal LM whose output projection is ``lm_head``::

        kd = ChunkedKD(student.lm_head, teacher_model.lm_head, divergence="jsd", beta=0.5)
        distiller = Distiller(student, FrozenTeacher(teacher_model), [
            Term("ce", CrossEntropy(ignore_index=-100)),
            Term("kd", kd, inputs={"labels": "batch.labels"}),  # if labels are not batch.y
        ])

    Give other signal names through ``Term.inputs`` when the projection has another path
    (``{"student": "student.output:input", "teacher": "teacher.output:input"}``). To keep the
    teacher from computing its own logits at all, stop it before its head
    (``FrozenTeacher(model, until="model.norm")``) and read ``teacher.model.norm``. The
    student still runs its own ``lm_head`` in its forward pass (one ``[B, T, V]`` tensor
    without softmax buffers); this objective saves the divergence's buffers. It is built in
    Python, not from a YAML config (a config cannot refer to the heads).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> head = nn.Linear(8, 50)
        >>> kd = ChunkedKD(head, head, temperature=2.0, chunk_size=16)
        >>> h = torch.randn(2, 5, 8)
        >>> labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
        >>> kd(h, h, labels=labels).abs().item() < 1e-6
        True
    """

    inputs = {
        "student": "student.lm_head:input",
        "teacher": "teacher.lm_head:input",
        "labels": "batch.y",
    }
    target_space = None

    def __init__(
        self,
        student_head: nn.Module,
        teacher_head: nn.Module,
        divergence: str = "forward_kl",
        beta: float = 0.5,
        temperature: float = 1.0,
        ignore_index: int = -100,
        chunk_size: int = 1024,
        grad_in_forward: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        if divergence not in DIVERGENCES:
            raise ConfigError(f"chunked_kd: divergence must be one of {DIVERGENCES}, got {divergence!r}.")
        if not 0.0 <= float(beta) <= 1.0:
            raise ConfigError(f"chunked_kd: beta must be in [0, 1], got {beta!r}.")
        if int(chunk_size) < 1:
            raise ConfigError(f"chunked_kd: chunk_size must be a positive integer, got {chunk_size!r}.")
        for who, head in (("student_head", student_head), ("teacher_head", teacher_head)):
            if not isinstance(getattr(head, "weight", None), Tensor):
                raise ConfigError(f"chunked_kd: {who} must be a module with a weight [V, H] (e.g. lm_head).")
        self._heads = (student_head, teacher_head)  # a tuple: not registered as submodules
        self.divergence = divergence
        self.beta = float(beta)
        self.temperature = check_temperature("temperature", temperature)
        self.ignore_index = int(ignore_index)
        self.chunk_size = int(chunk_size)
        self.grad_in_forward = bool(grad_in_forward)

    def forward(self, student: Tensor, teacher: Tensor, *, labels: Tensor | None = None) -> Tensor:
        student_head, teacher_head = self._heads
        per_token = chunked_kd_loss(
            student, student_head.weight, teacher, teacher_head.weight,
            student_bias=getattr(student_head, "bias", None),
            teacher_bias=getattr(teacher_head, "bias", None),
            divergence=self.divergence, beta=self.beta, temperature=self.temperature,
            labels=labels, ignore_index=self.ignore_index, chunk_size=self.chunk_size,
            reduction="none" if self.reduction == "none" else "mean",
            grad_in_forward=self.grad_in_forward,
        )
        if self.reduction == "mean" or per_token.ndim <= 1:
            return per_token
        counted = (
            torch.ones_like(per_token, dtype=torch.bool) if labels is None
            else labels != self.ignore_index
        )
        batch = per_token.shape[0]
        return per_token.reshape(batch, -1).sum(1) / counted.reshape(batch, -1).sum(1).clamp(min=1)

    def extra_repr(self) -> str:
        return (
            f"divergence={self.divergence!r}, beta={self.beta}, temperature={self.temperature}, "
            f"ignore_index={self.ignore_index}, chunk_size={self.chunk_size}, "
            f"reduction={self.reduction!r}"
        )
