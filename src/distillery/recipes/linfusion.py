"""LinFusion: swap softmax attention for normalised non-causal linear attention, then distill.

Liu et al. 2024, "LinFusion: 1 GPU, 1 Minute, 16K Image", arXiv:2409.02097: "we
identify two key features-attention normalization and non-causal inference ... we introduce a
generalized linear attention paradigm ... we initialize our models and distill the knowledge
from pre-trained StableDiffusion (SD). We find that the distilled model, termed LinFusion,
achieves performance on par with or superior to the original SD after only modest training,
while significantly reducing time and memory complexity."

How distillery expresses it:

* model surgery: :func:`linfusion_student` deep-copies the softmax model and swaps every
  attention for :class:`~distillery.models.linear_attention.LinearAttention` initialised from it
  (:func:`distillery.models.surgery.swap_modules`); the config form is the ``linear_vit`` model with
  ``inherit_teacher_weights: true`` under a frozen ``vit`` teacher;
* the terms (:func:`linfusion_terms`, as config fragments :func:`linfusion_config`): the task loss, the teacher's outputs (KD on logits; the
  paper matches the noise prediction) and every layer's attention output (feature MSE on the
  tapped ``blocks.i.attn`` of student and teacher, as the paper's feature loss);
* :func:`token_scaling` measures what the swap buys: time of a forward+backward pass and the
  activation memory kept for backward of one attention layer as the number of tokens grows.

Config: ``configs/linfusion_digits.yaml``. Claim check: ``distillery reproduce linfusion``.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from ..models.linear_attention import LinearAttention, linearize_attention
from ..models.reference import Attention
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("linfusion", "Liu et al. 2024, LinFusion, arXiv:2409.02097", "linfusion_digits.yaml",
           "Softmax -> generalized linear attention (initialised from the teacher), output + layer-feature distillation")
)


def linfusion_student(teacher: nn.Module, mid_dim: int | None = None) -> nn.Module:
    """A trainable copy of ``teacher`` with every reference ``Attention`` made linear."""
    student = copy.deepcopy(teacher)
    if not linearize_attention(student, mid_dim):
        raise ConfigError("linfusion_student: the teacher has no reference Attention module to swap.")
    for p in student.parameters():
        p.requires_grad_(True)
    return student.train()


def linfusion_config(depth: int, vit: Mapping[str, Any] | None = None, *, ce: float = 1.0, kd: float = 1.0, feature: float = 1.0,
                     temperature: float = 1.0, attention_path: str = "blocks.{i}.attn") -> dict[str, Any]:
    """The method as config fragments: ``objectives`` ``ce``, ``kd`` (logits) and ``feat_<i>``
    (MSE of attention outputs ``[B, N, dim]``) for the ``depth`` blocks, a weight of 0 leaving
    its term out; with ``vit`` (the teacher's ``vit`` params) also the student, a ``linear_vit``
    of that shape initialised from the teacher's weights (``inherit_teacher_weights``). Add a
    frozen ``vit`` teacher."""
    objectives: list[dict[str, Any]] = []
    if ce:
        objectives.append({"kind": "ce", "weight": ce})
    if kd:
        objectives.append({"kind": "kd", "params": {"temperature": temperature}, "weight": kd})
    if feature:
        for i in range(depth):
            path = attention_path.format(i=i)
            objectives.append({"kind": "mse", "name": f"feat_{i}", "weight": feature,
                               "inputs": {"student": f"student.{path}", "teacher": f"teacher.{path}"}})
    if not objectives:
        raise ConfigError("linfusion_terms: every weight is 0; nothing to train.")
    out: dict[str, Any] = {"objectives": objectives}
    if vit is not None:
        out["student"] = {"name": "linear_vit", "params": dict(vit, inherit_teacher_weights=True)}
    return out


def linfusion_terms(depth: int, *, ce: float = 1.0, kd: float = 1.0, feature: float = 1.0, temperature: float = 1.0,
                    attention_path: str = "blocks.{i}.attn") -> list[Term]:
    """``ce``, ``kd`` (logits) and ``feat_<i>`` (MSE of attention outputs ``[B, N, dim]``) for
    the ``depth`` blocks; a weight of 0 leaves its term out (:func:`linfusion_config`)."""
    cfg = linfusion_config(depth, ce=ce, kd=kd, feature=feature, temperature=temperature, attention_path=attention_path)
    return terms_from(cfg["objectives"])


def linfusion_distiller(teacher: nn.Module, depth: int, mid_dim: int | None = None, **weights) -> Distiller:
    """Swap the attentions of a copy of ``teacher`` and distill it from the frozen original."""
    student = linfusion_student(teacher, mid_dim)
    return Distiller(student, FrozenTeacher(copy.deepcopy(teacher)), linfusion_terms(depth, **weights))


def activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors a forward of ``module`` on ``x`` saves for backward (distinct
    storages, the input excluded) plus the output: the activation memory of one layer."""
    seen: dict[int, int] = {}
    skip = x.untyped_storage().data_ptr()

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() != skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    seen[out.untyped_storage().data_ptr()] = out.untyped_storage().nbytes()
    return int(sum(seen.values()))


def time_forward_backward(module: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of ``module(x).sum().backward()`` over ``repeats`` runs (after one warm-up)."""
    times = []
    for i in range(repeats + 1):
        x_ = x.detach().requires_grad_(True)
        t0 = time.perf_counter()
        module(x_).sum().backward()
        if i:
            times.append(time.perf_counter() - t0)
    module.zero_grad(set_to_none=True)
    return statistics.median(times)


def token_scaling(tokens: Sequence[int] = (128, 512, 2048), dim: int = 64, heads: int = 4, batch: int = 1,
                  repeats: int = 5, seed: int = 0) -> dict[str, dict[str, list[float]]]:
    """Cost of one softmax and one linear attention layer (the same weights) vs token count.

    Returns ``{"softmax": {"tokens", "time_s", "bytes"}, "linear": {...}}`` with one entry per
    token count (inputs ``[batch, N, dim]``, float32, forward + backward, current device CPU).
    """
    torch.manual_seed(seed)
    softmax = Attention(dim, heads)
    linear = LinearAttention.from_attention(softmax)
    out: dict[str, dict[str, list[float]]] = {}
    for name, module in (("softmax", softmax), ("linear", linear)):
        rec: dict[str, list[float]] = {"tokens": [], "time_s": [], "bytes": []}
        for n in tokens:
            x = torch.randn(batch, int(n), dim)
            rec["tokens"].append(int(n))
            rec["bytes"].append(float(activation_bytes(module, x.requires_grad_(True))))
            rec["time_s"].append(time_forward_backward(module, x, repeats))
        out[name] = rec
    return out
