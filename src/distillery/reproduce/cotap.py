"""#41 CoTAP, in miniature: does ranking-based correspondence distillation concentrate patch features?

Paper: Wen, Xu, Dai, Cong & Huang 2025, arXiv:2509.09429 (abstract: dense SSL suffers
"over-dispersion ... patches from the same instance/category scatter"; distilling patch
correspondences with a continuous-target AP loss and an object-aware filter gives "explicit
semantic concentration"; no numbers in the abstract).

Miniature (dataset ``digit_canvas``, 16x16 canvases, patches of 4x4 pixels: 16 tokens):

  * teacher: a ``vit`` (dim 32, depth 3, 4 heads) trained by cross-entropy to classify canvases
    holding one digit (3000 canvases, 30 epochs), then frozen; trained once
    (seed 0) and shared by every student (``--quick``: 15 epochs);
  * students: the same architecture from scratch, on 2000 unlabeled canvases holding two digits
    (test: 500 canvases of held-out digit images), same seeds for both variants, 12 epochs
    (``--quick``: 6):
      - ``feature``: dense feature distillation, 1 - cosine between the student's and the
        teacher's ``norm`` token at every position (the "strict spatial alignment" baseline);
      - ``cotap``: ``feature`` + the CoTAP term (weight 1; 16 prototypes in a 32-dim filter space;
        sigmoid temperature 0.05; soft targets exp((c - max c) / 0.1) from the teacher's cosine
        similarities; candidates: the other patches of the image and all patches of the next
        image in the batch).

Measured on the test canvases from each student's ``norm`` patch tokens:
  * dense linear probe: logistic regression from a patch's token to its label (the digit covering
    it, 0-9, or background), fitted on the patches of 600 (``--quick``: 300) training canvases and
    scored on 500 (``--quick``: 300) test canvases;
  * dispersion: the within-class share of the variance of the L2-normalised foreground patch
    features (:func:`~distillery.recipes.cotap.dispersion_ratio`; lower = more concentrated).

Rules, fixed here before any run (means over seeds):
  1. CoTAP concentrates patch features: ``cotap``'s dispersion is lower than ``feature``'s by more
     than the standard error of the difference;
  2. CoTAP improves the dense linear probe: ``cotap``'s probe accuracy is higher than
     ``feature``'s (same rule).
"""

from __future__ import annotations

from pathlib import Path

from ..recipes.cotap import cotap_config, feature_objective
from . import Claim, Context, Reproduction, better, register
from ._common import (
    Settings,
    by_metric,
    compose,
    load_student,
    patch_features,
    run_grid,
    train_section,
    train_teacher,
)

VIT = {"name": "vit", "params": {"patch_size": 4, "dim": 32, "depth": 3, "heads": 4}}
SETTINGS = Settings(quick={"teacher_epochs": 15, "epochs": 6, "probe_train": 300, "probe_test": 300},
                    full={"teacher_epochs": 30, "epochs": 12, "probe_train": 600, "probe_test": 500})


def _measure(run_dir: Path, splits, probe_train: int, probe_test: int) -> dict[str, float]:
    from ..evaluation.probes import linear_probe_accuracy
    from ..recipes.cotap import dispersion_ratio

    model = load_student(run_dir, VIT, splits.input_shape, splits.num_classes)
    n = splits.info["grid"] ** 2
    xtr, ytr = patch_features(model, splits.train, probe_train, n)
    xte, yte = patch_features(model, splits.test, probe_test, n)
    return {"patch_probe": linear_probe_accuracy(xtr, ytr, xte, yte, max_iter=500),
            "dispersion": dispersion_ratio(xte, yte, ignore=splits.info["background"])}


def run(ctx: Context) -> list[Claim]:
    from ..data import load_dataset

    s = SETTINGS(ctx.quick)
    single = {"size": 16, "n_train": 3000, "n_test": 500}
    params = {"size": 16, "min_digits": 2, "max_digits": 2, "n_train": 2000, "n_test": 500}
    splits = load_dataset("digit_canvas", **params)
    teacher = train_teacher(ctx, VIT, {"dataset": "digit_canvas", "params": single, "batch_size": 64},
                            train_section(s["teacher_epochs"], 0.003, weight_decay=0.05, warmup=50), precompute=True)
    teacher_metrics = _measure(teacher.run_dir, splits, s["probe_train"], s["probe_test"])
    base = {"data": {"dataset": "digit_canvas", "params": params, "batch_size": 64}, "student": VIT, "teacher": teacher.section,
            "train": train_section(s["epochs"], 0.002, weight_decay=0.05, warmup=50)}
    variants = {"feature": compose(base, {"objectives": [feature_objective("norm")]}),
                "cotap": compose(base, cotap_config(32, "norm", weight=1.0))}

    def measure(run) -> dict[str, float]:
        m = _measure(run.dir, splits, s["probe_train"], s["probe_test"])
        ctx.log(f"    {run.variant} seed {run.seed}: patch probe {m['patch_probe']:.4f}, dispersion {m['dispersion']:.4f}")
        return m

    res = by_metric(run_grid(ctx, variants, measure))
    claims = [
        better("CoTAP concentrates patch features of the same digit (lower intra-class dispersion)",
               res["cotap"]["dispersion"], res["feature"]["dispersion"], a_name="cotap", b_name="feature", higher=False,
               metric="within-class variance share"),
        better("CoTAP improves the dense linear probe (each patch: digit 0-9 or background)",
               res["cotap"]["patch_probe"], res["feature"]["patch_probe"], a_name="cotap", b_name="feature", metric="patch-probe accuracy"),
    ]
    claims[0].figures["teacher"] = teacher_metrics["dispersion"]
    claims[1].figures["teacher"] = teacher_metrics["patch_probe"]
    return claims


REPRODUCTION = register(
    Reproduction(
        name="cotap",
        paper="Wen et al. 2025, arXiv:2509.09429",
        method="CoTAP: patch-correspondence distillation with a continuous-target AP loss and an object-aware filter",
        family="multi_teacher_feature_contrastive",
        summary="two-digit canvases, frozen ViT teacher: dense probe and intra-class patch dispersion with vs without CoTAP",
        run=run,
        recipe="cotap",
    )
)
