"""#37 DEO, in miniature: 6-band digits, a frozen optical teacher, single vs dual teacher.

Paper: Wolf, Rolih & Čehovin Zajc 2026, "Brewing Stronger Features: Dual-Teacher Distillation
for Multispectral Earth Observation", arXiv:2602.19863 (abstract: the dual-teacher student
"adapts to multispectral data without compromising performance on optical-only inputs,
achieving state-of-the-art results in both settings, with an average improvement of 3.64
percentage points in semantic segmentation, 1.2 in change detection, and 1.31 in
classification tasks").

Miniature (all settings fixed here before any run; every run is an ordinary ``distillery run``
config, see each run's ``config.yaml``):

* data: ``multiband_digits`` (noise 1.0; bands 0-2 "optical": the digit plus noise; bands 3-5
  "extra": the digit, its negative and a blurred copy, each plus noise), the train split
  repeated 2 (quick) / 4 times with fresh noise;
* augmentation (every view): random translation by up to 1 pixel (``crop2d``), intensity scale
  0.8-1.2, Gaussian noise 0.2;
* networks: ``band_adapter`` around ``cnn2d`` (channels 32, 64); the optical teacher reads bands
  0-2 only, the students read bands 0-2 plus bands 3-5 through the zero-initialised 3x3 input
  adapter; heads of 64 prototypes;
* DINO everywhere: student temperature 0.1, teacher temperature 0.04, center momentum 0.9, EMA
  momentum 0.99 -> 1 (cosine); AdamW lr 1e-3, weight decay 0.04, cosine schedule with 50
  warm-up steps, batch 128, 20 (quick) / 50 epochs;
* ``optical_teacher`` (seed 0): DINO on the optical bands (the "optical VFM"), then frozen;
* ``single``: the multispectral student trained by DINO from its EMA teacher only;
* ``dual``: the same plus ``1 - cos`` between a linear projection of its pooled features and
  the frozen optical teacher's pooled features on the same view (weight 1);
* evaluation: linear probe (logistic regression, C=1) on pooled features (``backbone.head:input``),
  train split -> test split, on multi-band input and on optical-only input (bands 3-5 set to 0
  in both probe splits); the optical teacher on its input (it reads bands 0-2 only). For
  reference (no rule), a linear probe (C=0.1) on the raw pixels of the optical bands and of all
  bands shows how much the extra bands hold.

Rules (means over the student seeds; the optical teacher is one model):
  1. no loss on optical-only input: dual's optical-only probe accuracy is at most 1 point below
     the optical teacher's;
  2. the extra bands are used: dual's multi-band probe accuracy exceeds the optical teacher's by
     more than the standard error of dual's mean (s / sqrt(n), n >= 2);
  3. the second teacher helps on optical-only input: dual beats single there (higher by more
     than the standard error of the difference);
  4. and costs nothing on multi-band input: dual's multi-band accuracy is at most 1 point below
     single's.
"""

from __future__ import annotations

import math

import torch

from ..data import load_dataset
from ..data.datasets import ArrayDataset
from ..data.miniature.bands import EXTRA_BANDS, OPTICAL_BANDS, ZeroBands
from ..evaluation.probes import linear_probe_accuracy
from ..recipes.deo import deo_config, single_teacher_config
from . import Claim, Context, Reproduction, better, detectable_difference, mean_std, not_worse, register
from ._common import (
    Settings,
    compose,
    linear_probe,
    load_student,
    run_grid,
    train_section,
)

OUT_DIM = 64
BACKBONE = {"name": "cnn2d", "params": {"channels": [32, 64]}}
AUG = [{"name": "crop2d", "padding": 1}, {"name": "scale", "low": 0.8, "high": 1.2}, {"name": "noise", "std": 0.2}]
FEATURE = "backbone.head:input"
SETTINGS = Settings(quick={"copies": 2, "epochs": 20}, full={"copies": 4, "epochs": 50})


def _model(extra: list[int]) -> dict:
    return {"name": "band_adapter", "params": {"optical": list(OPTICAL_BANDS), "extra": extra, "backbone": BACKBONE,
                                               "kernel_size": 3, "out_dim": OUT_DIM}}


def _base(s: dict, model: dict) -> dict:
    return {"data": {"dataset": "multiband_digits", "params": {"noise": 1.0, "copies": s["copies"]}, "batch_size": 128},
            "student": model, "train": train_section(s["epochs"], 1e-3, weight_decay=0.04, warmup=50)}


def _load(ctx: Context, run: str, extra: list[int]) -> torch.nn.Module:
    return load_student(ctx.out / run, _model(extra), (6, 8, 8), 10)


def _probe(model: torch.nn.Module, splits, optical_only: bool) -> float:
    def optical(ds: ArrayDataset) -> ArrayDataset:
        return ArrayDataset(ZeroBands(list(EXTRA_BANDS))(ds.x), ds.y)

    return linear_probe(model, splits, FEATURE, optical if optical_only else None, C=1.0)


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    single = single_teacher_config(OUT_DIM, AUG, momentum=0.99)
    ctx.train("optical_teacher", {"seed": 0, **compose(_base(s, _model([])), single)})
    weights = str((ctx.out / "optical_teacher" / "student.safetensors").resolve())
    optical = dict(_model([]), checkpoint=weights)
    # probes always on the plain (one-copy) splits
    splits = load_dataset("multiband_digits", noise=1.0, copies=1)
    teacher_acc = _probe(_load(ctx, "optical_teacher", []), splits, optical_only=False)
    ctx.log(f"  optical teacher: probe {teacher_acc:.4f}")
    extra = list(EXTRA_BANDS)
    variants = {
        "single": compose(_base(s, _model(extra)), single),
        "dual": compose(_base(s, _model(extra)), deo_config(OUT_DIM, optical, AUG, momentum=0.99, feature=FEATURE,
                                                            teacher_feature=FEATURE, feature_weight=1.0)),
    }

    def measure(run) -> dict[str, float]:
        model = _load(ctx, run.name, extra)
        m = {"multiband": _probe(model, splits, optical_only=False), "optical_only": _probe(model, splits, optical_only=True)}
        ctx.log(f"  {run.name}: probe multi-band {m['multiband']:.4f}, optical-only {m['optical_only']:.4f}")
        return m

    res = run_grid(ctx, variants, measure)
    acc = {f"{v}_{m}": [r[m] for r in res[v]] for v in variants for m in ("multiband", "optical_only")}
    metric = "linear-probe test accuracy"
    dual_ms = mean_std(acc["dual_multiband"])
    se = dual_ms["std"] / math.sqrt(dual_ms["n"]) if dual_ms["n"] > 1 else float("inf")
    claims = [
        not_worse("No loss on optical-only input: the dual-teacher student matches the frozen optical teacher there",
                  acc["dual_optical_only"], [teacher_acc], a_name="dual_optical_only", b_name="optical_teacher",
                  tolerance=0.01, metric=metric),
        Claim("The dual-teacher student uses the extra bands: on multi-band input it beats the optical teacher",
              "mean multi-band probe accuracy of dual - the optical teacher's > the standard error of dual's mean "
              "(s / sqrt(n), n >= 2)",
              dual_ms["n"] >= 2 and dual_ms["mean"] - teacher_acc > se,
              {"dual_multiband": dual_ms, "optical_teacher": teacher_acc, "difference": dual_ms["mean"] - teacher_acc,
               "standard_error": se, "metric": metric},
              detectable=detectable_difference(se, se, (dual_ms["n"], 1), reference=True)),
        better("The optical teacher helps on optical-only input: dual beats single there",
               acc["dual_optical_only"], acc["single_optical_only"], a_name="dual_optical_only", b_name="single_optical_only",
               metric=metric),
        not_worse("The second teacher costs nothing on multi-band input: dual matches single there",
                  acc["dual_multiband"], acc["single_multiband"], a_name="dual_multiband", b_name="single_multiband",
                  tolerance=0.01, metric=metric),
    ]
    claims[0].figures["all"] = {k: mean_std(v) for k, v in acc.items()}
    # reference, no rule: how much the bands hold, by a linear probe on the raw pixels (C=0.1)
    claims[1].figures["raw_pixel_probe"] = {
        name: linear_probe_accuracy(splits.train.x[:, bands].flatten(1), splits.train.y, splits.test.x[:, bands].flatten(1),
                                    splits.test.y, C=0.1)
        for name, bands in (("optical_bands", list(OPTICAL_BANDS)), ("all_bands", list(OPTICAL_BANDS) + extra))
    }
    return claims


REPRODUCTION = register(
    Reproduction(
        name="deo",
        paper="Wolf, Rolih & Čehovin Zajc 2026, arXiv:2602.19863",
        method="DEO: dual-teacher (EMA multispectral + frozen optical) contrastive distillation",
        family="multi_teacher_feature_contrastive",
        summary="6-band digits: DINO single vs dual teacher, probed on multi-band and optical-only input",
        run=run,
        recipe="deo",
    )
)
