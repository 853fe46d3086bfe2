"""#28 VL2V-ADiP, in miniature: align-distill-predict vs naive KD, on out-of-distribution digits.

Paper: Addepalli et al. 2024, "Leveraging Vision-Language Models for Improving Domain
Generalization in Image Classification", arXiv:2310.08255 (abstract: "naive distillation
largely improves the In-Domain (ID) accuracy of the student, it fails to transfer the
superior out-of-distribution (OOD) generalization of the VLM teacher"; VL2V-ADiP "achieves
state-of-the-art results on the standard Domain Generalization benchmarks in a black-box
teacher setting"; no headline number in the abstract).

Miniature (digits as rows ``[image 64 | caption 10]``, the caption a class one-hot; rotated
digits turn by a uniform angle in [-45, 45] degrees, noisy digits get N(0, 0.5^2) on the
standardised pixels; the same seeds for every arm):

  1. teacher (the vendor's VLM, trained once, seed 0): a dual encoder (MLP towers, hidden
     256, embedding 64), CLIP InfoNCE (tau 0.07) on clean + rotated + noisy copies of the
     training digits with captions carrying N(0, 0.5^2) noise, 30 epochs (quick: 15); it is
     robust to both corruptions;
  2. pre-trained student (per seed): an MLP (hidden 128) with a linear head trained with
     cross-entropy on clean digits, 30 epochs (quick: 15);
  3. distillation on the clean training digits (the limited task data), captions = the exact
     class prompts, lr 1e-3, batch 64, from the pre-trained student:
       * ``naive_kd``: its own linear head, fine-tuned end to end by CE + KD (T = 4) on the
         teacher's zero-shot logits, 30 epochs (quick: 15);
       * ``adip``: Align (backbone frozen, new projector into the teacher's space trained,
         10 epochs; quick: 5) then Distill (projector frozen, backbone trained, 20 epochs;
         quick: 10), loss ``0.5 (1 - cos(z, t_img)) + 0.5 (1 - cos(z, t_txt(y)))``,
         predicting with the teacher's text embeddings (only teacher outputs are read);
       * ``distill_no_align`` (ablation): the same loss and text head with backbone and a
         fresh projector trained together from the start, 30 epochs (quick: 15).

Measured: accuracy on clean (ID), rotated and noisy (OOD) test digits; OOD accuracy is the
mean of the rotated and noisy accuracies.

Rules, fixed here before any run:
  1. ``adip``'s OOD accuracy beats ``naive_kd``'s (mean over seeds higher by more than the
     standard error of the difference);
  2. ``adip``'s OOD accuracy beats the pre-trained student's (distillation transfers some
     of the teacher's robustness; same rule).
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
    """Accuracy of ``model``'s logits on each test domain, and the OOD mean."""
    model.eval()
    out = {d: accuracy(model(s.test.x)["logits"], s.test.y) for d, s in tests.items()}
    out["ood"] = 0.5 * (out["rotate"] + out["noise"])
    return out


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    tests = {d: load_dataset("ood_digits", test_domain=d) for d in DOMAINS}
    shape = tests["clean"].input_shape
    teacher_run = train_teacher(ctx, {"name": "dual_encoder", "params": TEACHER}, _data(list(DOMAINS), 0.5),
                                fast_train(s["teacher_epochs"]), objectives=clip_objectives(0.07))
    teacher_w = teacher_run.weights
    teacher = load_student(teacher_run.run_dir, {"name": "zero_shot_dual_encoder", "params": TEACHER}, shape, 10)
    teacher_scores = evaluate(teacher, tests)
    ctx.log("    teacher: " + ", ".join(f"{k} {v:.4f}" for k, v in teacher_scores.items()))
    arms = ("pretrained", "naive_kd", "adip", "distill_no_align")
    scores: dict[str, dict[str, list[float]]] = {a: {} for a in arms}
    total = s["align_epochs"] + s["distill_epochs"]
    adip = adip_config(0.5)["objectives"]
    for seed in ctx.seeds:
        pre = f"pretrained/seed{seed}"
        ctx.train(pre, {"seed": seed, "data": _data(["clean"], 0.0), "student": {"name": "zero_shot_student", "params": PRETRAINED},
                        "objectives": [{"kind": "ce"}], "train": fast_train(s["pretrain_epochs"])})
        pre_w = str((ctx.out / pre / "student.safetensors").resolve())
        pretrained = load_student(ctx.out / pre, {"name": "zero_shot_student", "params": PRETRAINED}, shape, 10).train()
        init = ctx.path(f"adip_init/seed{seed}") / "student.safetensors"   # pre-trained backbone + fresh projector
        torch.manual_seed(seed)
        ckpt.save_weights(align_student(pretrained, TEACHER["embed_dim"]), init)
        # naive KD; ADiP's Align (backbone frozen, projector trained) then Distill (projector frozen); the ablation
        # trains backbone and projector together
        ctx.train(f"naive_kd/seed{seed}", _student_run(seed, total, PRETRAINED, pre_w, teacher_w, hinton_kd_objectives(4.0)))
        ctx.train(f"adip_align/seed{seed}", _student_run(seed, s["align_epochs"], dict(ADIP, freeze=["backbone"]),
                                                         str(init.resolve()), teacher_w, adip))
        aligned = str((ctx.out / f"adip_align/seed{seed}" / "student.safetensors").resolve())
        ctx.train(f"adip/seed{seed}", _student_run(seed, s["distill_epochs"], dict(ADIP, freeze=["proj"]), aligned, teacher_w, adip))
        ctx.train(f"distill_no_align/seed{seed}", _student_run(seed, total, ADIP, str(init.resolve()), teacher_w, adip))
        for arm in arms:
            params = PRETRAINED if arm in ("pretrained", "naive_kd") else ADIP
            result = evaluate(load_student(ctx.out / f"{arm}/seed{seed}", {"name": "zero_shot_student", "params": params}, shape, 10),
                              tests)
            for k, v in result.items():
                scores[arm].setdefault(k, []).append(v)
            ctx.log(f"    {arm} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
    metric = "OOD accuracy (mean of rotated and noisy test digits)"
    claims = [
        better("VL2V-ADiP transfers the teacher's OOD generalisation better than naive distillation",
               scores["adip"]["ood"], scores["naive_kd"]["ood"], a_name="adip", b_name="naive_kd", metric=metric),
        better("VL2V-ADiP improves the pre-trained student's OOD accuracy",
               scores["adip"]["ood"], scores["pretrained"]["ood"], a_name="adip", b_name="pretrained", metric=metric),
    ]
    for claim in claims:
        claim.figures.update({f"{a} {k}": mean_std(v) for a in arms for k, v in scores[a].items()})
        claim.figures.update({f"teacher {k}": v for k, v in teacher_scores.items()})
        claim.figures.update(s)
    return claims


REPRODUCTION = register(
    Reproduction(
        name="vl2v_adip",
        paper="Addepalli et al. 2024, arXiv:2310.08255",
        method="VL2V-ADiP: align a projector, distill the VLM's image/text embeddings, predict with its text head",
        family="multi_teacher_feature_contrastive",
        summary="robust digits dual encoder -> MLP pre-trained on clean digits; OOD (rotated/noisy) accuracy, ADiP vs naive KD",
        run=run,
        recipe="vl2v_adip",
    )
)
