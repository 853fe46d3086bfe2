"""#57 UniDistill, in miniature: sparse foreground distillation from a clean-view BEV teacher.

Paper: Zhou, Liu, Hu, Zhou & Ma 2023, arXiv:2303.15083 (abstract: teacher and student features
are projected to BEV; "three distillation losses are calculated to sparsely align the foreground
features"; they "filter the effect of misaligned background information and balance between
objects of different sizes"; "improves the mAP and NDS of student detectors by 2.0%~3.2%").

Miniature (dataset ``bev_rectangles``: 1 to 3 rectangles of 2 to 6 cells a side on a 16x16 grid;
1000 training scenes, 500 test scenes; ``--quick``: 600 and 300). The teacher sees the clean
occupancy (``x_clean``); the student a degraded view of the same scene (each object cell kept
with probability 0.5, background clutter 5%, Gaussian noise 0.3). Both are ``bev_detector`` s
(4 3x3 conv layers of 16 channels, a centre-heatmap head and a count head), trained with
CenterNet's focal loss (+ 0.1 x counting CE). The teacher is trained once (seed 0); the students
use the same seeds for all variants:

  * ``none``: the detection loss only;
  * ``dense``: + whole-grid feature imitation (L1 over every cell of the BEV feature map, weight 10,
    the weight of UniDistill's feature term): distillation without background filtering;
  * ``unidistill``: + UniDistill's three foreground losses at the authors' weights (feature 10,
    relation 5, response 1).

Metric: centre-detection AP on the test scenes (heatmap peaks after 3x3 max-pooling, matched to
object centres within 1.5 cells; all-points interpolated AP).

Rules, fixed here before any run (means over seeds):
  1. ``unidistill``'s AP is higher than ``none``'s by more than the standard error of the
     difference - "the losses improve the student";
  2. ``unidistill``'s AP is higher than ``dense``'s (same rule) - the sparse foreground losses
     beat imitating the whole grid, background included.
"""

from __future__ import annotations

from pathlib import Path

from ..recipes.unidistill import detection_objectives, unidistill_config
from . import Claim, Context, Reproduction, better, register
from ._common import (
    Settings,
    compose,
    load_student,
    run_grid,
    train_section,
    train_teacher,
)

MODEL = {"name": "bev_detector", "params": {"width": 16, "depth": 4}}
TASK = detection_objectives(count_weight=0.1)
DENSE = [{"name": "dense_feature", "kind": "smooth_l1", "params": {"beta": 0.0}, "weight": 10.0,
          "inputs": {"student": "student.features", "teacher": "teacher.features"}}]
SETTINGS = Settings(quick={"n_train": 600, "n_test": 300, "teacher_epochs": 20, "epochs": 15},
                    full={"n_train": 1000, "n_test": 500, "teacher_epochs": 40, "epochs": 30})


def _ap(run_dir: Path, splits, view: str) -> float:
    from ..recipes.unidistill import heatmap_ap

    return heatmap_ap(load_student(run_dir, MODEL, splits.input_shape, splits.num_classes), splits.test, view=view)


def run(ctx: Context) -> list[Claim]:
    from ..data import load_dataset

    s = SETTINGS(ctx.quick)
    params = {"size": 16, "n_train": s["n_train"], "n_test": s["n_test"]}
    data = {"dataset": "bev_rectangles", "params": params, "batch_size": 64}
    splits = load_dataset("bev_rectangles", **params)

    def train(epochs: int) -> dict:
        return train_section(epochs, 0.003, warmup=20)

    teacher = train_teacher(ctx, MODEL, dict(data, student_view="x_clean", eval_view="x_clean"), train(s["teacher_epochs"]),
                            objectives=TASK, view="x_clean")
    teacher_ap = _ap(teacher.run_dir, splits, "x_clean")
    base = {"data": data, "student": MODEL, "train": train(s["epochs"])}
    variants = {
        "none": compose(base, {"objectives": TASK}),
        "dense": compose(base, {"teacher": teacher.section, "objectives": TASK + DENSE}),
        "unidistill": compose(base, {"teacher": teacher.section}, unidistill_config()),
    }

    def measure(run) -> float:
        value = _ap(run.dir, splits, "x")
        ctx.log(f"    {run.variant} seed {run.seed}: heatmap AP {value:.4f}")
        return value

    ap = run_grid(ctx, variants, measure)
    claims = [
        better("The three foreground distillation losses improve the student detector",
               ap["unidistill"], ap["none"], a_name="unidistill", b_name="none", metric="heatmap AP"),
        better("Sparse foreground distillation beats imitating the whole BEV grid (background included)",
               ap["unidistill"], ap["dense"], a_name="unidistill", b_name="dense", metric="heatmap AP"),
    ]
    for c in claims:
        c.figures["teacher_ap_clean_view"] = teacher_ap
    return claims


REPRODUCTION = register(
    Reproduction(
        name="unidistill",
        paper="Zhou et al. 2023, arXiv:2303.15083",
        method="UniDistill: sparse foreground feature/relation/response distillation on a BEV grid",
        family="multi_teacher_feature_contrastive",
        summary="BEV rectangles, clean-view teacher, noisy-view student: heatmap AP with vs without the 3 losses",
        run=run,
        recipe="unidistill",
    )
)
