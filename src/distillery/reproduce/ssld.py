"""#44 SSLD, in miniature: teacher-only soft labels with extra unlabeled data.

Paper: Cui et al. 2021, arXiv:2103.05959 (abstract: "performs distillation by only driving
prediction of the student model consistent with that of the teacher model ... can be
trained with extra unlabeled data"; MobileNetV3-large 75.2% -> 79%, ResNet50-D 79.1% -> 83%
on ImageNet-1k).

Miniature (MNIST-1D, 4,000 labels, 1D-CNN teacher, MLP students, same seeds for all):
  * ``ce``: cross-entropy on the labels;
  * ``kd_labels``: cross-entropy + KD on the labeled set (the usual framework);
  * ``ssld_labeled``: teacher-only KD on the labeled set (labels unused);
  * ``ssld_unlabeled``: teacher-only KD on the labeled set plus extra unlabeled samples.

Rules, fixed here before any run:
  1. ssld_unlabeled beats ce (mean test accuracy higher by more than its standard error);
  2. ssld_unlabeled beats kd_labels (same rule) - "the last is best";
  3. dropping the label term costs at most 1 point: ssld_labeled >= kd_labels - 0.01.
"""

from __future__ import annotations

from ..recipes.basic import hinton_kd_objectives
from ..recipes.ssld import ssld_config
from . import Claim, Context, Reproduction, better, not_worse, register
from ._common import Settings, compose, run_grid, train_section, train_teacher

SETTINGS = Settings(quick={"unlabeled": 10000, "teacher_epochs": 10, "epochs": 20, "unlabeled_epochs": 6},
                    full={"unlabeled": 40000, "teacher_epochs": 30, "epochs": 60, "unlabeled_epochs": 10})
TEACHER = {"name": "cnn1d", "params": {"channels": [32, 64, 64]}}
STUDENT = {"name": "mlp", "params": {"hidden": [512, 512]}}


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    data = {"dataset": "mnist1d", "params": {"unlabeled": s["unlabeled"]}, "batch_size": 128}

    def train(epochs: int) -> dict:
        return train_section(epochs, warmup=100, eval_every=1)

    teacher = train_teacher(ctx, TEACHER, data, train(s["teacher_epochs"]), precompute=True).section
    base = {"data": data, "student": STUDENT, "train": train(s["epochs"])}
    variants = {
        "ce": compose(base, {"objectives": [{"kind": "ce"}]}),
        "kd_labels": compose(base, {"teacher": teacher, "objectives": hinton_kd_objectives(1.0, kd_weight=0.5, ce_weight=0.5)}),
        "ssld_labeled": compose(base, {"teacher": teacher}, ssld_config(temperature=1.0)),
        "ssld_unlabeled": compose(base, {"teacher": teacher}, ssld_config(temperature=1.0),
                                  {"data": {"unlabeled": True, "batch_size": 256}, "train": train(s["unlabeled_epochs"])}),
    }
    acc = run_grid(ctx, variants)
    return [
        better("Teacher-only distillation with extra unlabeled data beats training on the labels",
               acc["ssld_unlabeled"], acc["ce"], a_name="ssld_unlabeled", b_name="ce", metric="test accuracy"),
        better("Teacher-only distillation with extra unlabeled data beats the usual KD + labels on the labeled set",
               acc["ssld_unlabeled"], acc["kd_labels"], a_name="ssld_unlabeled", b_name="kd_labels", metric="test accuracy"),
        not_worse("Dropping the hard-label term does not hurt (the student needs no manual labels)",
                  acc["ssld_labeled"], acc["kd_labels"], a_name="ssld_labeled", b_name="kd_labels", tolerance=0.01,
                  metric="test accuracy"),
    ]


REPRODUCTION = register(
    Reproduction(
        name="ssld",
        paper="Cui et al. 2021, arXiv:2103.05959",
        method="SSLD: teacher-only soft labels with extra unlabeled data",
        family="self_distillation",
        summary="teacher-only KD on labeled + unlabeled MNIST-1D vs CE and KD+labels",
        run=run,
        recipe="ssld",
    )
)
