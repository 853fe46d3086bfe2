"""PointDistiller: local-structure distillation over k-nearest-neighbour graphs of point features.

Zhang, Dong, Tai & Ma 2023, "PointDistiller: Structured Knowledge Distillation Towards
Efficient and Compact 3D Detection" (CVPR), arXiv:2205.11098. "PointDistiller includes local
distillation which extracts and distills the local geometric structure of point clouds with
dynamic graph convolution and reweighted learning strategy, which highlights student learning on
the crucial points or voxels ... our 4X compressed PointPillars student achieves 2.8 and 3.4 mAP
improvements on BEV and 3D object detection, outperforming its teacher by 0.9 and 1.8 mAP."

The recipe is the task loss plus one term, ``local_graph_kd``
(:class:`~distillery.objectives.local_graph.LocalGraphKD`): the most important points (by the
teacher's feature norm) are the queries, their kNN graph is built in the teacher's feature space
at every step, each edge is encoded EdgeConv-style on both sides, and the codes are matched by
an importance-weighted MSE. The kNN graph, edge features and importance weights are in
:mod:`distillery.objectives.knn_graph`. The miniature (``distillery reproduce pointdistiller``) classifies
synthetic point-cloud shapes with a point network and a student with half its widths (about 4x
fewer weights): no distillation vs logit KD vs local-graph KD. Config:
``configs/pointdistiller_points.yaml``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..engine.distiller import Distiller, Term
from ..teachers import FrozenTeacher
from . import Recipe, register_recipe
from ._fragments import terms_from

RECIPE = register_recipe(
    Recipe("pointdistiller", "Zhang et al. 2023, PointDistiller, arXiv:2205.11098", "pointdistiller_points.yaml",
           "Local-graph (kNN, EdgeConv) feature distillation with importance reweighting")
)

#: The miniature's settings of the local-graph term (fixed before any run): queries = the half
#: of the 128 points with the largest teacher feature norm, 8 neighbours, 32-dim edge codes,
#: importance softmax at temperature 0.5 over mean-normalised norms.
LOCAL_GRAPH = {"k": 8, "num_points": 64, "embed_dim": 32, "temperature": 0.5}


def local_graph_objective(student_dim: int, teacher_dim: int, *, tap: str = "point_mlp", weight: float = 2.0,
                          **params: Any) -> dict[str, Any]:
    """The ``local_graph`` term on the per-point features at ``tap`` (``[B, N, C]`` on both
    sides), as one ``objectives`` entry.

    ``weight`` 2 is the authors' (their code doubles the mean weighted MSE).

    ``params`` override :data:`LOCAL_GRAPH` (``k``, ``num_points``, ``embed_dim``, ``temperature``,
    ``importance``, ``edge``, ``train_teacher_encoder``).
    """
    return {"name": "local_graph", "kind": "local_graph_kd", "inputs": {"student": f"student.{tap}", "teacher": f"teacher.{tap}"},
            "params": {"student_dim": student_dim, "teacher_dim": teacher_dim, **LOCAL_GRAPH, **params}, "weight": weight}


def pointdistiller_config(student_dim: int, teacher_dim: int, weight: float = 2.0, **params: Any) -> dict[str, Any]:
    """The method's ``objectives``: cross-entropy + :func:`local_graph_objective` (add a frozen
    ``teacher`` with the same ``tap`` paths)."""
    return {"objectives": [{"kind": "ce"}, local_graph_objective(student_dim, teacher_dim, weight=weight, **params)]}


def local_graph_term(student_dim: int, teacher_dim: int, *, tap: str = "point_mlp", weight: float = 2.0, **params) -> Term:
    """The ``local_graph`` term of :func:`local_graph_objective`."""
    return terms_from([local_graph_objective(student_dim, teacher_dim, tap=tap, weight=weight, **params)])[0]


def pointdistiller_distiller(student: nn.Module, teacher: nn.Module, student_dim: int, teacher_dim: int, weight: float = 2.0, **params) -> Distiller:
    """Cross-entropy plus the local-graph term toward a frozen ``teacher`` (same ``tap`` paths)."""
    terms = terms_from(pointdistiller_config(student_dim, teacher_dim, weight, **params)["objectives"])
    return Distiller(student, FrozenTeacher(teacher), terms)
