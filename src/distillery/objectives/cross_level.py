"""Cross-level self-distillation inside one network: image-level crops <-> region-level crops.

CMD (Bi, Ji, Yi, Zhan & Xia 2024, "Cross-Level Multi-Instance Distillation for
Self-Supervised Fine-Grained Visual Categorization", arXiv:2401.08860) distils "the
region-image crops inside the teacher / student net" ("inter-level multi-instance
distillation") besides the usual teacher -> student pairs. Here the inter-level term is the
DINO cross-entropy (Caron et al. 2021) between the two crop levels of the *same* network's
outputs: the other level's outputs, detached, centred and sharpened, are the target.

For image-level outputs ``I [Vi, B, K]`` and region-level outputs ``R [Vr, B, K]``:

    P(x) = softmax((sg(x) - c) / tau_t)          (sg: stop-gradient; c: a running center)
    H(p, y) = -sum_k p_k log softmax(y / tau_s)_k
    image -> region  = mean over all pairs (j, i) of H(P(I_j), R_i)
    region -> image  = mean over all pairs (j, i) of H(P(R_j), I_i)
    loss = image -> region                              (symmetric=False)
         = (image -> region + region -> image) / 2      (symmetric=True)

All ``Vi * Vr`` pairs are used (the two levels never share a crop). Each level keeps its own
center, updated after the step like DINO's: ``c <- m c + (1 - m) mean(outputs)``. With an EMA
teacher only the student side of this term can be trained; the teacher follows through its
moving average. The exact form of CMD's inter-level loss is not given in its abstract; this is
the DINO cross-entropy applied to the inter-level pairs it names.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..registry import OBJECTIVES
from ._common import check_reduction, check_temperature, reduce, shape_str, upcast
from .base import Objective
from .dino import dino_teacher_temperature, update_center_

__all__ = ["CrossLevelDINO", "cross_level_dino_loss", "level_cross_entropy"]


def _levels(name: str, x: Tensor) -> Tensor:
    if x.ndim == 2:
        return x.unsqueeze(0)
    if x.ndim == 3:
        return x
    raise ShapeError(f"cross_level_dino: expected {name} outputs [B, K] or [V, B, K], got {shape_str(x)}.")


def level_cross_entropy(target: Tensor, prediction: Tensor, center: Tensor, tau_s: float, tau_t: float) -> Tensor:
    """Per-sample mean over all pairs (target view j, prediction view i) of
    ``-sum_k softmax((sg(target_j) - center) / tau_t)_k * log softmax(prediction_i / tau_s)_k``.

    ``target [Vt, B, K]``, ``prediction [Vp, B, K]``, ``center [K]``. Returns ``[B]``.
    """
    p = F.softmax((target.detach() - center) / tau_t, dim=-1)  # [Vt, B, K]
    log_q = F.log_softmax(prediction / tau_s, dim=-1)  # [Vp, B, K]
    ce = -torch.einsum("jbk,ibk->jib", p, log_q)  # [Vt, Vp, B]
    return ce.mean((0, 1))


def cross_level_dino_loss(
    region: Tensor,
    image: Tensor,
    center_region: Tensor | None = None,
    center_image: Tensor | None = None,
    student_temperature: float = 0.1,
    target_temperature: float = 0.04,
    symmetric: bool = True,
    reduction: str = "mean",
) -> Tensor:
    """Inter-level DINO cross-entropy (see the module docstring).

    ``region``: ``[Vr, B, K]`` (or ``[B, K]``); ``image``: ``[Vi, B, K]`` (or ``[B, K]``);
    centers ``[K]`` or ``[1, K]`` (``None``: zeros). Targets carry no gradient. Returns ``[B]``
    or a scalar.
    """
    check_reduction(reduction)
    tau_s = check_temperature("student_temperature", student_temperature)
    tau_t = check_temperature("target_temperature", target_temperature)
    r, i = upcast(_levels("region", region), _levels("image", image))
    assert r is not None and i is not None
    if r.shape[1:] != i.shape[1:]:
        raise ShapeError(
            f"cross_level_dino: region outputs {shape_str(region)} and image outputs {shape_str(image)} "
            "must have the same batch size and output dim."
        )
    k = r.shape[-1]
    c_r = _center(center_region, k, r)
    c_i = _center(center_image, k, r)
    per_sample = level_cross_entropy(i, r, c_i, tau_s, tau_t)
    if symmetric:
        per_sample = 0.5 * (per_sample + level_cross_entropy(r, i, c_r, tau_s, tau_t))
    return reduce(per_sample, reduction)


def _center(center: Tensor | None, k: int, like: Tensor) -> Tensor:
    if center is None:
        return torch.zeros(k, dtype=like.dtype, device=like.device)
    center = center.to(like.dtype).reshape(-1)
    if center.shape[0] != k:
        raise ShapeError(f"cross_level_dino: a center of shape {shape_str(center)} does not match outputs of dim {k}.")
    return center


@OBJECTIVES.register("cross_level_dino")
class CrossLevelDINO(Objective):
    """Inter-level (region <-> image crop) DINO self-distillation inside one network (CMD).

    Bi et al. 2024, arXiv:2401.08860 ("inter-level multi-instance distillation"), with the
    centering and sharpening of DINO (Caron et al. 2021, arXiv:2104.14294); formula in
    :mod:`distillery.objectives.cross_level`.

    Inputs: ``region`` (default ``student.local``, ``[Vr, B, K]``) and ``image`` (default
    ``student.global``, ``[Vi, B, K]``), as returned by
    :class:`~distillery.models.multicrop.MultiCropNet`. The target temperature warms up
    linearly from ``warmup_target_temperature`` to ``target_temperature`` over
    ``warmup_steps`` optimizer steps. Buffers ``center_image`` and ``center_region`` (``[1, K]``)
    move after each step: ``c <- m c + (1 - m) * mean over views and samples`` (all-reduced
    across ranks under ``torch.distributed``).

    Example::

        >>> loss = CrossLevelDINO(out_dim=16)
        >>> region, image = torch.randn(4, 2, 16), torch.randn(2, 2, 16)
        >>> loss(region=region, image=image).shape
        torch.Size([])
    """

    inputs = {"region": "student.local", "image": "student.global"}
    target_space = None

    def __init__(
        self,
        out_dim: int,
        student_temperature: float = 0.1,
        target_temperature: float = 0.04,
        warmup_target_temperature: float | None = None,
        warmup_steps: int = 0,
        center_momentum: float = 0.9,
        symmetric: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction)
        if isinstance(out_dim, bool) or int(out_dim) <= 0:
            raise ConfigError(f"cross_level_dino: out_dim must be positive, got {out_dim!r}.")
        if not 0.0 <= float(center_momentum) <= 1.0:
            raise ConfigError(f"cross_level_dino: center_momentum must be in [0, 1], got {center_momentum!r}.")
        if int(warmup_steps) < 0:
            raise ConfigError(f"cross_level_dino: warmup_steps must be >= 0, got {warmup_steps!r}.")
        self.out_dim = int(out_dim)
        self.student_temperature = check_temperature("student_temperature", student_temperature)
        self.target_temperature = check_temperature("target_temperature", target_temperature)
        warm = target_temperature if warmup_target_temperature is None else warmup_target_temperature
        self.warmup_target_temperature = check_temperature("warmup_target_temperature", warm)
        self.warmup_steps = int(warmup_steps)
        self.center_momentum = float(center_momentum)
        self.symmetric = bool(symmetric)
        self.register_buffer("center_image", torch.zeros(1, self.out_dim))
        self.register_buffer("center_region", torch.zeros(1, self.out_dim))

    def current_target_temperature(self) -> float:
        return dino_teacher_temperature(
            self.step, self.target_temperature, self.warmup_target_temperature, self.warmup_steps
        )

    def forward(self, region: Tensor, image: Tensor) -> Tensor:
        if region.shape[-1] != self.out_dim or image.shape[-1] != self.out_dim:
            raise ShapeError(
                f"cross_level_dino: out_dim is {self.out_dim} but the region outputs have shape "
                f"{shape_str(region)} and the image outputs {shape_str(image)}."
            )
        return cross_level_dino_loss(
            region, image, self.center_region, self.center_image, self.student_temperature,
            self.current_target_temperature(), self.symmetric, self.reduction,
        )

    @torch.no_grad()
    def update(self, **inputs: Any) -> None:
        for key, buf in (("image", self.center_image), ("region", self.center_region)):
            x = inputs.get(key)
            if x is None or x.numel() == 0:
                continue
            update_center_(buf, x, self.center_momentum)

    def extra_repr(self) -> str:
        return (
            f"out_dim={self.out_dim}, student_temperature={self.student_temperature}, "
            f"target_temperature={self.target_temperature}, symmetric={self.symmetric}, "
            f"center_momentum={self.center_momentum}"
        )
