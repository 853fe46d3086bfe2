"""PPCL: prune contiguous redundant block intervals, recover by distillation at their boundaries.

Ma, Peng, Zhu, Xie, Chen, Lu 2025, "Pluggable Pruning with Contiguous Layer Distillation for
Diffusion Transformers", arXiv:2511.16156: "we identify redundant layer intervals through a
linear probing mechanism combined with the first-order differential trend analysis of
similarity metrics. Subsequently, we propose a plug-and-play teacher-student alternating
distillation scheme ... PPCL achieves a 50% reduction in parameter count compared to the full
model, with less than 3% degradation in key objective metrics."

The method in four steps, each a small function here (the abstract gives no formulas; the
reading is stated in each docstring and in docs/methods/ppcl.md):

1. :func:`analyze`: hidden states at the block boundaries of the trained (teacher) network
   on calibration data, their CKA matrix, the first-order trend of adjacent similarity and the
   linear probes (:mod:`distillery.evaluation.layer_similarity`);
2. :func:`select_blocks`: the contiguous intervals to remove for a block budget
   (:func:`~distillery.evaluation.layer_similarity.find_redundant_intervals`);
3. :func:`prune`: the student, a copy of the teacher without those blocks
   (:func:`distillery.models.surgery.remove_blocks`);
4. :func:`ppcl_terms`: the recovery objective: cross-entropy + logit KD + feature MSE at
   every interval boundary (the student's block before the gap vs the teacher's block at the
   gap's end, both tapped) + :class:`~distillery.objectives.segment_replay.SegmentReplay` per
   interval (the absorbing student block fed the *teacher's* hidden state: the alternating
   teacher-student forward).

Config: ``configs/ppcl_digits.yaml`` (the recovery stage with fixed intervals: steps 1-2 need
the trained teacher, and the replay term a module reference, so the reproduction
``distillery reproduce ppcl`` drives the whole pipeline through this module).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..engine.distiller import Distiller, Term
from ..errors import ConfigError
from ..evaluation.layer_similarity import (
    LayerProfile,
    boundary_features,
    find_redundant_intervals,
    similarity_profile,
)
from ..models import surgery
from ..objectives.segment_replay import SegmentReplay
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("ppcl", "Ma et al. 2025, PPCL, arXiv:2511.16156", "ppcl_digits.yaml",
           "Prune contiguous redundant block intervals (CKA trend + linear probes), recover by boundary distillation")
)


def analyze(teacher: nn.Module, x: torch.Tensor, container: str = "blocks") -> LayerProfile:
    """Similarity profile of ``teacher``'s block stack on calibration inputs ``x`` ``[N, ...]``."""
    return similarity_profile(boundary_features(teacher, x, container))


def select_blocks(profile: LayerProfile, ratio: float = 0.5, max_len: int | None = None) -> list[int]:
    """Block indices to remove: ``round(ratio * L)`` blocks in contiguous low-cost intervals."""
    if not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"ppcl: the pruning ratio must be in [0, 1), got {ratio!r}.")
    k = int(round(float(ratio) * profile.num_blocks))
    return [i for a, b in find_redundant_intervals(profile, k, max_len) for i in range(a, b)]


def prune(teacher: nn.Module, removed: Sequence[int], container: str = "blocks") -> nn.Module:
    """The student: a trainable copy of ``teacher`` without the blocks ``removed``."""
    student = surgery.remove_blocks(teacher, container, removed)
    for p in student.parameters():
        p.requires_grad_(True)
    if hasattr(student, "removed"):  # residual_mlp keeps its pruning record
        student.removed = sorted(int(i) for i in removed)
    return student.train()


def boundary_pairs(num_blocks: int, removed: Sequence[int], container: str = "blocks", stem: str = "stem") -> list[tuple[str, str]]:
    """``[(student_signal, teacher_signal)]``, one per removed interval ``[a, b)``.

    The student's state just before the gap (its block ``a - 1``, renumbered; ``stem`` when
    ``a == 0``) must equal the teacher's state at the gap's end (teacher block ``b - 1``). An
    interval reaching the end of the stack is compared at the teacher's last block.
    """
    index = surgery.block_index_map(num_blocks, removed)
    pairs = []
    for a, b in surgery.intervals(removed):
        s = stem if a == 0 else f"{container}.{index[a - 1]}"
        pairs.append((s, f"{container}.{b - 1}"))
    return pairs


def replay_pairs(num_blocks: int, removed: Sequence[int], container: str = "blocks") -> list[tuple[int, str, str]]:
    """``[(student_block, teacher_in, teacher_out)]`` per removed interval ``[a, b)``: the kept
    block that absorbs the interval (``a - 1``; the block ``b`` after it when ``a == 0``),
    renumbered, with the teacher signals it is replayed between."""
    index = surgery.block_index_map(num_blocks, removed)
    out = []
    for a, b in surgery.intervals(removed):
        if a > 0:
            out.append((index[a - 1], f"{container}.{a - 1}:input", f"{container}.{b - 1}"))
        elif b < num_blocks:
            out.append((index[b], f"{container}.0:input", f"{container}.{b}"))
    return out


def ppcl_objectives(
    num_blocks: int,
    removed: Sequence[int],
    *,
    container: str = "blocks",
    stem: str = "stem",
    ce: float = 1.0,
    kd: float = 1.0,
    boundary: float = 1.0,
    temperature: float = 1.0,
) -> list[dict[str, Any]]:
    """The recovery terms a config can state, as ``objectives`` (weights of 0 leave a term
    out): ``ce``, ``kd`` (T = ``temperature``) and ``boundary_<i>`` (feature MSE at interval
    ``i``'s boundary, :func:`boundary_pairs`). The interval replay needs the student's own
    block, so :func:`ppcl_terms` adds it in Python."""
    objectives: list[dict[str, Any]] = []
    if ce:
        objectives.append({"kind": "ce", "weight": ce})
    if kd:
        objectives.append({"kind": "kd", "params": {"temperature": temperature}, "weight": kd})
    if boundary:
        for i, (s, t) in enumerate(boundary_pairs(num_blocks, removed, container, stem)):
            objectives.append({"kind": "mse", "name": f"boundary_{i}", "weight": boundary,
                               "inputs": {"student": f"student.{s}", "teacher": f"teacher.{t}"}})
    return objectives


def ppcl_terms(
    student: nn.Module,
    num_blocks: int,
    removed: Sequence[int],
    *,
    container: str = "blocks",
    stem: str = "stem",
    ce: float = 1.0,
    kd: float = 1.0,
    boundary: float = 1.0,
    replay: float = 1.0,
    temperature: float = 1.0,
) -> list[Term]:
    """The recovery terms (weights of 0 leave a term out): ``ce``, ``kd`` (T = ``temperature``),
    ``boundary_<i>`` (feature MSE at interval ``i``'s boundary; these three from
    :func:`ppcl_objectives`) and ``replay_<i>``."""
    objectives = ppcl_objectives(num_blocks, removed, container=container, stem=stem, ce=ce, kd=kd, boundary=boundary,
                                 temperature=temperature)
    terms: list[Term] = terms_from(objectives) if objectives else []
    if replay:
        stack = surgery.get_module(student, container)
        for i, (j, t_in, t_out) in enumerate(replay_pairs(num_blocks, removed, container)):
            terms.append(Term(f"replay_{i}", SegmentReplay(stack[j]), weight=replay,
                              inputs={"teacher_in": f"teacher.{t_in}", "teacher_out": f"teacher.{t_out}"}))
    if not terms:
        raise ConfigError("ppcl_terms: every weight is 0; nothing to train.")
    return terms


def ppcl_distiller(teacher: nn.Module, removed: Sequence[int], container: str = "blocks", **weights) -> Distiller:
    """Prune ``teacher`` and wrap the student in a distiller with :func:`ppcl_terms`.

    The teacher is frozen as it is (a deep copy is pruned, so the two share no parameter).
    """
    num_blocks = len(surgery.get_module(teacher, container))
    student = prune(teacher, removed, container)
    frozen = FrozenTeacher(copy.deepcopy(teacher))
    return Distiller(student, frozen, ppcl_terms(student, num_blocks, removed, container=container, **weights))
