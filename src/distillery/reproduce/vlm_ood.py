"""#21 Large-VLM -> small model with open-vocabulary OOD generalisation, in miniature.

Paper: Li et al. 2023, "Distilling Large Vision-Language Model with Out-of-Distribution
Generalizability", arXiv:2307.03135 (abstract: imitating the teacher's visual representation
space and "promoting better coherence in vision-language alignment with the teacher" give
"significant improvements in zero-shot and few-shot student performance on open-vocabulary
out-of-distribution classification"; no headline number in the abstract).

Miniature (digits; a "caption" is a 14-d class one-hot plus N(0, 0.1^2) noise; the prompt of
class c is the noise-free one-hot e_c; the same seeds for both arms):

  1. teacher: a dual encoder (two MLP towers, hidden 256, embedding 64) trained with CLIP's
     symmetric InfoNCE (tau 0.07) on image-caption pairs of all ten classes, 40 epochs
     (quick: 20), once (seed 0): the "large VLM", shared by every student;
  2. students: an image-only MLP (hidden 64) + a linear projector into the teacher's
     64-d space + a text head holding the teacher's text embeddings of classes 0-4,
     distilled on the training images of classes 0-4 only, 40 epochs (quick: 20),
     lr 1e-3, batch 64, by
       * ``feature_kd``: ``1 - cos(student image, teacher image)`` (plain feature KD);
       * ``feature_kd_align``: the same + KL between the teacher's and the student's
         similarity distributions over the teacher's text bank of classes 0-4 (logit scale
         1/0.07, KD temperature 1, weight 1).

Measured on the test images of the unseen classes 5-9: 5-way zero-shot accuracy (nearest
teacher text embedding among classes 5-9, the open-vocabulary OOD task) and a 5-shot linear
probe on the student's embeddings (few-shot); for context also 10-way zero-shot on unseen
images and 5-way zero-shot on the seen classes, and the teacher's own figures.

Rules, fixed here before any run:
  1. ``feature_kd_align``'s unseen-class zero-shot accuracy beats ``feature_kd``'s (mean over
     seeds higher by more than the standard error of the difference);
  2. the same for the unseen-class 5-shot probe accuracy.

Seeds: 5 by default since issue 15 (each student trains in seconds); the rules are unchanged.

Diagnosis (``distillery reproduce vlm_ood --diagnose``, issue 15): the same teacher and the
same students at 40, 80 and 160 distillation epochs (quick: 10, 20), 5-way zero-shot accuracy
on the unseen classes; arms ``feature_kd`` and ``feature_kd_align`` (the claim), the authors'
code's comparison with their ``L-cls`` (cross-entropy with the label over the seen-class text
bank) in both arms (``feature_kd_cls`` vs ``feature_kd_cls_align``), and ``cls_only`` (the
student on labels alone, no image imitation). The teacher's entropy over the seen-class text
bank on the seen training images is measured and stated in the checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..data import load_dataset
from ..evaluation.retrieval import few_shot_probe, zero_shot_accuracy
from ..recipes._fragments import frozen_teacher
from ..recipes._itc import clip_objectives
from ..recipes.vlm_ood import vlm_ood_config
from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import (
    Settings,
    TrainedTeacher,
    by_metric,
    compose,
    load_student,
    run_grid,
    train_teacher,
)
from ._dual import fast_train
from .diagnosis import Diagnosis, PaperEffect, ScalePoint, _sign, gap

SEEN, UNSEEN = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
TEACHER = {"image_dim": 64, "text_dim": 14, "hidden": [256], "embed_dim": 64}
STUDENT = {"name": "zero_shot_student", "params": {"image_dim": 64, "hidden": [64], "embed_dim": 64, "num_prototypes": len(SEEN)}}
DATA = {"dataset": "attribute_digits", "batch_size": 64, "params": {"captions": "class", "negatives": False}}
SETTINGS = Settings(quick={"teacher_epochs": 20, "epochs": 20, "sizes": [10, 20]},
                    full={"teacher_epochs": 40, "epochs": 40, "sizes": [40, 80, 160]})

#: the students: ``objectives`` of each arm (:func:`~distillery.recipes.vlm_ood.vlm_ood_config`)
ARMS: dict[str, dict[str, Any]] = {
    "feature_kd": vlm_ood_config(align_weight=0.0),
    "feature_kd_align": vlm_ood_config(align_weight=1.0, temperature=1.0),
    # the authors' code keeps L-cls (label cross-entropy over the text bank) on and adds L-vlalign to it
    "feature_kd_cls": vlm_ood_config(align_weight=0.0, cls_weight=1.0),
    "feature_kd_cls_align": vlm_ood_config(align_weight=1.0, temperature=1.0, cls_weight=1.0),
    "cls_only": vlm_ood_config(feature_weight=0.0, align_weight=0.0, cls_weight=1.0),
}
CLAIM_ARMS = ["feature_kd", "feature_kd_align"]


@torch.no_grad()
def evaluate(image: torch.Tensor, bank: torch.Tensor, splits: Any, probe_image: torch.Tensor, seed: int) -> dict[str, float]:
    """Zero-shot and few-shot figures of image embeddings ``image`` ``[N_test, E]`` (all ten
    classes) given the teacher's text bank ``[10, E]``; ``probe_image``: training-set
    embeddings ``[N_train, E]`` for the 5-shot probe on the unseen classes."""
    y = splits.test.y
    unseen, seen = torch.isin(y, torch.tensor(UNSEEN)), torch.isin(y, torch.tensor(SEEN))
    y_tr = splits.train.y
    tr_unseen = torch.isin(y_tr, torch.tensor(UNSEEN))
    return {
        "zero_shot_unseen": zero_shot_accuracy(image[unseen], bank[UNSEEN], y[unseen] - UNSEEN[0]),
        "zero_shot_unseen_10way": zero_shot_accuracy(image[unseen], bank, y[unseen]),
        "zero_shot_seen": zero_shot_accuracy(image[seen], bank[SEEN], y[seen]),
        "few_shot_unseen": few_shot_probe(probe_image[tr_unseen], y_tr[tr_unseen], image[unseen], y[unseen], shots=5, seed=seed),
    }


def teacher_stage(ctx: Context, epochs: int) -> dict[str, Any]:
    """Train the "large VLM" once (seed 0, all ten classes, CLIP's InfoNCE); returns the
    dataset, the trained run, its text bank ``[10, E]``, its own figures and ``entropy``: the
    mean entropy (nats) of its similarity distribution over the seen-class text bank (logit
    scale 1/0.07) on the seen training images, the signal the alignment term distils."""
    full = load_dataset("attribute_digits", captions="class", negatives=False)
    trained = train_teacher(ctx, {"name": "dual_encoder", "params": TEACHER}, DATA, fast_train(epochs),
                            objectives=clip_objectives(0.07))
    teacher = load_student(trained.run_dir, {"name": "zero_shot_dual_encoder", "params": TEACHER}, full.input_shape, 10)
    with torch.no_grad():
        bank = teacher.text_bank()
        scores = evaluate(teacher.encode_image(full.test.x[:, :64]), bank, full, teacher.encode_image(full.train.x[:, :64]), 0)
        seen = torch.isin(full.train.y, torch.tensor(SEEN))
        logits = teacher.scale * F.normalize(teacher.encode_image(full.train.x[seen, :64]), dim=1) @ F.normalize(bank[SEEN], dim=1).T
        p = logits.softmax(1)
        entropy = float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())
        label_mass = float(p.gather(1, full.train.y[seen][:, None]).mean())
    ctx.log("    teacher: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            + f"; entropy over the seen text bank {entropy:.3f} nats (max {math.log(len(SEEN)):.3f}), p(label) {label_mass:.3f}")
    return {"full": full, "trained": trained, "bank": bank, "scores": scores, "entropy": entropy, "label_mass": label_mass}


def distil_arms(ctx: Context, trained: TrainedTeacher, bank: torch.Tensor, full: Any, epochs: int,
                arms: Sequence[str], tag: str = "") -> dict[str, dict[str, list[float]]]:
    """Distil the students ``arms`` (names of :data:`ARMS`) from the trained teacher on the seen
    classes for ``epochs`` epochs, every seed of ``ctx``; returns ``{arm: {metric: [per seed]}}``
    (:func:`evaluate`). ``tag``: a folder prefix for the runs (one per size in the diagnosis)."""
    base = {"data": compose(DATA, {"params": {"classes": SEEN}}), "student": STUDENT, "train": fast_train(epochs),
            "teacher": frozen_teacher({"name": "zero_shot_dual_encoder", "checkpoint": trained.weights,
                                       "params": dict(TEACHER, prompt_classes=SEEN)})}
    variants = {f"{tag}{a}": compose(base, ARMS[a]) for a in arms}

    def measure(run) -> dict[str, float]:
        student = load_student(run.dir, STUDENT, full.input_shape, 10)
        with torch.no_grad():
            result = evaluate(student.embed(full.test.x), bank, full, student.embed(full.train.x), run.seed)
        ctx.log(f"    {run.variant} seed {run.seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result

    scores = by_metric(run_grid(ctx, variants, measure))
    return {a: scores[f"{tag}{a}"] for a in arms}


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    stage = teacher_stage(ctx, s["teacher_epochs"])
    # the students are distilled on the seen classes; the teacher's text bank there holds their prompts only
    scores = distil_arms(ctx, stage["trained"], stage["bank"], stage["full"], s["epochs"], CLAIM_ARMS)
    claims = [
        better("The vision-language alignment term improves zero-shot accuracy on classes the student was never distilled on",
               scores["feature_kd_align"]["zero_shot_unseen"], scores["feature_kd"]["zero_shot_unseen"],
               a_name="feature_kd_align", b_name="feature_kd",
               metric="5-way zero-shot accuracy on unseen classes 5-9 (teacher text embeddings as prototypes)"),
        better("The vision-language alignment term improves few-shot accuracy on the unseen classes",
               scores["feature_kd_align"]["few_shot_unseen"], scores["feature_kd"]["few_shot_unseen"],
               a_name="feature_kd_align", b_name="feature_kd",
               metric="5-shot linear-probe accuracy on unseen classes 5-9 (student embeddings)"),
    ]
    for claim in claims:
        claim.figures.update({f"{a} {k}": mean_std(v) for a in CLAIM_ARMS for k, v in scores[a].items()})
        claim.figures.update({f"teacher {k}": v for k, v in stage["scores"].items()})
        claim.figures.update({"teacher entropy over the seen text bank (nats)": stage["entropy"],
                              "teacher p(label) over the seen text bank": stage["label_mass"]})
        claim.figures.update({k: v for k, v in s.items() if k != "sizes"})
    return claims


def diagnose(ctx: Context) -> Diagnosis:
    """Premise, power and scale of claim 1 (see the module docstring): the students at the
    reproduction's 40 distillation epochs and at 80 and 160, the teacher trained once."""
    s = SETTINGS(ctx.quick)
    stage = teacher_stage(ctx, s["teacher_epochs"])
    points, few_shot, ten_way = [], [], []
    for epochs in s["sizes"]:
        scores = distil_arms(ctx, stage["trained"], stage["bank"], stage["full"], epochs, list(ARMS), tag=f"epochs{epochs}/")
        arms = {"teacher": [stage["scores"]["zero_shot_unseen"]]}
        arms.update({a: scores[a]["zero_shot_unseen"] for a in ARMS})
        points.append(ScalePoint(f"{epochs} epochs", float(epochs), arms))
        # claim 2's metric and the 10-way figure, at the same sizes (the diagnosis holds one metric)
        g = gap(scores["feature_kd_align"]["few_shot_unseen"], scores["feature_kd"]["few_shot_unseen"], True)
        few_shot.append(f"{epochs} epochs: {g['difference']:+.4f} +- {g['standard_error']:.4f} "
                        f"(sign {_sign(g['difference'], g['standard_error']):+d})")
        ten_way.append(f"{epochs} epochs: feature_kd_align {mean_std(scores['feature_kd_align']['zero_shot_unseen_10way'])['mean']:.3f}, "
                       f"feature_kd {mean_std(scores['feature_kd']['zero_shot_unseen_10way'])['mean']:.3f}")
    entropy, mass = stage["entropy"], stage["label_mass"]
    return Diagnosis(
        metric="5-way zero-shot accuracy on unseen classes 5-9", higher=True, size_name="distillation epochs",
        points=points,
        comparisons=[("feature_kd_align", "feature_kd"), ("feature_kd_cls_align", "feature_kd_cls"),
                     ("feature_kd_align", "feature_kd_cls"), ("feature_kd", "cls_only")],
        premise=("teacher", "feature_kd"), min_room=0.05,
        paper_effects=[
            PaperEffect(1, "the abstract reports 'significant improvements in zero-shot ... OOD classification' from principle 1 "
                           "(imitation + alignment together) and gives no figure for the alignment term alone",
                        None, "no number to compare in the abstract; the authors' code adds L-vlalign to L-cls + L-mse/L-cst"),
            PaperEffect(2, "the same for few-shot ('significant improvements in ... few-shot student performance')", None,
                        "no number in the abstract"),
        ],
        checks=[
            ("review against the authors' code (xuanlinli17/large_vlm_distillation_ood, main_experiments.py): L-vlalign is "
            "KL(teacher || student) of softmax(cos(image, label text) / 0.07) over the TRAINING labels' texts (top-k of them, "
            "k=256), both sides at temperature 0.07, teacher precomputed (no gradient); the recipe's `align` matches (logit "
            "scale 1/0.07 on both, KD temperature 1, weight 1; test_feature_and_alignment_terms_match_their_formulas). "
            "The seen-class-only text bank is the authors' choice, not a bug"),
            ("difference from the authors' code: their L-cls (label cross-entropy over the text bank) is on in every arm and "
            "L-vlalign is added to it; the miniature's arms have no L-cls. Measured here as feature_kd_cls vs "
            "feature_kd_cls_align (the authors' comparison) and feature_kd_align vs feature_kd_cls"),
            (f"the signal the alignment term distils: the teacher's similarity distribution over the 5 seen-class prompts on "
            f"the seen training images has entropy {entropy:.3f} nats (uniform: {math.log(len(SEEN)):.3f}) and puts "
            f"{mass:.3f} on the label, i.e. it is a hard label; the alignment term then acts as L-cls "
            "(test_alignment_to_a_confident_teacher_is_label_cross_entropy)"),
            ("the alignment term does transfer a teacher's soft similarity structure when there is one "
            "(test_alignment_transfers_a_soft_teacher_that_labels_do_not_hold), and it trains the student only: the teacher "
            "and the text bank stay fixed (test_alignment_trains_only_the_student)"),
            ("10-way zero-shot accuracy on unseen images (mean over seeds; teacher "
             f"{stage['scores']['zero_shot_unseen_10way']:.3f} on the same code): " + "; ".join(ten_way) + ". The alignment "
             "term is a classifier over the five seen prompts and pulls every image onto one of them, so unseen images rarely "
             "win among all ten: a consequence of the seen-class bank, not a bug in the evaluation"),
            ("claim 2's metric (5-shot probe on unseen classes), feature_kd_align - feature_kd at the same sizes, mean +- s.e. "
             "(sign as in the scale table): " + "; ".join(few_shot)),
        ],
    )


REPRODUCTION = register(
    Reproduction(
        name="vlm_ood",
        paper="Li et al. 2023, arXiv:2307.03135",
        method="Large-VLM -> small distillation: image-embedding imitation + vision-language alignment",
        family="multi_teacher_feature_contrastive",
        summary="digits dual-encoder teacher on 10 classes -> MLP distilled on 5; zero-shot on the unseen 5, +/- alignment KL",
        run=run,
        recipe="vlm_ood",
        default_seeds=5,
        diagnose=diagnose,
    )
)
