"""#48 YONOS-SR, in miniature: scale distillation from a x2 SR diffusion teacher to a x4 student
of 8x8 digits, against the x4 model trained directly from data, both sampled in one step.

Paper: Noroozi et al. 2024, "You Only Need One Step: Fast Super-Resolution with Stable
Diffusion via Scale Distillation", arXiv:2401.17258 (abstract: "the distilled model
significantly outperforms the model trained for high scales directly, specifically with few
steps during inference"; one DDIM step beats methods using 200).

Miniature (``digit_images``: 1347 training, 450 test 8x8 images in [-1, 1]; conditions are the
average-pooled images upsampled bicubically to 8x8):

  1. the x2 teacher, once (seed 0): an LR-conditioned flow-matching U-Net (``sr_unet``,
     channels (16, 32), velocity prediction) trained on 4x4 -> 8x8 from data by
     ``sr_denoising``: 1500 steps (quick: 400), batch 128, Adam lr 2e-3, cosine, EMA 0.995;
  2. per seed (0-2), two x4 models (2x2 -> 8x8), both starting from the x2 teacher's weights,
     Adam lr 1e-3, cosine, batch 64, 1000 steps (quick: 300):
       * ``yonos``: scale distillation (``yonos_sr``, ``gt_weight = 0``): at every sampled
         noise level the target is the x2 teacher's velocity prediction from the 4x4 condition
         of the same image, while the student sees the 2x2 condition;
       * ``direct``: the same model trained on the x4 task directly from data (``gt_weight =
         1``: the data target ``eps - x0``), same start, same steps.
     That the direct model starts from the x2 weights too isolates the target (the paper's
     direct baseline starts from Stable Diffusion's weights, as its student does).

Measured on the x4 SR of the 450 test digits (one sample per test image), after **one** Euler
step from noise (the ``x0`` prediction at ``t = 1``): PSNR (dB, range 2, higher is better) and
digits FD (lower is better); 25-step figures are reported too.

Rules, fixed here before the reproduction was run (no pilot of the x4 students was run):
  1. the chained student beats the directly trained x4 model at one step by PSNR: ``yonos``'s
     mean one-step PSNR is higher than ``direct``'s by more than the standard error of the
     difference (3 seeds);
  2. ... and by digits FD: ``yonos``'s mean one-step FD is lower than ``direct``'s by more than
     the standard error of the difference.
An LR 2x2 | direct | YONOS | HR grid (one step, first seed) is written to ``sr_grid.png``.
"""

from __future__ import annotations

from typing import Any

from ..generative.restoration import digit_sr_pairs, run_samples, sr_grid_png, sr_scores
from ..recipes.tad_sr import sr_teacher_config
from ..recipes.yonos_sr import direct_config, stage_config
from . import Claim, Context, Reproduction, better, mean_std, register
from ._common import Settings, compose

DATA = {"dataset": "digit_images", "params": {"size": 8}}
PROCESS = {"kind": "flow", "shift": 1.0}
NET = {"name": "sr_unet", "params": {"channels": [16, 32]}}
TEACHER_SCALE, SCALE = 2, 4
SETTINGS = Settings(quick={"teacher_steps": 400, "student_steps": 300}, full={"teacher_steps": 1500, "student_steps": 1000})


def _train(steps: int, lr: float, warmup: int) -> dict[str, Any]:
    return {"steps": steps, "optimizer": {"name": "adam", "lr": lr}, "scheduler": {"name": "cosine", "warmup_steps": warmup},
            "grad_clip": 1.0, "log_every": max(1, steps // 5), "checkpoint_every": 10**9, "keep_checkpoints": 1,
            "progress": False, "tensorboard": False}


def teacher_config(s: dict[str, Any]) -> dict[str, Any]:
    """The x2 SR diffusion teacher's run (seed 0)."""
    return compose({"engine": "generative", "name": "yonos_x2_teacher", "seed": 0, "data": {**DATA, "batch_size": 128},
                    "process": PROCESS, "student": {"denoiser": NET, "prediction": "velocity"},
                    "train": _train(s["teacher_steps"], 2e-3, 50),
                    "eval": {"steps": [1, 25], "num_samples": 450, "metrics": ["digits_fd"], "solver": "euler"}},
                   sr_teacher_config(TEACHER_SCALE, "bicubic", 0.995, "euler"))


def student_configs(s: dict[str, Any], teacher_run: str) -> dict[str, dict[str, Any]]:
    """The two x4 models (without their seed)."""
    base = {"engine": "generative", "data": {**DATA, "batch_size": 64}, "process": PROCESS,
            "student": {"denoiser": NET, "prediction": "velocity"}, "train": _train(s["student_steps"], 1e-3, 20),
            "eval": {"steps": [1, 25], "num_samples": 450, "metrics": ["digits_fd"], "solver": "euler"}}
    return {"yonos": compose(base, stage_config(SCALE, TEACHER_SCALE, teacher_run)),
            "direct": compose(base, direct_config(SCALE, TEACHER_SCALE, teacher_run))}


def run(ctx: Context) -> list[Claim]:
    s = SETTINGS(ctx.quick)
    pairs = digit_sr_pairs("test", 8, SCALE)
    teacher = ctx.train("teacher_x2", teacher_config(s))
    teacher_run = str((ctx.out / "teacher_x2").resolve())
    x2 = sr_scores(run_samples(ctx.out / "teacher_x2", 1), pairs.hr)  # the HR images are the same at every scale
    variants = student_configs(s, teacher_run)
    m: dict[str, dict[str, list[float]]] = {v: {"psnr1": [], "fd1": [], "psnr25": [], "fd25": []} for v in variants}
    shown: dict[str, Any] = {}
    for seed in ctx.seeds:
        for name, cfg in variants.items():
            summary = ctx.train(f"{name}/seed{seed}", {"name": f"yonos_{name}", "seed": seed, **cfg})
            for n in (1, 25):
                out = run_samples(ctx.out / name / f"seed{seed}", n)
                m[name][f"psnr{n}"].append(sr_scores(out, pairs.hr)["psnr"])
                m[name][f"fd{n}"].append(summary["final"][str(n)]["digits_fd"])
                if seed == ctx.seeds[0] and n == 1:
                    shown[name] = out
    sr_grid_png({"LR 2x2": pairs.lr, "direct x4": shown["direct"], "YONOS x4": shown["yonos"], "HR 8x8": pairs.hr},
                ctx.out / "sr_grid.png", rows=10, title=f"x4 SR of test digits in one step (seed {ctx.seeds[0]})")
    claims = [
        better("The scale-distilled x4 student (x2 teacher's targets) beats the x4 model trained directly, at one step, by PSNR",
               m["yonos"]["psnr1"], m["direct"]["psnr1"], a_name="yonos", b_name="direct",
               metric="one-step PSNR (dB) of the x4 SR of the 450 test digits (higher is better)"),
        better("The scale-distilled x4 student beats the x4 model trained directly, at one step, by digits FD",
               m["yonos"]["fd1"], m["direct"]["fd1"], a_name="yonos", b_name="direct", higher=False,
               metric="one-step digits FD of the x4 SR of the 450 test digits (lower is better)"),
    ]
    for claim in claims:
        for name, v in m.items():
            claim.figures.update({f"{name} PSNR 1 step": mean_std(v["psnr1"]), f"{name} FD 1 step": mean_std(v["fd1"]),
                                  f"{name} PSNR 25 steps": mean_std(v["psnr25"]), f"{name} FD 25 steps": mean_std(v["fd25"])})
        claim.figures.update({"x2 teacher FD at 1 step (x2 task)": teacher["final"]["1"]["digits_fd"],
                              "x2 teacher PSNR at 1 step (x2 task)": x2["psnr"],
                              "bicubic x4 PSNR": sr_scores(pairs.lr_up, pairs.hr)["psnr"]})
        claim.figures.update(s)
    return claims


REPRODUCTION = register(
    Reproduction(
        name="yonos_sr",
        paper="Noroozi et al. 2024, arXiv:2401.17258",
        method="YONOS-SR: scale distillation (x2 teacher's noise-level targets train the x4 student), one-step sampling",
        family="generative",
        summary="x4 SR of 8x8 digits in one step: student distilled from a x2 SR diffusion teacher vs the x4 model trained directly",
        run=run,
        recipe="yonos_sr",
    )
)
