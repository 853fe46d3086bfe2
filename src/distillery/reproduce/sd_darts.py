"""#42 SD-DARTS, in miniature: a tiny DARTS search on digits, with and without voting self-distillation.

Paper: Zhu, Li, Liu, Wang 2023, "Improving Differentiable Architecture Search via
Self-Distillation", arXiv:2302.05629 (abstract: self-distillation from previous supernets,
with voting teachers, "effectively reduc[es] the sharpness of the supernet's loss and
bridg[es] the performance gap between the supernet and the optimal architecture").

Miniature (all settings fixed here before any run):

* data: scikit-learn digits (8x8); the 1,347 training images split in half, stratified (seed 0),
  into the search's training split (weights) and validation split (``alpha``); the 450 test
  images are used only for the accuracies below;
* supernet: ``darts`` with 2 cells sharing ``alpha``, 3 nodes per cell (6 edges), 3 candidate
  ops per edge (skip_connect, conv_3x3, max_pool_3x3), 8 channels; derived architecture: the
  best non-``none`` op on the 2 strongest incoming edges of each node (DARTS's rule);
* search: first-order DARTS, 12 (quick) / 50 epochs of the training split, batch 64; weights:
  SGD momentum 0.9, lr 0.025 -> 0.001 cosine, weight decay 3e-4, gradient clipping 5 (DARTS's
  defaults); ``alpha``: Adam lr 3e-3 (DARTS uses 3e-4 over ~20k steps; this search has ~0.1-0.6k,
  so the rate is scaled up 10x), betas (0.5, 0.999), weight decay 1e-3;
* ``darts``: the weight step minimises cross-entropy; ``sd_darts``: cross-entropy + 1.0 x KD
  (temperature 1) toward the soft vote of the supernets after the 3 previous steps (a
  ``voting_snapshots`` teacher, ``size=3, every=1``);
* measured at the end of the search: sharpness ``lambda_max`` of the Hessian of the validation
  cross-entropy w.r.t. ``alpha`` (whole validation split as one batch, BatchNorm in train mode,
  20 power iterations); the *discretization gap* = test accuracy of the supernet minus test
  accuracy of the derived architecture with the supernet's weights (no retraining), BatchNorm
  statistics of both re-estimated on the search's training split.

Rules (mean over seeds):
  1. sd_darts ends with a lower ``lambda_max`` than darts (lower by more than the standard error
     of the difference);
  2. sd_darts has a smaller discretization gap than darts (same rule).
"""

from __future__ import annotations

import json

import torch

from ..data import digits
from ..data.datasets import ArrayDataset, stratified_split
from ..models import build_model
from ..recipes.sd_darts import (
    darts_distiller,
    discretization_gap,
    make_search,
    run_search,
    sd_darts_distiller,
    sharpness,
)
from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import Settings

SUPERNET = {"channels": 8, "cells": 2, "nodes": 3, "ops": ("skip_connect", "conv_3x3", "max_pool_3x3"), "top_k": 2}
BATCH = 64


SETTINGS = Settings(quick={"epochs": 12}, full={"epochs": 50})


def splits() -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """(search train, search validation, test) from digits."""
    d = digits()
    tr, va = stratified_split(d.train.y.numpy(), 0.5, seed=0)
    return ArrayDataset(d.train.x[tr], d.train.y[tr]), ArrayDataset(d.train.x[va], d.train.y[va]), d.test


def search_once(variant: str, seed: int, epochs: int, train, val, test) -> dict:
    torch.manual_seed(seed)
    net = build_model("darts", (1, 8, 8), 10, **SUPERNET)
    distiller = darts_distiller(net) if variant == "darts" else sd_darts_distiller(net, size=3, every=1, vote="soft",
                                                                                      temperature=1.0, weight=1.0)
    steps = epochs * -(-len(train) // BATCH)
    search = make_search(distiller, steps, arch_lr=3e-3)
    history = run_search(search, train, val, epochs, BATCH, seed)
    lam = sharpness(net, val, iters=20, seed=seed)
    gap = discretization_gap(net, train, test)
    return {"lambda_max": lam, **gap, "history": history, "alpha": net.alpha.detach().tolist()}


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    train, val, test = splits()
    results: dict[str, list[dict]] = {"darts": [], "sd_darts": []}
    for seed in ctx.seeds:
        for variant, runs in results.items():
            r = search_once(variant, seed, s["epochs"], train, val, test)
            runs.append(r)
            out = ctx.path(f"{variant}/seed{seed}")
            (out / "result.json").write_text(json.dumps(r, indent=1))
            ctx.log(f"  {variant}/seed{seed}: lambda_max {r['lambda_max']:.4f}, supernet {r['supernet']:.4f}, "
                    f"derived {r['derived']:.4f}, gap {r['gap']:.4f}")

    def col(variant: str, key: str) -> list[float]:
        return [r[key] for r in results[variant]]

    sharp = better("SD-DARTS ends its search at a flatter point of the validation loss w.r.t. alpha",
                   col("sd_darts", "lambda_max"), col("darts", "lambda_max"), a_name="sd_darts", b_name="darts",
                   higher=False, metric="lambda_max of the Hessian of L_val w.r.t. alpha")
    gap = better("SD-DARTS has a smaller gap between the supernet and its derived architecture",
                 col("sd_darts", "gap"), col("darts", "gap"), a_name="sd_darts", b_name="darts", higher=False,
                 metric="test accuracy of the supernet minus that of the derived architecture (inherited weights)")
    for variant, runs in results.items():
        gap.figures[f"{variant}_supernet_accuracy"] = mean_std(col(variant, "supernet"))
        gap.figures[f"{variant}_derived_accuracy"] = mean_std(col(variant, "derived"))
        gap.figures[f"{variant}_genotypes"] = [r["genotype"] for r in runs]
    return [sharp, gap]


REPRODUCTION = register(
    Reproduction(
        name="sd_darts",
        paper="Zhu et al. 2023, arXiv:2302.05629",
        method="SD-DARTS: DARTS with self-distillation from voting previous supernets",
        family="self_distillation",
        summary="tiny DARTS search on digits: sharpness of L_val in alpha and discretization gap, with/without SD",
        run=run,
        recipe="sd_darts",
    )
)
