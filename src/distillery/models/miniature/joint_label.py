"""Networks with a joint (class x transform) head, and the multi-task baseline (SLA).

Lee, Hwang & Shin 2020, "Self-supervised Label Augmentation via Input Transformations",
arXiv:1910.05872. Any registered backbone with a final linear ``head`` (``mlp``, ``cnn1d``,
``cnn2d``, ``resnet``, ``vit``) is reused: its ``head`` is replaced by an identity (model
surgery) and new heads read the features:

* :class:`JointLabelNet` (``joint_label``): ``joint_head`` with ``N*M`` outputs (joint label
  ``i*M + j``), and optionally ``single_head`` with ``N`` outputs, the head SLA+SD distils;
* :class:`TransformMultiTaskNet` (``transform_multitask``): ``head`` over the N classes and
  ``transform_head`` over the M transforms (the multi-task baseline the paper compares to).

Both return a dict of signals, so objectives can address each head (``student.joint``,
``student.single``, ``student.transform``); ``logits`` is the single-pass class prediction
used for evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError
from ...registry import MODELS

__all__ = ["JointLabelNet", "TransformMultiTaskNet", "joint_label", "strip_head", "transform_multitask"]

LOGITS = ("single", "conditional", "marginal")


def strip_head(backbone: nn.Module, head: str = "head") -> int:
    """Replace ``backbone.<head>`` (an ``nn.Linear``) by an identity; returns its input width."""
    layer = getattr(backbone, head, None)
    if not isinstance(layer, nn.Linear):
        raise ConfigError(
            f"The backbone {type(backbone).__name__} has no linear attribute {head!r} to replace; "
            "joint-label heads need a backbone whose last layer is a linear head (mlp, cnn1d, cnn2d, resnet, vit)."
        )
    setattr(backbone, head, nn.Identity())
    return layer.in_features


def _backbone(spec: Mapping[str, Any] | str, input_shape: Sequence[int], where: str) -> nn.Module:
    from .. import build_model

    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec or set(spec) - {"name", "params"}:
        raise ConfigError(f"{where}: backbone must be {{name: ..., params: {{...}}}}, got {spec!r}.")
    # the class count of the backbone's own head is irrelevant: the head is replaced
    return build_model(spec["name"], input_shape, 2, **dict(spec.get("params") or {}))


def _positive(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}.")
    return value


class JointLabelNet(nn.Module):
    """Backbone + joint head over ``N*M`` labels (+ optional single-pass head over ``N``).

    Input ``[R, ...]`` (R = B, or M*B enumerated copies). Output dict:

    * ``joint``: ``[R, N*M]``, ``z_(i,j)`` at index ``i*M + j``;
    * ``single``: ``[R, N]`` (only with ``single_head=True``);
    * ``logits``: ``[R, N]``, the single-pass class prediction: ``"single"`` (the SD head),
      ``"conditional"`` (``z_(i,0)``: SLA+SI) or ``"marginal"`` (``log sum_j exp z_(i,j)``).

    Modules: ``backbone`` (its ``head`` is an identity), ``joint_head``, ``single_head``.
    """

    def __init__(self, backbone: nn.Module, features: int, num_classes: int, num_transforms: int,
                 single_head: bool = False, logits: str | None = None) -> None:
        super().__init__()
        if logits is None:
            logits = "single" if single_head else "conditional"
        if logits not in LOGITS:
            raise ConfigError(f"joint_label: logits must be one of {LOGITS}, got {logits!r}.")
        if logits == "single" and not single_head:
            raise ConfigError("joint_label: logits='single' needs single_head=true.")
        self.num_classes, self.num_transforms, self.logits_from = num_classes, num_transforms, logits
        self.backbone = backbone
        self.joint_head = nn.Linear(features, num_classes * num_transforms)
        self.single_head = nn.Linear(features, num_classes) if single_head else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from ...objectives.joint_label import (
            conditional_joint_logits,
            marginal_joint_logits,
        )

        h = self.backbone(x)
        out = {"joint": self.joint_head(h)}
        if self.single_head is not None:
            out["single"] = self.single_head(h)
        if self.logits_from == "single":
            out["logits"] = out["single"]
        elif self.logits_from == "conditional":
            out["logits"] = conditional_joint_logits(out["joint"], self.num_transforms, 0)
        else:
            out["logits"] = marginal_joint_logits(out["joint"], self.num_transforms)
        return out

    @torch.no_grad()
    def aggregated_logits(self, x: torch.Tensor, enumerator) -> torch.Tensor:
        """SLA+AG: ``[B, ...] -> [B, N]``, the joint logits averaged over the M copies
        (M backbone passes per sample). ``enumerator``: a
        :class:`~distillery.data.enumeration.TransformEnumerator` with M transforms."""
        from ...objectives.joint_label import aggregate_joint_logits

        if len(enumerator) != self.num_transforms:
            raise ConfigError(f"The network was built for {self.num_transforms} transforms; the enumerator has {len(enumerator)}.")
        joint = self.joint_head(self.backbone(enumerator(x)))
        return aggregate_joint_logits(joint, self.num_transforms)

    @torch.no_grad()
    def single_pass_logits(self, x: torch.Tensor, head: str = "single") -> torch.Tensor:
        """One backbone pass and one head: ``"single"`` (the distilled head) or
        ``"conditional"`` (the joint head read at transform 0). ``[B, ...] -> [B, N]``."""
        from ...objectives.joint_label import conditional_joint_logits

        h = self.backbone(x)
        if head == "single":
            if self.single_head is None:
                raise ConfigError("This network has no single-pass head (single_head=false).")
            return self.single_head(h)
        if head == "conditional":
            return conditional_joint_logits(self.joint_head(h), self.num_transforms, 0)
        raise ConfigError(f"head must be 'single' or 'conditional', got {head!r}.")


class TransformMultiTaskNet(nn.Module):
    """Backbone + class head (``N``) + transform head (``M``): the multi-task baseline.

    Input ``[R, ...]``; output ``{"logits": [R, N], "transform": [R, M]}``. Modules:
    ``backbone``, ``head``, ``transform_head``.
    """

    def __init__(self, backbone: nn.Module, features: int, num_classes: int, num_transforms: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(features, num_classes)
        self.transform_head = nn.Linear(features, num_transforms)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.backbone(x)
        return {"logits": self.head(h), "transform": self.transform_head(h)}


@MODELS.register("joint_label")
def joint_label(
    input_shape: Sequence[int],
    num_classes: int,
    num_transforms: int = 4,
    backbone: Mapping[str, Any] | str = "cnn2d",
    single_head: bool = False,
    logits: str | None = None,
) -> JointLabelNet:
    """SLA network: ``backbone`` (a model spec ``{name, params}``) with a joint head over
    ``num_classes * num_transforms`` labels and, with ``single_head``, the SLA+SD head.

    ``logits`` (the evaluated single pass): ``single`` (default with a single head),
    ``conditional`` (default without: SLA+SI) or ``marginal``.
    """
    m = _positive(num_transforms, "num_transforms", "joint_label")
    net = _backbone(backbone, input_shape, "joint_label")
    features = strip_head(net)
    return JointLabelNet(net, features, _positive(num_classes, "num_classes", "joint_label"), m, bool(single_head), logits)


@MODELS.register("transform_multitask")
def transform_multitask(
    input_shape: Sequence[int],
    num_classes: int,
    num_transforms: int = 4,
    backbone: Mapping[str, Any] | str = "cnn2d",
) -> TransformMultiTaskNet:
    """Multi-task baseline of SLA: class head + transform-prediction head on one backbone."""
    m = _positive(num_transforms, "num_transforms", "transform_multitask")
    net = _backbone(backbone, input_shape, "transform_multitask")
    features = strip_head(net)
    return TransformMultiTaskNet(net, features, _positive(num_classes, "num_classes", "transform_multitask"), m)
