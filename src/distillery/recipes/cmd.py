"""CMD: cross-level multi-instance distillation for self-supervised fine-grained features.

Bi, Ji, Yi, Zhan & Xia 2024, "Cross-Level Multi-Instance Distillation for Self-Supervised
Fine-Grained Visual Categorization", arXiv:2401.08860. "Our key idea is to consider the
importance of each image patch in determining the fine-grained pre-text representation by
multiple instance learning ... the multi-instance knowledge distillation is implemented on both
the region/image crop pairs from the teacher and student net, and the region-image crops
inside the teacher / student net, which we term as intra-level multi-instance distillation and
inter-level multi-instance distillation." The paper reports gains of "upto 10.14%" over the
contemporary method and "upto 19.78%" over self-supervised baselines (top-1 and Rank-1
retrieval on CUB-200-2011, Stanford Cars and FGVC Aircraft).

CMD builds on DINO self-distillation (Caron et al. 2021, arXiv:2104.14294): an EMA teacher, a
projection head, centering and sharpening of the teacher's output, and multi-crop views. In
distillery:

* views: :class:`~distillery.data.multicrop.MultiCrop` (``multicrop``): image-level (global)
  and region-level (local) crops of every sample, as one dict of stacks;
* network: :class:`~distillery.models.multicrop.MultiCropNet` (``multicrop_convnet``): patch
  tokens -> **MIL attention pooling** (:class:`~distillery.models.mil.MILAttentionPool`,
  Ilse et al. 2018) -> DINO head (with batch normalisation, ``head_norm="batch"``: DINO's
  ``use_bn_in_head``, without which the miniature collapses); it returns ``[V, B, K]`` outputs for all crops (``logits``)
  and per level (``global``, ``local``);
* teacher: :class:`~distillery.teachers.EMATeacher` (momentum 0.996 -> 1);
* intra-level term (teacher -> student): ``dino`` between the teacher's image-level outputs and
  the student's outputs on every crop (region and image), pairs of different views;
* inter-level term (region <-> image inside the network): ``cross_level_dino``
  (:class:`~distillery.objectives.cross_level.CrossLevelDINO`).

Plain DINO is the same wiring with mean pooling and the intra-level term only
(:func:`dino_terms`). :func:`cmd_config` states the method as config fragments (teacher,
terms, multi-crop view); the Python builders make their terms from the same entries. The
details of CMD's losses beyond the abstract (weights, the exact inter-level pairing) are not
given there; the choices above are stated in the docs page.
Config: ``configs/cmd_fine_grained_digits.yaml``; claim check: ``distillery reproduce cmd``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batch import BatchView
from ..data.multicrop import MultiCrop
from ..engine.distiller import Distiller, Term
from ..errors import CheckpointError, ShapeError
from ..models.multicrop import MultiCropNet, multicrop_convnet
from ..teachers import EMATeacher
from . import Recipe, register_recipe
from ._fragments import ema_teacher, terms_from

RECIPE = register_recipe(
    Recipe("cmd", "Bi et al. 2024, CMD, arXiv:2401.08860", "cmd_fine_grained_digits.yaml",
           "Cross-level multi-instance (MIL-attention, multi-crop) DINO self-distillation for fine-grained features")
)


def cmd_student(input_shape: Sequence[int], pool: str = "mil", channels: Sequence[int] = (16, 32),
                out_dim: int = 64, head_norm: str = "batch") -> MultiCropNet:
    """The CNN -> (MIL attention | mean) pooling -> DINO head network (``multicrop_convnet``).

    ``head_norm="batch"`` (DINO's ``use_bn_in_head``): without it a small CNN's outputs are
    nearly the same for every image and DINO collapses to uniform targets (issue 15)."""
    return multicrop_convnet(input_shape, channels=channels, pool=pool, out_dim=out_dim, head_norm=head_norm)


def multicrop_view(n_global: int = 2, n_local: int = 4, global_size: int | Sequence[int] | None = None,
                   local_size: int | Sequence[int] | None = None) -> BatchView:
    """``batch["x"]`` -> image-level and region-level crops with DINO's scales (0.4-1, 0.05-0.4)."""
    return BatchView("x", MultiCrop(n_global, n_local, global_size, local_size))


def multicrop_spec(n_global: int = 2, n_local: int = 4, global_size: int | None = None, local_size: int | None = None,
                   global_scale: Sequence[float] | None = None, local_scale: Sequence[float] | None = None) -> dict[str, Any]:
    """The ``multicrop`` view as a config transform (keys left out when ``None``: the view's
    defaults, DINO's scales and sizes derived from the input)."""
    spec: dict[str, Any] = {"name": "multicrop", "n_global": n_global, "n_local": n_local}
    for key, value in (("global_size", global_size), ("local_size", local_size), ("global_scale", global_scale),
                       ("local_scale", local_scale)):
        if value is not None:
            spec[key] = list(value) if isinstance(value, (list, tuple)) else value
    return spec


def dino_objective(out_dim: int, student_temperature: float = 0.1, teacher_temperature: float = 0.04,
                   center_momentum: float | None = None, **entry: Any) -> dict[str, Any]:
    """One ``dino`` entry of ``objectives`` (Caron et al. 2021): the teacher's outputs centred and
    sharpened at ``teacher_temperature`` (no warm-up), the student's at ``student_temperature``;
    ``center_momentum`` written when given; ``entry``: ``name``, ``inputs``, ``weight``."""
    params: dict[str, Any] = {"out_dim": out_dim, "student_temperature": student_temperature,
                              "teacher_temperature": teacher_temperature, "warmup_teacher_temperature": teacher_temperature}
    if center_momentum is not None:
        params["center_momentum"] = center_momentum
    return {"kind": "dino", **entry, "params": params}


def cmd_config(out_dim: int = 64, inter_weight: float | None = 1.0, teacher_temperature: float = 0.04,
               student_temperature: float = 0.1, momentum: float = 0.996,
               view: dict[str, Any] | None = None) -> dict[str, Any]:
    """The method as config fragments: the EMA teacher (``momentum`` -> 1), the intra-level
    ``dino`` term (teacher image-level crops -> the student's every crop) and the inter-level
    ``cross_level_dino`` term (weight ``inter_weight``; ``None``: plain DINO, intra only), and,
    when ``view`` (a :func:`multicrop_spec`) is given, the student's multi-crop view."""
    objectives = [dino_objective(out_dim, student_temperature, teacher_temperature, name="intra",
                                 inputs={"student": "student.logits", "teacher": "teacher.global"})]
    if inter_weight is not None:
        objectives.append({"name": "inter", "kind": "cross_level_dino", "weight": inter_weight,
                           "params": {"out_dim": out_dim, "student_temperature": student_temperature,
                                      "target_temperature": teacher_temperature}})
    out: dict[str, Any] = {"teacher": ema_teacher(momentum, 1.0), "objectives": objectives}
    if view is not None:
        out["data"] = {"student_view": {"transforms": [view]}}
    return out


def dino_terms(out_dim: int = 64, teacher_temperature: float = 0.04, student_temperature: float = 0.1) -> list[Term]:
    """Intra-level (teacher -> student) DINO: teacher image-level crops -> student's every crop."""
    return terms_from(cmd_config(out_dim, None, teacher_temperature, student_temperature)["objectives"])


def cmd_terms(out_dim: int = 64, inter_weight: float = 1.0, teacher_temperature: float = 0.04,
              student_temperature: float = 0.1) -> list[Term]:
    """CMD's two terms: intra-level :func:`dino_terms` plus the inter-level ``cross_level_dino``
    between the student's region-level and image-level outputs (weight ``inter_weight``)."""
    return terms_from(cmd_config(out_dim, inter_weight, teacher_temperature, student_temperature)["objectives"])


def cmd_distiller(student: MultiCropNet, *, momentum: float = 0.996, view: BatchView | None = None,
                  inter_weight: float | None = 1.0, out_dim: int = 64) -> Distiller:
    """EMA teacher + multi-crop view + CMD terms (``inter_weight=None``: plain DINO terms)."""
    terms = terms_from(cmd_config(out_dim, inter_weight, momentum=momentum)["objectives"])
    return Distiller(student, EMATeacher(student, momentum=momentum, final_momentum=1.0), terms,
                     student_view=view if view is not None else multicrop_view())


def marker_attention_mass(attention: torch.Tensor, boxes: torch.Tensor, image_hw: Sequence[int]) -> torch.Tensor:
    """Share of the pooling weight that falls on tokens overlapping each image's key patch.

    ``attention [N, P]`` (weights over a ``gh x gw`` token grid, row-major, ``P = gh * gw``,
    each token covering an equal ``H/gh x W/gw`` cell of the ``H x W`` image); ``boxes [N, 3]``
    rows ``(top, left, size)`` of the square key patch in pixels. Returns ``[N]``: the sum of
    the weights of tokens whose cell intersects the patch. For mean pooling this is the
    uniform share, (number of such tokens) / P.
    """
    p = attention.shape[1]
    H, W = (int(s) for s in image_hw)
    gh = round((p * H / W) ** 0.5)
    gw = p // gh if gh else 0
    if gh * gw != p or H % gh or W % gw:
        raise ShapeError(f"marker_attention_mass: {p} tokens do not tile a {H}x{W} image in equal cells.")
    ch, cw = H // gh, W // gw
    rows = torch.arange(gh).repeat_interleave(gw)  # [P]
    cols = torch.arange(gw).repeat(gh)
    top, left, size = (boxes[:, i].long()[:, None] for i in range(3))  # [N, 1]
    hit = (rows * ch < top + size) & ((rows + 1) * ch > top) & (cols * cw < left + size) & ((cols + 1) * cw > left)
    return (attention * hit.to(attention.dtype)).sum(1)


def load_run_state(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The distiller's weights and buffers at the last checkpoint of a finished run
    (``run_dir/checkpoints``): ``teacher.model.*`` (the EMA teacher), ``objectives.<name>.*``
    (e.g. a DINO center), ``student.*``."""
    from safetensors.torch import load_file

    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest.json"
    if not pointer.is_file():
        raise CheckpointError(f"{root} holds no checkpoint to read the teacher from.")
    return load_file(str(root / json.loads(pointer.read_text())["dir"] / "model.safetensors"))


def load_teacher_weights(run_dir: str | Path, model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Load the EMA teacher of a finished run (``run_dir/checkpoints``, keys ``teacher.model.*``)
    into ``model`` (a network of the student's architecture); returns it in eval mode.
    ``state``: the run's :func:`load_run_state`, when the caller has read it already."""
    weights = load_run_state(run_dir) if state is None else state
    prefix = "teacher.model."
    state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"The checkpoint in {Path(run_dir) / 'checkpoints'} has no EMA teacher weights ({prefix}*).")
    model.load_state_dict(state)
    return model.eval()
