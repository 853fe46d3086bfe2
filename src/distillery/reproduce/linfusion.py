"""#29 LinFusion, in miniature: a tiny softmax ViT's attentions swapped for generalized
normalised linear attention, distilled from the original vs trained from scratch (digits);
and the cost of both attentions as the number of tokens grows.

Paper: Liu et al. 2024, arXiv:2409.02097 (abstract: the distilled model "achieves
performance on par with or superior to the original SD after only modest training, while
significantly reducing time and memory complexity"; generation up to 16K resolution).

Miniature (settings fixed here before any run; trainings are ordinary configs):

* data: scikit-learn digits (8x8 -> 16 tokens of 2x2 patches), batch 64;
* teacher: ``vit`` dim 32, depth 3, 4 heads, cross-entropy, 40 (quick 15) epochs, AdamW 2e-3,
  weight decay 0.05, cosine with 50 warm-up steps; seed 0;
* ``distilled``: ``linear_vit`` of the same shape started from the teacher's weights
  (``inherit_teacher_weights``), cross-entropy + KD on the logits (T = 1) + MSE of each
  block's attention output to the teacher's, all weights 1, 30 (quick 8) epochs, AdamW 1e-3;
* ``scratch``: the same ``linear_vit`` from a random initialisation, cross-entropy only, the
  same epochs and optimiser;
* reference without a rule: the teacher's weights in ``linear_vit`` before any training;
* cost: one attention layer (dim 64, 4 heads, batch 1, float32, one CPU thread), softmax and
  linear with the same weights, at 128, 512 and 2,048 tokens: median time of a forward +
  backward pass (5 repeats, quick 3) and the bytes of activations kept for backward
  (:func:`distillery.recipes.linfusion.token_scaling`).

Rules:
  1. on par with the original: the distilled model's mean test accuracy over the seeds is at
     most 2 points below the softmax teacher's;
  2. distillation from the softmax model beats training the linear model from scratch
     (higher by more than the standard error of the difference);
  3. time linear in tokens: from 512 to 2,048 tokens (4x), the linear attention's time grows
     by a factor < 8 and the softmax attention's by > 8 (8 = 4^1.5, the geometric midpoint
     of linear growth, 4, and quadratic growth, 16);
  4. memory linear in tokens: the same rule on the activation bytes.
"""

from __future__ import annotations

from ..recipes.linfusion import linfusion_config, token_scaling
from . import Claim, Context, Reproduction, better, exact, not_worse, register
from ._common import (
    ONE_CHECKPOINT,
    Settings,
    compose,
    run_grid,
    train_section,
    train_teacher,
)

VIT = {"patch_size": 2, "dim": 32, "depth": 3, "heads": 4, "mlp_ratio": 2.0}
TOKENS = (128, 512, 2048)
SETTINGS = Settings(quick={"teacher_epochs": 15, "epochs": 8, "repeats": 3}, full={"teacher_epochs": 40, "epochs": 30, "repeats": 5})


def _train(epochs: int, lr: float, warmup: int) -> dict:
    return train_section(epochs, lr, weight_decay=0.05, warmup=warmup, **ONE_CHECKPOINT)


def _ratio_claim(what: str, key: str, cost: dict) -> Claim:
    lin, soft = cost["linear"][key], cost["softmax"][key]
    r_lin, r_soft = lin[-1] / lin[-2], soft[-1] / soft[-2]
    return exact(
        f"{what} of linear attention grows linearly with the number of tokens (softmax: quadratically)",
        f"from {TOKENS[-2]} to {TOKENS[-1]} tokens, linear attention's {key} ratio < 8 and softmax attention's > 8",
        r_lin < 8 and r_soft > 8,
        {"linear_ratio": r_lin, "softmax_ratio": r_soft, "tokens": list(TOKENS), "linear": lin, "softmax": soft,
         "linear_log_slope": _slope(lin), "softmax_log_slope": _slope(soft)},
    )


def _slope(values: list[float]) -> float:
    import math

    return math.log(values[-1] / values[-2]) / math.log(TOKENS[-1] / TOKENS[-2])


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    data = {"dataset": "digits", "batch_size": 64}
    teacher = train_teacher(ctx, {"name": "vit", "params": VIT}, data, _train(s["teacher_epochs"], 2e-3, 50))
    teacher_acc = teacher.accuracy
    swapped = _swapped_accuracy(teacher.weights)
    base = {"data": data, "train": _train(s["epochs"], 1e-3, 20)}
    acc = run_grid(ctx, {
        "distilled": compose(base, {"teacher": teacher.section}, linfusion_config(VIT["depth"], VIT, temperature=1.0)),
        "scratch": compose(base, {"student": {"name": "linear_vit", "params": VIT}, "objectives": [{"kind": "ce"}]}),
    })
    cost = token_scaling(TOKENS, dim=64, heads=4, batch=1, repeats=s["repeats"])
    claims = [
        not_worse("The distilled linear-attention model is on par with the softmax original", acc["distilled"], [teacher_acc],
                  a_name="distilled", b_name="softmax teacher", tolerance=0.02, metric="test accuracy"),
        better("Distillation from the softmax model beats training the linear model from scratch", acc["distilled"],
               acc["scratch"], a_name="distilled", b_name="scratch", metric="test accuracy"),
        _ratio_claim("Time", "time_s", cost),
        _ratio_claim("Activation memory", "bytes", cost),
    ]
    claims[0].figures["swapped_before_training"] = swapped
    return claims


def _swapped_accuracy(teacher_weights: str) -> float:
    """Test accuracy of the teacher's weights in ``linear_vit`` before any training."""
    from pathlib import Path

    from safetensors.torch import load_file

    from ..data import load_dataset
    from ..engine.distiller import Distiller, Term
    from ..engine.trainer import Trainer
    from ..models import build_model
    from ..models.linear_attention import load_softmax_weights
    from ..objectives import CrossEntropy

    data = load_dataset("digits")
    model = build_model("linear_vit", data.input_shape, data.num_classes, **VIT)
    load_softmax_weights(model, load_file(str(Path(teacher_weights))))
    trainer = Trainer(Distiller(model, None, [Term("ce", CrossEntropy())]), data.train, eval_data=data.test,
                      progress=False, tensorboard=False, device="cpu")
    return trainer.evaluate()["accuracy"]


REPRODUCTION = register(
    Reproduction(
        name="linfusion",
        paper="Liu et al. 2024, arXiv:2409.02097",
        method="LinFusion: softmax attention swapped for generalized normalised linear attention, then distilled",
        family="multi_teacher_feature_contrastive",
        summary="digits tiny ViT: linear-attention student distilled vs from scratch; attention cost at 128-2048 tokens",
        run=run,
        recipe="linfusion",
    )
)
