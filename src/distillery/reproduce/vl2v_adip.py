"""#28 VL2V-ADiP, in miniature: align-distill-predict vs naive KD, on rotated (OOD) digits.

Paper: Addepalli et al. 2024, "Leveraging Vision-Language Models for Improving Domain
Generalization in Image Classification", arXiv:2310.08255 (abstract: "naive distillation
largely improves the In-Domain (ID) accuracy of the student, it fails to transfer the
superior out-of-distribution (OOD) generalization of the VLM teacher"; VL2V-ADiP "achieves
state-of-the-art results on the standard Domain Generalization benchmarks in a black-box
teacher setting"; no headline number in the abstract).

Redesigned for issue 15 (the rules below replace the first design's; that design's figures
are quoted on the method page as the earlier result). The first design's premise failed: its
teacher (CLIP InfoNCE on clean + rotated + noisy digits with captions carrying N(0, 0.5^2)
noise) was *worse* OOD than the student alone (OOD mean of rotated and noisy accuracy 0.718 vs
0.765): so noisy a caption left the teacher weak (clean 0.909 < the student's 0.961) and unable
to fit even its noisy training digits, and additive pixel noise is no shift for an MLP trained
on clean digits (0.930 on noisy test digits, better than the teacher's 0.629), so the noisy
domain held no OOD generalisation to transfer. What changed:

  * the teacher's captions carry N(0, 0.2^2) noise (was 0.5) and it trains on clean + rotated
    digits (the noisy copy is dropped): the VLM has seen the shift, the student has not;
  * OOD accuracy is the accuracy on rotated test digits alone (noisy digits are still measured
    and reported, not judged);
  * a third claim against ``distill_no_align``, which is the authors' own "naive
    distillation" (``DFC_PLAIN_1`` in their code: the same cosine loss, everything trained
    from the start);
  * 5 seeds by default (was 3).

Miniature (digits as rows ``[image 64 | caption 10]``, the caption a class one-hot; rotated
digits turn by a uniform angle in [-45, 45] degrees, noisy digits get N(0, 0.5^2) on the
standardised pixels; the same seeds for every arm):

  1. teacher (the vendor's VLM, trained once, seed 0): a dual encoder (MLP towers, hidden
     256, embedding 64), CLIP InfoNCE (tau 0.07) on clean + rotated copies of the training
     digits with captions carrying N(0, 0.2^2) noise, 30 epochs (quick: 15);
  2. pre-trained student (per seed, the student alone): an MLP (hidden 128) with a linear head
     trained with cross-entropy on clean digits, 30 epochs (quick: 15);
  3. distillation on the clean training digits (the limited task data), captions = the exact
     class prompts, lr 1e-3, batch 64, from the pre-trained student:
       * ``naive_kd``: its own linear head, fine-tuned end to end by CE + KD (T = 4) on the
         teacher's zero-shot logits, 30 epochs (quick: 15);
       * ``adip``: Align (backbone frozen, new projector into the teacher's space trained,
         10 epochs; quick: 5) then Distill (projector frozen, backbone trained, 20 epochs;
         quick: 10), loss ``0.5 (1 - cos(z, t_img)) + 0.5 (1 - cos(z, t_txt(y)))``,
         predicting with the teacher's text embeddings (only teacher outputs are read);
       * ``distill_no_align``: the same loss and text head with backbone and a fresh
         projector trained together from the start, 30 epochs (quick: 15).

Measured: accuracy on clean (ID), rotated (OOD) and noisy test digits.

Rules, fixed here before any run of this design (5 seeds):
  1. ``adip``'s OOD (rotated) accuracy beats ``naive_kd``'s (mean over seeds higher by more
     than the standard error of the difference);
  2. ``adip``'s OOD accuracy beats the pre-trained student's (distillation transfers some of
     the teacher's robustness; same rule);
  3. ``adip``'s OOD accuracy beats ``distill_no_align``'s (aligning first retains more; same
     rule).

Diagnosis (``--diagnose``): premise ``teacher - pretrained`` on OOD accuracy (room needed 0.05);
scale axis the distillation epochs (x1, x2, x4 of Align + Distill and of the baselines' 30).
"""

from __future__ import annotations

from typing import Any

import torch

from ..data import load_dataset
from ..engine import checkpoint as ckpt
from ..evaluation.metrics import accuracy
from ..recipes._fragments import frozen_teacher
from ..recipes._itc import clip_objectives
from ..recipes.basic import hinton_kd_objectives
from ..recipes.vl2v_adip import adip_config, align_student
from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import Settings, load_student, train_teacher
from ._dual import fast_train

TEACHER = {"image_dim": 64, "text_dim": 10, "hidden": [256], "embed_dim": 64}
PRETRAINED = {"image_dim": 64, "hidden": [128], "embed_dim": None, "head": "linear"}
ADIP = {"image_dim": 64, "hidden": [128], "embed_dim": 64, "head": "text"}
DOMAINS = ("clean", "rotate", "noise")
TEACHER_DOMAINS = ["clean", "rotate"]
CAPTION_NOISE = 0.2
ARMS = ("pretrained", "naive_kd", "adip", "distill_no_align")
METRIC = "OOD accuracy (rotated test digits)"
SETTINGS = Settings(quick={"teacher_epochs": 15, "pretrain_epochs": 15, "align_epochs": 5, "distill_epochs": 10},
                    full={"teacher_epochs": 30, "pretrain_epochs": 30, "align_epochs": 10, "distill_epochs": 20})


def _data(train_domains: list[str], caption_noise: float) -> dict[str, Any]:
    return {"dataset": "ood_digits", "batch_size": 64,
            "params": {"train_domains": train_domains, "test_domain": "clean", "caption_noise": caption_noise}}


def _student_run(seed: int, epochs: int, params: dict[str, Any], checkpoint: str, teacher: str, objectives: list) -> dict[str, Any]:
    return {"seed": seed, "data": _data(["clean"], 0.0), "student": {"name": "zero_shot_student", "params": params, "checkpoint": checkpoint},
            "teacher": frozen_teacher({"name": "zero_shot_dual_encoder", "params": TEACHER, "checkpoint": teacher}),
            "objectives": objectives, "train": fast_train(epochs)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, tests: dict[str, Any]) -> dict[str, float]:
    """Accuracy of ``model``'s logits on each test domain; ``ood`` is the rotated accuracy."""
    model.eval()
    out = {d: accuracy(model(s.test.x)["logits"], s.test.y) for d, s in tests.items()}
    out["ood"] = out["rotate"]
    return out


def _tests() -> dict[str, Any]:
    return {d: load_dataset("ood_digits", test_domain=d) for d in DOMAINS}


def train_vlm(ctx: Context, s: dict[str, Any], tests: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """The teacher (once, seed 0): its weights and its zero-shot scores per test domain."""
    run = train_teacher(ctx, {"name": "dual_encoder", "params": TEACHER}, _data(TEACHER_DOMAINS, CAPTION_NOISE),
                        fast_train(s["teacher_epochs"]), objectives=clip_objectives(0.07))
    teacher = load_student(run.run_dir, {"name": "zero_shot_dual_encoder", "params": TEACHER}, tests["clean"].input_shape, 10)
    scores = evaluate(teacher, tests)
    ctx.log("    teacher: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return run.weights, scores


def pretrain(ctx: Context, seed: int, s: dict[str, Any]) -> str:
    """The pre-trained student of ``seed`` (CE on clean digits, the student alone); its weights."""
    name = f"pretrained/seed{seed}"
    if not (ctx.out / name / "student.safetensors").exists():
        ctx.train(name, {"seed": seed, "data": _data(["clean"], 0.0), "student": {"name": "zero_shot_student", "params": PRETRAINED},
                         "objectives": [{"kind": "ce"}], "train": fast_train(s["pretrain_epochs"])})
    return str((ctx.out / name / "student.safetensors").resolve())


def train_arms(ctx: Context, seed: int, teacher_w: str, s: dict[str, Any], tests: dict[str, Any], *, factor: int = 1,
               arms: tuple[str, ...] = ARMS, tag: str = "") -> dict[str, dict[str, float]]:
    """Train ``arms`` for one seed with every distillation stage ``factor`` times as long (Align,
    Distill, and the baselines' Align + Distill total); runs under ``{arm}{tag}/seed{seed}``.
    The pre-trained student (``pretrained``) is trained once per seed and shared by every
    ``factor``. Returns ``{arm: {domain: accuracy, "ood": rotated accuracy}}``."""
    shape = tests["clean"].input_shape
    pre_w = pretrain(ctx, seed, s)
    align_epochs, distill_epochs = factor * s["align_epochs"], factor * s["distill_epochs"]
    total = align_epochs + distill_epochs
    adip = adip_config(0.5)["objectives"]
    dirs: dict[str, Any] = {"pretrained": ctx.out / f"pretrained/seed{seed}"}
    needs_init = any(a in arms for a in ("adip", "distill_no_align"))
    if needs_init:   # the pre-trained backbone + a fresh projector (the same for adip and the ablation)
        pretrained = load_student(ctx.out / f"pretrained/seed{seed}", {"name": "zero_shot_student", "params": PRETRAINED},
                                  shape, 10).train()
        init = ctx.path(f"adip_init/seed{seed}") / "student.safetensors"
        torch.manual_seed(seed)
        ckpt.save_weights(align_student(pretrained, TEACHER["embed_dim"]), init)
        init_w = str(init.resolve())
    if "naive_kd" in arms:
        name = f"naive_kd{tag}/seed{seed}"
        ctx.train(name, _student_run(seed, total, PRETRAINED, pre_w, teacher_w, hinton_kd_objectives(4.0)))
        dirs["naive_kd"] = ctx.out / name
    if "adip" in arms:   # Align (backbone frozen, projector trained) then Distill (projector frozen)
        align = f"adip_align{tag}/seed{seed}"
        ctx.train(align, _student_run(seed, align_epochs, dict(ADIP, freeze=["backbone"]), init_w, teacher_w, adip))
        aligned = str((ctx.out / align / "student.safetensors").resolve())
        name = f"adip{tag}/seed{seed}"
        ctx.train(name, _student_run(seed, distill_epochs, dict(ADIP, freeze=["proj"]), aligned, teacher_w, adip))
        dirs["adip"] = ctx.out / name
    if "distill_no_align" in arms:   # backbone and projector trained together from the start
        name = f"distill_no_align{tag}/seed{seed}"
        ctx.train(name, _student_run(seed, total, ADIP, init_w, teacher_w, adip))
        dirs["distill_no_align"] = ctx.out / name
    out = {}
    for arm in arms:
        params = PRETRAINED if arm in ("pretrained", "naive_kd") else ADIP
        out[arm] = evaluate(load_student(dirs[arm], {"name": "zero_shot_student", "params": params}, shape, 10), tests)
        ctx.log(f"    {arm}{tag} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in out[arm].items()))
    return out


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    tests = _tests()
    teacher_w, teacher_scores = train_vlm(ctx, s, tests)
    scores: dict[str, dict[str, list[float]]] = {a: {} for a in ARMS}
    for seed in ctx.seeds:
        for arm, result in train_arms(ctx, seed, teacher_w, s, tests).items():
            for k, v in result.items():
                scores[arm].setdefault(k, []).append(v)
    claims = [
        better("VL2V-ADiP transfers the teacher's OOD generalisation better than naive distillation",
               scores["adip"]["ood"], scores["naive_kd"]["ood"], a_name="adip", b_name="naive_kd", metric=METRIC),
        better("VL2V-ADiP improves the pre-trained student's OOD accuracy",
               scores["adip"]["ood"], scores["pretrained"]["ood"], a_name="adip", b_name="pretrained", metric=METRIC),
        better("Aligning before distilling (ADiP) beats distilling the same embeddings without the Align stage, OOD",
               scores["adip"]["ood"], scores["distill_no_align"]["ood"], a_name="adip", b_name="distill_no_align", metric=METRIC),
    ]
    for claim in claims:
        claim.figures.update({f"{a} {k}": mean_std(v) for a in ARMS for k, v in scores[a].items()})
        claim.figures.update({f"teacher {k}": v for k, v in teacher_scores.items()})
        claim.figures.update(s)
    return claims


#: distillation-epoch factors of the scale study (x1 is the reproduction's own size)
FACTORS = {"quick": (1, 2), "full": (1, 2, 4)}


def diagnose(ctx: Context):
    """Premise (teacher vs the pre-trained student, OOD), and the three claims' differences at
    1x, 2x and 4x the distillation epochs (quick: 1x, 2x with the quick settings)."""
    from .diagnosis import Diagnosis, PaperEffect, ScalePoint

    s = SETTINGS(ctx.quick)
    tests = _tests()
    teacher_w, teacher_scores = train_vlm(ctx, s, tests)
    points = []
    for factor in FACTORS["quick" if ctx.quick else "full"]:
        arms: dict[str, list[float]] = {"teacher": [teacher_scores["ood"]], **{a: [] for a in ARMS}}
        for seed in ctx.seeds:
            result = train_arms(ctx, seed, teacher_w, s, tests, factor=factor, tag=f"_x{factor}")
            for arm in ARMS:
                arms[arm].append(result[arm]["ood"])
        epochs = factor * (s["align_epochs"] + s["distill_epochs"])
        points.append(ScalePoint(f"x{factor} ({epochs} ep)", float(epochs), arms))
    effect = "not stated numerically in the abstract (DomainBed state of the art, black-box teacher)"
    return Diagnosis(
        metric=METRIC, higher=True, size_name="distillation epochs (Align + Distill; the baselines the same total)",
        points=points, comparisons=[("adip", "naive_kd"), ("adip", "pretrained"), ("adip", "distill_no_align")],
        premise=("teacher", "pretrained"), min_room=0.05,
        paper_effects=[PaperEffect(1, effect, None, "DomainBed accuracy does not compare with rotated digits"),
                       PaperEffect(2, effect, None, "as claim 1"), PaperEffect(3, effect, None, "as claim 1")],
        checks=CHECKS,
        redesigned=("the first design's teacher (captions with N(0, 0.5^2) noise, trained on clean + rotated + noisy digits) "
                    "was worse OOD than the student alone (OOD mean of rotated and noisy 0.718 vs 0.765): captions "
                    "noise 0.2, teacher on clean + rotated digits, OOD = rotated digits only, a third claim against "
                    "the authors' naive distillation (distill_no_align), 5 seeds."),
    )


#: what the line-by-line review against the paper and the authors' code found (tests in tests/test_vl2v_adip.py)
CHECKS: list[str] = [
    "no bug found in the recipe or the reproduction's stages;",
    ("loss: lmd (1 - cos(z, t_img(x))) + (1 - lmd) (1 - cos(z, t_txt(y))), lmd 0.5, z = proj(f(x)), as the authors' dfc_loss "
    "(DFC_STAGE1 / DFC_STAGE2); the cosine is scale-free, so their normalising z first changes nothing; the teacher's "
    "outputs carry no gradient (test_adip_loss_is_the_cosine_mix_toward_the_teachers_image_and_label_text_embeddings);"),
    ("Align trains only the new linear projector (backbone frozen), Distill only the backbone (projector frozen), as the "
    "authors' stage optimisers (test_align_trains_only_the_projector_and_distill_only_the_backbone); the same through the "
    "reproduction's run configs, with the text head holding the teacher's text embeddings of the exact class prompts "
    "(the authors' zero-shot classifier; their logit scale 100 against 1/0.07 here changes no argmax) "
    "(test_train_arms_freezes_what_each_stage_should_and_predicts_with_the_teachers_text_head);"),
    "black-box access: only teacher outputs are read (test_a_black_box_teacher_gives_the_same_losses_as_the_frozen_one);",
    ("mechanism: a black-box teacher that ignores a nuisance direction the pre-trained student relies on, with distillation "
    "data that cover the shift: ADiP's student reaches the teacher on shifted test points and the pre-trained student does "
    "not (test_adip_transfers_a_robust_teachers_predictions_where_its_distillation_data_cover_the_shift);"),
    ("baselines: the authors' own 'naive distillation' (DFC_PLAIN_1) is the same cosine loss with everything trained from "
    "the start, i.e. distill_no_align (claim 3); naive_kd (CE + KD at T = 4 on the teacher's zero-shot logits) is Hinton's KD "
    "(claim 1);"),
    ("the first design's premise failure was its teacher (captions with N(0, 0.5^2) noise: clean 0.909, below the student's "
    "0.961) and its noisy domain (an MLP trained on clean digits is already robust to that noise), not a bug."),
]


REPRODUCTION = register(
    Reproduction(
        name="vl2v_adip",
        paper="Addepalli et al. 2024, arXiv:2310.08255",
        method="VL2V-ADiP: align a projector, distill the VLM's image/text embeddings, predict with its text head",
        family="multi_teacher_feature_contrastive",
        summary="rotation-robust digits dual encoder -> MLP pre-trained on clean digits; rotated (OOD) accuracy, ADiP vs naive KD",
        run=run,
        recipe="vl2v_adip",
        default_seeds=5,
        diagnose=diagnose,
    )
)
