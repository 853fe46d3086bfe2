"""#13 Self-distillation for further pre-training, in miniature (a tiny ViT, MNIST-1D -> shifted MNIST-1D).

Paper: Lee, Kang, Lee, Hwang, Kawaguchi 2023, "Self-Distillation for Further Pre-training of
Transformers", arXiv:2210.02871 (abstract: a ViT "is vulnerable to overfitting as we continue
to pretrain the model on target unlabeled data"; self-distillation from the further-pretrained
model into a student restarted from the initial weights "outperforms all the relevant
baselines" on image and text classification).

Miniature (all settings fixed here before any run; every stage is an ordinary ``distillery
run`` config, see each run's ``config.yaml``):

* model: ``mae_vit`` (the reference ViT in an MAE), patches of 2 samples (20 tokens), dim 32,
  depth 3, 4 heads, mask ratio 0.75 (MAE's default), a 1-block decoder of width 32;
* theta0, once (seed 0): MAE on the *source* domain, MNIST-1D's 4,000 train signals plus 10,000
  generated ones (labels unused), 4 (quick) / 10 epochs, batch 256;
* target domain: ``mnist1d_shifted`` (time-reversed + a sinusoidal baseline of amplitude 1 and
  period 10), 20 labels per class (200), 2,000 (quick) / 4,000 unlabeled target signals, the
  1,000 shifted test signals for evaluation;
* further pre-training (``further_pt``): theta0 trained by MAE on the target data (labeled and
  unlabeled signals, labels unused), 16 (quick) / 40 epochs, batch 128; its checkpoint at half
  the epochs is kept (``further_pt_half``);
* self-distillation (``sd``): a student restarted from theta0, trained by MAE + 1.0 x MSE of its
  final hidden tokens to those of the frozen ``further_pt`` model, same epochs and optimiser;
* fine-tuning, for each of theta0 (``direct``), ``further_pt_half``, ``further_pt``, ``sd`` and,
  as a reference without a rule, a random initialisation (``scratch``):
  the encoder as a plain ``vit`` trained by cross-entropy on the 200 target labels, 30 (quick)
  / 60 epochs, batch 32, AdamW lr 5e-4, weight decay 0.05, cosine; target test accuracy.
* seeds vary the further pre-training, self-distillation and fine-tuning runs (masks, data
  order, nothing else); theta0 and the labeled subset are shared.

Rules (mean target test accuracy after fine-tuning over the seeds):
  1. sd beats further_pt (higher by more than the standard error of the difference);
  2. sd beats direct (same rule);
  3. further pre-training alone is on par with direct fine-tuning or better: further_pt is at
     most 1 point below direct;
  4. further pre-training overfits: fine-tuning from further_pt_half beats fine-tuning from the
     end of further pre-training (same rule as 1).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..engine.checkpoint import save_state
from ..recipes.sd_further_pretraining import (
    export_encoder,
    further_pretraining_config,
    self_distillation_config,
    student_from_checkpoint,
)
from . import Claim, Context, Reproduction, better, mean_std, not_worse, register
from ._common import ONE_CHECKPOINT, Settings, compose, train_section

VIT = {"patch_size": 2, "dim": 32, "depth": 3, "heads": 4, "mlp_ratio": 2.0}
MAE = dict(VIT, mask_ratio=0.75, decoder_dim=32, decoder_depth=1, decoder_heads=2)
PLAIN_MAE = dict(MAE, hidden_in_training=False)  # the same weights; skips the unmasked pass when only MAE trains
LABELS_PER_CLASS = 20
SETTINGS = Settings(
    quick={"source_unlabeled": 10000, "source_epochs": 4, "target_unlabeled": 2000, "pt_epochs": 16, "ft_epochs": 30},
    full={"source_unlabeled": 10000, "source_epochs": 10, "target_unlabeled": 4000, "pt_epochs": 40, "ft_epochs": 60},
)


def _train(epochs: int, lr: float, warmup: int, **extra) -> dict:
    # evaluated once, at the end; one checkpoint (at the end) unless asked otherwise
    return train_section(epochs, lr, weight_decay=0.05, warmup=warmup, **{**ONE_CHECKPOINT, **extra})


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    # -- theta0: MAE on the source domain -------------------------------------------------------
    ctx.train("theta0", compose({
        "seed": 0,
        "data": {"dataset": "mnist1d", "params": {"unlabeled": s["source_unlabeled"]}, "unlabeled": True, "batch_size": 256},
        "student": {"name": "mae_vit", "params": PLAIN_MAE},
        "train": _train(s["source_epochs"], 1e-3, 50),
    }, further_pretraining_config()))
    theta0 = str((ctx.out / "theta0" / "student.safetensors").resolve())
    target = {"dataset": "mnist1d_shifted", "params": {"labels_per_class": LABELS_PER_CLASS, "unlabeled": s["target_unlabeled"]},
              "unlabeled": True, "batch_size": 128}
    n_target = 10 * LABELS_PER_CLASS + s["target_unlabeled"]
    half_step = math.ceil(n_target / 128) * (s["pt_epochs"] // 2)
    labeled = {"dataset": "mnist1d_shifted", "params": {"labels_per_class": LABELS_PER_CLASS}, "batch_size": 32}

    def fine_tune(name: str, seed: int, mae_weights: Path | None) -> float:
        student = {"name": "vit", "params": VIT}
        if mae_weights is not None:  # None: from a random initialisation (the "scratch" reference)
            vit_weights = export_encoder(mae_weights, ctx.path(f"{name}/seed{seed}") / "encoder.safetensors")
            student["checkpoint"] = str(vit_weights.resolve())
        summary = ctx.train(f"finetune_{name}/seed{seed}", {
            "seed": seed, "data": labeled,
            "student": student,
            "objectives": [{"kind": "ce"}],
            "train": _train(s["ft_epochs"], 5e-4, 20),
        })
        return summary["final"]["accuracy"]

    acc: dict[str, list[float]] = {k: [] for k in ("scratch", "direct", "further_pt_half", "further_pt", "sd")}
    for seed in ctx.seeds:
        acc["scratch"].append(fine_tune("scratch", seed, None))
        acc["direct"].append(fine_tune("direct", seed, Path(theta0)))
        # -- further pre-training on the target domain (kept at half and at the end) -------------
        fpt_dir = ctx.out / "further_pt" / f"seed{seed}"
        ctx.train(f"further_pt/seed{seed}", compose({
            "seed": seed, "data": target,
            "student": {"name": "mae_vit", "params": PLAIN_MAE, "checkpoint": theta0},
            "train": _train(s["pt_epochs"], 1e-3, 50, checkpoint_every=half_step, keep_checkpoints=4),
        }, further_pretraining_config()))
        half = ctx.path(f"further_pt_half/seed{seed}") / "mae.safetensors"
        save_state(student_from_checkpoint(fpt_dir / "checkpoints" / f"step-{half_step:08d}"), half)
        acc["further_pt_half"].append(fine_tune("further_pt_half", seed, half))
        fpt = fpt_dir / "student.safetensors"
        acc["further_pt"].append(fine_tune("further_pt", seed, fpt))
        # -- self-distillation: restart from theta0, MAE + hidden-state MSE to the frozen teacher --
        ctx.train(f"sd/seed{seed}", compose({
            "seed": seed, "data": target,
            "student": {"name": "mae_vit", "params": MAE, "checkpoint": theta0},
            "train": _train(s["pt_epochs"], 1e-3, 50),
        }, self_distillation_config(1.0, teacher_model={"name": "mae_vit", "params": MAE, "checkpoint": str(fpt.resolve())},
                                    precompute=True)))
        acc["sd"].append(fine_tune("sd", seed, ctx.out / "sd" / f"seed{seed}" / "student.safetensors"))
    metric = "target test accuracy after fine-tuning"
    claims = [
        better("Self-distillation beats further pre-training", acc["sd"], acc["further_pt"],
               a_name="sd", b_name="further_pt", metric=metric),
        better("Self-distillation beats direct fine-tuning of the initial model", acc["sd"], acc["direct"],
               a_name="sd", b_name="direct", metric=metric),
        not_worse("Further pre-training alone is on par with direct fine-tuning or better", acc["further_pt"], acc["direct"],
                  a_name="further_pt", b_name="direct", tolerance=0.01, metric=metric),
        better("Further pre-training overfits: its half-way checkpoint fine-tunes better than its end",
               acc["further_pt_half"], acc["further_pt"], a_name="further_pt_half", b_name="further_pt", metric=metric),
    ]
    # for reference (no rule): the same fine-tuning from a random initialisation
    claims[1].figures["scratch"] = mean_std(acc["scratch"])
    return claims


REPRODUCTION = register(
    Reproduction(
        name="sd_further_pretraining",
        paper="Lee et al. 2023, arXiv:2210.02871",
        method="Self-distillation for further pre-training (MAE) of a ViT",
        family="self_distillation",
        summary="tiny ViT: MAE on MNIST-1D, further pre-training vs SD on a shifted MNIST-1D, few-label fine-tuning",
        run=run,
        recipe="sd_further_pretraining",
    )
)
