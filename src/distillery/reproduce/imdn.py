"""#18 IMDN, in miniature: information multi-distillation blocks against a plain CNN of equal
parameter count on x2 super-resolution of 8x8 digits.

Paper: Hui, Gao, Yang & Wang 2019, "Lightweight Image Super-Resolution with Information
Multi-distillation Network", arXiv:1909.11856 (abstract: the cascaded IMDBs, with
"distillation and selective fusion parts", give a lightweight SR network that "performs
favorably against the state-of-the-art SR algorithms in term of visual quality, memory
footprint, and inference time"). Not knowledge distillation; the row asks for the
architecture claim at equal size.

Miniature (``digit_images``: 1347 training and 450 test 8x8 images in [-1, 1]; x2: the 4x4
average-pooled image upsampled bicubically to 8x8 is the input):

  * ``imdn``: :class:`~distillery.generative.restoration.IMDN`, 16 channels, 2 IMDBs
    (distillation rate 1/4, CCA reduction 4): 16.5k parameters;
  * ``plain_cnn``: :class:`~distillery.generative.restoration.PlainSRCNN`, 6 3x3
    convolutions of width 21 with ReLU: 16.4k parameters (within 5%);
  * both: global residual over the input, the engine's ``sr_regression`` method with L1 (the
    paper's loss), batch 64, Adam lr 2e-3, cosine schedule, 1000 steps (quick: 300), seeds 0-2.

Measured: PSNR (dB, data range 2) of the one-step SR of the 450 test digits against the 8x8
originals (bicubic upsampling alone: 13.4 dB); digits FD is reported too.

Rules, fixed here before the reproduction was run:
  1. IMDN beats the plain CNN of equal parameter count: ``imdn``'s mean test PSNR is higher
     than ``plain_cnn``'s by more than the standard error of the difference (3 seeds);
  2. the comparison is at equal size: the parameter counts differ by at most 5%.
An LR | bicubic | IMDN | plain CNN | HR grid of test digits (seed 0) is written to
``sr_grid.png``.
"""

from __future__ import annotations

from typing import Any

from ..generative.restoration import digit_sr_pairs, run_samples, sr_grid_png, sr_scores
from ..recipes.imdn import imdn_net, plain_cnn_net, sr_regression_config
from . import Claim, Context, Reproduction, better, exact, mean_std, register
from ._common import Settings, compose

DATA = {"dataset": "digit_images", "params": {"size": 8}}
PROCESS = {"kind": "flow", "shift": 1.0}
SCALE = 2
NETS = {"imdn": imdn_net(channels=16, blocks=2), "plain_cnn": plain_cnn_net(channels=21, depth=6)}
SETTINGS = Settings(quick={"steps": 300}, full={"steps": 1000})


def variant_config(net: dict[str, Any], steps: int) -> dict[str, Any]:
    """One SR run (without its seed)."""
    base = {"engine": "generative", "data": {**DATA, "batch_size": 64}, "process": PROCESS,
            "student": {"denoiser": net, "prediction": "x0"},
            "train": {"steps": steps, "optimizer": {"name": "adam", "lr": 2e-3},
                      "scheduler": {"name": "cosine", "warmup_steps": 20}, "log_every": max(1, steps // 5),
                      "checkpoint_every": 10**9, "keep_checkpoints": 1, "progress": False, "tensorboard": False},
            "eval": {"steps": [1], "num_samples": 450, "metrics": ["digits_fd"]}}
    return compose(base, sr_regression_config(SCALE, "bicubic", "l1"))


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    pairs = digit_sr_pairs("test", 8, SCALE)
    bicubic = sr_scores(pairs.lr_up, pairs.hr)
    scores: dict[str, dict[str, list[float]]] = {v: {"psnr": [], "fd": []} for v in NETS}
    params: dict[str, int] = {}
    shown: dict[str, Any] = {}
    for seed in ctx.seeds:
        for name, net in NETS.items():
            summary = ctx.train(f"{name}/seed{seed}", {"name": f"imdn_{name}", "seed": seed, **variant_config(net, s["steps"])})
            out = run_samples(ctx.out / name / f"seed{seed}", 1)
            scores[name]["psnr"].append(sr_scores(out, pairs.hr)["psnr"])
            scores[name]["fd"].append(summary["final"]["1"]["digits_fd"])
            params[name] = int(summary["describe"]["parameters"]["student"])
            if seed == ctx.seeds[0]:
                shown[name] = out
    sr_grid_png({"LR 4x4": pairs.lr, "bicubic": pairs.lr_up, "IMDN": shown["imdn"], "plain CNN": shown["plain_cnn"],
                 "HR 8x8": pairs.hr}, ctx.out / "sr_grid.png", rows=10, title=f"x2 SR of test digits (seed {ctx.seeds[0]})")
    metric = "PSNR (dB) of the x2 SR of the 450 test digits (higher is better)"
    ratio = abs(params["imdn"] - params["plain_cnn"]) / params["plain_cnn"]
    claims = [
        better("IMDN (information multi-distillation blocks) beats a plain CNN of equal parameter count on x2 SR",
               scores["imdn"]["psnr"], scores["plain_cnn"]["psnr"], a_name="imdn", b_name="plain_cnn", metric=metric),
        exact("The comparison is at equal parameter count (within 5%)", "|params(imdn) - params(plain_cnn)| / "
              "params(plain_cnn) <= 0.05", ratio <= 0.05, {"relative difference": ratio}),
    ]
    for claim in claims:
        claim.figures.update({f"{n} parameters": p for n, p in params.items()})
        claim.figures.update({f"{n} PSNR": mean_std(v["psnr"]) for n, v in scores.items()})
        claim.figures.update({f"{n} digits FD": mean_std(v["fd"]) for n, v in scores.items()})
        claim.figures["bicubic PSNR"] = bicubic["psnr"]
        claim.figures.update(s)
    return claims


REPRODUCTION = register(
    Reproduction(
        name="imdn",
        paper="Hui et al. 2019, arXiv:1909.11856",
        method="IMDN: information multi-distillation blocks (channel split + contrast-aware attention) for lightweight SR",
        family="generative",
        summary="x2 SR of 8x8 digits: IMDN vs a plain CNN of equal parameter count, by test PSNR over 3 seeds",
        run=run,
        recipe="imdn",
    )
)
