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
from ..models.multicrop import multicrop_convnet
from ..evaluation.probes import extract_features, label_recall_at_k, linear_probe_accuracy
from ..recipes.cmd import load_teacher_weights, marker_attention_mass
from . import Claim, Context, Reproduction, better, register

OUT_DIM = 64
CHANNELS = [16, 32]


def _settings(quick: bool) -> dict:
    if quick:
        return {"copies": 1, "epochs": 10}
    return {"copies": 3, "epochs": 30}


def _config(variant: str, seed: int, s: dict) -> dict:
    mil = variant == "cmd"
    objectives = [{
        "name": "intra", "kind": "dino", "inputs": {"student": "student.logits", "teacher": "teacher.global"},
        "params": {"out_dim": OUT_DIM, "student_temperature": 0.1, "teacher_temperature": 0.04,
                   "warmup_teacher_temperature": 0.04},
    }]
    if mil:
        objectives.append({"name": "inter", "kind": "cross_level_dino", "weight": 1.0,
                           "params": {"out_dim": OUT_DIM, "student_temperature": 0.1, "target_temperature": 0.04}})
    crops = {"name": "multicrop", "n_global": 2, "n_local": 4, "global_size": 16, "local_size": 8,
             "global_scale": [0.4, 1.0], "local_scale": [0.05, 0.4]}
    return {
        "seed": seed,
        "data": {"dataset": "fine_grained_digits", "params": {"copies": s["copies"]}, "batch_size": 128,
                 "student_view": {"transforms": [crops]}},
        "student": {"name": "multicrop_convnet",
                    "params": {"channels": CHANNELS, "pool": "mil" if mil else "mean", "out_dim": OUT_DIM}},
        "teacher": {"kind": "ema", "momentum": 0.996, "final_momentum": 1.0},
        "objectives": objectives,
        "train": {"epochs": s["epochs"], "eval_every": s["epochs"], "progress": False, "tensorboard": False,
                  "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.04},
                  "scheduler": {"name": "cosine", "warmup_steps": 100}},
    }


def _evaluate(model, splits) -> dict:
    ftr, ytr = extract_features(model, splits.train, "embedding")
    fte, yte = extract_features(model, splits.test, "embedding")
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
    s = _settings(ctx.quick)
    splits = load_dataset("fine_grained_digits", copies=s["copies"])
    res: dict[str, dict[str, list[float]]] = {v: {"probe": [], "r1": [], "marker_attention": [], "final_intra_loss": []}
                                              for v in ("dino", "cmd", "random_init")}
    for seed in ctx.seeds:
        torch.manual_seed(seed)
        fresh = multicrop_convnet(splits.input_shape, channels=CHANNELS, pool="mil", out_dim=OUT_DIM)
        for k, v in _evaluate(fresh, splits).items():
            res["random_init"][k].append(v)
        for variant in ("dino", "cmd"):
            name = f"{variant}/seed{seed}"
            ctx.train(name, _config(variant, seed, s))
            net = multicrop_convnet(splits.input_shape, channels=CHANNELS, pool="mil" if variant == "cmd" else "mean",
                                    out_dim=OUT_DIM)
            teacher = load_teacher_weights(ctx.out / name, copy.deepcopy(net))
            figures = _evaluate(teacher, splits)
            figures["final_intra_loss"] = _final_train_value(ctx.out / name, "intra")
            for k, v in figures.items():
                res[variant][k].append(v)
            ctx.log(f"  {name}: linear probe {figures['probe']:.3f}, R@1 {figures['r1']:.3f}, "
                    f"attention on the marker {figures['marker_attention']:.3f}, "
                    f"final DINO loss {figures['final_intra_loss']:.3f} (ln K = {math.log(OUT_DIM):.3f})")
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
