"""#19 Momentum-GS, in miniature: does an EMA teacher decoder keep sequentially trained blocks
consistent?

Paper: Fan, Li, Han, Dai & Tang 2024, "Momentum-GS: Momentum Gaussian Self-Distillation for
High-Quality Large Scene Reconstruction", arXiv:2412.04887 (abstract: "reconstruction accuracy
deteriorates due to reduced data diversity when training each block independently"; a momentum
teacher decoder gives "global guidance ... promoting spatial consistency", block weighting by
reconstruction accuracy; "12.8% improvement in LPIPS over CityGaussian").

Miniature: a procedural 32x32 grey image (``procedural_image``, seed 0) split into 4x4 blocks of
8x8 pixels; each block has a 5x5 grid of 8-dim latents, one shared MLP decoder (8-64-64-1, SiLU)
decodes every block (:class:`~distillery.models.miniature.block_field.BlockLatentField`). Blocks are
trained one at a time in a fixed cyclic round robin, 20 Adam steps (lr 5e-3, all 64 pixels of
the block) per visit, 20 rounds (4 with ``--quick``). Same seeds (initialisation) for all:

  * ``independent``: reconstruction loss only (each visit fits its block with the shared
    decoder, nothing ties the blocks together);
  * ``momentum``: + consistency (weight 1) to an EMA teacher decoder whose momentum spans one
    round, ``m = 1 - 1 / 320`` (one round is 16 blocks x 20 steps);
  * ``momentum_gs``: ``momentum`` + block weighting by accuracy (sigma 1 dB, PSNR momentum 0.9);
  * ``joint`` (reference figure only): every block in every step, for as many steps as one
    block gets in the sequential runs (so every block sees the same number of updates).

Measured on the student after the last step: PSNR at the pixel corners (positions never trained
on), and the seam error: the mean error of the jump between neighbouring pixel centres that lie
in different blocks (the same quantity inside blocks is reported as ``interior``).

Rules, fixed here before any run:
  1. EMA teacher consistency raises PSNR: ``momentum`` higher than ``independent`` (mean over
     seeds, by more than the standard error of the difference);
  2. it lowers the seam error: ``momentum`` lower than ``independent`` (same rule);
  3. block weighting adds to it: ``momentum_gs`` PSNR higher than ``momentum``'s (same rule).
"""

from __future__ import annotations

import torch

from ..data import load_dataset
from ..engine.blocks import RoundRobinBlocks
from ..models.miniature.block_field import BlockLatentField
from ..recipes.momentum_gs import psnr, render, seam_error, train_blockwise
from ..weighting import BlockAccuracyWeight
from . import Claim, Context, Reproduction, better, register
from ._common import Settings

BLOCKS = (4, 4)
STEPS_PER_VISIT = 20


SETTINGS = Settings(quick={"rounds": 4}, full={"rounds": 20})


def _variant(name: str, splits, seed: int, rounds: int) -> dict:
    torch.manual_seed(seed)
    field = BlockLatentField(BLOCKS, grid=5, features=8, hidden=64, depth=2)
    nb = field.num_blocks
    joint = name == "joint"
    schedule = RoundRobinBlocks(nb, STEPS_PER_VISIT, blocks_per_visit=nb if joint else 1)
    # the same number of updates per block: a joint step updates every block at once
    steps = rounds * STEPS_PER_VISIT if joint else rounds * nb * STEPS_PER_VISIT
    per_round = nb * STEPS_PER_VISIT
    result = train_blockwise(
        field, splits.train.x, splits.train.target, schedule, steps,
        teacher_momentum=(1 - 1 / per_round) if name in ("momentum", "momentum_gs") else None,
        consistency_weight=1.0,
        block_weighting=BlockAccuracyWeight(nb, sigma=1.0, momentum=0.9) if name == "momentum_gs" else None,
        lr=5e-3, seed=seed,
    )
    size = splits.info["size"]
    train_img = render(field, splits.train.x).reshape(size, size)
    gt = splits.train.target.reshape(size, size)
    seams = seam_error(train_img, gt, BLOCKS)
    figures = {
        "psnr": psnr(render(field, splits.test.x), splits.test.target.reshape(-1)),
        "train_psnr": psnr(train_img, gt),
        "seam": seams["seam"],
        "interior": seams["interior"],
    }
    if result["teacher"] is not None:
        figures["teacher_psnr"] = psnr(render(field, splits.test.x, result["teacher"].model), splits.test.target.reshape(-1))
    return figures


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    splits = load_dataset("procedural_image", size=32, seed=0)
    names = ("independent", "momentum", "momentum_gs", "joint")
    res: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for seed in ctx.seeds:
        for name in names:
            figures = _variant(name, splits, seed, s["rounds"])
            for k, v in figures.items():
                res[name].setdefault(k, []).append(v)
            ctx.log(f"  {name}/seed{seed}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()))
    ctx.path("results")
    import json

    (ctx.out / "results" / "figures.json").write_text(json.dumps(res, indent=1))
    c1 = better("EMA teacher consistency raises PSNR over independent sequential block training",
                res["momentum"]["psnr"], res["independent"]["psnr"], a_name="momentum", b_name="independent",
                metric="PSNR (dB) at unseen positions")
    c1.figures["joint_reference"] = res["joint"]["psnr"]
    c2 = better("EMA teacher consistency lowers the seam error at block borders",
                res["momentum"]["seam"], res["independent"]["seam"], a_name="momentum", b_name="independent",
                higher=False, metric="seam error")
    c2.figures["interior_momentum"] = res["momentum"]["interior"]
    c2.figures["interior_independent"] = res["independent"]["interior"]
    c3 = better("Block weighting by reconstruction accuracy adds to the EMA teacher",
                res["momentum_gs"]["psnr"], res["momentum"]["psnr"], a_name="momentum_gs", b_name="momentum",
                metric="PSNR (dB) at unseen positions")
    return [c1, c2, c3]


REPRODUCTION = register(
    Reproduction(
        name="momentum_gs",
        paper="Fan et al. 2024, arXiv:2412.04887",
        method="Momentum-GS: momentum (EMA) teacher decoder for block-wise training, accuracy-weighted blocks",
        family="self_distillation",
        summary="round-robin block training of a latent-grid field with a shared decoder, with and without an EMA teacher decoder",
        run=run,
        recipe="momentum_gs",
    )
)
