"""Token-relation and token-feature distillation for transformers, with optional token masking.

Hybrid Distill (Shi et al. 2023, "Hybrid Distillation: Connecting Masked Autoencoders with
Contrastive Learners", arXiv:2306.15876) makes a ViT student imitate "the token relations of
the MIM teacher" (its attention maps, for diverse attention) and "the feature maps of the
supervised/CL teacher" (for discrimination), while a "progressive redundant token masking"
removes tokens from the student's input. The teachers see every token; the student only the
kept ones, so the teacher side is first restricted to the kept tokens:

* :func:`gather_tokens`: ``[B, 1 + N, ...]`` (class token first, then ``N`` patch tokens)
  -> ``[B, 1 + M, ...]``, the class token and the patch tokens listed in ``keep`` ``[B, M]``;
* :func:`gather_relations`: attention probabilities ``[B, H, 1 + N, 1 + N]`` restricted to
  the kept queries and keys, each row renormalised to sum to 1 (the teacher's attention
  among the tokens the student has);
* :func:`token_relation_loss`: per sample, the mean over heads and query tokens of
  ``KL(A_t[h, i, :] || A_s[h, i, :])``;
* :func:`token_feature_loss`: per sample, ``mean((F_s - gather(F_t))^2)`` over tokens and dims.

Objectives: ``token_relation`` (all tokens), ``masked_token_relation`` and
``masked_token_feature`` (with a ``keep`` input, by default ``student.keep``, the indices a
:class:`~distillery.models.miniature.token_masking.TokenMaskingViT` student returns).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..registry import OBJECTIVES
from ._common import (
    check_reduction,
    kl_from_log_probs,
    per_sample_mean,
    reduce,
    shape_str,
    upcast,
)
from .base import Objective

__all__ = [
    "MaskedTokenFeatureKD",
    "MaskedTokenRelationKD",
    "TokenFeatureKD",
    "TokenRelationKD",
    "gather_relations",
    "gather_tokens",
    "token_feature_loss",
    "token_relation_loss",
]

HEAD_MODES = ("match", "mean")


def _keep_index(keep: Tensor, batch: int, num_patches: int) -> Tensor:
    if keep.ndim != 2 or keep.shape[0] != batch:
        raise ShapeError(f"keep must be patch indices [B, M] with B = {batch}, got {shape_str(keep)}.")
    keep = keep.long()
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= num_patches):
        raise ShapeError(f"keep holds patch indices outside [0, {num_patches - 1}].")
    # token index = patch index + 1 (the class token is token 0 and is always kept)
    return torch.cat([keep.new_zeros(batch, 1), keep + 1], dim=1)  # [B, 1 + M]


def gather_tokens(tokens: Tensor, keep: Tensor | None) -> Tensor:
    """Class token and kept patch tokens: ``[B, 1 + N, ...]`` -> ``[B, 1 + M, ...]``.

    ``keep``: ``[B, M]`` patch indices in ``[0, N)`` (``None``: every token, unchanged).
    """
    if keep is None:
        return tokens
    if tokens.ndim < 2:
        raise ShapeError(f"gather_tokens: expected tokens [B, 1 + N, ...], got {shape_str(tokens)}.")
    idx = _keep_index(keep, tokens.shape[0], tokens.shape[1] - 1).to(tokens.device)
    idx = idx.reshape(*idx.shape, *([1] * (tokens.ndim - 2))).expand(-1, -1, *tokens.shape[2:])
    return torch.gather(tokens, 1, idx)


def gather_relations(attn: Tensor, keep: Tensor | None) -> Tensor:
    """Attention ``[B, H, 1 + N, 1 + N]`` among the kept tokens, rows renormalised.

    Returns ``[B, H, 1 + M, 1 + M]`` with ``A'[b, h, i, j] = A[b, h, k_i, k_j] / sum_j'
    A[b, h, k_i, k_j']`` where ``k = (0, keep + 1)``. ``keep=None`` returns ``attn``.
    """
    if keep is None:
        return attn
    if attn.ndim != 4 or attn.shape[-1] != attn.shape[-2]:
        raise ShapeError(f"gather_relations: expected attention [B, H, T, T], got {shape_str(attn)}.")
    b, h, t, _ = attn.shape
    idx = _keep_index(keep, b, t - 1).to(attn.device)  # [B, T']
    tk = idx.shape[1]
    rows = torch.gather(attn, 2, idx[:, None, :, None].expand(b, h, tk, t))  # [B, H, T', T]
    sub = torch.gather(rows, 3, idx[:, None, None, :].expand(b, h, tk, tk))  # [B, H, T', T']
    return sub / sub.sum(-1, keepdim=True).clamp_min(1e-30)


def _check_heads(student: Tensor, teacher: Tensor, heads: str) -> tuple[Tensor, Tensor]:
    if student.ndim != 4 or teacher.ndim != 4:
        raise ShapeError(
            f"token_relation: expected attention probabilities [B, H, T, T], got student {shape_str(student)} "
            f"and teacher {shape_str(teacher)}."
        )
    if heads == "mean":
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    if student.shape != teacher.shape:
        raise ShapeError(
            f"token_relation: the student's attention {shape_str(student)} and the teacher's (restricted to the "
            f"kept tokens) {shape_str(teacher)} differ. Tap blocks with the same number of heads, or set heads: mean."
        )
    return student, teacher


def token_relation_loss(
    student: Tensor, teacher: Tensor, keep: Tensor | None = None, heads: str = "match", reduction: str = "mean"
) -> Tensor:
    """``mean_{h, i} KL(A_t[b, h, i, :] || A_s[b, h, i, :])`` per sample ``b``.

    ``student``: attention probabilities ``[B, H, 1 + M, 1 + M]`` (rows sum to 1);
    ``teacher``: ``[B, H, 1 + N, 1 + N]``, restricted to the kept tokens by
    :func:`gather_relations` when ``keep`` ``[B, M]`` is given (else ``N = M``).
    ``heads="mean"`` compares the head-averaged maps instead (for different head counts).
    Returns ``[B]`` or a scalar.
    """
    check_reduction(reduction)
    if heads not in HEAD_MODES:
        raise ConfigError(f"token_relation: heads must be one of {HEAD_MODES}, got {heads!r}.")
    s, t = upcast(student, teacher.detach())
    assert s is not None and t is not None
    s, t = _check_heads(s, gather_relations(t, keep), heads)
    log_t = torch.log(t.clamp_min(1e-30))
    log_s = torch.log(s.clamp_min(1e-30))
    kl = kl_from_log_probs(log_t, log_s)  # [B, H, T]
    return reduce(kl.flatten(1).mean(1), reduction)


def token_feature_loss(student: Tensor, teacher: Tensor, keep: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """``mean((F_s - gather_tokens(F_t, keep))^2)`` over tokens and dims, per sample.

    ``student``: ``[B, 1 + M, D]``; ``teacher``: ``[B, 1 + N, D]`` (``keep`` ``[B, M]``, or
    ``None`` and ``N = M``). Returns ``[B]`` or a scalar.
    """
    check_reduction(reduction)
    s, t = upcast(student, teacher.detach())
    assert s is not None and t is not None
    t = gather_tokens(t, keep)
    if s.shape != t.shape:
        raise ShapeError(
            f"token_feature: student tokens {shape_str(s)} and teacher tokens (kept ones) {shape_str(t)} differ. "
            "Use a student of the teacher's width (a term adapter cannot map token counts that differ)."
        )
    return reduce(per_sample_mean((s - t).pow(2)), reduction)


@OBJECTIVES.register("token_relation")
class TokenRelationKD(Objective):
    """Token-relation (attention-map) distillation: KL between attention rows (Hybrid Distill).

    Paper: B. Shi, X. Zhang, Y. Wang, J. Li, W. Dai, J. Zou, H. Xiong, Q. Tian, 2023, "Hybrid
    Distillation: Connecting Masked Autoencoders with Contrastive Learners", arXiv:2306.15876:
    the student "imitates the token relations of the MIM teacher to alleviate attention
    collapse". Relations are the attention probabilities ``softmax(q k^T / sqrt(d))`` of a
    block (tap ``blocks.<i>.attn.softmax`` of the reference ViT); the loss per sample is the
    mean over heads and query tokens of ``KL(teacher row || student row)``.

    Args of ``forward``: ``student`` ``[B, H, T, T]``, ``teacher`` ``[B, H, T, T]`` (with
    ``heads="mean"``: any head counts). Returns ``[B]`` or a scalar.

    Example:
        >>> import torch
        >>> a = torch.softmax(torch.randn(2, 4, 5, 5), -1)
        >>> TokenRelationKD()(a, a).abs().item() < 1e-6
        True
    """

    inputs = {"student": "student.blocks.0.attn.softmax", "teacher": "teacher.blocks.0.attn.softmax"}
    target_space = None

    def __init__(self, heads: str = "match", reduction: str = "mean") -> None:
        super().__init__(reduction)
        if heads not in HEAD_MODES:
            raise ConfigError(f"token_relation: heads must be one of {HEAD_MODES}, got {heads!r}.")
        self.heads = heads

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return token_relation_loss(student, teacher, None, self.heads, self.reduction)

    def extra_repr(self) -> str:
        return f"heads={self.heads!r}, reduction={self.reduction!r}"


@OBJECTIVES.register("masked_token_relation")
class MaskedTokenRelationKD(TokenRelationKD):
    """Token-relation distillation when the student saw only the kept tokens (Hybrid Distill).

    As :class:`TokenRelationKD`, with a ``keep`` input ``[B, M]`` (default ``student.keep``):
    the teacher's attention ``[B, H, 1 + N, 1 + N]`` is restricted to the class token and
    the kept patches and renormalised (:func:`gather_relations`) before the KL with the
    student's ``[B, H, 1 + M, 1 + M]``.
    """

    inputs = {"student": "student.blocks.0.attn.softmax", "teacher": "teacher.blocks.0.attn.softmax", "keep": "student.keep"}

    def forward(self, student: Tensor, teacher: Tensor, keep: Tensor) -> Tensor:  # type: ignore[override]
        return token_relation_loss(student, teacher, keep, self.heads, self.reduction)


@OBJECTIVES.register("masked_token_feature")
class MaskedTokenFeatureKD(Objective):
    """Feature-map distillation on the kept tokens (Hybrid Distill's supervised/CL branch).

    Paper: Shi et al. 2023, arXiv:2306.15876, "distills the feature maps of the
    supervised/CL teacher to enable discrimination". Per sample:
    ``mean((F_s - gather_tokens(F_t, keep))^2)`` with student tokens ``[B, 1 + M, D]``
    (default ``student.tokens``), teacher tokens ``[B, 1 + N, D]`` (default
    ``teacher.norm``, the reference ViT's final normalised tokens) and ``keep`` ``[B, M]``
    (default ``student.keep``). Student and teacher widths ``D`` must agree.
    """

    inputs = {"student": "student.tokens", "teacher": "teacher.norm", "keep": "student.keep"}
    target_space = None

    def forward(self, student: Tensor, teacher: Tensor, keep: Tensor) -> Tensor:
        return token_feature_loss(student, teacher, keep, self.reduction)


TokenFeatureKD = MaskedTokenFeatureKD
