"""#22 DMAE, in miniature: MAE-pretrain a bigger tiny ViT, then distill a smaller one by MAE +
feature distance to the teacher's truncated forward on the student's visible patches.

Paper: Bai et al. 2023, arXiv:2208.12256 (abstract: "Compared to directly
distilling fine-tuned models, distilling pre-trained models substantially improves downstream
performance ... 84.0% ImageNet top-1 accuracy, outperforming the baseline of directly
distilling a fine-tuned ViT-L by 1.2% ... with 95% masking ratio where merely TEN patches are
visible during distillation, our ViT-B competitively attains a top-1 ImageNet accuracy of
83.6%").

Miniature (MNIST-1D, 40-sample signals cut into 20 patches of 2; settings fixed here before
any run; every stage is an ordinary config, see each run's ``config.yaml``):

* teacher: ``mae_vit`` dim 48, depth 3, 4 heads, decoder 32 x 1 block; MAE (mask 0.75) on the
  4,000 train signals + U generated unlabeled ones (U = 2,000 quick / 6,000), 5 / 30 epochs,
  batch 256, AdamW 1e-3, weight decay 0.05, cosine; seed 0 (``teacher_pretrained``);
* fine-tuned teacher: its encoder as a ``vit``, cross-entropy on the 4,000 labels, 5 / 30
  epochs, batch 128, AdamW 1e-3 (``teacher_finetuned``), put back into the MAE (decoder
  unused) so that it can follow the student's masks;
* students: ``mae_vit`` dim 32, depth 2, trained on the same unlabeled data for 4 / 20 epochs by
  masked reconstruction + 1.0 x DMAE's normalised L1 between the student's last block
  (``encoder.blocks.1``, through an MLP projection head) and the teacher's second of three
  blocks (``until="encoder.blocks.1"``), both on the student's visible tokens only:
  ``pretrained_75`` / ``finetuned_75`` (mask 0.75, from the pre-trained / fine-tuned teacher),
  ``pretrained_95`` (mask 0.95: 1 visible patch of 20); and, without a rule and not in
  ``--quick``, ``pretrained_90`` (2 visible patches) and ``mae_only_75`` (no teacher);
* evaluation (the paper's protocol, fine-tuning): each student's encoder as a ``vit``,
  cross-entropy on the 4,000 labels, 4 / 20 epochs, batch 128, AdamW 1e-3; test accuracy on
  the 1,000 test signals;
* seeds vary the student and fine-tuning runs; the teachers are shared.

Rules (mean test accuracy after fine-tuning over the seeds):
  1. distilling the pre-trained teacher beats distilling the fine-tuned one (at mask 0.75;
     higher by more than the standard error of the difference);
  2. "graceful" degradation: at mask 0.95 the accuracy is at most 2 points below mask 0.75's
     (the paper: 84.0 -> 83.6 at 95%, 82.4 at 98%).
"""

from __future__ import annotations

from pathlib import Path

from ..engine.checkpoint import save_state
from ..recipes.dmae import dmae_config, mae_objective, with_encoder
from ..recipes.sd_further_pretraining import export_encoder
from . import Claim, Context, Reproduction, better, mean_std, not_worse, register
from ._common import ONE_CHECKPOINT, Settings, compose, train_section

VIT_T = {"patch_size": 2, "dim": 48, "depth": 3, "heads": 4, "mlp_ratio": 2.0}
VIT_S = {"patch_size": 2, "dim": 32, "depth": 2, "heads": 4, "mlp_ratio": 2.0}
DECODER = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
STUDENT_LAYER, TEACHER_LAYER = "encoder.blocks.1", "encoder.blocks.1"
SETTINGS = Settings(quick={"unlabeled": 2000, "teacher_epochs": 5, "epochs": 4, "ft_epochs": 4},
                    full={"unlabeled": 6000, "teacher_epochs": 30, "epochs": 20, "ft_epochs": 20})


def _train(epochs: int, warmup: int = 50) -> dict:
    return train_section(epochs, 0.001, weight_decay=0.05, warmup=warmup, **ONE_CHECKPOINT)


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    unlabeled = {"dataset": "mnist1d", "params": {"unlabeled": s["unlabeled"]}, "unlabeled": True, "batch_size": 256}
    labeled = {"dataset": "mnist1d", "batch_size": 128}
    mae_t = dict(VIT_T, mask_ratio=0.75, hidden_in_training=False, **DECODER)
    # -- teachers: MAE pre-training, then a fine-tuned copy --------------------------------------
    ctx.train("teacher_pretrained", {"seed": 0, "data": unlabeled, "student": {"name": "mae_vit", "params": mae_t},
                                     "objectives": [mae_objective(name=None)], "train": _train(s["teacher_epochs"])})
    pre = ctx.out / "teacher_pretrained" / "student.safetensors"
    pre_vit = export_encoder(pre, ctx.path("teacher_pretrained") / "encoder.safetensors")
    ft_summary = ctx.train("teacher_finetuned", {"seed": 0, "data": labeled,
                                                  "student": {"name": "vit", "params": VIT_T, "checkpoint": str(pre_vit.resolve())},
                                                  "objectives": [{"kind": "ce"}], "train": _train(s["teacher_epochs"], 20)})
    from safetensors.torch import load_file

    ft = ctx.path("teacher_finetuned") / "as_mae.safetensors"
    save_state(with_encoder(load_file(str(pre)), load_file(str(ctx.out / "teacher_finetuned" / "student.safetensors"))), ft)
    teachers = {"pretrained": str(pre.resolve()), "finetuned": str(ft.resolve())}

    def distill(name: str, seed: int, mask: float, teacher: str | None) -> Path:
        student = {"name": "mae_vit", "params": dict(VIT_S, mask_ratio=mask, hidden_in_training=False,
                                                      share_mask=teacher is not None, **DECODER)}
        base = {"seed": seed, "data": unlabeled, "student": student, "train": _train(s["epochs"])}
        if teacher is None:
            raw = compose(base, {"objectives": [mae_objective()]})
        else:
            teacher_model = {"name": "mae_vit", "params": mae_t, "checkpoint": teachers[teacher]}
            raw = compose(base, dmae_config(STUDENT_LAYER, TEACHER_LAYER, weight=1.0, adapter="mlp", teacher_model=teacher_model))
        ctx.train(f"{name}/seed{seed}", raw)
        return ctx.out / name / f"seed{seed}" / "student.safetensors"

    def fine_tune(name: str, seed: int, mae_weights: Path) -> float:
        vit_weights = export_encoder(mae_weights, mae_weights.parent / "encoder.safetensors")  # beside the MAE weights
        summary = ctx.train(f"finetune_{name}/seed{seed}", {
            "seed": seed, "data": labeled, "student": {"name": "vit", "params": VIT_S, "checkpoint": str(vit_weights.resolve())},
            "objectives": [{"kind": "ce"}], "train": _train(s["ft_epochs"], 20)})
        return summary["final"]["accuracy"]

    variants = {  # name: (mask ratio, teacher)
        "pretrained_75": (0.75, "pretrained"),
        "finetuned_75": (0.75, "finetuned"),
        "pretrained_95": (0.95, "pretrained"),
    }
    if not ctx.quick:  # references without a rule, left out of --quick to keep it under two minutes
        variants.update({"pretrained_90": (0.90, "pretrained"), "mae_only_75": (0.75, None)})
    acc: dict[str, list[float]] = {k: [] for k in variants}
    for seed in ctx.seeds:
        for name, (mask, teacher) in variants.items():
            acc[name].append(fine_tune(name, seed, distill(name, seed, mask, teacher)))
    metric = "test accuracy after fine-tuning"
    claims = [
        better("Distilling the MAE-pretrained teacher beats distilling the fine-tuned teacher", acc["pretrained_75"],
               acc["finetuned_75"], a_name="pretrained_75", b_name="finetuned_75", metric=metric),
        not_worse("Accuracy degrades gracefully from 75% to 95% masking (at most 2 points)", acc["pretrained_95"],
                  acc["pretrained_75"], a_name="pretrained_95", b_name="pretrained_75", tolerance=0.02, metric=metric),
    ]
    if not ctx.quick:
        claims[1].figures["pretrained_90"] = mean_std(acc["pretrained_90"])
        claims[0].figures["mae_only_75"] = mean_std(acc["mae_only_75"])
    claims[0].figures["teacher_finetuned_accuracy"] = ft_summary["final"]["accuracy"]
    return claims


REPRODUCTION = register(
    Reproduction(
        name="dmae",
        paper="Bai et al. 2023, arXiv:2208.12256",
        method="DMAE: MAE + feature distillation from a partially executed MAE teacher on visible patches",
        family="multi_teacher_feature_contrastive",
        summary="MNIST-1D tiny ViTs: DMAE from a pre-trained vs fine-tuned teacher; masks 75/90/95%; fine-tuning accuracy",
        run=run,
        recipe="dmae",
    )
)
