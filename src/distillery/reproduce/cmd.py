"""#16 CMD, in miniature: does MIL-attention cross-level distillation beat plain DINO on
fine-grained classes?

Paper: Bi, Ji, Yi, Zhan & Xia 2024, "Cross-Level Multi-Instance Distillation for
Self-Supervised Fine-Grained Visual Categorization", arXiv:2401.08860 (abstract: CMD
"outperforms the contemporary method by upto 10.14% and existing state-of-the-art
self-supervised learning approaches by upto 19.78% on both top-1 accuracy and Rank-1
retrieval metric", on CUB-200-2011, Stanford Cars and FGVC Aircraft).

Miniature (``fine_grained_digits``: 16x16 images holding a handwritten digit, the nuisance, and
a 4x4 marker whose pattern, one of 10, is the class; see :mod:`distillery.data.miniature.fine_grained`).
Self-supervised pre-training with the same seeds, data, crops (2 image-level 16x16 + 4
region-level 8x8, DINO scales), CNN (channels 16, 32), DINO head (64 prototypes), EMA teacher
(0.996 -> 1), AdamW (lr 1e-3, wd 0.04, cosine with 100 warm-up steps):

  * ``dino``: mean pooling of the patch tokens, the DINO (intra-level) term only;
  * ``cmd``: MIL attention pooling, the intra-level term + the inter-level term (weight 1).

Evaluation on the EMA teacher's frozen pooled features (DINO's protocol): a linear probe
(logistic regression, C=1) trained on the train split's fine-grained labels and tested on
unseen digits, and leave-one-out Rank-1 retrieval (R@1, cosine) on the test split. A randomly
initialised network is reported as a reference figure.

Rules, fixed here before any run:
  1. CMD's linear-probe accuracy is higher than DINO's (mean over seeds, by more than the
     standard error of the difference);
  2. CMD's R@1 is higher than DINO's (same rule);
  3. mechanism: CMD's attention pooling puts more weight on the tokens covering the key patch
     than mean pooling does (mean share over test images, same rule).
"""

from __future__ import annotations

import copy
import json
import math

import torch

from ..data import load_dataset
from ..evaluation.probes import (
    extract_features,
    label_recall_at_k,
    linear_probe_accuracy,
)
from ..models.multicrop import multicrop_convnet
from ..recipes.cmd import (
    cmd_config,
    load_teacher_weights,
    marker_attention_mass,
    multicrop_spec,
)
from . import Claim, Context, Reproduction, better, register
from ._common import (
    Settings,
    by_metric,
    compose,
    probe_features,
    run_grid,
    train_section,
)

OUT_DIM = 64
CHANNELS = [16, 32]
SETTINGS = Settings(quick={"copies": 1, "epochs": 10}, full={"copies": 3, "epochs": 30})
CROPS = multicrop_spec(2, 4, global_size=16, local_size=8, global_scale=[0.4, 1.0], local_scale=[0.05, 0.4])


def _config(variant: str, s: dict) -> dict:
    mil = variant == "cmd"
    return compose(
        {"data": {"dataset": "fine_grained_digits", "params": {"copies": s["copies"]}, "batch_size": 128},
         "student": {"name": "multicrop_convnet", "params": {"channels": CHANNELS, "pool": "mil" if mil else "mean", "out_dim": OUT_DIM}},
         "train": train_section(s["epochs"], 0.001, weight_decay=0.04, warmup=100)},
        cmd_config(OUT_DIM, inter_weight=1.0 if mil else None, momentum=0.996, view=CROPS),
    )


def _evaluate(model, splits) -> dict:
    ftr, ytr, fte, yte = probe_features(model, splits, "embedding")
    att, _ = extract_features(model, splits.test, "attention")
    boxes = torch.as_tensor(splits.info["test_marker_boxes"])
    mass = marker_attention_mass(att, boxes, splits.input_shape[1:])
    return {"probe": linear_probe_accuracy(ftr, ytr, fte, yte), "r1": label_recall_at_k(fte, yte, 1),
            "marker_attention": float(mass.mean())}


def _final_train_value(run_dir, key: str) -> float:
    """The last logged training value of ``key`` in a run's ``metrics.jsonl``."""
    value = float("nan")
    with open(run_dir / "metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if record.get("split") == "train" and key in record:
                value = float(record[key])
    return value


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    splits = load_dataset("fine_grained_digits", copies=s["copies"])

    def measure(run) -> dict:
        if run.variant == "random_init":  # a reference figure: no training
            torch.manual_seed(run.seed)
            return _evaluate(multicrop_convnet(splits.input_shape, channels=CHANNELS, pool="mil", out_dim=OUT_DIM), splits)
        net = multicrop_convnet(splits.input_shape, channels=CHANNELS, pool="mil" if run.variant == "cmd" else "mean",
                                out_dim=OUT_DIM)
        teacher = load_teacher_weights(run.dir, copy.deepcopy(net))
        figures = _evaluate(teacher, splits)
        figures["final_intra_loss"] = _final_train_value(run.dir, "intra")
        ctx.log(f"  {run.name}: linear probe {figures['probe']:.3f}, R@1 {figures['r1']:.3f}, "
                f"attention on the marker {figures['marker_attention']:.3f}, "
                f"final DINO loss {figures['final_intra_loss']:.3f} (ln K = {math.log(OUT_DIM):.3f})")
        return figures

    res = by_metric(run_grid(ctx, {"random_init": None, "dino": _config("dino", s), "cmd": _config("cmd", s)}, measure))
    probe = better("MIL-attention cross-level distillation (CMD) beats plain DINO on the fine-grained linear probe",
                   res["cmd"]["probe"], res["dino"]["probe"], a_name="cmd", b_name="dino", metric="linear-probe accuracy")
    probe.figures["random_init"] = res["random_init"]["probe"]
    # a DINO loss at ln K means the teacher's targets became uniform (collapse)
    probe.figures["final_intra_loss_dino"] = res["dino"]["final_intra_loss"]
    probe.figures["final_intra_loss_cmd"] = res["cmd"]["final_intra_loss"]
    probe.figures["ln_K"] = math.log(OUT_DIM)
    r1 = better("CMD beats plain DINO on fine-grained Rank-1 retrieval",
                res["cmd"]["r1"], res["dino"]["r1"], a_name="cmd", b_name="dino", metric="R@1")
    r1.figures["random_init"] = res["random_init"]["r1"]
    attention = better("CMD's MIL attention weights the key patch more than mean pooling does",
                       res["cmd"]["marker_attention"], res["dino"]["marker_attention"], a_name="cmd", b_name="dino_mean_pool",
                       metric="pooling weight on tokens covering the marker")
    return [probe, r1, attention]


REPRODUCTION = register(
    Reproduction(
        name="cmd",
        paper="Bi et al. 2024, arXiv:2401.08860",
        method="CMD: cross-level multi-instance distillation (MIL attention on DINO multi-crop)",
        family="self_distillation",
        summary="DINO vs DINO + MIL attention + cross-level terms on digits with marker-defined fine-grained classes",
        run=run,
        recipe="cmd",
    )
)
