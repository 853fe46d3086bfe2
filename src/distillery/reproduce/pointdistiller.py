"""#25 PointDistiller, in miniature: local-graph distillation into a 4x smaller point network.

Paper: Zhang, Dong, Tai & Ma 2023, arXiv:2205.11098 (abstract: local distillation of the
geometric structure of point features "with dynamic graph convolution and reweighted learning
strategy"; "our 4X compressed PointPillars student achieves 2.8 and 3.4 mAP improvements on BEV
and 3D object detection, outperforming its teacher by 0.9 and 1.8 mAP").

Miniature (dataset ``point_shapes``: 8 shapes, 128 surface points per cloud, random stretch,
rotation about the vertical axis and jitter; 100 training clouds per class, 100 test clouds per
class; with ``--quick`` 50 and 50). The teacher is a ``pointnet`` (EdgeConv on xyz, per-point
MLP 64-128, max-pool, head 128), trained once by cross-entropy (seed 0); the students have every
width halved (3.9x fewer weights). Same seeds (initialisation and data order) for all:

  * ``none``: cross-entropy only;
  * ``logit_kd``: cross-entropy + KD on the logits (T = 4, weight 1, the usual Hinton setting);
  * ``local_graph``: cross-entropy + PointDistiller's local-graph term on the per-point features
    ``point_mlp`` (64 queries = the half of the points with the largest teacher feature norm,
    8 neighbours in the teacher's feature space, 32-dim EdgeConv codes with batch norm,
    importance softmax at temperature 0.5, weight 2 as in the authors' code; the teacher-side
    encoder stays at its random initialisation).

Rules, fixed here before any run (test accuracy, means over seeds):
  1. ``local_graph`` beats ``none`` (higher by more than the standard error of the difference);
  2. ``local_graph`` beats ``logit_kd`` (same rule) - the paper's "over previous KD methods";
  3. ``local_graph`` reaches the teacher: its mean is at most 1 point below the teacher's
     accuracy (the paper's student even exceeds its teacher).
"""

from __future__ import annotations

from ..recipes.basic import hinton_kd_objectives
from ..recipes.pointdistiller import pointdistiller_config
from . import Claim, Context, Reproduction, better, not_worse, register
from ._common import Settings, compose, run_grid, train_section, train_teacher

TEACHER = {"name": "pointnet", "params": {"edge_width": 32, "widths": [64, 128], "head_hidden": 128}}
STUDENT = {"name": "pointnet", "params": {"edge_width": 16, "widths": [32, 64], "head_hidden": 64}}
SETTINGS = Settings(quick={"per_class": 50, "teacher_epochs": 20, "epochs": 15},
                    full={"per_class": 100, "teacher_epochs": 40, "epochs": 30})


def _count(model_spec: dict) -> int:
    from ..models import build_model

    return sum(p.numel() for p in build_model(model_spec["name"], (128, 3), 8, **model_spec["params"]).parameters())


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    data = {"dataset": "point_shapes", "params": {"points": 128, "train_per_class": s["per_class"], "test_per_class": s["per_class"]},
            "batch_size": 32}
    teacher = train_teacher(ctx, TEACHER, data, train_section(s["teacher_epochs"], 0.002, warmup=20), precompute=True)
    base = {"data": data, "student": STUDENT, "train": train_section(s["epochs"], 0.002, warmup=20)}
    acc = run_grid(ctx, {
        "none": compose(base, {"objectives": [{"kind": "ce"}]}),
        "logit_kd": compose(base, {"teacher": teacher.section, "objectives": hinton_kd_objectives(4.0)}),
        "local_graph": compose(base, {"teacher": teacher.section}, pointdistiller_config(64, 128, weight=2.0)),
    })
    teacher_acc = [teacher.accuracy]
    sizes = {"teacher_parameters": _count(TEACHER), "student_parameters": _count(STUDENT)}
    claims = [
        better("Local-graph distillation improves the 4x smaller student over training without distillation",
               acc["local_graph"], acc["none"], a_name="local_graph", b_name="none", metric="test accuracy"),
        better("Local-graph distillation beats logit KD",
               acc["local_graph"], acc["logit_kd"], a_name="local_graph", b_name="logit_kd", metric="test accuracy"),
        not_worse("The distilled 4x smaller student reaches its teacher (within 1 point) or exceeds it",
                  acc["local_graph"], teacher_acc, a_name="local_graph", b_name="teacher", tolerance=0.01, metric="test accuracy"),
    ]
    for c in claims:
        c.figures.update(sizes)
    claims[2].figures["logit_kd"] = acc["logit_kd"]
    claims[2].figures["none"] = acc["none"]
    return claims


REPRODUCTION = register(
    Reproduction(
        name="pointdistiller",
        paper="Zhang et al. 2023, arXiv:2205.11098",
        method="PointDistiller: local-graph (kNN, EdgeConv) distillation with importance reweighting",
        family="multi_teacher_feature_contrastive",
        summary="synthetic point-cloud shapes, 4x smaller point network: none vs logit KD vs local-graph KD",
        run=run,
        recipe="pointdistiller",
    )
)
