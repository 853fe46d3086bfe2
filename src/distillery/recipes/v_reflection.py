"""V-Reflection: distilling a box-guided teacher's latents into probes from the model's
hidden states; both modules are training-only.

J. Zhou, Y. Chen, H. Li, Q. Jiang, H. Zhou, Y.-C. Chen, L. Zhang, 2026, "V-Reflection:
Transforming MLLMs from Passive Observers to Active Interrogators", arXiv:2604.03307. "First,
the Box-Guided Compression (BCM) module establishes stable pixel-to-latent targets through
explicit spatial grounding. Next, a Dynamic Autoregressive Compression (DAC) module maps the
model's hidden states into dynamic probes that interrogate the global visual feature map. By
distilling the spatial expertise of the BCM teacher into the DAC student, V-Reflection
internalizes the ability to localize task-critical evidence. During inference, both modules
remain entirely inactive."

Mechanism, as expressed here (:mod:`distillery.models.miniature.grid_vqa`):

* stage 1, the privileged teacher: a model whose BCM compresses the visual map *inside the
  ground-truth box* into a latent and answers from it, trained by cross-entropy, then frozen
  (``grid_vqa_transformer`` with ``mode: box_teacher``; it reads the box, the student never does);
* stage 2, the student: the task loss (``ce``) plus ``reflect`` = ``1 - cos(DAC probe, BCM
  latent)``, where the probe's query is the student's hidden state at the question token and
  its keys/values the student's visual map (:class:`~distillery.objectives.FeatureCosine`
  between ``student.probe`` and ``teacher.bcm``; the abstract does not name the distance, the
  cosine is our choice [inferred]). The probe's gradient reaches the hidden state and the
  visual map, which is how the grounding is internalised;
* at export the probe is removed (:mod:`distillery.taps.training_only`): the deployed student is
  the plain transformer, with the same parameters and FLOPs as one trained without it.

V-Reflection's setting is an MLLM reasoning in latent tokens; here it is a two-layer
transformer answering one question about a 2x2 grid of digits. The miniature (``distillery
reproduce v_reflection``) compares accuracy with and without the distillation and counts the
inference parameters and FLOPs. Config (stage 2, with the teacher fitted in the run):
``configs/v_reflection_digit_grid.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..engine.distiller import Distiller, Term
from ..taps.training_only import export_student
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("v_reflection", "Zhou et al. 2026, V-Reflection, arXiv:2604.03307", "v_reflection_digit_grid.yaml",
           "Training-only probe from hidden states distilled toward box-guided latents; removed at export")
)


def v_reflection_config(weight: float = 1.0) -> dict[str, Any]:
    """Stage 2's ``objectives``: ``ce`` on the answers + ``reflect``: ``1 - cos(student.probe,
    teacher.bcm)`` (add the frozen box teacher; the student is built with ``probe: true``)."""
    return {"objectives": [{"kind": "ce"}, {"name": "reflect", "kind": "cosine", "weight": weight,
                                            "inputs": {"student": "student.probe", "teacher": "teacher.bcm"}}]}


def reflection_terms(weight: float = 1.0) -> list[Term]:
    """``ce`` on the answers + ``reflect``: ``1 - cos(student.probe, teacher.bcm)``."""
    return terms_from(v_reflection_config(weight)["objectives"])


def v_reflection_distiller(student: nn.Module, box_teacher: nn.Module, weight: float = 1.0) -> Distiller:
    """``student``: ``grid_vqa_transformer`` with ``probe=True``; ``box_teacher``: a trained
    ``grid_vqa_transformer`` with ``mode="box_teacher"`` (frozen here)."""
    return Distiller(student, FrozenTeacher(box_teacher), reflection_terms(weight))


def export(student: nn.Module, path: str | Path) -> dict[str, Any]:
    """Write the deployable student (training-only modules removed) to ``path``; it loads
    into the same architecture built with ``probe=False``."""
    return export_student(student, path)
