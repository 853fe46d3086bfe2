"""DINO self-distillation: cross-entropy between a centred, sharpened teacher and the student."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..registry import OBJECTIVES
from ._common import check_reduction, check_temperature, reduce, shape_str, upcast
from .base import Objective

__all__ = ["DINOLoss", "dino_loss", "dino_target_statistics", "dino_teacher_temperature", "update_center_"]


def dino_teacher_temperature(
    step: int, teacher_temperature: float, warmup_teacher_temperature: float, warmup_steps: int
) -> float:
    """Linear warm-up: ``w + (t - w) * min(step, W) / W`` for ``W > 0``, else ``t``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(teacher_temperature)
    frac = max(step, 0) / warmup_steps
    span = teacher_temperature - warmup_teacher_temperature
    return float(warmup_teacher_temperature + span * frac)


@torch.no_grad()
def update_center_(center: Tensor, outputs: Tensor, momentum: float) -> None:
    """DINO's center update, in place: ``c <- m * c + (1 - m) * mean(outputs)``, the mean over
    all leading dims (views, samples) of ``outputs`` ``[..., K]`` for ``center`` ``[1, K]``,
    taken across ranks under ``torch.distributed``; accumulated in float32 at least."""
    flat = outputs.detach().reshape(-1, center.shape[-1]).to(torch.promote_types(center.dtype, torch.float32))
    stats = torch.cat([flat.sum(0), flat.new_tensor([flat.shape[0]])])
    if dist.is_available() and dist.is_initialized():  # the global mean across ranks
        dist.all_reduce(stats)
    mean = (stats[:-1] / stats[-1]).to(center)
    center.mul_(momentum).add_(mean.unsqueeze(0), alpha=1.0 - momentum)


@torch.no_grad()
def dino_target_statistics(teacher: Tensor, center: Tensor | None, teacher_temperature: float) -> dict[str, float]:
    """Collapse diagnostics of DINO's teacher targets ``P_i = softmax((t_i - c) / tau_t)``.

    ``teacher``: outputs ``[N, K]`` over a set of samples; ``center``: ``[K]`` or ``[1, K]``
    (``None``: zeros). Returns, in nats:

    * ``entropy``: ``mean_i H(P_i)``, the per-sample target entropy; ``ln K`` under the
      collapse to the uniform distribution (centering without enough sharpening);
    * ``marginal_entropy``: ``H(mean_i P_i)``; 0 under the collapse to one dimension
      (sharpening without centering);
    * ``mutual_information``: ``marginal_entropy - entropy = mean_i KL(P_i || mean_j P_j)``,
      the information the targets carry about the sample: 0 under either collapse.

    Caron et al. 2021 (arXiv:2104.14294, Sec. 5.3 and Fig. 7) track the same two entropies to
    show that centering and sharpening each avoid one of the collapses.
    """
    tau = check_temperature("teacher_temperature", teacher_temperature)
    t = teacher.detach().double().reshape(-1, teacher.shape[-1])
    c = torch.zeros(t.shape[-1], dtype=t.dtype, device=t.device) if center is None else center.detach().to(t).reshape(-1)
    if c.shape[0] != t.shape[-1]:
        raise ShapeError(f"dino_target_statistics: center {shape_str(center)} does not match outputs {shape_str(teacher)}.")
    log_p = F.log_softmax((t - c) / tau, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1).mean()
    marginal = log_p.exp().mean(0)
    marginal_entropy = -(marginal * marginal.clamp_min(torch.finfo(t.dtype).tiny).log()).sum()
    return {"entropy": float(entropy), "marginal_entropy": float(marginal_entropy),
            "mutual_information": float(marginal_entropy - entropy)}


def _views(name: str, x: Tensor) -> Tensor:
    if x.ndim == 2:
        return x.unsqueeze(0)
    if x.ndim == 3:
        return x
    raise ShapeError(f"dino: expected {name} outputs [B, K] or [V, B, K], got {shape_str(x)}.")


def dino_loss(
    student: Tensor,
    teacher: Tensor,
    center: Tensor | None = None,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
    reduction: str = "mean",
) -> Tensor:
    """DINO cross-entropy over (teacher view, student view) pairs of different views.

    ``student``: ``[B, K]`` or ``[V_s, B, K]``; ``teacher``: ``[B, K]`` or ``[V_t, B, K]``;
    ``center``: ``[K]`` or ``[1, K]`` (``None``: zeros). Student view ``i < V_t`` is the same
    view as teacher view ``i``. Per sample: the mean over pairs ``(j, i)`` with ``i != j`` (the
    single pair if ``V_s = V_t = 1``) of ``-sum_k P_t[j, k] * log softmax(s_i / tau_s)_k``,
    ``P_t = softmax((t_j - center) / tau_t)``. Returns ``[B]`` or a scalar.
    """
    check_reduction(reduction)
    tau_s = check_temperature("student_temperature", student_temperature)
    tau_t = check_temperature("teacher_temperature", teacher_temperature)
    s, t = upcast(_views("student", student), _views("teacher", teacher))
    assert s is not None and t is not None
    if s.shape[1:] != t.shape[1:]:
        raise ShapeError(
            f"dino: student outputs {shape_str(student)} and teacher outputs "
            f"{shape_str(teacher)} must have the same batch size and output dim."
        )
    if center is None:
        center = torch.zeros(s.shape[-1], dtype=s.dtype, device=s.device)
    center = center.to(s.dtype).reshape(-1)
    if center.shape[0] != s.shape[-1]:
        raise ShapeError(
            f"dino: center of shape {shape_str(center)} does not match outputs of dim "
            f"{s.shape[-1]}."
        )
    log_ps = F.log_softmax(s / tau_s, dim=-1)  # [V_s, B, K]
    pt = F.softmax((t - center) / tau_t, dim=-1)  # [V_t, B, K]
    ce = -torch.einsum("jbk,ibk->jib", pt, log_ps)  # [V_t, V_s, B]
    v_t, v_s = t.shape[0], s.shape[0]
    if v_t == 1 and v_s == 1:
        pair = torch.ones(1, 1, dtype=torch.bool, device=s.device)
    else:
        j = torch.arange(v_t, device=s.device).unsqueeze(1)
        i = torch.arange(v_s, device=s.device).unsqueeze(0)
        pair = j != i
    per_sample = (ce * pair.unsqueeze(-1)).sum((0, 1)) / pair.sum()
    return reduce(per_sample, reduction)


@OBJECTIVES.register("dino")
class DINOLoss(Objective):
    """DINO self-distillation loss with teacher centering and sharpening (Caron et al. 2021).

    Paper: M. Caron, H. Touvron, I. Misra, H. Jegou, J. Mairal, P. Bojanowski, A. Joulin,
    2021, "Emerging Properties in Self-Supervised Vision Transformers" (ICCV),
    arXiv:2104.14294.

    Teacher targets ``P_t = softmax((t - c) / tau_t)`` with the center buffer ``c`` (``[1,
    K]``); student ``log P_s = log_softmax(s / tau_s)``. Loss: the mean over view pairs
    ``(j, i)``, teacher view ``j`` and student view ``i`` with ``i != j`` (student views
    ``0..V_t-1`` are the teacher's views; extra student views are local crops), of
    ``-sum_k P_t[j, k] log P_s[i, k]``; with one view each, the single pair is used.
    ``tau_t`` warms up linearly from ``warmup_teacher_temperature`` at step 0 to
    ``teacher_temperature`` at step ``warmup_steps`` (the optimizer step given by
    :meth:`set_step`) and stays there.

    :meth:`update` (after the step, with the teacher outputs): ``c <- m * c + (1 - m) *
    mean(t)`` over all views and samples; under ``torch.distributed`` the sums and counts
    are all-reduced first (the global mean; a no-op without an initialised process group).

    Args of ``forward``: ``student`` ``[B, K]`` or ``[V_s, B, K]``, ``teacher`` ``[B, K]``
    or ``[V_t, B, K]`` with ``K = out_dim``. Returns ``[B]`` (mean over pairs) or a scalar.

    Example:
        >>> import torch
        >>> loss = DINOLoss(out_dim=16)
        >>> s, t = torch.randn(4, 2, 16), torch.randn(2, 2, 16)  # 4 student, 2 teacher views
        >>> loss(s, t).shape
        torch.Size([])
        >>> loss.update(teacher=t); loss.center.shape
        torch.Size([1, 16])
    """

    inputs = {"student": "student.logits", "teacher": "teacher.logits"}
    target_space = None

    def __init__(
        self,
        out_dim: int,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        warmup_steps: int = 0,
        center_momentum: float = 0.9,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        if int(out_dim) <= 0:
            raise ConfigError(f"dino: out_dim must be positive, got {out_dim!r}.")
        if not 0.0 <= float(center_momentum) <= 1.0:
            raise ConfigError(f"dino: center_momentum must be in [0, 1], got {center_momentum!r}.")
        if int(warmup_steps) < 0:
            raise ConfigError(f"dino: warmup_steps must be >= 0, got {warmup_steps!r}.")
        self.out_dim = int(out_dim)
        self.student_temperature = check_temperature("student_temperature", student_temperature)
        self.teacher_temperature = check_temperature("teacher_temperature", teacher_temperature)
        self.warmup_teacher_temperature = check_temperature(
            "warmup_teacher_temperature", warmup_teacher_temperature
        )
        self.warmup_steps = int(warmup_steps)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, self.out_dim))

    def current_teacher_temperature(self) -> float:
        """The teacher temperature at the current step (``self.step``)."""
        return dino_teacher_temperature(
            self.step, self.teacher_temperature, self.warmup_teacher_temperature, self.warmup_steps
        )

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if student.shape[-1] != self.out_dim or teacher.shape[-1] != self.out_dim:
            raise ShapeError(
                f"dino: out_dim is {self.out_dim} but the student outputs have shape "
                f"{shape_str(student)} and the teacher outputs {shape_str(teacher)}."
            )
        return dino_loss(
            student, teacher, self.center, self.student_temperature,
            self.current_teacher_temperature(), self.reduction,
        )

    @torch.no_grad()
    def update(self, **inputs: Any) -> None:
        teacher = inputs.get("teacher")
        if teacher is None:
            return
        if teacher.shape[-1] != self.out_dim:
            raise ShapeError(
                f"dino: out_dim is {self.out_dim} but the teacher outputs have shape "
                f"{shape_str(teacher)}."
            )
        update_center_(self.center, teacher, self.center_momentum)

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}, "
            f"warmup_teacher_temperature={self.warmup_teacher_temperature}, "
            f"warmup_steps={self.warmup_steps}, center_momentum={self.center_momentum}"
        )
