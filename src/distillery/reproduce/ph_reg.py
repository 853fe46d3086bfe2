"""#36 PH-Reg, in miniature: post hoc registers for a tiny ViT, distilled from its TTA-denoised tokens.

Paper: Chen, Yan, Zhou, Dai & Luo 2025, arXiv:2505.21501 (abstract: "PH-Reg initializes both
teacher and student networks from the same pre-trained ViT ... By applying test-time
augmentation to the teacher's inputs, we generate denoised dense embeddings free of artifacts,
which are then used to optimize only a small subset of unlocked student weights ... reduce the
number of artifact tokens, improving the segmentation and depth prediction of the student ViT
under zero-shot and linear probing"). The abstract gives no numbers.

Miniature (dataset ``digit_canvas``: one 8x8 scikit-learn digit pasted at a random position of a
16x16 canvas; 3000 training and 500 test canvases, test digits are held-out images; patches of
4x4 pixels: 16 tokens). For each seed:

  1. pre-training: a ``vit`` (dim 32, depth 3, 4 heads) trained by cross-entropy on the digit class
     (40 epochs; ``--quick``: 20);
  2. PH-Reg: teacher = that ViT, frozen, under test-time augmentation (whole-patch shifts in
     ``[-1, 1]^2`` and horizontal flips: 18 copies, each warped back; computed once over the
     training set); student = the same ViT + 4 registers, only the registers, the position
     embedding and the last block trainable; cosine + MSE on the final ``norm`` tokens; 10 epochs
     (``--quick``: 6), AdamW 1e-3, no labels.

Measured on the test canvases, for the pre-trained ViT ("teacher", single pass) and the PH-Reg
student:
  * outlier-norm rate: the share of patch tokens, in the residual stream after the last block,
    whose norm exceeds twice the median patch-token norm of that model (artifact tokens are
    high-norm tokens there, Darcet et al. 2024);
  * dense linear probe: logistic regression from each patch's ``norm`` token to its label (the
    digit covering it, 0-9, or background: 11 classes), trained on the training canvases' patches;
    the same for foreground vs background (figure only), and the classification accuracy.

Rules, fixed here before any run (means over seeds):
  1. PH-Reg lowers the outlier-norm rate: the student's rate is lower than the teacher's by more
     than the standard error of the difference, *and* the teacher has outlier tokens at all (a
     teacher rate of 0 means the miniature shows no artifacts, and the claim cannot be checked:
     reported as not held);
  2. PH-Reg improves the dense linear probe (11 classes): the student's accuracy is higher than
     the teacher's by more than the standard error of the difference.
Artifact tokens appear in large ViTs trained long on big data; a 3-block ViT trained for
seconds may not have them, which the figures then show.
"""

from __future__ import annotations

import torch

from . import Claim, Context, Reproduction, better, register
from ._common import Settings, patch_features, train_section

VIT = {"patch_size": 4, "dim": 32, "depth": 3, "heads": 4}
PATCH = 4
REGISTERS = 4
SETTINGS = Settings(quick={"pretrain_epochs": 20, "epochs": 6, "probe_train": 600},
                    full={"pretrain_epochs": 40, "epochs": 10, "probe_train": 1000})


def _probe(model, splits, n_train: int, num_patches: int) -> dict[str, float]:
    from ..evaluation.probes import linear_probe_accuracy

    xtr, ytr = patch_features(model, splits.train, n_train, num_patches)
    xte, yte = patch_features(model, splits.test, len(splits.test), num_patches)
    bg = splits.info["background"]
    return {
        "patch_probe": linear_probe_accuracy(xtr, ytr, xte, yte, max_iter=500),
        "fg_probe": linear_probe_accuracy(xtr, (ytr != bg).long(), xte, (yte != bg).long(), max_iter=500),
    }


def _measure(model, splits, probe_train: int) -> dict[str, float]:
    from ..recipes.ph_reg import outlier_rate, patch_token_norms

    n = splits.info["grid"] ** 2
    norms = patch_token_norms(model, splits.test.x, n)
    with torch.no_grad():
        model.eval()
        acc = float((model(splits.test.x).argmax(-1) == splits.test.y).float().mean())
        model.train()
    return {"outlier_rate": outlier_rate(norms), "max_over_median_norm": float(norms.max() / norms.median()),
            "accuracy": acc, **_probe(model, splits, probe_train, n)}


def run(ctx: Context) -> list[Claim]:
    from ..data import load_dataset
    from ..engine.checkpoint import load_weights
    from ..engine.trainer import Trainer, seed_everything
    from ..models import build_model
    from ..recipes.ph_reg import ph_reg_distiller, ph_reg_student, tta_teacher
    from ..teachers import PrecomputedTeacher

    s = SETTINGS(ctx.quick)
    params = {"size": 16, "n_train": 3000, "n_test": 500}
    splits = load_dataset("digit_canvas", **params)
    data = {"dataset": "digit_canvas", "params": params, "batch_size": 64}
    results: dict[str, dict[str, list[float]]] = {"teacher": {}, "ph_reg": {}}
    for seed in ctx.seeds:
        ctx.train(f"pretrained/seed{seed}", {
            "seed": seed, "data": data, "student": {"name": "vit", "params": VIT}, "objectives": [{"kind": "ce"}],
            "train": train_section(s["pretrain_epochs"], 0.002, weight_decay=0.05, warmup=50)})
        vit = build_model("vit", splits.input_shape, splits.num_classes, **VIT)
        load_weights(vit, ctx.out / "pretrained" / f"seed{seed}" / "student.safetensors")
        vit.eval()
        teacher = tta_teacher(vit, PATCH, shifts=1, flip=True)
        targets = torch.cat([teacher.signals(splits.train.x[i:i + 256], {}, ["norm"])["norm"] for i in range(0, len(splits.train), 256)])
        seed_everything(seed)
        student = ph_reg_student(vit, REGISTERS)
        distiller = ph_reg_distiller(student, PrecomputedTeacher({"norm": targets}, model=vit))
        Trainer(distiller, splits.train, eval_data=splits.test, out_dir=ctx.out / "ph_reg" / f"seed{seed}", seed=seed,
                epochs=s["epochs"], batch_size=64, optimizer={"name": "adamw", "lr": 1e-3},
                scheduler={"name": "cosine", "warmup_steps": 20}, eval_every=s["epochs"], progress=False, tensorboard=False).fit()
        for name, model in (("teacher", vit), ("ph_reg", student)):
            m = _measure(model, splits, s["probe_train"])
            for k, v in m.items():
                results[name].setdefault(k, []).append(v)
        ctx.log(f"    seed {seed}: teacher {_fmt(results['teacher'])} | ph_reg {_fmt(results['ph_reg'])}")
    t, p = results["teacher"], results["ph_reg"]
    outliers = better("PH-Reg reduces the share of outlier-norm (artifact) patch tokens",
                      p["outlier_rate"], t["outlier_rate"], a_name="ph_reg", b_name="teacher", higher=False, metric="outlier-norm rate")
    if max(t["outlier_rate"]) == 0.0:
        outliers.held = False
        outliers.figures["note"] = "the teacher has no outlier-norm tokens at this scale: the claim cannot be checked"
    outliers.rule += "; and the teacher's rate is above 0 (artifacts exist)"
    outliers.figures["max_over_median_norm"] = {"teacher": t["max_over_median_norm"], "ph_reg": p["max_over_median_norm"]}
    probe = better("PH-Reg improves the dense linear probe (each patch: digit 0-9 or background)",
                   p["patch_probe"], t["patch_probe"], a_name="ph_reg", b_name="teacher", metric="patch-probe accuracy")
    probe.figures["fg_bg_probe"] = {"teacher": t["fg_probe"], "ph_reg": p["fg_probe"]}
    probe.figures["classification_accuracy"] = {"teacher": t["accuracy"], "ph_reg": p["accuracy"]}
    return [outliers, probe]


def _fmt(r: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {v[-1]:.4f}" for k, v in r.items())


REPRODUCTION = register(
    Reproduction(
        name="ph_reg",
        paper="Chen et al. 2025, arXiv:2505.21501",
        method="PH-Reg: post hoc registers distilled from a frozen ViT's test-time-augmented dense features",
        family="multi_teacher_feature_contrastive",
        summary="tiny ViT on digit canvases: outlier-norm tokens and a dense linear probe, with vs without PH-Reg",
        run=run,
        recipe="ph_reg",
    )
)
