"""#38 Hybrid Distill, in miniature: tiny ViTs on MNIST-1D, an MAE teacher and a supervised teacher.

Paper: Shi et al. 2023, "Hybrid Distillation: Connecting Masked Autoencoders with Contrastive
Learners", arXiv:2306.15876 (abstract: CL/supervised models give "longer-range global patterns
and ... better feature discrimination, while MIM can introduce more local and diverse attention
across all transformer layers"; Hybrid Distill "imitates the token relations of the MIM
teacher to alleviate attention collapse, as well as distills the feature maps of the
supervised/CL teacher to enable discrimination"; no headline numbers in the abstract).

Miniature (all settings fixed here before any run):

* ViT everywhere: MNIST-1D signals in patches of 4 (10 tokens + a class token), width 32,
  4 blocks, 4 heads, MLP ratio 2;
* MIM teacher (seed 0): an MAE (mask ratio 0.75, 1-block decoder of width 32) trained by masked
  reconstruction on the 4,000 train signals plus 0 (quick) / 10,000 unlabeled generated ones,
  8 (quick) / 30 epochs, batch 128, AdamW lr 1e-3, wd 0.05, cosine (50 warm-up steps); its
  encoder is the teacher;
* supervised teacher (seed 0): the ViT trained by cross-entropy on the 4,000 labels, 12 (quick)
  / 40 epochs, same optimiser;
* students (``token_masking_vit``, the same ViT), trained without labels on the teachers'
  training signals, 5 (quick) / 15 epochs, batch 128, same optimiser; progressive redundant-token
  masking for every student: 0, then 25%, then 50% of the patch tokens dropped (from a third and
  from two thirds of the training steps), the dropped ones being those the supervised teacher's
  last block attends to least from its class token; teacher signals computed once per sample
  (the teachers see un-augmented inputs, so this is exact):
    - ``hybrid``: token relations (attention KL) at the intermediate blocks 1 and 2 from the MIM
      teacher + final-token MSE from the supervised teacher, weights 1;
    - ``mim_only``: the same two terms, both from the MIM teacher;
    - ``sup_only``: the same two terms, both from the supervised teacher;
* evaluation: a linear probe (logistic regression, C=1) on the mean of the final normalised
  tokens (train labels -> test accuracy); per-head attention distance (patches), entropy and
  head diversity (std over heads of the distance, averaged over blocks) on the test signals
  (:mod:`distillery.evaluation.attention`).

Rules (means over seeds; the teachers are one model each):
  1. the hybrid student's probe accuracy is at least the sup_only student's (at most 1 point lower);
  2. the hybrid student's probe accuracy is at least the mim_only student's (at most 1 point lower);
  3. premise: the MIM teacher's head diversity is higher than the supervised teacher's;
  4. the hybrid student's head diversity is closer to the MIM teacher's than the sup_only
     student's is (absolute difference of means);
  5. the same for the mean attention distance (locality).
"""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from ..data import load_dataset
from ..engine import checkpoint as ckpt
from ..engine.distiller import Distiller
from ..engine.trainer import Trainer
from ..evaluation.attention import attention_statistics
from ..evaluation.probes import linear_probe_accuracy
from ..models import build_model
from ..models.mae import encoder_state_dict
from ..models.miniature.token_masking import TokenMaskingViT
from ..recipes.dmae import mae_objective
from ..recipes.hybrid_distill import hybrid_terms, single_teacher_terms, token_features
from ..teachers import PrecomputedTeacher, TeacherBank
from . import Claim, Context, Reproduction, detectable_difference, mean_std, not_worse, register
from ._common import Settings, train_section, train_teacher

VIT = {"patch_size": 4, "dim": 32, "depth": 4, "heads": 4, "mlp_ratio": 2.0}
GRID = (10,)
RELATION_BLOCKS = (1, 2)
MASK_RATIOS = (0.0, 0.25, 0.5)
OPTIM = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}
SCHED = {"name": "cosine", "warmup_steps": 50}


SETTINGS = Settings(quick={"unlabeled": 0, "mae_epochs": 8, "sup_epochs": 12, "epochs": 5},
                    full={"unlabeled": 10000, "mae_epochs": 30, "sup_epochs": 40, "epochs": 15})


def _train_cfg(epochs: int) -> dict:
    return train_section(epochs, OPTIM["lr"], weight_decay=OPTIM["weight_decay"], warmup=SCHED["warmup_steps"])


def _teachers(ctx: Context, s: dict) -> tuple[torch.nn.Module, torch.nn.Module]:
    data = {"dataset": "mnist1d", "params": {"unlabeled": s["unlabeled"]} if s["unlabeled"] else {},
            "unlabeled": bool(s["unlabeled"]), "batch_size": 128}
    mae = dict(VIT, mask_ratio=0.75, decoder_dim=32, decoder_depth=1, decoder_heads=2, hidden_in_training=False)
    ctx.train("mim_teacher", {"seed": 0, "data": data, "student": {"name": "mae_vit", "params": mae},
                              "objectives": [mae_objective()], "train": _train_cfg(s["mae_epochs"])})
    train_teacher(ctx, {"name": "vit", "params": VIT}, {"dataset": "mnist1d", "batch_size": 128}, _train_cfg(s["sup_epochs"]),
                  name="sup_teacher")
    mim = build_model("vit", (40,), 10, **VIT)
    mim.load_state_dict(encoder_state_dict(load_file(str(ctx.out / "mim_teacher" / "student.safetensors"))))
    sup = build_model("vit", (40,), 10, **VIT)
    ckpt.load_weights(sup, ctx.out / "sup_teacher" / "student.safetensors", what="supervised teacher")
    return mim.eval(), sup.eval()


def _evaluate(model: torch.nn.Module, splits, address: str = "norm") -> dict:
    xtr, ytr = token_features(model, splits.train, address)
    xte, yte = token_features(model, splits.test, address)
    stats = attention_statistics(model, splits.test, GRID, VIT["depth"])
    return {"probe": linear_probe_accuracy(xtr, ytr, xte, yte, C=1.0), **stats}


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    mim, sup = _teachers(ctx, s)
    splits = load_dataset("mnist1d", unlabeled=s["unlabeled"]) if s["unlabeled"] else load_dataset("mnist1d")
    train = splits.train_with_unlabeled()
    steps = -(-len(train) // 128) * s["epochs"]
    milestones = [steps // 3, 2 * steps // 3]
    ref = {"mim_teacher": _evaluate(mim, splits), "sup_teacher": _evaluate(sup, splits)}
    for name, r in ref.items():
        ctx.log(f"  {name}: probe {r['probe']:.4f}, distance {r['mean_distance']:.3f}, diversity {r['mean_diversity']:.3f}")
    names = [f"blocks.{i}.attn.softmax" for i in RELATION_BLOCKS] + ["norm", "logits"]
    bank = TeacherBank([PrecomputedTeacher.from_model(mim, train, names), PrecomputedTeacher.from_model(sup, train, names)])
    variants = {  # bank member 0: the MIM teacher, 1: the supervised teacher
        "hybrid": lambda: hybrid_terms(RELATION_BLOCKS, relation_member=0, feature_member=1),
        "mim_only": lambda: single_teacher_terms(RELATION_BLOCKS, member=0),
        "sup_only": lambda: single_teacher_terms(RELATION_BLOCKS, member=1),
    }
    results: dict[str, list[dict]] = {k: [] for k in variants}
    n = GRID[0]
    kept = [1 + n - round(MASK_RATIOS[sum(1 for m in milestones if k >= m)] * n) for k in range(steps)]
    token_fraction = sum(kept) / (steps * (1 + n))  # tokens the student processes, vs all of them
    for seed in ctx.seeds:
        for name, make_terms in variants.items():
            terms = make_terms()
            torch.manual_seed(seed)
            student = build_model("token_masking_vit", (40,), 10, **VIT, mask_ratios=list(MASK_RATIOS), milestones=milestones,
                                  select="scorer")
            assert isinstance(student, TokenMaskingViT)
            student.set_scorer(sup)
            summary = Trainer(Distiller(student, bank, terms), train, eval_data=splits.test, out_dir=ctx.path(f"{name}/seed{seed}"),
                              epochs=s["epochs"], batch_size=128, optimizer=OPTIM, scheduler=SCHED, seed=seed,
                              eval_every=s["epochs"], progress=False, tensorboard=False).fit()
            r = _evaluate(student, splits)
            results[name].append(r)
            assert int(student.mask_step) == steps  # the schedule ran over exactly the training steps
            ctx.log(f"  {name}/seed{seed}: probe {r['probe']:.4f}, distance {r['mean_distance']:.3f}, "
                    f"diversity {r['mean_diversity']:.3f} ({summary['wall_s']:.1f}s)")

    def values(name: str, key: str) -> list[float]:
        return [float(r[key]) for r in results[name]]

    metric = "linear-probe test accuracy"
    claims = [
        not_worse("The hybrid student's probe accuracy is at least the supervised-teacher-only student's",
                  values("hybrid", "probe"), values("sup_only", "probe"), a_name="hybrid", b_name="sup_only",
                  tolerance=0.01, metric=metric),
        not_worse("The hybrid student's probe accuracy is at least the MIM-teacher-only student's",
                  values("hybrid", "probe"), values("mim_only", "probe"), a_name="hybrid", b_name="mim_only",
                  tolerance=0.01, metric=metric),
    ]
    d_mim, d_sup = ref["mim_teacher"]["mean_diversity"], ref["sup_teacher"]["mean_diversity"]
    claims.append(Claim(
        "Premise: the MIM teacher's attention heads are more diverse than the supervised teacher's",
        "head diversity (std over heads of the mean attention distance, averaged over blocks) of the MIM teacher > "
        "that of the supervised teacher (one teacher each)",
        d_mim > d_sup,
        {"mim_teacher": {k: ref["mim_teacher"][k] for k in ("mean_diversity", "mean_distance", "mean_entropy", "probe")},
         "sup_teacher": {k: ref["sup_teacher"][k] for k in ("mean_diversity", "mean_distance", "mean_entropy", "probe")}},
        detectable={"note": "one teacher each: a comparison of two single values, no seed spread"},
    ))
    for key, what in (("mean_diversity", "head diversity"), ("mean_distance", "mean attention distance")):
        target = ref["mim_teacher"][key]
        hyb, only = mean_std(values("hybrid", key)), mean_std(values("sup_only", key))
        gap_h, gap_s = abs(hyb["mean"] - target), abs(only["mean"] - target)
        claims.append(Claim(
            f"The hybrid student's {what} is closer to the MIM teacher's than the supervised-teacher-only student's",
            f"|mean {what} of hybrid - MIM teacher's| < |mean {what} of sup_only - MIM teacher's| (means over >= 2 seeds)",
            hyb["n"] >= 2 and gap_h < gap_s,
            {"hybrid": hyb, "sup_only": only, "mim_only": mean_std(values("mim_only", key)), "mim_teacher": target,
             "sup_teacher": ref["sup_teacher"][key], "gap_hybrid": gap_h, "gap_sup_only": gap_s},
            detectable=detectable_difference(0.0, math.sqrt(hyb["std"] ** 2 / hyb["n"] + only["std"] ** 2 / only["n"]),
                                             (hyb["n"], only["n"])),
        ))
    extra = {"token_fraction_processed": token_fraction,
             "per_block_diversity": {n: [r["diversity"] for r in results[n]] for n in results},
             "teacher_per_block_diversity": {n: ref[n]["diversity"] for n in ref},
             "mean_entropy": {n: mean_std(values(n, "mean_entropy")) for n in results}}
    claims[0].figures.update(extra)
    return claims


REPRODUCTION = register(
    Reproduction(
        name="hybrid_distill",
        paper="Shi et al. 2023, arXiv:2306.15876",
        method="Hybrid Distill: MIM-teacher token relations + supervised-teacher features, progressive token masking",
        family="multi_teacher_feature_contrastive",
        summary="tiny ViTs on MNIST-1D: hybrid vs single-teacher students, probe accuracy and attention diversity",
        run=run,
        recipe="hybrid_distill",
    )
)
