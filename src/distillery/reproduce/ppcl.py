"""#26 PPCL, in miniature: find contiguous redundant intervals of a 12-block residual MLP,
prune half of its blocks, recover by boundary + interval-replay distillation (MNIST-1D).

Paper: Ma, Peng, Zhu, Xie, Chen, Lu 2025, arXiv:2511.16156 (abstract: redundant layer
intervals found "through a linear probing mechanism combined with the first-order
differential trend analysis of similarity metrics"; "a plug-and-play teacher-student
alternating distillation scheme"; "a 50% reduction in parameter count compared to the full
model, with less than 3% degradation in key objective metrics").

Miniature (settings fixed here before any run):

* data: MNIST-1D (4,000 train / 1,000 test signals of length 40), batch 128;
* teacher: ``residual_mlp`` width 64, 12 blocks (hidden 128), cross-entropy, 30 (quick 12)
  epochs, AdamW 1e-3, weight decay 0.01, cosine; seed 0 (an ordinary config run);
* detection (:func:`distillery.recipes.ppcl.analyze` / ``select_blocks``): the teacher's 13
  block-boundary states on the 4,000 training signals, linear CKA, the first-order trend of
  the adjacent-block CKA, held-out linear probes; 6 of 12 blocks (50%) in contiguous
  intervals of least cost;
* students (the pruned copy, started from the teacher's kept blocks), 20 (quick 8) epochs,
  AdamW 5e-4, weight decay 0.01, cosine, batch 128, seeds vary the data order:
  ``finetune``: cross-entropy only (fine-tuning without distillation);
  ``ppcl``: cross-entropy + KD on the logits (T = 1) + feature MSE at every interval boundary
  + the interval replay (the absorbing block fed the teacher's state), all weights 1;
  and, without a rule and not in ``--quick``, ``ppcl_no_replay`` (the same without replay);
* reference: the pruned network before any recovery.

Rules (mean test accuracy over the seeds; the teacher is one run):
  1. under 3% degradation at 50% fewer blocks: (teacher - ppcl) / teacher < 0.03;
  2. PPCL beats fine-tuning without distillation (higher by more than the standard error of
     the difference).
"""

from __future__ import annotations

import torch

from ..engine.checkpoint import load_weights
from ..engine.distiller import Distiller, Term
from ..engine.trainer import Trainer
from ..models import build_model
from ..models.surgery import count_parameters
from ..objectives import CrossEntropy
from ..recipes import ppcl as P
from . import Claim, Context, Reproduction, better, mean_std, register, threshold_on_mean
from ._common import ONE_CHECKPOINT, Settings, train_section, train_teacher

MODEL = {"name": "residual_mlp", "params": {"width": 64, "depth": 12, "mlp_ratio": 2.0}}
RATIO = 0.5
BATCH = 128


SETTINGS = Settings(quick={"teacher_epochs": 12, "epochs": 8}, full={"teacher_epochs": 30, "epochs": 20})


def _train_kw(epochs: int) -> dict:
    return {"epochs": epochs, "batch_size": BATCH, "optimizer": {"name": "adamw", "lr": 5e-4, "weight_decay": 0.01},
            "scheduler": {"name": "cosine"}, "eval_every": epochs, "checkpoint_every": 10**9, "keep_checkpoints": 1,
            "progress": False, "tensorboard": False}


def run(ctx: Context) -> list[Claim]:
    from ..data import load_dataset

    s = SETTINGS(ctx.quick)
    teacher_acc = train_teacher(ctx, MODEL, {"dataset": "mnist1d", "batch_size": BATCH},
                                train_section(s["teacher_epochs"], 1e-3, weight_decay=0.01, **ONE_CHECKPOINT)).accuracy
    data = load_dataset("mnist1d")
    teacher = build_model(MODEL["name"], data.input_shape, data.num_classes, **MODEL["params"])
    load_weights(teacher, ctx.out / "teacher" / "student.safetensors", what="teacher")
    x = torch.stack([data.train[i]["x"] for i in range(len(data.train))])
    profile = P.analyze(teacher, x)
    removed = P.select_blocks(profile, RATIO)
    ctx.log(f"  removed blocks {removed} (intervals {[list(i) for i in P.surgery.intervals(removed)]}); breaks {profile.breaks}")
    pruned = P.prune(teacher, removed)
    no_recovery = Trainer(Distiller(pruned, None, [Term("ce", CrossEntropy())]), data.train, eval_data=data.test,
                          progress=False, tensorboard=False, device="cpu").evaluate()["accuracy"]

    def train(name: str, seed: int, distiller: Distiller) -> float:
        out = ctx.path(f"{name}/seed{seed}")
        summary = Trainer(distiller, data.train, eval_data=data.test, out_dir=out, seed=seed, device=ctx.device,
                          **_train_kw(s["epochs"])).fit()
        acc = summary["final"]["accuracy"]
        ctx.log(f"  {name}/seed{seed}: accuracy {acc:.4f} ({summary['wall_s']:.1f}s)")
        return acc

    variants = ["finetune", "ppcl"] + ([] if ctx.quick else ["ppcl_no_replay"])
    acc: dict[str, list[float]] = {v: [] for v in variants}
    for seed in ctx.seeds:
        student = P.prune(teacher, removed)
        acc["finetune"].append(train("finetune", seed, Distiller(student, None, [Term("ce", CrossEntropy())])))
        acc["ppcl"].append(train("ppcl", seed, P.ppcl_distiller(teacher, removed)))
        if "ppcl_no_replay" in acc:
            acc["ppcl_no_replay"].append(train("ppcl_no_replay", seed, P.ppcl_distiller(teacher, removed, replay=0.0)))
    ppcl = mean_std(acc["ppcl"])
    drop = (teacher_acc - ppcl["mean"]) / teacher_acc
    params = {"teacher": count_parameters(teacher), "student": count_parameters(pruned)}
    claims = [
        Claim("PPCL loses under 3% at 50% fewer blocks",
              "(teacher accuracy - mean test accuracy of ppcl) / teacher accuracy < 0.03",
              drop < 0.03,
              {"teacher": teacher_acc, "ppcl": ppcl, "relative_drop": drop, "removed_blocks": removed,
               "parameters": params, "parameter_reduction": 1 - params["student"] / params["teacher"],
               "pruned_no_recovery": no_recovery},
              detectable=threshold_on_mean(acc["ppcl"], 0.97 * teacher_acc, what="mean accuracy against 0.97 x the teacher's (one teacher run)")),
        better("PPCL recovery beats fine-tuning without distillation", acc["ppcl"], acc["finetune"],
               a_name="ppcl", b_name="finetune", metric="test accuracy"),
    ]
    if "ppcl_no_replay" in acc:
        claims[1].figures["ppcl_no_replay"] = mean_std(acc["ppcl_no_replay"])
    claims[0].figures["similarity"] = {"adjacent_cka": profile.adjacent.tolist(), "trend": profile.trend.tolist(),
                                       "breaks": profile.breaks}
    return claims


REPRODUCTION = register(
    Reproduction(
        name="ppcl",
        paper="Ma et al. 2025, arXiv:2511.16156",
        method="PPCL: contiguous-interval depth pruning recovered by boundary and interval-replay distillation",
        family="multi_teacher_feature_contrastive",
        summary="MNIST-1D 12-block residual MLP: prune 6 blocks by CKA trend + linear probes; PPCL vs fine-tuning",
        run=run,
        recipe="ppcl",
    )
)
