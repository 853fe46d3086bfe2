"""Contrastive terms: the student's embedding must pick its teacher's key among negatives.

Negatives are the other keys of the batch plus, optionally, a :class:`MomentumQueue` of keys
from earlier batches (MoCo's dictionary). The queue is filled by ``update()``, which the
distiller calls after each optimizer step, so a forward pass always sees keys of *earlier*
batches in the queue, as in MoCo.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.distributed import all_gather_cat
from ..errors import ConfigError, ShapeError
from ..registry import OBJECTIVES
from ._common import (
    check_reduction,
    check_temperature,
    compute_dtype,
    reduce,
    shape_str,
)
from .base import Objective

__all__ = [
    "InfoNCE",
    "MomentumQueue",
    "SoftContrastive",
    "infonce_loss",
    "soft_contrastive_loss",
]


class MomentumQueue(nn.Module):
    """A FIFO ring buffer of ``size`` key vectors of length ``dim`` (MoCo's queue).

    Buffers (saved in checkpoints): ``queue`` ``[size, dim]``, ``ptr`` (the next slot to
    write) and ``filled`` (how many slots hold keys). :meth:`enqueue` writes a batch of keys
    at ``ptr``, wrapping around and overwriting the oldest keys; a batch larger than ``size``
    keeps only its last ``size`` keys (the others would be overwritten anyway). The buffer
    follows the keys' device and dtype.

    Example:
        >>> import torch
        >>> q = MomentumQueue(dim=2, size=3)
        >>> q.enqueue(torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
        >>> q.enqueue(torch.tensor([[3.0, 3.0], [4.0, 4.0]]))
        >>> q.queue[:, 0].tolist(), int(q.ptr), len(q)
        ([4.0, 2.0, 3.0], 1, 3)
    """

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if int(dim) <= 0 or int(size) <= 0:
            raise ConfigError(f"MomentumQueue needs dim > 0 and size > 0, got {dim} and {size}.")
        self.dim = int(dim)
        self.size = int(size)
        self.register_buffer("queue", torch.zeros(self.size, self.dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append ``keys`` ``[N, dim]`` (detached) in FIFO order.

        Under torch.distributed the keys of every rank are gathered first (in rank order), so
        all ranks hold the same queue as a single process with the global batch would.
        """
        if keys.ndim == 2 and keys.shape[1] == self.dim:
            keys = all_gather_cat(keys.detach())
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ShapeError(
                f"MomentumQueue of dim {self.dim} cannot take keys of shape {shape_str(keys)}; "
                f"expected [N, {self.dim}]."
            )
        if keys.is_floating_point() and (
            keys.dtype != self.queue.dtype or keys.device != self.queue.device
        ):
            self.queue = self.queue.to(device=keys.device, dtype=keys.dtype)
        n = keys.shape[0]
        if n == 0:
            return
        m = min(n, self.size)
        ptr = int(self.ptr)
        start = (ptr + n - m) % self.size
        slots = (start + torch.arange(m, device=self.queue.device)) % self.size
        self.queue.index_copy_(0, slots, keys[n - m :].detach().to(self.queue))
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    def keys(self) -> Tensor:
        """The filled part of the queue, ``[filled, dim]`` (slot order, not age order)."""
        return self.queue[: int(self.filled)]

    def __len__(self) -> int:
        return int(self.filled)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"


def _as_matrix(name: str, x: Tensor) -> Tensor:
    if x.ndim < 2:
        raise ShapeError(f"{name}: expected embeddings [B, D], got {shape_str(x)}.")
    return x.reshape(x.shape[0], -1)


_PROJECTION_HINT = (
    "Add a projection head (a linear layer on the student) so both embeddings have the same "
    "size, and tap its output."
)


def _check_same(name: str, **tensors: Tensor) -> None:
    shapes = {k: v.shape for k, v in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {shape_str(v)}" for k, v in shapes.items())
        raise ShapeError(f"{name}: {listed} must have the same shape. {_PROJECTION_HINT}")


def _all_keys(name: str, keys: Tensor, queue: Tensor | None) -> Tensor:
    if queue is None or queue.shape[0] == 0:
        return keys
    if queue.ndim != 2 or queue.shape[1] != keys.shape[1]:
        raise ShapeError(
            f"{name}: queued keys of shape {shape_str(queue)} do not match keys of shape "
            f"{shape_str(keys)}."
        )
    return torch.cat([keys, F.normalize(queue.to(keys.dtype), dim=1)], dim=0)


def infonce_loss(
    query: Tensor,
    keys: Tensor,
    queue: Tensor | None = None,
    temperature: float = 0.07,
    reduction: str = "mean",
) -> Tensor:
    """InfoNCE of L2-normalised queries against keys: positives on the diagonal.

    ``query``, ``keys``: ``[B, D]`` (flattened if more dims); ``queue``: ``[Q, D]`` extra
    negatives (normalised here too) or ``None``. With ``l = q @ [k; queue]^T / tau``
    (``[B, B + Q]``), per sample: ``-log softmax(l_i)_i``. Returns ``[B]`` or a scalar.
    """
    check_reduction(reduction)
    tau = check_temperature("temperature", temperature)
    q, k = _as_matrix("infonce", query), _as_matrix("infonce", keys)
    _check_same("infonce", student=q, teacher=k)
    dtype = compute_dtype(q, k)
    q = F.normalize(q.to(dtype), dim=1)
    k = F.normalize(k.to(dtype), dim=1)
    logits = q @ _all_keys("infonce", k, queue).T / tau
    per_sample = -F.log_softmax(logits, dim=1).diagonal()
    return reduce(per_sample, reduction)


def soft_contrastive_loss(
    student: Tensor,
    teacher: Tensor,
    keys: Tensor,
    queue: Tensor | None = None,
    temperature: float = 0.07,
    alpha: float = 0.4,
    reduction: str = "mean",
) -> Tensor:
    """ALBEF momentum-distillation contrastive loss with soft targets.

    ``student``, ``teacher``, ``keys``: ``[B, D]``; ``queue``: ``[Q, D]`` or ``None``; all
    L2-normalised here. ``K = [keys; queue]`` (``[B + Q, D]``),
    ``y = alpha * softmax(teacher @ K^T / tau) + (1 - alpha) * onehot(i)``; per sample:
    ``-sum_j y_ij * log softmax(student @ K^T / tau)_ij``.
    """
    check_reduction(reduction)
    tau = check_temperature("temperature", temperature)
    s = _as_matrix("soft_contrastive", student)
    t = _as_matrix("soft_contrastive", teacher)
    k = _as_matrix("soft_contrastive", keys)
    _check_same("soft_contrastive", student=s, teacher=t, keys=k)
    dtype = compute_dtype(s, t, k)
    s, t, k = (F.normalize(x.to(dtype), dim=1) for x in (s, t, k))
    all_keys = _all_keys("soft_contrastive", k, queue)
    batch, total = s.shape[0], all_keys.shape[0]
    onehot = torch.eye(batch, total, dtype=dtype, device=s.device)
    targets = alpha * F.softmax(t @ all_keys.T / tau, dim=1) + (1.0 - alpha) * onehot
    per_sample = -(targets * F.log_softmax(s @ all_keys.T / tau, dim=1)).sum(1)
    return reduce(per_sample, reduction)


class _QueueMixin:
    """Lazily created queue (``dim`` may be unknown until the first keys arrive), and the
    optional *step negatives*: keys of earlier micro-batches of the current optimizer step.

    With gradient accumulation (MSD, Pham et al. 2025, arXiv:2512.02438: "integrating
    momentum mechanisms with gradient accumulation to enlarge the effective batch size"),
    ``step_negatives=True`` keeps the (detached, normalised) keys of each micro-batch's
    forward pass and offers them as extra negatives to the following micro-batches of the
    same step, ahead of the queue: micro-batch ``j`` of a step contrasts against its own keys,
    those of micro-batches ``1..j-1`` and the queue. ``update()`` (after the optimizer step)
    clears them. Keys are kept only from forward passes with gradients enabled (not from
    ``Distiller.prepare``); they are not gathered across processes.
    """

    queue_size: int
    queue: MomentumQueue | None
    step_negatives: bool = False
    #: the ``forward`` input whose keys :meth:`update` enqueues
    _queue_input: str

    def _init_queue(self, queue_size: int, dim: int | None, step_negatives: bool = False) -> None:
        if int(queue_size) < 0:
            raise ConfigError(f"queue_size must be >= 0, got {queue_size!r}.")
        self.queue_size = int(queue_size)
        module = MomentumQueue(dim, self.queue_size) if self.queue_size and dim else None
        self.register_module("queue", module)  # type: ignore[attr-defined]
        self.step_negatives = bool(step_negatives)
        self._step_keys: list[Tensor] = []

    def _queued(self) -> Tensor | None:
        parts = list(self._step_keys)
        if self.queue is not None and len(self.queue):
            parts.append(self.queue.keys())
        if not parts:
            return None
        return torch.cat([p.to(parts[-1].dtype) for p in parts], dim=0)

    def _stage_step_keys(self, keys: Tensor) -> None:
        """Keep this micro-batch's keys as negatives for the rest of the optimizer step
        (only from forward passes with gradients enabled: training, not ``prepare``)."""
        if self.step_negatives and torch.is_grad_enabled():
            with torch.no_grad():
                k = _as_matrix("step keys", keys.detach()).to(compute_dtype(keys))
                self._step_keys.append(F.normalize(k, dim=1))

    def _end_step(self) -> None:
        self._step_keys.clear()

    @torch.no_grad()
    def update(self, **inputs: Any) -> None:
        self._end_step()
        keys = inputs.get(self._queue_input)
        if keys is not None:
            self._enqueue(keys)

    def _queue_repr(self) -> str:
        return (
            f"queue_size={self.queue_size}, reduction={self.reduction!r}"  # type: ignore[attr-defined]
            + (", step_negatives=True" if self.step_negatives else "")
        )

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        if not self.queue_size:
            return
        k = F.normalize(_as_matrix("queue", keys.detach()).to(compute_dtype(keys)), dim=1)
        if self.queue is None:
            self.queue = MomentumQueue(k.shape[1], self.queue_size).to(k)
        self.queue.enqueue(k)

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        saved = state_dict.get(prefix + "queue.queue")
        if self.queue is None and self.queue_size and saved is not None:
            self.queue = MomentumQueue(saved.shape[1], saved.shape[0]).to(saved)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


@OBJECTIVES.register("infonce")
class InfoNCE(_QueueMixin, Objective):
    """Contrastive InfoNCE between student queries and teacher keys (CPC / MoCo).

    Papers: A. van den Oord, Y. Li, O. Vinyals, 2018, "Representation Learning with
    Contrastive Predictive Coding", arXiv:1807.03748; K. He, H. Fan, Y. Wu, S. Xie,
    R. Girshick, 2020, "Momentum Contrast for Unsupervised Visual Representation Learning"
    (CVPR), arXiv:1911.05722. As a distillation loss: CRD (Y. Tian, D. Krishnan, P. Isola,
    2020, "Contrastive Representation Distillation", arXiv:1910.10699).

    ``q_i = s_i / |s_i|``, ``k_i = t_i / |t_i|``; logits ``l_ij = <q_i, k_j> / tau`` over the
    batch keys and the queued keys (``[B, B + Q]``); per sample ``-log softmax(l_i)_i``
    (positive on the diagonal, negatives: the other batch keys and the queue).
    With ``queue_size > 0``, :meth:`update` enqueues the normalised teacher keys of the last
    step into a :class:`MomentumQueue` (created on first use if ``dim`` is not given).
    ``step_negatives=True`` adds the keys of earlier micro-batches of the same optimizer step
    (gradient accumulation) as negatives ahead of the queue (see ``_QueueMixin``).

    Args of ``forward``: ``student`` ``[B, D]`` and ``teacher`` ``[B, D]`` (flattened if more
    dims; same ``D``, else a projection head is needed). Returns ``[B]`` or a scalar.

    Example:
        >>> import torch
        >>> loss = InfoNCE(temperature=0.1, queue_size=16)
        >>> s, t = torch.randn(4, 8), torch.randn(4, 8)
        >>> loss(s, t).shape
        torch.Size([])
        >>> loss.update(student=s, teacher=t); len(loss.queue)
        4
    """

    inputs = {"student": "student.logits", "teacher": "teacher.logits"}
    target_space = None
    _queue_input = "teacher"

    def __init__(
        self,
        temperature: float = 0.07,
        queue_size: int = 0,
        dim: int | None = None,
        reduction: str = "mean",
        step_negatives: bool = False,
    ) -> None:
        super().__init__(reduction)
        self.temperature = check_temperature("temperature", temperature)
        self._init_queue(queue_size, dim, step_negatives)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        loss = infonce_loss(student, teacher, self._queued(), self.temperature, self.reduction)
        self._stage_step_keys(teacher)
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, " + self._queue_repr()


@OBJECTIVES.register("soft_contrastive")
class SoftContrastive(_QueueMixin, Objective):
    """Contrastive loss with momentum-distilled soft targets (ALBEF's ITC with MoD).

    Paper: J. Li, R. R. Selvaraju, A. D. Gotmare, S. Joty, C. Xiong, S. Hoi, 2021, "Align
    before Fuse: Vision and Language Representation Learning with Momentum Distillation"
    (NeurIPS), arXiv:2107.07651.

    All inputs are L2-normalised. ``K = [keys; queue]`` (``[B + Q, D]``),
    ``y_i = alpha * softmax(teacher_i @ K^T / tau) + (1 - alpha) * onehot(i)``; per sample
    ``-sum_j y_ij * log softmax(student_i @ K^T / tau)_j``. With ``alpha = 0`` this is
    InfoNCE of the student against the keys. :meth:`update` enqueues the normalised keys
    (``queue_size > 0``); ``step_negatives=True`` also offers the keys of earlier
    micro-batches of the same optimizer step, ahead of the queue (MSD's accumulation; see
    ``_QueueMixin``). Gradients reach ``teacher`` and ``keys`` only if they require grad
    (the distiller computes teacher signals without grad, as ALBEF's momentum model).

    Args of ``forward``: ``student`` (query) ``[B, D]``, ``teacher`` (the teacher's query)
    ``[B, D]``, ``keys`` (the teacher's keys, e.g. the other modality) ``[B, D]``.

    Example:
        >>> import torch
        >>> s, t, k = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
        >>> SoftContrastive(alpha=0.4, reduction="none")(s, t, k).shape
        torch.Size([4])
    """

    inputs = {"student": "student.logits", "teacher": "teacher.logits", "keys": "teacher.logits"}
    target_space = None
    _queue_input = "keys"

    def __init__(
        self,
        temperature: float = 0.07,
        alpha: float = 0.4,
        queue_size: int = 0,
        dim: int | None = None,
        reduction: str = "mean",
        step_negatives: bool = False,
    ) -> None:
        super().__init__(reduction)
        self.temperature = check_temperature("temperature", temperature)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"soft_contrastive: alpha must be in [0, 1], got {alpha!r}.")
        self.alpha = float(alpha)
        self._init_queue(queue_size, dim, step_negatives)

    def forward(self, student: Tensor, teacher: Tensor, keys: Tensor) -> Tensor:
        loss = soft_contrastive_loss(
            student, teacher, keys, self._queued(), self.temperature, self.alpha, self.reduction
        )
        self._stage_step_keys(keys)
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, " + self._queue_repr()
