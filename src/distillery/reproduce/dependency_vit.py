"""#34 DependencyViT, in miniature: leaf pruning of the patch dependency tree gives a Lite model,
recovered by logit distillation from the full model (digits).

Paper: Ding et al. 2023, arXiv:2304.03282 (abstract: reversed attention induces a dependency tree;
"The leaf nodes which rarely send messages can be pruned without hindering the model
performance, based on which we propose the lightweight DependencyViT-Lite to reduce the
computational and memory footprints"). Not really a distillation method: what distils is the
recovery of the pruned model from the full one.

Miniature (settings fixed here before the run; trainings are ordinary configs):

* data: scikit-learn digits (8x8, 2x2 patches -> 16 tokens), batch 64;
* full model: ``dependency_vit`` dim 32, depth 4, 4 heads, MLP ratio 2 (reversed attention in
  every block, mean-pooled head), cross-entropy, 60 (quick 30) epochs, AdamW 3e-3, weight decay
  0.05, cosine with 50 warm-up steps; trained once (seed 0);
* Lite schedule: ``keep_ratios`` [1, 1, 0.5, 0.5]: blocks 3 and 4 see the 8 patches with the
  largest received dependency mass in the block before (the leaves are pruned); its exact
  multiply-adds against the full model's (:func:`distillery.recipes.dependency_vit.cost`);
* ``lite_kd``: the Lite model started from the full model's weights, KD on the full model's
  logits (temperature 2), no labels; 30 (quick 15) epochs, AdamW 2e-3, cosine, 20 warm-up steps;
* ``lite_ce``: the same Lite start and training on the labels (cross-entropy) instead of the
  full model: Lite without distillation;
* references without a rule: the full model's weights pruned with no training, leaves pruned
  and random patches pruned (one random draw per seed).

Rules:
  1. the Lite model keeps accuracy within 2 points at a stated FLOP reduction: the mean test
     accuracy of ``lite_kd`` over the seeds is at most 0.02 below the full model's, and the Lite
     model needs at least 25% fewer multiply-adds per image than the full model;
  2. distillation recovers the Lite model better than labels alone: ``lite_kd``'s mean test
     accuracy is higher than ``lite_ce``'s by more than the standard error of the difference.

Picture: ``pruning.png``, test digits with the patches each block of the distilled Lite model
keeps, and the first block's dependency tree of the full model (an arrow from each patch to its
parent).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..recipes.dependency_vit import (
    cost,
    dependency_vit_model,
    lite_config,
    pruning_trace,
)
from . import Claim, Context, Reproduction, better, not_worse, register
from ._common import (
    ONE_CHECKPOINT,
    Settings,
    compose,
    load_student,
    run_grid,
    train_section,
    train_teacher,
)

VIT = {"patch_size": 2, "dim": 32, "depth": 4, "heads": 4, "mlp_ratio": 2.0}
KEEP = (1.0, 1.0, 0.5, 0.5)
TOLERANCE = 0.02
MIN_REDUCTION = 0.25
SETTINGS = Settings(quick={"teacher_epochs": 30, "epochs": 15}, full={"teacher_epochs": 60, "epochs": 30})


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    data = {"dataset": "digits", "batch_size": 64}
    full = dependency_vit_model(VIT)
    teacher = train_teacher(ctx, full, data, train_section(s["teacher_epochs"], 3e-3, weight_decay=0.05, warmup=50, **ONE_CHECKPOINT))
    base = {"data": data, "teacher": teacher.section,
            "train": train_section(s["epochs"], 2e-3, weight_decay=0.05, warmup=20, **ONE_CHECKPOINT)}
    acc = run_grid(ctx, {
        "lite_kd": compose(base, lite_config(VIT, KEEP, kd=1.0, ce=0.0, temperature=2.0)),
        "lite_ce": compose(base, lite_config(VIT, KEEP, kd=0.0, ce=1.0)),
    })
    macs = cost(VIT, KEEP)
    untrained = _pruned_without_training(teacher.weights, ctx.seeds)
    first = not_worse("DependencyViT-Lite, recovered by distillation from the full model, keeps accuracy within 2 points "
                      f"at >= {MIN_REDUCTION:.0%} fewer multiply-adds", acc["lite_kd"], [teacher.accuracy],
                      a_name="lite_kd", b_name="full model", tolerance=TOLERANCE, metric="test accuracy")
    first.held = bool(first.held and macs["reduction"] >= MIN_REDUCTION)
    first.rule += f", and the Lite model's multiply-adds per image are at least {MIN_REDUCTION:.0%} fewer than the full model's"
    first.figures.update({"macs": macs, "pruned_without_training": untrained})
    claims = [
        first,
        better("Distillation from the full model recovers the Lite model better than training it on the labels",
               acc["lite_kd"], acc["lite_ce"], a_name="lite_kd", b_name="lite_ce", metric="test accuracy"),
    ]
    try:
        _picture(ctx, teacher.weights)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:  # a picture never decides a claim
        ctx.log(f"  pruning.png not written: {exc}")
    return claims


def _pruned_without_training(weights: str, seeds: list[int]) -> dict[str, object]:
    """Test accuracy of the full model's weights run as the Lite model, leaves or random patches pruned."""
    from ..data import load_dataset
    from ..engine.checkpoint import load_weights
    from ..models import build_model

    data = load_dataset("digits")
    out: dict[str, object] = {}
    for select in ("leaf", "random"):
        net = build_model("dependency_vit", data.input_shape, data.num_classes,
                          **dependency_vit_model(VIT, KEEP, select=select)["params"])
        load_weights(net, Path(weights), what="dependency_vit (full)")
        net.eval()
        accs = []
        for seed in seeds if select == "random" else seeds[:1]:
            torch.manual_seed(seed)
            with torch.no_grad():
                accs.append(float((net(data.test.x).argmax(1) == data.test.y).float().mean()))
        out[select] = accs[0] if select == "leaf" else accs
    return out


def _picture(ctx: Context, teacher_weights: str, n: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..data import load_dataset

    data = load_dataset("digits")
    x = data.test.x[:n]
    shape, k = data.input_shape, data.num_classes
    lite = load_student(ctx.out / f"lite_kd/seed{ctx.seeds[0]}", dependency_vit_model(VIT, KEEP), shape, k)
    full = load_student(Path(teacher_weights).parent, dependency_vit_model(VIT), shape, k)
    kept = pruning_trace(lite, x)["kept"]  # [n, depth, 4, 4]
    parents = pruning_trace(full, x)["parents"]  # [n, 16]
    depth, (gh, gw) = kept.shape[1], full.grid
    ph, pw = shape[1] // gh, shape[2] // gw
    cmap = plt.get_cmap("gray_r").with_extremes(bad="lightsteelblue")  # pruned patches
    fig, axes = plt.subplots(n, depth + 1, figsize=(1.6 * (depth + 1), 1.6 * n))
    for r in range(n):
        img = x[r, 0].numpy()
        ax = axes[r, 0]
        ax.imshow(img, cmap="gray_r")
        for j, i in enumerate(parents[r].tolist()):
            (cy, cx), (py, px) = divmod(j, gw), divmod(i, gw)
            ax.annotate("", xy=(px * pw + pw / 2 - 0.5, py * ph + ph / 2 - 0.5), xytext=(cx * pw + pw / 2 - 0.5, cy * ph + ph / 2 - 0.5),
                        arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 0.7})
        for b in range(depth):
            mask = kept[r, b].repeat_interleave(ph, 0).repeat_interleave(pw, 1).numpy()
            axes[r, b + 1].imshow(np.where(mask, img, np.nan), cmap=cmap, vmin=float(img.min()), vmax=float(img.max()))
        if r == 0:
            axes[r, 0].set_title("tree (full, block 1)", fontsize=7)
            for b in range(depth):
                axes[r, b + 1].set_title(f"block {b + 1}: {int(kept[r, b].sum())} kept", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("DependencyViT-Lite (distilled) on test digits: pruned patches in blue", fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.out / "pruning.png", dpi=110)
    plt.close(fig)


REPRODUCTION = register(
    Reproduction(
        name="dependency_vit",
        paper="Ding et al. 2023, arXiv:2304.03282",
        method="DependencyViT: reversed attention -> patch dependency tree; leaf-pruned Lite model recovered by logit KD",
        family="generative",
        summary="digits DependencyViT: leaf-pruned Lite (26% fewer multiply-adds) recovered by KD vs by labels, vs the full model",
        run=run,
        recipe="dependency_vit",
    )
)
