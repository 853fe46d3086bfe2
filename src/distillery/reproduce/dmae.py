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


def _data(s: dict) -> tuple[dict, dict]:
    """The unlabeled (distillation) and labeled (fine-tuning) data sections of settings ``s``."""
    unlabeled = {"dataset": "mnist1d", "params": {"unlabeled": s["unlabeled"]}, "unlabeled": True, "batch_size": 256}
    return unlabeled, {"dataset": "mnist1d", "batch_size": 128}


def train_teachers(ctx: Context, s: dict) -> tuple[dict[str, str], dict]:
    """The two teachers of settings ``s`` (seed 0): the MAE-pretrained ``mae_vit`` and its
    fine-tuned copy put back into the MAE; returns ``({"pretrained": weights, "finetuned":
    weights}, fine-tuning summary of the teacher)``."""
    from safetensors.torch import load_file

    unlabeled, labeled = _data(s)
    mae_t = dict(VIT_T, mask_ratio=0.75, hidden_in_training=False, **DECODER)
    ctx.train("teacher_pretrained", {"seed": 0, "data": unlabeled, "student": {"name": "mae_vit", "params": mae_t},
                                     "objectives": [mae_objective(name=None)], "train": _train(s["teacher_epochs"])})
    pre = ctx.out / "teacher_pretrained" / "student.safetensors"
    pre_vit = export_encoder(pre, ctx.path("teacher_pretrained") / "encoder.safetensors")
    ft_summary = ctx.train("teacher_finetuned", {"seed": 0, "data": labeled,
                                                  "student": {"name": "vit", "params": VIT_T, "checkpoint": str(pre_vit.resolve())},
                                                  "objectives": [{"kind": "ce"}], "train": _train(s["teacher_epochs"], 20)})
    ft = ctx.path("teacher_finetuned") / "as_mae.safetensors"
    save_state(with_encoder(load_file(str(pre)), load_file(str(ctx.out / "teacher_finetuned" / "student.safetensors"))), ft)
    return {"pretrained": str(pre.resolve()), "finetuned": str(ft.resolve())}, ft_summary


def distill_arm(ctx: Context, s: dict, teachers: dict[str, str], name: str, seed: int, mask: float,
                teacher: str | None) -> Path:
    """One student of settings ``s``: MAE at ``mask`` (+ DMAE from ``teachers[teacher]``; plain
    MAE when ``teacher`` is None) for ``s["epochs"]`` epochs into ``name/seed<k>``; returns its
    ``mae_vit`` weights."""
    unlabeled, _ = _data(s)
    student = {"name": "mae_vit", "params": dict(VIT_S, mask_ratio=mask, hidden_in_training=False,
                                                  share_mask=teacher is not None, **DECODER)}
    base = {"seed": seed, "data": unlabeled, "student": student, "train": _train(s["epochs"])}
    if teacher is None:
        raw = compose(base, {"objectives": [mae_objective()]})
    else:
        mae_t = dict(VIT_T, mask_ratio=0.75, hidden_in_training=False, **DECODER)
        teacher_model = {"name": "mae_vit", "params": mae_t, "checkpoint": teachers[teacher]}
        raw = compose(base, dmae_config(STUDENT_LAYER, TEACHER_LAYER, weight=1.0, adapter="mlp", teacher_model=teacher_model))
    ctx.train(f"{name}/seed{seed}", raw)
    return ctx.out / name / f"seed{seed}" / "student.safetensors"


def fine_tune_arm(ctx: Context, s: dict, name: str, seed: int, mae_weights: Path | None) -> float:
    """Test accuracy of the student ``vit`` fine-tuned (cross-entropy, ``s["ft_epochs"]``) from
    the encoder of ``mae_weights`` (``None``: from scratch, the student without any teacher)."""
    _, labeled = _data(s)
    student: dict = {"name": "vit", "params": VIT_S}
    if mae_weights is not None:
        vit_weights = export_encoder(mae_weights, mae_weights.parent / "encoder.safetensors")  # beside the MAE weights
        student["checkpoint"] = str(vit_weights.resolve())
    summary = ctx.train(f"finetune_{name}/seed{seed}", {"seed": seed, "data": labeled, "student": student,
                                                         "objectives": [{"kind": "ce"}], "train": _train(s["ft_epochs"], 20)})
    return summary["final"]["accuracy"]


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    # -- teachers: MAE pre-training, then a fine-tuned copy --------------------------------------
    teachers, ft_summary = train_teachers(ctx, s)
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
            acc[name].append(fine_tune_arm(ctx, s, name, seed, distill_arm(ctx, s, teachers, name, seed, mask, teacher)))
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


# -- diagnosis (issue 15): premise, power, scale ---------------------------------------------------
#: distillation epochs of the scale study, as multiples of the reproduction's own ``epochs``
SCALE = (1.0, 1.5, 2.0)
#: fine-tuning epochs of the scale study (full / quick): shorter than ``run``'s, to keep it cheap
DIAG_FT_EPOCHS = {False: 10, True: 2}


def _probe(path: Path, params: dict) -> float:
    """Linear-probe test accuracy (MNIST-1D, all tokens of ``encoder.norm``) of a frozen ``mae_vit``."""
    from ..data import load_dataset
    from ._common import linear_probe, load_student

    model = load_student(path.parent, {"name": "mae_vit", "params": params}, (40,), 10, file=path.name)
    return linear_probe(model, load_dataset("mnist1d"), "encoder.norm", C=1.0)


def diagnose(ctx: Context):
    """Premise, power and scale of the claims (``distillery reproduce dmae --diagnose``).

    Size: the students' distillation epochs (``SCALE`` x the reproduction's ``epochs``: 20, 30,
    40 full; 4, 6, 8 quick) for the two arms of claim 1 (``pretrained_75``, ``finetuned_75``);
    fine-tuning ``DIAG_FT_EPOCHS`` epochs. Premise pair: the fine-tuned teacher against the
    student ``vit`` trained on the labels without any teacher (no pre-training, no distillation:
    it does not depend on the distillation epochs, so it is trained once per seed). At the
    reproduction's own size, the premise DMAE rests on is also measured: linear probes of the
    pre-trained teacher's encoder against the plain-MAE student's (``mae_only_75``, seed 0) and
    the DMAE student's (``pretrained_75``, seed 0)."""
    from .diagnosis import Diagnosis, PaperEffect, ScalePoint

    base = SETTINGS(ctx.quick)
    base["ft_epochs"] = DIAG_FT_EPOCHS[ctx.quick]
    teachers, ft_summary = train_teachers(ctx, base)
    # the representation DMAE distils: is the pre-trained teacher's richer than the student's own MAE?
    probes = {"pre-trained teacher": _probe(Path(teachers["pretrained"]), dict(VIT_T, **DECODER))}
    mae_only = distill_arm(ctx, base, teachers, "mae_only_75", ctx.seeds[0], 0.75, None)
    probes["mae_only_75 student"] = _probe(mae_only, dict(VIT_S, **DECODER))
    alone = [fine_tune_arm(ctx, base, "alone", seed, None) for seed in ctx.seeds]
    points = []
    for k, factor in enumerate(SCALE):
        s = dict(base, epochs=round(base["epochs"] * factor))
        arms: dict[str, list[float]] = {"teacher": [ft_summary["final"]["accuracy"]], "alone": list(alone),
                                        "pretrained_75": [], "finetuned_75": []}
        for seed in ctx.seeds:
            for arm, teacher in (("pretrained_75", "pretrained"), ("finetuned_75", "finetuned")):
                weights = distill_arm(ctx, s, teachers, f"e{s['epochs']}/{arm}", seed, 0.75, teacher)
                arms[arm].append(fine_tune_arm(ctx, s, f"e{s['epochs']}/{arm}", seed, weights))
                if k == 0 and seed == ctx.seeds[0] and arm == "pretrained_75":
                    probes["pretrained_75 student"] = _probe(weights, dict(VIT_S, **DECODER))
        points.append(ScalePoint(f"{s['epochs']} epochs", float(s["epochs"]), arms))
    points[0].arms["mae_only_75_probe"] = [probes["mae_only_75 student"]]
    points[0].arms["teacher_pretrained_probe"] = [probes["pre-trained teacher"]]
    points[0].arms["pretrained_75_probe"] = [probes["pretrained_75 student"]]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in probes.items())
    return Diagnosis(
        metric="test accuracy after fine-tuning", higher=True, size_name="distillation epochs of the students",
        points=points, comparisons=[("pretrained_75", "finetuned_75")], premise=("teacher", "alone"), min_room=0.02,
        paper_effects=[
            PaperEffect(1, "+1.2 points ImageNet top-1 (84.0% vs 82.8% distilling a fine-tuned ViT-L)", 0.012),
            PaperEffect(2, "84.0% at 75% vs 83.6% at 95% masking: a 0.4-point loss (the rule allows 2 points)", -0.004,
                        "not in the scale study (its arms are claim 1's only)"),
        ],
        checks=[
            ("Loss: L1 between the L2-normalised teacher tokens and the L2-normalised projected student tokens, weight 1, "
            "as in the authors' code (UCSC-VLAA/DMAE, models_mae_distill.py / engine_distill.py): no bug "
            "(test_normalized_l1_matches_a_loop_and_gradcheck)."),
            ("Teacher input and depth: the frozen teacher encodes exactly the student's visible patches of the same step, "
            "stops after its block (no later block, no decoder), without gradients; both taps are block outputs before the "
            "final norm, as in the authors' code: no bug "
            "(test_the_teacher_encodes_the_students_visible_patches_and_stops_after_its_block)."),
            ("Mechanism: the term pulls the student's tokens onto the teacher's truncated features, and this carries over to "
            "the unmasked input (normalised-L1 distance about 0.02 against 0.25 without the term) "
            "(test_distillation_pulls_the_student_to_the_teachers_truncated_features)."),
            ("Deviations, not bugs: the authors align the student's block 9 of 12 with the teacher's block 18 of 24 (3/4 "
            "depth); here the student's last block (2 of 2) with the teacher's 2 of 3. Their default projection head is "
            "one linear layer, here an MLP; their pixel target is normalised per patch (norm_pix_loss), here raw (a patch "
            "is 2 samples)."),
            f"Premise of DMAE itself, linear probes (all tokens, at the reproduction's size, seed 0): {shown}. "
            "Scale-study fine-tuning is " + f"{base['ft_epochs']} epochs (run: {SETTINGS(ctx.quick)['ft_epochs']}).",
        ],
    )


REPRODUCTION = register(
    Reproduction(
        name="dmae",
        paper="Bai et al. 2023, arXiv:2208.12256",
        method="DMAE: MAE + feature distillation from a partially executed MAE teacher on visible patches",
        family="multi_teacher_feature_contrastive",
        summary="MNIST-1D tiny ViTs: DMAE from a pre-trained vs fine-tuned teacher; masks 75/90/95%; fine-tuning accuracy",
        run=run,
        recipe="dmae",
        diagnose=diagnose,
    )
)
